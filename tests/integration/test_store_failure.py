"""A store that fails mid-upload: the error surfaces, nothing is committed, nothing hangs."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import pytest

from mediadrive.core import durability
from mediadrive.core.blob.local import LocalBlobStore
from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.core.errors import StoreFull, StoreUnavailable
from mediadrive.core.hashing import chunk_id


async def small_chunk_drive(tmp_path: Path) -> Drive:
    """A drive of 64 KiB chunks in ``tmp_path``: an upload of a few MiB is many puts."""
    return await Drive.create(
        "fail",
        f"sqlite:///{tmp_path}/meta.db",
        f"file://{tmp_path}/store",
        DriveSettings(chunk_size="64KiB"),
    )


async def test_failed_put_leaves_no_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = await small_chunk_drive(tmp_path)
    try:
        data = os.urandom(4 << 20)
        await drive.write_file("/ok", io.BytesIO(data[: 1 << 20]))
        calls = 0
        real_put = drive.blobs.put

        async def flaky_put(chunk: str, payload: bytes | memoryview) -> None:
            nonlocal calls
            calls += 1
            if calls > 3:
                raise StoreUnavailable("S3 store is unreachable")
            await real_put(chunk, payload)

        monkeypatch.setattr(drive.blobs, "put", flaky_put)
        with pytest.raises(StoreUnavailable):
            # A full queue must not leave the chunking thread stuck: bounded wait.
            await asyncio.wait_for(drive.write_file("/big", io.BytesIO(data)), 30)
        assert await drive.meta.resolve("/big") is None
        assert [e.kind for e in [e async for e in drive.events()]] == ["commit"]
        out = io.BytesIO()
        await drive.read_to("/ok", out)
        assert out.getvalue() == data[: 1 << 20]
    finally:
        await drive.close()


def _slow_writes(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[int]:
    """Local puts that take ``seconds`` in their thread; the list counts those running."""
    running = [0]
    real = durability.write_atomically

    def slow(final: Path, data: bytes | memoryview, tmp: Path) -> None:
        running[0] += 1
        try:
            time.sleep(seconds)
            real(final, data, tmp)
        finally:
            running[0] -= 1

    monkeypatch.setattr("mediadrive.core.blob.local.write_atomically", slow)
    return running


async def test_a_cancelled_local_put_ends_before_the_cancellation_is_passed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalBlobStore.from_url(f"file://{tmp_path}/store", create=True)
    running = _slow_writes(monkeypatch, 0.3)
    data = os.urandom(1 << 16)
    cid = chunk_id(data)
    put = asyncio.ensure_future(store.put(cid, data))
    await asyncio.sleep(0.05)
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    # The thread could not be stopped, so it was waited for: the chunk is whole.
    assert running == [0]
    assert await store.get(cid) == data
    assert not [p for p in (tmp_path / "store").rglob("*") if p.name.endswith(".tmp")]


async def test_a_failed_upload_returns_only_once_its_other_puts_have_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = await small_chunk_drive(tmp_path)
    try:
        running = _slow_writes(monkeypatch, 0.3)
        calls = 0
        real_put = drive.blobs.put

        async def failing_put(chunk: str, payload: bytes | memoryview) -> None:
            nonlocal calls
            calls += 1
            if calls == 4:
                await asyncio.sleep(0.05)
                raise StoreFull("the store is full")
            await real_put(chunk, payload)

        monkeypatch.setattr(drive.blobs, "put", failing_put)
        with pytest.raises(StoreFull):
            await drive.write_file("/big", io.BytesIO(os.urandom(1 << 20)))
        assert calls > 4, "the other puts ran alongside the failing one"
        assert running == [0]
        assert not [p for p in (tmp_path / "store").rglob("*") if p.name.endswith(".tmp")]
        assert await drive.meta.resolve("/big") is None
    finally:
        await drive.close()
