"""The mounter: a small supervisor that starts node agents for the plugin.

``mediadrive csi-node mounter`` runs it in its own container of the plugin's pod
(one PID namespace, the same state folder and ``/var/lib/kubelet``). Agents it
starts are its children, in its container: a restart of the plugin's container
kills none of them. It answers HTTP/JSON on a unix socket (only root may connect):

- ``POST /v1/mount`` ``{"options": {...}, "env": {...}}``: start an agent with these
  mount options (``MountOptions``; its cache and run folders must be the state
  folder's) and extra environment (names ``AWS_*`` or ``MEDIADRIVE_*``); answers
  ``{"pid": N, "mountpoint": P}`` once the mount is live, else an error;
- ``POST /v1/stop`` ``{"mountpoint": P}``: SIGKILL the agent registered there and
  wait until it is gone; ``{"stopped": N}`` (``null`` when none ran);
- ``GET /v1/agents``: the agents it started that still run;
- ``GET /healthz``: ``ok``.

Errors are ``{"error": message}`` with 400 (a bad request), 409 (an agent serves the
mount point already) or 500 (the agent failed; its message, passwords masked). Nothing
a request carries is logged but the drive and mount point. It reaps its children.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from mediadrive.core import private
from mediadrive.core.credentials import redact_url

from ..options import MountOptions
from ..registry import MountRegistry, pid_alive
from .launcher import LaunchError, kill_agent, mounter_path, start_agent

log = logging.getLogger("mediadrive.node.csi.mounter")

_ENV_NAME = re.compile(r"(AWS|MEDIADRIVE)_[A-Z0-9_]+")
_REAP_INTERVAL = 1.0


@dataclass
class MounterSettings:
    socket: str  # unix:///path
    state_dir: Path


class BadRequest(Exception):
    pass


@dataclass
class Child:
    pid: int
    mountpoint: str
    drive: str


class Mounter:
    def __init__(self, settings: MounterSettings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.run_dir = self.state_dir / "run"
        self.cache_root = self.state_dir / "cache"
        self.registry = MountRegistry(self.run_dir)
        self.children: dict[int, Child] = {}
        # While a mount is under way, client.mount may still wait for its agent:
        # reaping "any child" then could take its exit status from under it.
        self._mounting = 0
        self._lock = threading.Lock()

    # -- requests -----------------------------------------------------------------------------

    def parse_mount(self, body: Any) -> tuple[MountOptions, dict[str, str]]:
        if not isinstance(body, dict) or not isinstance(body.get("options"), dict):
            raise BadRequest('give {"options": {...mount options...}, "env": {...}}')
        unknown = sorted(set(body) - {"options", "env"})
        if unknown:
            raise BadRequest(f"unknown fields: {', '.join(unknown)}")
        for key in ("mountpoint", "cache_dir", "run_dir"):
            value = body["options"].get(key)
            if isinstance(value, str) and not value.startswith("/"):
                # Not this process's folder to resolve it from.
                raise BadRequest(f"options.{key} {value}: give an absolute path")
        try:
            options = MountOptions.model_validate(body["options"])
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"]) or "options"
            # The message only: the input holds store URLs and their passwords.
            raise BadRequest(f"options.{where}: {problem['msg']}") from None
        if Path(options.run_dir) != self.run_dir:
            raise BadRequest(f"options.run_dir must be {self.run_dir}, not {options.run_dir}")
        cache = Path(options.cache_dir)
        if cache.parent != self.cache_root:
            raise BadRequest(f"options.cache_dir must be a folder of {self.cache_root}")
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise BadRequest("env: give an object of strings")
        bad = sorted(k for k in env if not _ENV_NAME.fullmatch(k))
        if bad:
            raise BadRequest(f"env: {', '.join(bad)} not allowed (only AWS_* and MEDIADRIVE_*)")
        return options, env

    def mount(self, options: MountOptions, env: dict[str, str]) -> int:
        """Blocking: start the agent, wait until its mount is live."""
        running = self.registry.entry_for(options.mountpoint)
        if running is not None:
            raise BadRequest(f"agent {running.pid} serves {options.mountpoint} already")
        with self._lock:
            self._mounting += 1
        try:
            log.info("mounting drive %s at %s", options.drive, options.mountpoint)
            pid = start_agent(options, env)
            with self._lock:
                self.children[pid] = Child(pid, str(options.mountpoint), options.drive)
            log.info("agent %d serves %s", pid, options.mountpoint)
            return pid
        finally:
            with self._lock:
                self._mounting -= 1
            self.reap()

    def stop(self, mountpoint: Path) -> int | None:
        pid = kill_agent(self.registry, mountpoint)
        if pid is not None:
            log.info("stopped agent %d of %s", pid, mountpoint)
        self.reap()
        return pid

    def reap(self) -> None:
        """Collect every child that exited (no zombies), unless a mount is under way."""
        with self._lock:
            if self._mounting:
                return
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                child = self.children.pop(pid, None)
                where = f" of {child.mountpoint}" if child else ""
                if os.WIFSIGNALED(status):
                    how = f"was killed by signal {os.WTERMSIG(status)}"
                else:
                    how = f"exited with status {os.waitstatus_to_exitcode(status)}"
                log.warning("agent %d%s %s", pid, where, how)

    def agents(self) -> list[dict[str, Any]]:
        return [
            {"pid": c.pid, "mountpoint": c.mountpoint, "drive": c.drive}
            for c in self.children.values()
            if pid_alive(c.pid)
        ]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": redact_url(message)}, status=status)


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise BadRequest("the body is not JSON") from None


def make_app(mounter: Mounter) -> web.Application:
    async def mount(request: web.Request) -> web.Response:
        try:
            options, env = mounter.parse_mount(await _json(request))
        except BadRequest as exc:
            log.warning("refused a mount: %s", exc)
            return _error(400, str(exc))
        try:
            pid = await asyncio.to_thread(mounter.mount, options, env)
        except BadRequest as exc:
            return _error(409, str(exc))
        except LaunchError as exc:
            log.warning("mount of %s failed: %s", options.mountpoint, exc.message)
            return _error(500, exc.message)
        return web.json_response({"pid": pid, "mountpoint": str(options.mountpoint)})

    async def stop(request: web.Request) -> web.Response:
        try:
            body = await _json(request)
            if not isinstance(body, dict) or not isinstance(body.get("mountpoint"), str):
                raise BadRequest('give {"mountpoint": PATH}')
        except BadRequest as exc:
            return _error(400, str(exc))
        pid = await asyncio.to_thread(mounter.stop, Path(body["mountpoint"]))
        return web.json_response({"stopped": pid})

    async def agents(request: web.Request) -> web.Response:
        return web.json_response({"agents": mounter.agents()})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_post("/v1/mount", mount)
    app.router.add_post("/v1/stop", stop)
    app.router.add_get("/v1/agents", agents)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(settings: MounterSettings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT. The agents keep running when it stops (in a
    container, the runtime then stops them with it)."""
    mounter = Mounter(settings)
    for folder in (settings.state_dir, mounter.run_dir):
        private.make_dir(folder, tighten=True)
    private.make_dir(mounter.cache_root)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGCHLD, mounter.reap)
    path = mounter_path(settings.socket)
    os.makedirs(path.parent, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a mounter that was killed
    runner = web.AppRunner(make_app(mounter), access_log=None)
    await runner.setup()
    old_mask = os.umask(0o177)  # the socket: root only
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old_mask)
    log.info("mounter serving on %s (state in %s)", path, settings.state_dir)

    async def reaper() -> None:
        # SIGCHLD may come while a mount is under way (and be skipped): look again.
        while True:
            await asyncio.sleep(_REAP_INTERVAL)
            mounter.reap()

    task = asyncio.create_task(reaper())
    try:
        await stop.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    log.info("stopped; %d agents keep running", len(mounter.agents()))


def run(settings: MounterSettings) -> None:
    asyncio.run(serve(settings))
