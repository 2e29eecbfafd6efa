"""The node agent: one process per mount.

It mounts the drive (pyfuse3 in asyncio mode), serves the live-filesystem API on a
unix socket, commits staged writes in the background, follows the drive's events
and keeps pinned files local. This module is the process's lifecycle: start, serve,
shut down, signals and logging; the parts are built by :mod:`.assembly`, and what
callers ask of the mount is :class:`~.service.MountService`.
``python -m mediadrive.node.agent --options JSON`` (or ``--options -`` and the JSON
on stdin) runs one; ``mediadrive mount``
starts it as a daemon and waits until it is live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import faulthandler
import gc
import io
import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyfuse3
import pyfuse3.asyncio

from mediadrive.core import private
from mediadrive.core.credentials import redact_url
from mediadrive.core.errors import MediadriveError
from mediadrive.core.logs import JsonFormatter

from . import fuse_wait
from .api import start_api
from .assembly import Cleanup, MountParts, open_parts, release
from .client import MountError
from .fs import DriveFS, FuseKernel
from .heap import fault_in, fault_in_now, keep_freed_buffers, memory_to_spare
from .options import MountOptions
from .reading import KERNEL_READ_AHEAD
from .registry import MountEntry, MountRegistry
from .service import MountService
from .streaming import GATHERED_BYTES
from .writeback import AFTER_RESTART

pyfuse3.asyncio.enable()
fuse_wait.install()

log = logging.getLogger("mediadrive.node")

# Kernel read-ahead for the mount (the default, 128 KiB, caps sequential reads).
READ_AHEAD_KB = KERNEL_READ_AHEAD >> 10


def _mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def clear_stale_mount(mountpoint: Path, registry: MountRegistry) -> None:
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
        self.registry = MountRegistry(options.run_dir)
        self.started = time.time()
        self.stopping = asyncio.Event()
        self._fuse_task: asyncio.Task[None] | None = None
        self._cleanups: list[Cleanup] = []
        self.parts: MountParts | None = None
        self.service: MountService | None = None
        self.socket_path = self.registry.socket_path_for(self.mountpoint)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        options = self.options
        clear_stale_mount(self.mountpoint, self.registry)
        if not self.mountpoint.is_dir():
            raise MountError(f"mount point {self.mountpoint} is not an existing folder")
        existing = self.registry.entry_for(self.mountpoint)
        if existing is not None or _mounted(self.mountpoint):
            raise MountError(f"{self.mountpoint} is already mounted")
        if not options.nonempty and any(self.mountpoint.iterdir()):
            raise MountError(
                f"mount point {self.mountpoint} is not empty: the mount would hide its files "
                "(--nonempty mounts over them)"
            )
        parts = self.parts = await open_parts(options, FuseKernel(), self._cleanups)
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            # After the API has answered the request that asked for it.
            loop.call_soon(self.stopping.set)

        service = self.service = MountService(parts, self.mountpoint, request_stop, self.started)
        parts.vfs.saver = service.save
        parts.follower.listeners.append(service.pins.on_event)

        fuse_options = set(pyfuse3.default_options)
        fuse_options |= {
            f"fsname=mediadrive:{options.drive}",
            "subtype=mediadrive",
        }
        if options.allow_other:
            fuse_options.add("allow_other")
        if options.read_only:
            fuse_options.add("ro")
        try:
            pyfuse3.init(DriveFS(parts.vfs), str(self.mountpoint), fuse_options)
        except RuntimeError as exc:
            raise MountError(f"cannot mount {self.mountpoint}: {exc}") from None
        self._fuse_task = asyncio.create_task(self._fuse_main())
        await asyncio.to_thread(self._tune_kernel)

        parts.start()
        await parts.follower.start()
        self._cleanups.append(await start_api(service, self.socket_path))
        self.registry.write_entry(
            MountEntry(
                mountpoint=str(self.mountpoint),
                drive=options.drive,
                subdir=options.subdir,
                socket=str(self.socket_path),
                pid=os.getpid(),
                cache_dir=str(options.cache_dir),
                log=str(options.cache_dir / "agent.log"),
                started=self.started,
            )
        )
        for staged in parts.recovered:
            log.info("committing %s, staged before the agent stopped", staged.path)
            parts.writeback.schedule(staged.node_id, AFTER_RESTART)
        service.recovered = len(parts.recovered)
        service.pins.refresh_soon()
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
        parts = self.parts
        try:
            if parts is not None:
                await self._bounded("stopping the event follower", parts.follower.stop())
                await parts.writeback.flush()
                await self._bounded("stopping background commits", parts.writeback.stop())
            if self.service is not None:
                self.service.pins.cancel()
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
            self.registry.remove_entry(self.mountpoint, os.getpid())
            await release(self._cleanups)

    async def _bounded(self, what: str, step: Awaitable[object], seconds: float = 15.0) -> None:
        try:
            await asyncio.wait_for(step, seconds)
        except TimeoutError:
            log.error("%s took over %.0fs; going on with the unmount", what, seconds)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("%s failed", what)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Rotates by size; every file it opens is 0600 (log lines name private paths)."""

    def _open(self) -> io.TextIOWrapper:
        # Always appended to: rotation renames the file rather than truncating it.
        return open(
            self.baseFilename,
            "a",
            encoding=self.encoding,
            errors=self.errors,
            opener=private.opener,
        )


