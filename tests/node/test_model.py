"""The mount against an in-memory reference model, driven by the same random operations."""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from .conftest import DriveFactory, MountHandle, Mounts, settings_for

NAMES = st.sampled_from(["a", "b", "c"])
FOLDERS = st.sampled_from(["", "d", "d/e"])
DATA = st.binary(min_size=0, max_size=3000)
OFFSETS = st.integers(min_value=0, max_value=5000)


class MountModel(RuleBasedStateMachine):
    """Files and folders as the model keeps them: {path: bytes}, {folder}."""

    mounts: Mounts
    drive: str

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.folders: set[str] = {""}
        self.mount: MountHandle | None = None
        self.generation = 0

    @initialize()
    def start(self) -> None:
        self.mount = self.mounts.mount(self.drive, cache=f"model-{id(self)}-0")
        for entry in self.mount.path.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def real(self, rel: str) -> Path:
        assert self.mount is not None
        return self.mount.path / rel if rel else self.mount.path

    @staticmethod
    def join(folder: str, name: str) -> str:
        return posixpath.join(folder, name) if folder else name

    @rule(folder=FOLDERS, name=NAMES, data=DATA)
    def create(self, folder: str, name: str, data: bytes) -> None:
        path = self.join(folder, name)
        if folder not in self.folders or path in self.folders:
            return
        self.real(path).write_bytes(data)
        self.files[path] = data

    @rule(data=st.data(), offset=OFFSETS, payload=DATA)
    @precondition(lambda self: self.files)
    def write_at(self, data: st.DataObject, offset: int, payload: bytes) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        with open(self.real(path), "r+b") as f:
            f.seek(offset)
            f.write(payload)
        old = self.files[path]
        if not payload:
            return  # an empty write changes nothing, not even the size
        grown = old + b"\0" * max(0, offset - len(old))
        self.files[path] = grown[:offset] + payload + grown[offset + len(payload) :]

    @rule(data=st.data(), size=OFFSETS)
    @precondition(lambda self: self.files)
    def truncate(self, data: st.DataObject, size: int) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        os.truncate(self.real(path), size)
        old = self.files[path]
        self.files[path] = old[:size] + b"\0" * max(0, size - len(old))

    @rule(data=st.data(), folder=FOLDERS, name=NAMES)
    @precondition(lambda self: self.files)
    def rename(self, data: st.DataObject, folder: str, name: str) -> None:
        src = data.draw(st.sampled_from(sorted(self.files)))
        dst = self.join(folder, name)
        if folder not in self.folders or dst in self.folders or dst == src:
            return
        os.rename(self.real(src), self.real(dst))
        self.files[dst] = self.files.pop(src)

    @rule(data=st.data())
    @precondition(lambda self: self.files)
    def unlink(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)))
        os.unlink(self.real(path))
        del self.files[path]

    @rule(folder=FOLDERS)
    def mkdir(self, folder: str) -> None:
        parent = posixpath.dirname(folder)
        if not folder or folder in self.folders or parent not in self.folders:
            return
        if folder in self.files:
            return
        os.mkdir(self.real(folder))
        self.folders.add(folder)

    @rule()
    def commit(self) -> None:
        assert self.mount is not None
        self.mount.save("/")

    @rule(fresh_cache=st.booleans())
    def remount(self, fresh_cache: bool) -> None:
        """Unmount (committing everything) and mount again; a fresh cache reads the drive."""
        assert self.mount is not None
        path = self.mount.path
        self.mounts.umount(self.mount)
        if fresh_cache:
            self.generation += 1
        self.mount = self.mounts.mount(
            self.drive, mountpoint=path, cache=f"model-{id(self)}-{self.generation}"
        )

    @invariant()
    def same_tree(self) -> None:
        if self.mount is None:
            return
        seen_files: dict[str, bytes] = {}
        seen_folders = {""}
        for root, dirs, files in os.walk(self.mount.path):
            rel = os.path.relpath(root, self.mount.path)
            rel = "" if rel == "." else rel
            for d in dirs:
                seen_folders.add(self.join(rel, d))
            for f in files:
                seen_files[self.join(rel, f)] = Path(root, f).read_bytes()
        assert seen_folders == self.folders
        assert seen_files == self.files

    def teardown(self) -> None:
        if self.mount is not None:
            self.mounts.umount(self.mount)


# Small chunks make every file several chunks long, so edits keep some chunks of the
# version they started from and replace others.
@pytest.mark.parametrize("chunk_size", ["64MiB", "4KiB"])
def test_mount_matches_the_model(make_drive: DriveFactory, home: Path, chunk_size: str) -> None:
    drive = make_drive(chunk_size=chunk_size)
    base = Path(tempfile.mkdtemp(dir=home))
    manager = Mounts(base, settings_for(home))
    MountModel.mounts = manager
    MountModel.drive = drive
    runner = MountModel.TestCase
    runner.settings = settings(
        # A small differential check; tests/unit/node/test_model_vfs.py goes wide.
        max_examples=5,
        stateful_step_count=15,
        deadline=None,
        # Every step is real I/O on a mount: report the failing sequence as found.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    try:
        runner().runTest()
    finally:
        manager.close()


@pytest.fixture(autouse=True)
def _quiet_hypothesis_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.gettempdir())
