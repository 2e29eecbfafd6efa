"""When the agent faults its heap in: once the mount is quiet, and only with memory to
spare."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mediadrive.node import agent, fuse_wait

QUIET = 0.05


@pytest.fixture
def faulted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, int]]:
    """The (loop time, size) of each fault-in asked for."""
    calls: list[tuple[float, int]] = []

    def fake_fault_in(size: int) -> threading.Thread:
        calls.append((asyncio.get_running_loop().time(), size))
        thread = threading.Thread(target=lambda: None)
        thread.start()
        return thread

    monkeypatch.setattr(agent, "QUIET_SECONDS", QUIET)
    monkeypatch.setattr(agent, "fault_in", fake_fault_in)
    monkeypatch.setattr(fuse_wait, "HANDLING", fuse_wait.InFlight())
    return calls


def test_a_quiet_mount_faults_in_after_the_quiet_time(
    faulted: list[tuple[float, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent, "memory_to_spare", lambda: 64 << 30)

    async def run() -> float:
        start = asyncio.get_running_loop().time()
        await agent.fault_in_when_quiet(1 << 20)
        return start

    start = asyncio.run(run())
    assert [size for _, size in faulted] == [1 << 20]
    assert faulted[0][0] - start >= QUIET


def test_requests_put_the_fault_in_off_until_they_stop(
    faulted: list[tuple[float, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent, "memory_to_spare", lambda: 64 << 30)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        task = loop.create_task(agent.fault_in_when_quiet(1 << 20))
        # A request every half quiet time, for ten quiet times.
        for _ in range(20):
            fuse_wait.HANDLING.started += 1
            await asyncio.sleep(QUIET / 2)
        stopped = loop.time()
        await task
        return stopped

    stopped = asyncio.run(run())
    assert len(faulted) == 1
    assert faulted[0][0] >= stopped


def test_no_fault_in_where_memory_is_short(
    faulted: list[tuple[float, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 256 << 20
    monkeypatch.setattr(agent, "memory_to_spare", lambda: 4 * size - 1)
    asyncio.run(agent.fault_in_when_quiet(size))
    assert faulted == []
    monkeypatch.setattr(agent, "memory_to_spare", lambda: 4 * size)
    asyncio.run(agent.fault_in_when_quiet(size))
    assert [s for _, s in faulted] == [size]
