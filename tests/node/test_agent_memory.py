"""The agent's heap: a writable mount faults its upload window in once quiet."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mediadrive.node.agent import QUIET_SECONDS
from mediadrive.node.heap import memory_to_spare
from mediadrive.node.streaming import GATHERED_BYTES

from .conftest import DriveFactory, Mounts, wait_until


def anonymous(pid: int) -> int:
    """The process's resident anonymous memory (its heap among it), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no RssAnon for {pid}")


def settled_anonymous(pid: int, timeout: float = 30.0) -> int:
    """The process's resident anonymous memory once it stops growing: the fault-in
    goes a slice at a time (see heap.FAULT_IN_STEP), so crossing a size says it is
    under way, not over."""
    deadline = time.monotonic() + timeout
    last = anonymous(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = anonymous(pid)
        if now - last < 1 << 20:
            return now
        last = now
    raise AssertionError(f"the anonymous memory of {pid} kept growing for {timeout:.0f}s")


def test_a_quiet_writable_mount_faults_its_upload_window_in_and_a_write_then_reuses_it(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    spare = memory_to_spare()
    if spare is not None and spare < 4 * GATHERED_BYTES:
        pytest.skip("memory is short here: the agent leaves its heap alone")
    m = mounts.mount(make_drive())
    pid = m.pid()
    wait_until(lambda: anonymous(pid) >= GATHERED_BYTES, timeout=30)
    held = settled_anonymous(pid)
    data = os.urandom(GATHERED_BYTES // 2)
    (m / "take.mov").write_bytes(data)
    m.save("/take.mov")
    # 128 MiB gathered and sent from the pages faulted in: the agent holds little more
    # (measured: 34 MiB more, 140 MiB without the fault-in).
    assert anonymous(pid) - held < GATHERED_BYTES // 4
    assert (m / "take.mov").read_bytes() == data


def test_a_read_only_mount_faults_nothing_in(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive(), read_only=True)
    time.sleep(QUIET_SECONDS * 3)
    assert anonymous(m.pid()) < GATHERED_BYTES // 2
