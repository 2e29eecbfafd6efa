"""The node agent: one process per mount.

It mounts the drive (pyfuse3 in asyncio mode), serves the live-filesystem API on a
unix socket, commits staged writes in the background, follows the drive's events
and keeps pinned files local. ``python -m mediadrive.node.agent --options JSON``
runs one; ``mediadrive mount`` starts it as a daemon and waits until it is live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import faulthandler
import json
import logging
import os
import posixpath
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyfuse3
import pyfuse3.asyncio

from mediadrive.core import paths
from mediadrive.core.drive import Drive
from mediadrive.core.errors import ConfigError, ConflictError, MediadriveError, NotADirectory
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.logs import JsonFormatter
from mediadrive.core.meta import Event, Node, NodeKind

from . import passthrough, registry
from .cache import BlockCache
from .client import MountError
from .follower import Follower
from .fs import DriveFS
from .hydrate import Manifest, ManifestEntry, fixed_prefix, matches
from .options import MountOptions
from .reading import Content, read_content
from .staging import Staging
from .tree import Tree
from .writeback import AFTER_RESTART, AUTOMATIC_MESSAGES, BEFORE_RESTORE, CommitReport

pyfuse3.asyncio.enable()

log = logging.getLogger("mediadrive.node")

# Kernel read-ahead for the mount (the default, 128 KiB, caps sequential reads).
READ_AHEAD_KB = 8192
Progress = Callable[[int, int], None]


@dataclass
class HydratePlan:
    files: list[tuple[str, Content]]
    pins: list[tuple[str, int]]

    @property
    def total_bytes(self) -> int:
        return sum(content.size for _, content in self.files)


def _mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def clear_stale_mount(mountpoint: Path) -> None:
    """Detach a mount whose agent died, so the folder can be reused: it answers
    ENOTCONN, or (while the killed agent's last threads still exit) it is still
    there but its agent is gone."""
    try:
        os.stat(mountpoint)
        stale = False
    except OSError as exc:
        stale = exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    if not stale:
        last = registry.entry_for(mountpoint, live_only=False)
        stale = last is not None and not last.alive and _mounted(mountpoint)
    if not stale:
        return
    log.warning("detaching the stale mount at %s", mountpoint)
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)
    if _mounted(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


class Agent:
    def __init__(self, options: MountOptions) -> None:
        self.options = options
        self.mountpoint = options.mountpoint
        self.cache_dir = options.resolved_cache_dir()
        self.started = time.time()
        self.stopping = asyncio.Event()
        self._fuse_task: asyncio.Task[None] | None = None
        self._pin_task: asyncio.Task[None] | None = None
        self._pin_dirty = False
        self._cleanups: list[Callable[[], Any]] = []
        self.drive: Drive
        self.fs: DriveFS
        self.tree: Tree
        self.cache: BlockCache
        self.staging: Staging
        self.views: passthrough.Views | None
        self.follower: Follower
        self.socket_path = registry.socket_path_for(self.mountpoint)
        self.recovered = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        options = self.options
        clear_stale_mount(self.mountpoint)
        if not self.mountpoint.is_dir():
            raise MountError(f"mount point {self.mountpoint} is not an existing folder")
        existing = registry.entry_for(self.mountpoint)
        if existing is not None or _mounted(self.mountpoint):
            raise MountError(f"{self.mountpoint} is already mounted")
        self.drive = await Drive.open(options.drive)
        self._cleanups.append(self.drive.close)
        root = await self.drive.meta.resolve(options.subdir)
        if root is None:
            raise MountError(f"--subdir {options.subdir} does not exist in drive {options.drive}")
        if not root.is_dir:
            raise NotADirectory(f"--subdir {options.subdir} is not a folder")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.staging = Staging(self.cache_dir / "staging")
        recovered = self.staging.open()
        self._cleanups.append(self.staging.close)
        self.cache = BlockCache(
            self.cache_dir,
            options.cache_size,
            self.drive.read_block,
            fetch_run=self.drive.read_blocks,
            check=self.drive.check_block,
        )
        self.cache.open()
        self._cleanups.append(self.cache.close)
        self.tree = Tree(self.drive.meta, root, options.subdir)
        self.views = None
        if options.read_only and options.passthrough and passthrough.supported():
            # Views of cached files take up to a quarter of the cache's size beside it.
            self.views = passthrough.Views(
                self.cache_dir / "views",
                options.cache_size // 4,
                self.cache,
                self.drive.block_digests,
            )
            self.views.start()
            self._cleanups.append(self.views.close)
        self.fs = DriveFS(self.drive, self.tree, self.cache, self.staging, options, self.views)
        self.follower = Follower(self.fs, options.follow_interval)
        self.follower.listeners.append(self._on_event)

        fuse_options = set(pyfuse3.default_options)
        fuse_options |= {
            f"fsname=mediadrive:{options.drive}",
            "subtype=mediadrive",
        }
        if os.geteuid() == 0:
            fuse_options.add("allow_other")
        if options.read_only:
            fuse_options.add("ro")
        try:
            pyfuse3.init(self.fs, str(self.mountpoint), fuse_options)
        except RuntimeError as exc:
            raise MountError(f"cannot mount {self.mountpoint}: {exc}") from None
        self._fuse_task = asyncio.create_task(self._fuse_main())
        await asyncio.to_thread(self._tune_kernel)

        self.cache.start()
        self.fs.writeback.start()
        await self.follower.start()
        from .api import start_api

        self._cleanups.append(await start_api(self, self.socket_path))
        registry.write_entry(
            registry.MountEntry(
                mountpoint=str(self.mountpoint),
                drive=options.drive,
                subdir=options.subdir,
                socket=str(self.socket_path),
                pid=os.getpid(),
                cache_dir=str(self.cache_dir),
                log=str(self.cache_dir / "agent.log"),
                started=self.started,
            )
        )
        for staged in recovered:
            log.info("committing %s, staged before the agent stopped", staged.path)
            self.fs.writeback.schedule(staged.node_id, AFTER_RESTART)
        self.recovered = len(recovered)
        self._refresh_pins()
        log.info("mounted drive %s%s at %s", options.drive, options.subdir, self.mountpoint)

    async def _fuse_main(self) -> None:
        try:
            await pyfuse3.main()
        except Exception:
            log.exception("the FUSE session failed")
        finally:
            self.stopping.set()

    def _tune_kernel(self) -> None:
        try:
            dev = os.stat(self.mountpoint).st_dev
            bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
            bdi.write_text(str(READ_AHEAD_KB))
        except OSError as exc:
            log.info("kernel read-ahead left at its default: %s", exc)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.stopping.wait()

    async def shutdown(self) -> None:
        """Commit what is pending, unmount, release everything."""
        log.info("unmounting %s", self.mountpoint)
        try:
            with contextlib.suppress(AttributeError):
                await self._bounded("stopping the event follower", self.follower.stop())
            if hasattr(self, "fs"):
                await self.fs.writeback.flush()
                await self._bounded("stopping background commits", self.fs.writeback.stop())
            if self._pin_task is not None:
                self._pin_task.cancel()
            if self._fuse_task is not None:
                if not self._fuse_task.done():
                    pyfuse3.terminate()
                # Everything acknowledged is committed or journaled by now: a FUSE loop
                # that does not wind down must not keep the mount (and the caller) hanging.
                await self._bounded("stopping the FUSE loop", asyncio.shield(self._fuse_task))
                self._fuse_task.cancel()
                pyfuse3.close(unmount=True)
        finally:
            # Always release the stores: an open connection's thread would keep the
            # process from exiting after an unmount step failed.
            registry.remove_entry(self.mountpoint, os.getpid())
            for cleanup in reversed(self._cleanups):
                try:
                    result = cleanup()
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("cleanup failed")
            self._cleanups.clear()

    async def _bounded(self, what: str, step: Awaitable[object], seconds: float = 15.0) -> None:
        try:
            await asyncio.wait_for(step, seconds)
        except TimeoutError:
            log.error("%s took over %.0fs; going on with the unmount", what, seconds)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("%s failed", what)

    # -- paths --------------------------------------------------------------------------------

    def drive_path(self, mount_path: str) -> str:
        return self.tree.to_drive(mount_path)

    def mount_path(self, drive_path: str) -> str:
        return self.tree.to_mount(drive_path) or drive_path

    async def walk(self, drive_path: str) -> AsyncIterator[tuple[str, Node]]:
        """Every file at or under ``drive_path`` (a file yields itself)."""
        node = await self.drive.meta.resolve(drive_path)
        if node is None:
            return
        if not node.is_dir:
            if node.kind is NodeKind.FILE:
                yield drive_path, node
            return
        stack = [(drive_path, node)]
        while stack:
            folder_path, folder = stack.pop()
            for child in await self.drive.meta.list_dir(folder.id):
                child_path = posixpath.join(folder_path, child.name)
                if child.is_dir:
                    stack.append((child_path, child))
                elif child.kind is NodeKind.FILE:
                    yield child_path, child

    # -- the live API ---------------------------------------------------------------------------

    async def save(self, mount_path: str, message: str) -> list[CommitReport]:
        drive_path = self.drive_path(mount_path)
        reports = await self.fs.writeback.save(drive_path, message)
        if reports or mount_path.rstrip("/") == "":
            return reports
        node = await self.drive.stat(drive_path)
        if node.is_dir:
            return reports
        last = self.fs.writeback.last.get(node.id)
        if last is not None and last.version == node.head_version:
            # Already committed by close, fsync or a checkpoint: the save names it.
            if message and message != last.message:
                labelled = await self.drive.meta.label_version(
                    node.id, last.version, message, replaceable=AUTOMATIC_MESSAGES
                )
                if labelled:
                    last = replace(last, message=message)
                    self.fs.writeback.last[node.id] = last
            return [last]
        return [
            CommitReport(
                path=mount_path,
                version=node.head_version or 0,
                size=node.size,
                bytes_uploaded=0,
                chunks_total=0,
                chunks_new=0,
                conflict=False,
                committed=False,
                landed=mount_path,
                message=message,
            )
        ]

    async def versions(self, mount_path: str) -> list[dict[str, Any]]:
        found = await self.drive.versions(self.drive_path(mount_path))
        return [asdict(v) for v in found]

    async def read_version(
        self, mount_path: str, version: int | None
    ) -> tuple[int, AsyncIterator[bytes]]:
        reader = await self.drive.reader(self.drive_path(mount_path), version)
        content = Content.of(reader.info.version, reader.size, reader.extents)

        async def stream() -> AsyncIterator[bytes]:
            step = 8 * BLOCK_SIZE
            for offset in range(0, content.size, step):
                yield await read_content(self.cache, content, offset, step, None)

        return content.size, stream()

    async def restore(self, mount_path: str, version: int, message: str) -> dict[str, Any]:
        drive_path = self.drive_path(mount_path)
        node = await self.drive.meta.resolve(drive_path)
        if node is not None:
            staged = self.staging.get(node.id)
            if staged is not None and staged.writers:
                raise ConflictError(
                    f"{mount_path} is open for writing on this machine; close it, then restore"
                )
            if staged is not None and staged.dirty:
                await self.fs.writeback.save(drive_path, BEFORE_RESTORE)
            staged = self.staging.get(node.id)
            if staged is not None and not staged.writers:
                self.staging.drop(staged)
        outcome = await self.drive.restore(drive_path, version, message)
        self.fs.own_versions.append((outcome.file_id, outcome.version))
        self.fs.contents.pop(outcome.file_id, None)
        self.fs.kernel_version.pop(outcome.file_id, None)
        await self.fs.refresh_kernel(outcome.file_id)
        return {
            "path": self.mount_path(outcome.path),
            "version": outcome.version,
            "restored": version,
            "conflict": outcome.conflict,
        }

    async def publish(self, mount_path: str, message: str) -> dict[str, Any]:
        # Until storage pods exist every commit already lands in the drive's store.
        reports = await self.save(mount_path, message or "publish")
        return {
            "published": [r.as_dict() for r in reports],
            "tier": "cloud",
            "store": self.drive.ref.store_url.split("?")[0],
        }

    def status(self) -> dict[str, Any]:
        wb = self.fs.writeback
        cache = self.cache
        return {
            "mountpoint": str(self.mountpoint),
            "drive": self.options.drive,
            "subdir": self.options.subdir,
            "pid": os.getpid(),
            "read_only": self.options.read_only,
            "commit_on": self.options.commit_on.value,
            "checkpoint_interval": self.options.checkpoint_interval,
            "cache_dir": str(self.cache_dir),
            "cache_size": cache.capacity,
            "cache_bytes": cache.total,
            "pinned_bytes": cache.pinned_bytes,
            "pinned_paths": [p.path for p in cache.pins()],
            "pending_upload_bytes": self.staging.pending_bytes(),
            "dirty_files": sum(1 for s in self.staging.files.values() if s.dirty and not s.orphan),
            "bytes_fetched": cache.figures.bytes_fetched,
            "blocks_fetched": cache.figures.blocks_fetched,
            "cache_hits": cache.figures.hits,
            "cache_misses": cache.figures.misses,
            "cache_corrupt": cache.figures.corrupt,
            "bytes_uploaded": wb.figures.bytes_uploaded,
            "commits": wb.figures.commits,
            "conflicts": wb.figures.conflicts,
            "open_files": sum(self.fs.open_counts.values()),
            "passthrough": (
                self.views is not None and self.views.enabled and passthrough.negotiated()
            ),
            "passthrough_opens": self.views.opens if self.views is not None else 0,
            "recovered_files": self.recovered,
            "events_seen": self.follower.since,
            "errors": list(wb.figures.errors),
            "uptime": round(time.time() - self.started, 3),
        }

    async def events(self, since: int | None) -> AsyncIterator[Event]:
        start = await self.drive.meta.last_event_seq() if since is None else since
        async for event in self.drive.meta.follow_events(start, poll=self.options.follow_interval):
            if self.tree.to_mount(event.path) is not None:
                yield event

    # -- pins and hydration -------------------------------------------------------------------

    async def plan(
        self,
        patterns: list[str],
        manifest: Manifest | None = None,
    ) -> HydratePlan:
        entries: list[ManifestEntry] = [ManifestEntry(glob=p) for p in patterns]
        excludes: list[str] = []
        if manifest is not None:
            entries += manifest.entries()
            excludes = manifest.exclude
        files: dict[str, Content] = {}
        pins: list[tuple[str, int]] = []
        for entry in entries:
            if entry.path is not None:
                mount_path = paths.normalize(entry.path)
                drive_path = self.drive_path(mount_path)
                if entry.version is not None:
                    reader = await self.drive.reader(drive_path, entry.version)
                    files[f"{mount_path}@{entry.version}"] = Content.of(
                        entry.version, reader.size, reader.extents
                    )
                    pins.append((mount_path, entry.version))
                    continue
                found = False
                async for path, node in self.walk(drive_path):
                    files[self.mount_path(path)] = await self.fs.content(node)
                    found = True
                if not found:
                    raise ConfigError(f"{mount_path} does not exist in this mount")
                pins.append((mount_path, 0))
                continue
            assert entry.glob is not None
            pattern = entry.glob if entry.glob.startswith("/") else "/" + entry.glob
            base = fixed_prefix(pattern)
            async for path, node in self.walk(self.drive_path(base)):
                mount_path = self.mount_path(path)
                if not self._selected(pattern, mount_path):
                    continue
                files[mount_path] = await self.fs.content(node)
                pins.append((mount_path, 0))
        if excludes:
            files = {
                p: c
                for p, c in files.items()
                if not any(self._selected(x, p.split("@")[0]) for x in excludes)
            }
            kept = {p.split("@")[0] for p in files}
            pins = [(p, v) for p, v in pins if p in kept]
        return HydratePlan(list(files.items()), pins)

    @staticmethod
    def _selected(pattern: str, mount_path: str) -> bool:
        """A pattern picks a file, or a folder and everything under it."""
        if matches(pattern, mount_path):
            return True
        parent = posixpath.dirname(mount_path)
        while parent not in ("/", ""):
            if matches(pattern, parent):
                return True
            parent = posixpath.dirname(parent)
        return False

    async def fetch(self, contents: list[Content], progress: Progress | None = None) -> int:
        """Bring every block of these contents into the cache; returns bytes fetched."""
        blocks = {(chunk, index) for c in contents for _, chunk, index in c.blocks(0, c.size)}
        missing = [key for key in blocks if not self.cache.has(*key)]
        total = sum(c.size for c in contents)
        done = total - len(missing) * BLOCK_SIZE
        before = self.cache.figures.bytes_fetched
        slots = asyncio.Semaphore(32)

        async def one(chunk: str, index: int) -> None:
            nonlocal done
            async with slots:
                data = await self.cache.get(chunk, index)
            done += len(data)
            if progress is not None:
                progress(min(done, total), total)

        if progress is not None:
            progress(max(done, 0), total)
        await asyncio.gather(*(one(*key) for key in missing))
        if progress is not None:
            progress(total, total)
        return self.cache.figures.bytes_fetched - before

    async def hydrate(
        self,
        patterns: list[str],
        manifest: Manifest | None,
        pin: bool,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        plan = await self.plan(patterns, manifest)
        fetched = await self.fetch([c for _, c in plan.files], progress)
        if pin:
            for path, version in plan.pins:
                self.cache.add_pin(path, version)
            await self.refresh_pins()
        return {
            "files": len(plan.files),
            "bytes": plan.total_bytes,
            "bytes_fetched": fetched,
            "pinned": pin,
        }

    async def pin(self, mount_path: str) -> dict[str, Any]:
        mount_path = paths.normalize(mount_path)
        if await self.drive.meta.resolve(self.drive_path(mount_path)) is None:
            raise ConfigError(f"{mount_path} does not exist in this mount")
        self.cache.add_pin(mount_path, 0)
        result = await self.hydrate([], Manifest(include=[ManifestEntry(path=mount_path)]), True)
        return {"path": mount_path, **result}

    async def unpin(self, mount_path: str) -> dict[str, Any]:
        mount_path = paths.normalize(mount_path)
        removed = self.cache.remove_pin(mount_path)
        await self.refresh_pins()
        return {"path": mount_path, "unpinned": removed}

    async def refresh_pins(self) -> None:
        """Recompute which chunks are pinned and fetch the ones that are missing."""
        chunks: set[str] = set()
        contents: list[Content] = []
        for pin in self.cache.pins():
            drive_path = self.drive_path(pin.path)
            if pin.version:
                try:
                    reader = await self.drive.reader(drive_path, pin.version)
                except MediadriveError:
                    continue
                contents.append(Content.of(pin.version, reader.size, reader.extents))
                continue
            async for _, node in self.walk(drive_path):
                contents.append(await self.fs.content(node))
        for content in contents:
            chunks.update(e.chunk_id for e in content.extents)
        self.cache.set_pinned(chunks)
        await self.fetch(contents)

    def _refresh_pins(self) -> None:
        if self._pin_task is not None and not self._pin_task.done():
            self._pin_dirty = True
            return

        async def run() -> None:
            while True:
                self._pin_dirty = False
                try:
                    await self.refresh_pins()
                except Exception:
                    log.exception("pinned files could not be refreshed")
                if not self._pin_dirty:
                    return

        self._pin_task = asyncio.create_task(run())

    def _on_event(self, event: Event) -> None:
        if event.kind not in ("commit", "restore", "rename", "delete"):
            return
        mount_path = self.tree.to_mount(event.path)
        if mount_path is None:
            return
        for pin in self.cache.pins():
            if mount_path == pin.path or mount_path.startswith(pin.path.rstrip("/") + "/"):
                self._refresh_pins()
                return


def _setup_logging(log_path: Path | None) -> None:
    handler: logging.Handler
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(os.environ.get("MEDIADRIVE_LOG_LEVEL", "INFO").upper())
    logging.getLogger("pyfuse3").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def run_agent(options: MountOptions, ready: Callable[[str | None], None]) -> int:
    """Mount, report readiness (None) or the reason it failed, serve until unmounted."""
    agent = Agent(options)
    try:
        await agent.start()
    except BaseException as exc:
        message = str(exc) if isinstance(exc, MediadriveError) else f"{exc!r}"
        log.error("mount failed: %s", message)
        with contextlib.suppress(Exception):
            await agent.shutdown()
        ready(message)
        return 1
    ready(None)
    try:
        await agent.serve()
    finally:
        await agent.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mediadrive.node.agent")
    parser.add_argument("--options", required=True, help="MountOptions as JSON")
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args(argv)
    options = MountOptions.model_validate(json.loads(args.options))
    _setup_logging(args.log)
    # `kill -USR1 PID` writes every thread's stack to the log: how to see where it hangs.
    dump = open(args.log, "a") if args.log is not None else sys.stderr  # noqa: SIM115
    faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)

    def ready(problem: str | None) -> None:
        if args.ready_fd is None:
            if problem is not None:
                sys.stderr.write(f"mediadrive: error: {problem}\n")
            return
        with contextlib.suppress(OSError):
            os.write(args.ready_fd, (f"error: {problem}\n" if problem else "ok\n").encode())
            os.close(args.ready_fd)

    return asyncio.run(run_agent(options, ready))


if __name__ == "__main__":
    sys.exit(main())
