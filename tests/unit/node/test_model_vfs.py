"""The VFS in process against an in-memory reference model, driven by the same random
operations: files and folders, commits, remounts, and a second machine writing.

No kernel is involved (see :mod:`.vfs_harness`), so it runs hundreds of sequences in
the time the mounted model test (tests/node/test_model.py) runs a few.
"""

from __future__ import annotations

import asyncio
import itertools
import posixpath
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mediadrive.node.options import CommitOn

from .vfs_harness import TestVFS, create_test_drive, make_test_vfs

T = TypeVar("T")

NAMES = st.sampled_from(["a", "b", "c"])
FOLDERS = st.sampled_from(["", "d", "d/e"])
# Chunks are 4 KiB: files of a few chunks, edits that keep some chunks and replace others.
DATA = st.binary(min_size=0, max_size=10_000)
OFFSETS = st.integers(min_value=0, max_value=12_000)


def _join(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if folder else name


class VFSModel(RuleBasedStateMachine):
    """{path: bytes} and {folder} as the model keeps them; each example its own drive."""

    loop: asyncio.AbstractEventLoop
    base: Path
    examples = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.folders: set[str] = {""}
        self.root = self.base / f"ex{next(self.examples)}"
        self.caches = itertools.count()
        self.mount: TestVFS | None = None
        # The same drive used from another machine (its own cache), opened on first use.
        self.other: TestVFS | None = None
        # The number of the cache the current mount uses (a remount may keep it).
        self._cache = ""

    def run(self, step: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(step)

    @initialize(commit_on=st.sampled_from([CommitOn.CLOSE, CommitOn.SAVE]))
    def start(self, commit_on: CommitOn) -> None:
        self.commit_on = commit_on
        self.root.mkdir(parents=True)
        self.run(create_test_drive(self.root))
        self.mount = self.run(self._open(fresh=True))

    async def _open(self, fresh: bool) -> TestVFS:
        cache = f"cache{next(self.caches) if fresh else self._cache}"
        self._cache = cache.removeprefix("cache")
        return await make_test_vfs(self.root, cache=cache, commit_on=self.commit_on)

    @property
    def vfs(self) -> TestVFS:
        assert self.mount is not None
        return self.mount

    # -- the operations ------------------------------------------------------------------------

    @rule(folder=FOLDERS, name=NAMES, data=DATA)
    def create(self, folder: str, name: str, data: bytes) -> None:
        path = _join(folder, name)
        if folder not in self.folders or path in self.folders:
            return
        self.run(self.vfs.write_file(path, data))
        self.files[path] = data

    @rule(data=st.data(), offset=OFFSETS, payload=DATA)
    @precondition(lambda self: self.files)
    def write_at(self, data: st.DataObject, offset: int, payload: bytes) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        self.run(self.vfs.write_at(path, offset, payload))
        if not payload:
            return  # an empty write changes nothing, not even the size
        old = self.files[path]
        grown = old + b"\0" * max(0, offset - len(old))
        self.files[path] = grown[:offset] + payload + grown[offset + len(payload) :]

    @rule(data=st.data(), size=OFFSETS)
    @precondition(lambda self: self.files)
    def truncate(self, data: st.DataObject, size: int) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        self.run(self.vfs.truncate(path, size))
        old = self.files[path]
        self.files[path] = old[:size] + b"\0" * max(0, size - len(old))

    @rule(data=st.data(), folder=FOLDERS, name=NAMES)
    @precondition(lambda self: self.files)
    def rename(self, data: st.DataObject, folder: str, name: str) -> None:
        src = data.draw(st.sampled_from(sorted(self.files)))
        dst = _join(folder, name)
        if folder not in self.folders or dst in self.folders or dst == src:
            return
        self.run(self.vfs.rename(src, dst))
        self.files[dst] = self.files.pop(src)

    @rule(data=st.data())
    @precondition(lambda self: self.files)
    def unlink(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        self.run(self.vfs.unlink(path))
        del self.files[path]

    @rule(folder=FOLDERS)
    def mkdir(self, folder: str) -> None:
        parent = posixpath.dirname(folder)
        if not folder or folder in self.folders or parent not in self.folders:
            return
        if folder in self.files:
            return
        self.run(self.vfs.mkdir(folder))
        self.folders.add(folder)

    @rule()
    def save(self) -> None:
        self.run(self.vfs.save("/"))

    @rule()
    def checkpoint(self) -> None:
        self.vfs.parts.writeback.checkpoint()
        self.run(self.vfs.parts.writeback.settle())

    @rule(fresh_cache=st.booleans())
    def remount(self, fresh_cache: bool) -> None:
        """Close the VFS (committing everything) and open a new one on the same stores."""
        self.run(self.vfs.close())
        self.mount = self.run(self._open(fresh=fresh_cache))

    @rule(data=st.data(), payload=DATA)
    @precondition(lambda self: self.files)
    def other_machine_writes(self, data: st.DataObject, payload: bytes) -> None:
        """Another machine replaces a file and commits it. Last writer wins: a copy
        this mount has not committed yet is committed after it, and stays the head."""
        path = data.draw(st.sampled_from(sorted(self.files)))
        if self.other is None:
            self.other = self.run(make_test_vfs(self.root, cache="other"))
        # Commits this mount has scheduled land before the other machine's.
        self.run(self.vfs.parts.writeback.settle())
        # It writes to what the path is now, as a mount does once its follower has
        # read the drive's events: its view of a file replaced here since (renamed
        # over) would otherwise be the old one, and truncating that to what it already
        # holds changes nothing.
        self.run(self.other.follow())
        self.run(self.other.write_file(path, payload))
        self.run(self.other.save("/"))
        # This mount learns of it from the drive's events.
        self.run(self.vfs.follow())
        node_id = self.run(self.vfs.inode(path))
        staged = self.vfs.parts.staging.get(self.vfs.parts.tree.node_id(node_id))
        if staged is None or not staged.dirty:
            self.files[path] = payload

    # -- the comparison ------------------------------------------------------------------------

    @invariant()
    def same_tree(self) -> None:
        if self.mount is None:
            return
        files, folders = self.run(self.vfs.tree())
        assert folders == self.folders
        assert files == self.files

    def teardown(self) -> None:
        if self.mount is not None:
            self.run(self.mount.close())
            # Everything committed: a fresh machine sees the model too.
            check = self.run(make_test_vfs(self.root, cache="check"))
            try:
                files, folders = self.run(check.tree())
            finally:
                self.run(check.close())
            assert folders == self.folders
            assert files == self.files
        if self.other is not None:
            self.run(self.other.close())
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def fast_base() -> Iterator[Path]:
    # tmpfs when there is one: the stores fsync, and every step commits.
    parent = "/dev/shm" if Path("/dev/shm").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="vfs-model-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_vfs_matches_the_model(fast_base: Path) -> None:
    loop = asyncio.new_event_loop()
    VFSModel.loop = loop
    VFSModel.base = fast_base
    runner = VFSModel.TestCase
    runner.settings = settings(
        max_examples=300,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    try:
        runner().runTest()
    finally:
        loop.close()
