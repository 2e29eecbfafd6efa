"""The write-back engine through the in-process VFS: untouched chunks are kept, not
uploaded again; a refused commit keeps the local copy."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mediadrive.core.blob.wrapper import WrappedStore
from mediadrive.core.config import ConflictPolicy
from mediadrive.core.errors import ConflictError
from mediadrive.node.options import CommitOn

from .vfs_harness import make_test_vfs

CHUNK = 4096


async def test_an_edit_uploads_only_the_chunk_it_touched(tmp_path: Path) -> None:
    data = os.urandom(8 * CHUNK + 123)
    first = await make_test_vfs(tmp_path)
    await first.write_file("clip.bin", data)
    await first.parts.writeback.settle()
    assert first.parts.writeback.figures.bytes_uploaded == len(data)
    await first.close()

    # A fresh cache: the staged copy starts from the drive and lacks every block.
    edit = await make_test_vfs(tmp_path, cache="fresh")
    await edit.write_at("clip.bin", 3 * CHUNK + 10, b"edited")
    await edit.parts.writeback.settle()
    assert edit.parts.writeback.figures.commits == 1
    assert edit.parts.writeback.figures.bytes_uploaded == CHUNK
    # Only the touched chunk was fetched (to merge the edit into it).
    assert edit.parts.cache.figures.bytes_fetched == CHUNK
    await edit.close()

    check = await make_test_vfs(tmp_path, cache="check")
    expected = data[: 3 * CHUNK + 10] + b"edited" + data[3 * CHUNK + 16 :]
    assert await check.read_file("clip.bin") == expected
    await check.close()


async def test_reject_keeps_the_local_copy(tmp_path: Path) -> None:
    here = await make_test_vfs(tmp_path, conflict=ConflictPolicy.REJECT, commit_on=CommitOn.SAVE)
    await here.write_file("cut.edl", b"base")
    await here.save()
    elsewhere = await make_test_vfs(tmp_path, cache="elsewhere")
    await here.write_file("cut.edl", b"mine")
    await elsewhere.write_file("cut.edl", b"theirs")
    await elsewhere.save()

    with pytest.raises(ConflictError):
        await here.save()
    assert here.parts.writeback.figures.conflicts == 1
    # The refused bytes stay here, readable and staged; the drive keeps the other head.
    assert await here.read_file("cut.edl") == b"mine"
    node_id = here.parts.tree.node_id(await here.inode("cut.edl"))
    staged = here.parts.staging.get(node_id)
    assert staged is not None and staged.dirty and staged.rejected
    head = await here.parts.drive.reader("/cut.edl")
    assert head.info.version == 2
    await elsewhere.close()
    await here.close()
    # Unmounting does not drop it either: the copy is still staged on disk.
    again = await make_test_vfs(tmp_path, conflict=ConflictPolicy.REJECT)
    assert await again.read_file("cut.edl") == b"mine"
    await again.close()


async def test_a_closed_copy_is_committed_in_place_and_changes_wait_for_it(
    tmp_path: Path,
) -> None:
    vfs = await make_test_vfs(tmp_path)
    drive = vfs.parts.writeback.drive
    inner = drive.uploader.blobs
    gate = asyncio.Event()
    putting = asyncio.Event()

    class Gated(WrappedStore):
        async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
            putting.set()
            await gate.wait()
            await inner.put(chunk_id, data)

    drive.uploader.blobs = Gated(inner)
    # Every put here is the commit's own (none is sent while the file is written).
    vfs.parts.writeback.early.enabled = False
    data = os.urandom(6 * CHUNK)
    await vfs.write_file("clip.bin", data)  # closed: its commit starts
    await asyncio.wait_for(putting.wait(), 10)
    # The closed copy is read as it is: no snapshot of it is made.
    assert not list(vfs.parts.staging.root.glob("*.snap"))
    # Changes meanwhile wait for the commit, then land in the next version.
    truncate = asyncio.create_task(vfs.truncate("clip.bin", 2 * CHUNK))
    await asyncio.sleep(0.2)
    assert not truncate.done()
    gate.set()
    await asyncio.wait_for(truncate, 10)
    await vfs.parts.writeback.settle()
    for _ in range(100):
        if not vfs.parts.writeback.busy and not vfs.parts.staging.files:
            break
        await asyncio.sleep(0.05)
    assert [v.version for v in await drive.versions("/clip.bin")] == [1, 2]
    first = await drive.reader("/clip.bin", 1)
    assert await first.read(0, first.size) == data
    assert await vfs.read_file("clip.bin") == data[: 2 * CHUNK]
    await vfs.close()
