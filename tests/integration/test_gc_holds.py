"""GC and the holds of uploads: finished uploads hold nothing, held chunks are reported."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

from mediadrive.cli.drive_registry import open_drive
from mediadrive.cli.settings import CliSettings
from mediadrive.core.blob import BlobStore, put_sent
from mediadrive.core.blob.wrapper import WrappedStore
from mediadrive.core.chunking import Piece
from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.core.errors import StoreUnavailable
from mediadrive.core.hashing import chunk_id
from tests.integration.test_cli import Cli

CHUNK = 64 << 10


class Broken(io.RawIOBase):
    """A source that fails after ``good`` bytes, like a file on a dying disk."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            raise OSError(5, "Input/output error")
        n = min(len(buffer), self.left)
        buffer[:n] = os.urandom(n)
        self.left -= n
        return n


async def _drive(tmp_path: Path) -> Drive:
    return await Drive.create(
        "show",
        f"sqlite:///{tmp_path}/meta.db",
        f"file://{tmp_path}/store",
        DriveSettings(chunk_size=CHUNK),
    )


async def test_a_failed_upload_leaves_nothing_held(tmp_path: Path) -> None:
    async with await _drive(tmp_path) as drive:
        with pytest.raises(OSError, match="Input/output"):
            await drive.write_file("/a.bin", io.BufferedReader(Broken(5 * CHUNK)))
        report = await drive.gc(0)
        assert report.chunks_held == 0
        assert report.chunks_deleted >= 1


async def test_a_failed_commit_leaves_nothing_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await _drive(tmp_path) as drive:

        async def down(*args: object, **kwargs: object) -> None:
            raise StoreUnavailable("metadata store went away")

        monkeypatch.setattr(drive.meta, "commit", down)
        with pytest.raises(StoreUnavailable):
            await drive.write_file("/a.bin", io.BytesIO(os.urandom(3 * CHUNK)))
        monkeypatch.undo()
        report = await drive.gc(0)
        assert (report.chunks_held, report.chunks_deleted) == (0, 3)


def test_gc_says_which_chunks_an_upload_holds(tmp_path: Path) -> None:
    import asyncio

    cli = Cli(tmp_path / "home", {})
    cli.run("drive", "create", "show", "--chunk-size", "64KiB")

    async def interrupted_upload() -> None:
        # Uploaded but never committed: what a cp killed before its commit leaves.
        drive = await open_drive("show", CliSettings(home=cli.home))
        try:
            await drive.upload(io.BytesIO(os.urandom(2 * CHUNK)))
        finally:
            await drive.close()

    asyncio.run(interrupted_upload())
    said = cli.run("gc", "show", "--grace", "0s").stdout
    assert "deleted 0 chunks" in said
    assert "kept 2 unreferenced chunks that uploads hold" in said
    assert "interrupted less than 15 minutes ago" in said
    assert cli.json("gc", "show", "--grace", "0s")["chunks_held"] == 2


class _DeletedRightAfterPut(WrappedStore):
    """A store where GC takes ``victim`` just after its first put lands, as a GC
    running between an upload's put and its claim would."""

    def __init__(self, inner: BlobStore, drive: Drive, victim: str) -> None:
        super().__init__(inner)
        self.drive, self.victim, self.puts = drive, victim, 0

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        await super().put(chunk_id, data)
        if chunk_id == self.victim:
            self.puts += 1
            if self.puts == 1:
                assert (await self.drive.gc(0)).chunks_deleted == 1


async def test_a_piece_put_before_its_claim_survives_a_gc_deleting_the_same_bytes(
    tmp_path: Path,
) -> None:
    async with await _drive(tmp_path) as drive:
        data = os.urandom(1000)
        cid = chunk_id(data)
        # The same bytes, stored earlier and referenced by nothing: GC may take them.
        await drive.meta.claim_chunks([(cid, len(data), None)], hold=0)
        await drive.blobs.put(cid, data)
        await drive.meta.mark_stored([cid])
        drive.uploader._deletions = await drive.meta.chunk_deletions()
        store = _DeletedRightAfterPut(drive.blobs, drive, cid)
        drive.uploader.blobs = store

        extent, sent = await drive.uploader.store_piece(Piece(0, data), "edit", put_first=True)

        assert (extent.chunk_id, sent) == (cid, True)
        # The deletion was seen: the bytes were put again, under the hold.
        assert store.puts == 2
        assert await drive.blobs.get(cid) == data
        assert await drive.meta.chunk_stats() == (1, len(data))
        assert await drive.meta.held_unreferenced() == 1


async def test_a_small_piece_sent_ahead_is_not_claimed_before_its_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await _drive(tmp_path) as drive:

        async def refused(*args: object, **kwargs: object) -> None:
            raise AssertionError("claimed before the put")

        monkeypatch.setattr(drive.meta, "claim_chunks", refused)
        data = os.urandom(CHUNK)
        extent, sent = await drive.uploader.store_piece(Piece(0, data), "edit", put_first=True)
        assert sent
        assert await drive.blobs.get(extent.chunk_id) == data
        assert await drive.meta.chunk_stats() == (1, CHUNK)
        assert await drive.meta.held_unreferenced() == 1


class _SaysSent(WrappedStore):
    """A store that says a put's bytes are sent, then holds the put until ``landed``
    is set (``says``: whether it says so at all)."""

    def __init__(self, inner: BlobStore, says: bool = True) -> None:
        super().__init__(inner)
        self.says = says
        self.landed = asyncio.Event()

    @property
    def signals_sent(self) -> bool:
        return True

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        sent = put_sent.get()
        if self.says and sent is not None:
            sent()
        await self.landed.wait()
        await super().put(chunk_id, data)


@pytest.mark.parametrize("says", [True, False])
async def test_a_piece_sent_ahead_is_told_as_handed_over_once_its_bytes_are_sent(
    tmp_path: Path, says: bool
) -> None:
    async with await _drive(tmp_path) as drive:
        store = _SaysSent(drive.blobs, says)
        drive.uploader.blobs = store
        handed = asyncio.Event()
        data = os.urandom(CHUNK)
        storing = asyncio.ensure_future(
            drive.uploader.store_piece(Piece(0, data), "edit", put_first=True, on_put=handed.set)
        )
        await asyncio.sleep(0.05)
        # Told while the put is still on its way, if the store said its bytes left;
        # otherwise only once it landed.
        assert handed.is_set() is says
        store.landed.set()
        extent, sent = await storing
        assert handed.is_set() and sent
        assert await drive.blobs.get(extent.chunk_id) == data
        assert await drive.meta.held_unreferenced() == 1