class RedactingFormatter(JsonFormatter):
    """JSON lines with every URL's password masked (a driver's error may quote one)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


def log_handler(log_path: Path, max_bytes: int, backups: int) -> logging.Handler:
    """The agent's log file: at most ``max_bytes`` each, ``backups`` old ones kept."""
    private.make_dir(log_path.parent)
    return PrivateRotatingFileHandler(log_path, maxBytes=max_bytes, backupCount=backups)


def _setup_logging(log_path: Path | None, options: MountOptions) -> None:
    handler: logging.Handler
    if log_path is not None:
        handler = log_handler(log_path, options.log_max_size, options.log_backups)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter())
    level = options.log_level
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("pyfuse3").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# Heap faulted in before the mount is announced (see ``heap``): what an edit or a
# small write right after a mount takes, so it does not fault its buffers in.
EARLY_FAULT_IN = 32 << 20

# The mount has had no request for this long: what it is asked next is not shared
# with faulting its heap in (a cold read often comes at once after a mount).
QUIET_SECONDS = 1.0


async def fault_in_when_quiet(size: int) -> None:
    """Fault ``size`` bytes of the heap in (see ``heap.fault_in``) once the mount is
    quiet."""
    while True:
        seen = fuse_wait.HANDLING.started
        await asyncio.sleep(QUIET_SECONDS)
        if fuse_wait.HANDLING.started == seen and not fuse_wait.HANDLING.count:
            break
    spare = memory_to_spare()
    if spare is not None and spare < 4 * size:
        log.info("heap not faulted in: memory is short", extra={"bytes_to_spare": spare})
        return
    thread = fault_in(size)
    if thread is not None:
        await asyncio.to_thread(thread.join)
        log.info("heap faulted in", extra={"bytes": size})


async def run_agent(options: MountOptions, ready: Callable[[str | None], None]) -> int:
    """Mount, report readiness (None) or the reason it failed, serve until unmounted."""
    agent = Agent(options)
    try:
        await agent.start()
    except BaseException as exc:
        message = redact_url(str(exc) if isinstance(exc, MediadriveError) else f"{exc!r}")
        log.error("mount failed: %s", message)
        with contextlib.suppress(Exception):
            await agent.shutdown()
        ready(message)
        return 1
    # What start-up made (modules, engines, clients: most of the heap) lives as long as
    # the agent: out of the collector's reach, the collections that requests trigger
    # walk only what requests made, not the whole heap each time.
    gc.collect()
    gc.freeze()
    spare = memory_to_spare()
    if not options.read_only and (spare is None or spare >= 4 * EARLY_FAULT_IN):
        fault_in_now(EARLY_FAULT_IN)
    ready(None)
    warming = None
    if not options.read_only:
        warming = asyncio.get_running_loop().create_task(fault_in_when_quiet(GATHERED_BYTES))
    try:
        await agent.serve()
    finally:
        if warming is not None:
            warming.cancel()
        await agent.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mediadrive.node.agent")
    parser.add_argument("--options", required=True, help="MountOptions as JSON; - reads stdin")
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args(argv)
    # Before any thread starts: the arena setting applies to arenas made later.
    heap = keep_freed_buffers()
    text = sys.stdin.read() if args.options == "-" else args.options
    options = MountOptions.model_validate(json.loads(text))
    _setup_logging(args.log, options)
    log.info("malloc settings", extra={"malloc": heap})
    # `kill -USR1 PID` writes every thread's stack to the log: how to see where it hangs.
    dump = (
        open(args.log, "a", opener=private.opener)  # noqa: SIM115
        if args.log is not None
        else sys.stderr
    )
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
