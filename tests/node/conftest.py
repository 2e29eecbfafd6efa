"""Fixtures for real mounts: a private CLI home, drives, and mounted agents."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mediadrive.cli import drive_registry
from mediadrive.cli.settings import CliSettings
from mediadrive.core.config import ChunkingKind, ConflictPolicy, DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.node import client
from mediadrive.node.options import MountOptions
from mediadrive.node.registry import MountRegistry

AUTHOR = "tester@node"

if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
    pytest.fail("node tests need /dev/fuse and root", pytrace=False)


class Mounts:
    """Starts agents for a test and always unmounts them afterwards."""

    def __init__(self, base: Path, settings: CliSettings) -> None:
        self.base = base
        self.settings = settings
        self.registry = MountRegistry(settings.mounts_dir)
        self.active: list[Path] = []
        self._n = 0

    def folder(self, name: str) -> Path:
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mount(
        self,
        drive: str,
        mountpoint: Path | None = None,
        cache: str | None = None,
        **options: Any,
    ) -> MountHandle:
        self._n += 1
        mountpoint = mountpoint or self.folder(f"mnt{self._n}")
        cache_dir = self.base / (cache or f"cache{self._n}")
        options.setdefault("checkpoint_interval", "off")
        ref = drive_registry.load_ref(drive, self.settings)
        client.mount(
            MountOptions(
                drive=drive,
                meta_url=ref.meta_url,
                store_url=ref.store_url,
                author=self.settings.author,
                run_dir=self.settings.mounts_dir,
                mountpoint=mountpoint,
                cache_dir=cache_dir,
                **options,
            )
        )
        if mountpoint not in self.active:
            self.active.append(mountpoint)
        return MountHandle(mountpoint, cache_dir, self.registry)

    def umount(self, handle: MountHandle) -> None:
        client.umount(handle.path, self.registry)
        if handle.path in self.active:
            self.active.remove(handle.path)

    def close(self) -> None:
        for mountpoint in reversed(self.active):
            with contextlib.suppress(Exception):
                client.umount(mountpoint, self.registry, timeout=60)
            force_unmount(mountpoint)
        self.active.clear()


class MountHandle:
    def __init__(self, path: Path, cache_dir: Path, registry: MountRegistry) -> None:
        self.path = path
        self.cache_dir = cache_dir
        self.registry = registry

    def client(self) -> client.MountClient:
        return client.MountClient.for_mountpoint(self.path, self.registry)

    def status(self) -> dict[str, Any]:
        return self.client().status()

    def save(self, inner: str, message: str = "") -> list[dict[str, Any]]:
        return self.client().save(inner, message)

    def pid(self) -> int:
        entry = self.registry.entry_for(self.path)
        assert entry is not None
        return entry.pid

    def kill(self, *open_fds: int) -> None:
        """kill -9 the agent, as a crash would, and wait until it is gone; then close
        ``open_fds``, files the test still had open in the mount (a close there may
        fail now)."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: exited(pid))
        for fd in open_fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def force_unmount(mountpoint: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        mounted = any(line.split()[4] == str(mountpoint) for line in f)
    if mounted:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def settings_for(base: Path) -> CliSettings:
    """The CLI settings of a test: drives and mount entries under ``base/home``."""
    return CliSettings(home=base / "home", author=AUTHOR)


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Short paths: the agent's control socket lives in the run folder under the home.
    path = tmp_path_factory.mktemp("md")
    # For the `mediadrive` commands tests run: the CLI reads its settings from these.
    monkeypatch.setenv("MEDIADRIVE_HOME", str(path / "home"))
    monkeypatch.setenv("MEDIADRIVE_AUTHOR", AUTHOR)
    monkeypatch.delenv("MEDIADRIVE_RUN_DIR", raising=False)
    return path


@pytest.fixture
def mounts(home: Path) -> Iterator[Mounts]:
    manager = Mounts(home, settings_for(home))
    try:
        yield manager
    finally:
        manager.close()


DriveFactory = Callable[..., str]


@pytest.fixture
def make_drive(home: Path) -> DriveFactory:
    def make(
        name: str = "media",
        conflict: ConflictPolicy = ConflictPolicy.LAST_WRITER_WINS,
        chunk_size: str | int = "64MiB",
        store_url: str | None = None,
        chunking: ChunkingKind = "fixed",
    ) -> str:
        settings = DriveSettings(chunking=chunking, chunk_size=chunk_size, conflict=conflict)

        async def create() -> None:
            drive = await drive_registry.create_drive(
                name, settings, store_url=store_url, cli=settings_for(home)
            )
            await drive.close()

        asyncio.run(create())
        return name

    return make


def drive_call(name: str, body: Callable[[Drive], Any]) -> Any:
    """Run ``body(drive)`` against the drive directly (another machine, in effect)."""

    async def run() -> Any:
        drive = await drive_registry.open_drive(name, _current_settings())
        try:
            return await body(drive)
        finally:
            await drive.close()

    return asyncio.run(run())


def _current_settings() -> CliSettings:
    """The settings of the running test (its home is in the environment the fixture set)."""
    return CliSettings(home=Path(os.environ["MEDIADRIVE_HOME"]), author=AUTHOR)


def exited(pid: int) -> bool:
    """The process is gone or a zombie (killed, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def damage_stored_chunk(home: Path, drive: str, offset: int) -> str:
    """Flip one byte at ``offset`` of the drive's only stored chunk (a local store);
    returns the chunk's id."""
    chunk = next((home / "home" / drive / "store" / "chunks").glob("*/*"))
    raw = bytearray(chunk.read_bytes())
    raw[offset] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    return chunk.name


def drop_kernel_caches() -> None:
    """Make the kernel forget its dentries, inodes and pages (as memory pressure
    would): its next look at any name asks the mount again. Needs root."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except PermissionError:
        pytest.skip("dropping the kernel's caches needs root")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


def edited_inside_blocks(
    make_drive: DriveFactory, mounts: Mounts, path: str, size: int, offset: int, length: int
) -> tuple[str, bytes]:
    """A drive (4 MiB chunks) holding ``size`` random bytes at ``path``, then edited
    through a mount with ``length`` random bytes at ``offset`` (so its version has
    slices that start and end inside blocks) and committed. Returns the drive's name
    and the file's bytes."""
    name = make_drive(chunk_size="4MiB")
    data = os.urandom(size)
    drive_call(name, lambda d: d.write_file(path, io.BytesIO(data)))
    m = mounts.mount(name, cache="edit")
    patch = os.urandom(length)
    with open(m / path.lstrip("/"), "r+b") as f:
        f.seek(offset)
        f.write(patch)
    wait_until(lambda: m.status()["bytes_uploaded"] > 0 and m.status()["dirty_files"] == 0)
    mounts.umount(m)
    return name, data[:offset] + patch + data[offset + length :]
