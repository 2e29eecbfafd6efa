"""Seeded random operations against an in-memory model (see ``integrity.py``).

``make test`` runs a short run per ``--commit-on`` mode; ``make soak`` sets
MEDIADRIVE_SOAK=1 for long runs (MEDIADRIVE_INTEGRITY_OPS operations per mode, 100,000
by default there) and the 10,000 fsync rounds. MEDIADRIVE_INTEGRITY_SEED fixes the seed.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import DriveFactory, MountHandle, Mounts, drive_call
from .integrity import Hooks, run

SOAK = os.environ.get("MEDIADRIVE_SOAK") == "1"
OPS = int(os.environ.get("MEDIADRIVE_INTEGRITY_OPS", "100000" if SOAK else "300"))
# A remount takes seconds: a few per short run, about fifty per soak run.
REMOUNT_EVERY = max(OPS // 50, 150) if SOAK else 250


@pytest.mark.parametrize("commit_on", ["close", "fsync", "save"])
def test_seeded_random_operations_match_the_model(
    make_drive: DriveFactory, mounts: Mounts, commit_on: str
) -> None:
    seed = int(os.environ.get("MEDIADRIVE_INTEGRITY_SEED", random.randrange(1 << 32)))
    drive = make_drive(chunk_size="64KiB")
    options: dict[str, Any] = {"commit_on": commit_on, "checkpoint_interval": "1s"}
    state: dict[str, MountHandle] = {"m": mounts.mount(drive, cache="c0", **options)}
    caches = iter(range(1, 1 << 20))

    def remount(keep_cache: bool) -> Path:
        old = state["m"]
        mounts.umount(old)
        cache = old.cache_dir.name if keep_cache else f"c{next(caches)}"
        state["m"] = mounts.mount(drive, mountpoint=old.path, cache=cache, **options)
        return state["m"].path

    def save() -> None:
        state["m"].save("/")

    start = time.monotonic()
    tester = run(seed, OPS, state["m"].path, Hooks(remount=remount, save=save), REMOUNT_EVERY)
    took = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(tester.seconds.items()))
    print(f"integrity: commit-on {commit_on}, seed {seed}: {OPS} ops in ", end="")
    print(f"{time.monotonic() - start:.1f}s ({took})")
    # Everything reaches the drive: what a new cache reads back is the model's end state.
    remount(False)


@pytest.mark.skipif(not SOAK, reason="soak only (make soak): about a minute")
def test_ten_thousand_pwrite_fsync_rounds_commit_without_a_failure(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    drive = make_drive()
    m = mounts.mount(drive, commit_on="fsync", checkpoint_interval="1s")
    block = 4096
    rounds = 10_000
    start = time.monotonic()
    fd = os.open(m / "log.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for i in range(rounds):
            data = i.to_bytes(4, "little") * (block // 4)
            assert os.pwrite(fd, data, (i % 256) * block) == block
            os.fsync(fd)
    finally:
        os.close(fd)
    print(f"{rounds} pwrite+fsync rounds in {time.monotonic() - start:.1f}s")
    status = m.status()
    assert status["errors"] == [], status["errors"]
    mounts.umount(m)
    expected = bytearray(256 * block)
    for i in range(rounds - 256, rounds):
        expected[(i % 256) * block : (i % 256 + 1) * block] = i.to_bytes(4, "little") * (block // 4)

    async def read(d: object) -> bytes:
        from mediadrive.core.drive import Drive

        assert isinstance(d, Drive)
        reader = await d.reader("/log.bin")
        return await reader.read(0, reader.size)

    assert drive_call(drive, read) == expected
