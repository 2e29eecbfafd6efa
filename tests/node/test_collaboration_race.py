"""A reader on a second mount, right after it sees a collaborator's new version.

The reader learns of the version through its own mount (the version attribute asks
the drive's metadata), possibly before the event follower has told its kernel: the
kernel may still hold the old version's size (the writeback cache keeps its own) and
pages. Opening and reading must give exactly the new bytes anyway.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .conftest import DriveFactory, Mounts, wait_until

# Each version has another length: growing, shrinking, tiny, a whole page.
SIZES = [5000, 300, 70_000, 1, 12_345, 4096, 200_000]


def version_of(path: Path) -> int | None:
    try:
        return int(os.getxattr(path, "user.mediadrive.version"))
    except OSError:
        return None


def test_a_reader_that_sees_the_new_version_reads_exactly_its_bytes(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive()
    a = mounts.mount(name)
    b = mounts.mount(name)
    shared_a, shared_b = a / "take.bin", b / "take.bin"
    last_seen: int | None = None
    failures: list[str] = []
    rounds = 0
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        rounds += 1
        data = os.urandom(SIZES[rounds % len(SIZES)] + rounds)
        # Committed on close.
        shared_a.write_bytes(data)

        def new_version_seen(previous: int | None = last_seen) -> bool:
            return version_of(shared_b) not in (None, previous)

        wait_until(new_version_seen, timeout=5)
        last_seen = version_of(shared_b)
        with open(shared_b, "rb") as f:
            first = f.read()
        if first != data:
            failures.append(f"round {rounds}: read {len(first)} bytes of {len(data)}")
        # At once again: the refresh of the kernel's inode may be under way.
        again = shared_b.read_bytes()
        if again != data:
            failures.append(f"round {rounds}: read again {len(again)} bytes of {len(data)}")
    assert rounds > 3
    assert failures == [], "\n".join(failures)
    # Once the event reached b, its kernel shows the new size too.
    wait_until(lambda: os.stat(shared_b).st_size == len(data), timeout=2.5)
