"""Any sequence of edits and commits reads back exactly, at every version.

A plain ``bytearray`` is the reference model: random writes at offsets, appends
and truncates change it, and every commit stores its current bytes through
``Drive.write_file``. After the sequence, every version of the file must read
back as the model's bytes at that commit, whole and in random ranges.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import Drive


@dataclass(frozen=True)
class Write:
    offset: int
    size: int
    seed: int


@dataclass(frozen=True)
class Append:
    size: int
    seed: int


@dataclass(frozen=True)
class Truncate:
    size: int


@dataclass(frozen=True)
class Commit:
    pass


Op = Write | Append | Truncate | Commit

OPS: st.SearchStrategy[Op] = st.one_of(
    st.builds(Write, st.integers(0, 40_000), st.integers(1, 12_000), st.integers(0, 2**32)),
    st.builds(Append, st.integers(1, 12_000), st.integers(0, 2**32)),
    st.builds(Truncate, st.integers(0, 40_000)),
    st.just(Commit()),
)

# Durability is not what this checks, and fsync on tmpfs costs nothing.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

SETTINGS = {
    "fixed-4KiB": DriveSettings(chunking="fixed", chunk_size=4096),
    "fixed-16KiB": DriveSettings(chunking="fixed", chunk_size=16384),
    "cdc-1KiB": DriveSettings(chunking="cdc", chunk_size=1024),
    "cdc-4KiB": DriveSettings(chunking="cdc", chunk_size=4096),
}


def _apply(model: bytearray, op: Op) -> None:
    if isinstance(op, Write):
        data = random.Random(op.seed).randbytes(op.size)
        if op.offset > len(model):
            model.extend(b"\0" * (op.offset - len(model)))
        model[op.offset : op.offset + op.size] = data
    elif isinstance(op, Append):
        model.extend(random.Random(op.seed).randbytes(op.size))
    elif isinstance(op, Truncate):
        if op.size <= len(model):
            del model[op.size :]
        else:
            model.extend(b"\0" * (op.size - len(model)))


async def _read_version(drive: Drive, path: str, version: int) -> bytes:
    out = io.BytesIO()
    info = await drive.read_to(path, out, version=version)
    assert info.version == version
    return out.getvalue()


async def _run(chunking: DriveSettings, ops: list[Op], seed: int, base: Path) -> None:
    path = "/clips/shot.mov"
    drive = await Drive.create(
        "prop", f"sqlite:///{base}/meta.db", f"file://{base}/store", chunking
    )
    try:
        await drive.mkdir("/clips")
        model = bytearray()
        committed: dict[int, bytes] = {}
        for op in [*ops, Commit()]:
            if not isinstance(op, Commit):
                _apply(model, op)
                continue
            content = bytes(model)
            seen_before = content in committed.values()
            result = await drive.write_file(path, io.BytesIO(content))
            assert result.path == path
            assert result.size == len(content)
            assert result.version == len(committed) + 1
            assert not result.conflict
            assert 0 <= result.bytes_uploaded <= len(content)
            if seen_before:
                # Every chunk of identical content is already stored.
                assert result.bytes_uploaded == 0
                assert result.chunks_new == 0
            committed[result.version] = content

        versions = await drive.versions(path)
        assert [v.version for v in versions] == sorted(committed)
        assert [v.size for v in versions] == [len(committed[v.version]) for v in versions]
        rng = random.Random(seed)
        for version, content in committed.items():
            assert await _read_version(drive, path, version) == content
            reader = await drive.reader(path, version)
            assert reader.size == len(content)
            for _ in range(4):
                offset = rng.randrange(0, len(content) + 10)
                length = rng.randrange(0, 20_000)
                assert await reader.read(offset, length) == content[offset : offset + length]
        head = await drive.reader(path)
        assert head.info.version == max(committed)
    finally:
        await drive.close()


@pytest.mark.parametrize("name", sorted(SETTINGS))
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=st.lists(OPS, min_size=1, max_size=14), seed=st.integers(0, 2**32))
def test_every_version_reads_back_exactly(name: str, ops: list[Op], seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mediadrive-prop-", dir=SCRATCH) as folder:
        asyncio.run(_run(SETTINGS[name], ops, seed, Path(folder)))
