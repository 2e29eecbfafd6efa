"""What a drive and a mount keep on this machine is readable by its owner only:
folders 0700 and files 0600 under a umask of 022 (the usual one)."""

from __future__ import annotations

import io
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mediadrive.cli import drive_registry
from mediadrive.cli.settings import CliSettings
from mediadrive.core.drive import Drive
from mediadrive.core.extents import ExtentMap
from mediadrive.core.identity import Identity
from mediadrive.core.meta import Extent
from mediadrive.node.agent import RedactingFormatter, log_handler
from mediadrive.node.base_layout import BaseLayout
from mediadrive.node.cache import BlockCache
from mediadrive.node.passthrough import Views
from mediadrive.node.registry import MountEntry, MountRegistry
from mediadrive.node.staging import Staging

IDENTITY = Identity(author="tester@host", host="host")


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def wide_modes(root: Path) -> list[str]:
    """Every folder under ``root`` (itself included) that is not 0700 and every file
    that is not 0600, with its mode."""
    found = []
    for folder, _dirs, files in os.walk(root):
        for path in [Path(folder)] + [Path(folder) / f for f in files]:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            want = 0o700 if path.is_dir() else 0o600
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                want = 0o600
            if mode != want:
                found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


async def test_a_drive_made_by_the_cli_keeps_its_folder_chunks_and_metadata_private(
    tmp_path: Path,
) -> None:
    cli = CliSettings(home=tmp_path / "home", author="tester@host")
    drive = await drive_registry.create_drive("show", cli=cli)
    try:
        await drive.write_file("/secret.txt", io.BytesIO(b"private contents"))
        # The SQLite write-ahead log and shared memory exist while the store is open.
        names = {p.name for p in (tmp_path / "home" / "show").iterdir()}
        assert {"meta.db-wal", "meta.db-shm", "drive.json", "store"} <= names
        assert wide_modes(tmp_path / "home") == []
    finally:
        await drive.close()
    assert wide_modes(tmp_path / "home") == []


async def test_stores_given_by_url_are_made_private(tmp_path: Path) -> None:
    meta = f"sqlite:///{tmp_path / 'meta' / 'm.db'}"
    (tmp_path / "meta").mkdir(mode=0o700)
    store = tmp_path / "srv" / "store"
    drive = await Drive.create("show", meta, f"file://{store}", identity=IDENTITY)
    try:
        await drive.write_file("/a.bin", io.BytesIO(os.urandom(3000)))
    finally:
        await drive.close()
    assert wide_modes(tmp_path / "srv") == []
    assert wide_modes(tmp_path / "meta") == []


def block(chunk: str, index: int) -> bytes:
    return f"{chunk}:{index}".encode().ljust(100, b".")


async def fetch(chunk: str, index: int) -> bytes:
    return block(chunk, index)


async def test_the_node_cache_staging_views_registry_and_log_are_private(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = BlockCache(cache_dir, 1 << 20, fetch)
    cache.open()
    await cache.put_many([("a" * 64, 0, block("a" * 64, 0))])
    staging = Staging(cache_dir / "staging")
    staging.open()
    content = ExtentMap.of(1, 100, [Extent(0, 100, "a" * 64)])
    staged = staging.create(7, "/f", 1, 0o600, 0, base=BaseLayout.of(content), size=100)
    staging.write_journal(staged, durable=True)
    await staging.snapshot(staged)

    async def no_digests(chunk: str) -> bytes | None:
        return None

    views = Views(cache_dir / "views", 1 << 20, cache, no_digests)
    views.start()
    handler = log_handler(cache_dir / "agent.log", 1000, 2)
    handler.emit(logging.makeLogRecord({"msg": "x" * 600}))
    handler.emit(logging.makeLogRecord({"msg": "y" * 600}))
    handler.close()
    registry = MountRegistry(tmp_path / "run")
    registry.write_entry(
        MountEntry("/mnt", "show", "/", "/s.sock", os.getpid(), str(cache_dir), "", time.time())
    )
    try:
        assert (cache_dir / "agent.log.1").exists()
        assert wide_modes(cache_dir) == []
        assert wide_modes(tmp_path / "run") == []
    finally:
        staging.close()
        await cache.close()


async def test_an_existing_cache_made_world_readable_is_tightened(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    (cache_dir / "blocks").mkdir(parents=True, mode=0o755)
    os.chmod(cache_dir, 0o755)
    (cache_dir / "index.db").touch(mode=0o644)
    cache = BlockCache(cache_dir, 1 << 20, fetch)
    cache.open()
    try:
        assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(cache_dir / "blocks").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(cache_dir / "index.db").st_mode) == 0o600
    finally:
        await cache.close()


def test_the_agent_log_rotates_by_size(tmp_path: Path) -> None:
    handler = log_handler(tmp_path / "agent.log", 10_000, 3)
    for n in range(1000):
        handler.emit(logging.makeLogRecord({"msg": f"line {n} " + "z" * 90}))
    handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["agent.log", "agent.log.1", "agent.log.2", "agent.log.3"]
    assert all((tmp_path / name).stat().st_size <= 10_000 for name in files)


def test_the_agent_log_masks_passwords(tmp_path: Path) -> None:
    handler = log_handler(tmp_path / "agent.log", 10_000, 1)
    handler.setFormatter(RedactingFormatter())
    record = logging.makeLogRecord({"msg": "cannot reach %s", "args": ("postgresql://u:s3cr@h/d",)})
    handler.emit(record)
    handler.close()
    text = (tmp_path / "agent.log").read_text()
    assert "s3cr" not in text and "postgresql://u:***@h/d" in text
