"""The agent's wait for the next FUSE request: a short poll before it parks, only
while no request is being handled."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pyfuse3.asyncio
import pytest

from mediadrive.node import fuse_wait


@pytest.fixture
def parked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """pyfuse3's own wait, recording the fds it is asked to park on; fuse_wait's
    poll installed in front of it."""
    seen: list[int] = []

    async def park(fd: int) -> None:
        seen.append(fd)

    monkeypatch.setattr(pyfuse3.asyncio, "wait_readable", park)
    monkeypatch.setattr(fuse_wait.HANDLING, "count", 0)
    fuse_wait.install(spin=0.001)
    yield seen


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


async def test_a_request_already_there_is_taken_without_parking(
    parked: list[int], pipe: tuple[int, int]
) -> None:
    read, write = pipe
    os.write(write, b"x")
    await pyfuse3.asyncio.wait_readable(read)
    assert parked == []


async def test_with_no_request_it_parks_after_the_poll(
    parked: list[int], pipe: tuple[int, int]
) -> None:
    read, _ = pipe
    await pyfuse3.asyncio.wait_readable(read)
    assert parked == [read]


async def test_while_a_request_is_handled_it_parks_at_once(
    parked: list[int], pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    read, write = pipe
    os.write(write, b"x")
    monkeypatch.setattr(fuse_wait.HANDLING, "count", 1)
    await pyfuse3.asyncio.wait_readable(read)
    # Readable, but a handler waits on something: the loop is left to it.
    assert parked == [read]


async def test_handlers_count_while_they_run_and_after_they_fail() -> None:
    from mediadrive.node.fs import fuse_errors
    from mediadrive.node.vfs import FsError

    counts: list[int] = []

    @fuse_errors
    async def handler(fail: bool) -> None:
        counts.append(fuse_wait.HANDLING.count)
        if fail:
            raise FsError(2)

    before = fuse_wait.HANDLING.count
    await handler(False)
    with pytest.raises(pyfuse3.FUSEError):
        await handler(True)
    assert counts == [before + 1, before + 1]
    assert fuse_wait.HANDLING.count == before


async def test_the_read_lock_is_retaken_by_the_task_that_released_it() -> None:
    lock = fuse_wait.ReadLock()
    holders: list[str] = []

    async def other() -> None:
        async with lock:
            holders.append("other")

    await lock.acquire()
    waiting = asyncio.create_task(other())
    await asyncio.sleep(0)
    lock.release()
    # Free again: this task takes it back without a turn of the loop, and the woken
    # task, finding it taken, waits again.
    await lock.acquire()
    await asyncio.sleep(0)
    assert holders == [] and lock.locked()
    lock.release()
    await waiting
    assert holders == ["other"] and not lock.locked()


async def test_the_read_lock_has_one_holder_at_a_time() -> None:
    lock = fuse_wait.ReadLock()
    inside = 0
    most = 0
    done = 0

    async def worker(rounds: int) -> None:
        nonlocal inside, most, done
        for k in range(rounds):
            async with lock:
                inside += 1
                most = max(most, inside)
                if k % 3:
                    await asyncio.sleep(0)
                inside -= 1
            if k % 2:
                await asyncio.sleep(0)
        done += 1

    await asyncio.gather(*(worker(50) for _ in range(5)))
    assert (most, done, lock.locked()) == (1, 5, False)


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    lock = fuse_wait.ReadLock()
    took: list[str] = []

    async def take(name: str) -> None:
        async with lock:
            took.append(name)

    await lock.acquire()
    first = asyncio.create_task(take("first"))
    second = asyncio.create_task(take("second"))
    await asyncio.sleep(0)
    lock.release()  # wakes the first, which is cancelled before it runs
    first.cancel()
    await asyncio.wait_for(second, 1)
    assert took == ["second"] and first.cancelled()


def test_installed_pyfuse3_workers_take_turns_under_the_read_lock(
    parked: list[int],
) -> None:
    # pyfuse3 makes its lock from this module attribute when its first worker waits.
    assert pyfuse3.asyncio.Lock is fuse_wait.ReadLock  # type: ignore[comparison-overlap]
    with pytest.raises(RuntimeError):
        fuse_wait.ReadLock().release()
