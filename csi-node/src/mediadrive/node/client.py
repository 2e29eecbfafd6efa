"""A small synchronous client of the live-filesystem API, and mount/unmount helpers.

It imports neither pyfuse3 nor aiohttp, so the CLI stays quick to start.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from mediadrive.core import private
from mediadrive.core.errors import (
    ConflictError,
    InvalidPath,
    MediadriveError,
    NotFound,
    StoreFull,
    StoreUnavailable,
)

from .options import MountOptions
from .registry import MountEntry, MountRegistry, pid_alive


class MountError(MediadriveError):
    """A mount or unmount that did not happen."""


class NotInMount(MediadriveError):
    """A local path that is not inside any mediadrive mount."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


_ERRORS: dict[int, type[MediadriveError]] = {
    400: InvalidPath,
    404: NotFound,
    409: ConflictError,
    503: StoreUnavailable,
    507: StoreFull,
}


class MountClient:
    def __init__(self, entry: MountEntry, timeout: float | None = None) -> None:
        self.entry = entry
        self.timeout = timeout

    @classmethod
    def for_mountpoint(cls, mountpoint: Path | str, registry: MountRegistry) -> MountClient:
        entry = registry.entry_for(Path(mountpoint).absolute())
        if entry is None:
            raise NotInMount(f"{mountpoint} is not a mediadrive mount point")
        return cls(entry)

    @contextlib.contextmanager
    def _request(
        self, method: str, path: str, body: object | None = None
    ) -> Iterator[http.client.HTTPResponse]:
        conn = _UnixConnection(self.entry.socket, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
            except OSError as exc:
                raise MountError(
                    f"the agent of {self.entry.mountpoint} does not answer on "
                    f"{self.entry.socket}: {exc}"
                ) from None
            if response.status >= 400:
                raw = response.read()
                try:
                    message = str(json.loads(raw)["error"])
                except (ValueError, KeyError, TypeError):
                    message = raw.decode(errors="replace").strip() or response.reason
                raise _ERRORS.get(response.status, MountError)(message)
            yield response
        finally:
            conn.close()

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        with self._request(method, path, body) as response:
            return json.loads(response.read())

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/v1/status")
        return result

    def save(self, path: str, message: str = "") -> list[dict[str, Any]]:
        saved: list[dict[str, Any]] = self.call(
            "POST", "/v1/save", {"path": path, "message": message}
        )["saved"]
        return saved

    def publish(self, path: str, message: str = "") -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "POST", "/v1/publish", {"path": path, "message": message}
        )
        return result

    def versions(self, path: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.call("GET", "/v1/versions?" + urlencode({"path": path}))
        return found

    def read(self, path: str, version: int | None = None) -> bytes:
        query = {"path": path} | ({"version": str(version)} if version else {})
        with self._request("GET", "/v1/read?" + urlencode(query)) as response:
            return response.read()

    def restore(self, path: str, version: int, message: str = "") -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "POST", "/v1/restore", {"path": path, "version": version, "message": message}
        )
        return result

    def pin(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/v1/pin", {"path": path})
        return result

    def unpin(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/v1/unpin", {"path": path})
        return result

    def hydrate(
        self,
        patterns: list[str],
        manifest: dict[str, Any] | None = None,
        pin: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"patterns": patterns, "manifest": manifest}
        if pin is not None:
            body["pin"] = pin
        with self._request("POST", "/v1/hydrate", body) as response:
            for line in response:
                item = json.loads(line)
                if "progress" in item and progress is not None:
                    progress(int(item["progress"]), int(item["total"]))
                elif "error" in item:
                    raise MountError(str(item["error"]))
                elif "done" in item:
                    done: dict[str, Any] = item["done"]
                    return done
        raise MountError(f"the agent of {self.entry.mountpoint} stopped answering during hydrate")

    def events(self, since: int | None = None) -> Iterator[dict[str, Any]]:
        query = "?" + urlencode({"since": since}) if since is not None else ""
        with self._request("GET", "/v1/events" + query) as response:
            for line in response:
                if line.startswith(b"data: "):
                    yield json.loads(line[6:])

    def openapi(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/openapi.json")
        return result


def find_mount(path: Path | str, registry: MountRegistry) -> tuple[MountClient, str] | None:
    """The client of the mount holding ``path`` and the path inside it, or None."""
    found = registry.find_mount(path)
    if found is None:
        return None
    entry, inner = found
    return MountClient(entry), inner


def client_for(path: Path | str, registry: MountRegistry) -> tuple[MountClient, str]:
    found = find_mount(path, registry)
    if found is None:
        raise NotInMount(f"{path} is not inside a mediadrive mount")
    return found


# -- starting and stopping agents ------------------------------------------------------------


def mount(
    options: MountOptions, timeout: float = 60.0, env: dict[str, str] | None = None
) -> MountEntry:
    """Start an agent as a daemon; return once the mount is live (or say why not).

    ``env`` adds to the agent's environment: the CSI service passes the object
    store's keys this way (a process's environment is readable by its owner only)."""
    cache_dir = options.cache_dir
    private.make_dir(cache_dir, tighten=True)
    log_path = cache_dir / "agent.log"
    read_fd, write_fd = os.pipe()
    argv = [
        sys.executable,
        "-m",
        "mediadrive.node.agent",
        # On stdin, not in argv: every local user can read a command line, and the
        # options hold the store URLs.
        "--options",
        "-",
        "--ready-fd",
        str(write_fd),
        "--log",
        str(log_path),
    ]
    with open(log_path, "ab", opener=private.opener) as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=log_file,
            pass_fds=(write_fd,),
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
    os.close(write_fd)
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError), proc.stdin:
        # Only what was set: the agent fills the rest from the drive's policy, else defaults.
        proc.stdin.write(options.model_dump_json(exclude_unset=True).encode())
    try:
        answer = _read_answer(read_fd, timeout)
    finally:
        os.close(read_fd)
    if answer == "ok":
        entry = MountRegistry(options.run_dir).entry_for(options.mountpoint)
        if entry is None:
            raise MountError(f"the agent for {options.mountpoint} started but did not register")
        return entry
    if answer.startswith("error: "):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        raise MountError(answer.removeprefix("error: "))
    code = proc.poll()
    if code is None:
        proc.kill()
        raise MountError(f"the agent did not mount {options.mountpoint} in {timeout:.0f}s")
    raise MountError(f"the agent exited with status {code}; see {log_path}: {_tail(log_path)}")


def _read_answer(fd: int, timeout: float) -> str:
    import select

    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n"):
            break
    return data.decode(errors="replace").strip()


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "(no log)"


def _is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def writers_under(mountpoint: Path) -> list[tuple[int, str, str]]:
    """Processes holding a file under ``mountpoint`` open for writing: (pid, command,
    path), found through /proc/*/fd as fuser does."""
    found = []
    prefix = str(mountpoint).rstrip("/") + "/"
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to see
        for fd in fds:
            with contextlib.suppress(OSError, ValueError, IndexError):
                target = os.readlink(fd)
                if not target.startswith(prefix):
                    continue
                info = (pid_dir / "fdinfo" / fd.name).read_text()
                flags = int(info.split("flags:")[1].split()[0], 8)
                if flags & os.O_ACCMODE != os.O_RDONLY:
                    command = (pid_dir / "comm").read_text().strip()
                    found.append((int(pid_dir.name), command, target))
    return found


def _syncfs(mountpoint: Path) -> None:
    """Make the kernel hand every dirty page under ``mountpoint`` to the agent."""
    import ctypes

    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            raise MountError(f"syncfs of {mountpoint}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def _refuse_busy(mp: Path) -> None:
    writers = writers_under(mp)
    if writers:
        pid, command, path = writers[0]
        more = f" (and {len(writers) - 1} more)" if len(writers) > 1 else ""
        raise MountError(
            f"cannot unmount {mp}: process {pid} ({command}) has {path} open for "
            f"writing{more}; close it, or use --force to commit what it wrote and unmount"
        )


def umount(
    mountpoint: Path | str,
    registry: MountRegistry,
    timeout: float = 600.0,
    force: bool = False,
) -> dict[str, Any]:
    """Commit what is pending, unmount, and wait for the agent to exit.

    While a process has a file of the mount open for writing this refuses (as a local
    file system answers EBUSY): after the unmount its unsynced writes would be lost.
    ``force`` commits what it wrote so far and unmounts anyway."""
    mp = Path(mountpoint).absolute()
    entry = registry.entry_for(mp)
    if entry is not None:
        if force:
            _syncfs(mp)
        else:
            _refuse_busy(mp)
    if entry is None:
        if _is_mounted(mp):
            # The agent is gone: nothing can be committed, but the folder is freed.
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, check=False)
            if _is_mounted(mp):
                subprocess.run(["umount", "-l", str(mp)], capture_output=True, check=False)
            return {"unmounted": str(mp), "agent": "gone"}
        raise NotInMount(f"{mp} is not a mediadrive mount point")
    client = MountClient(entry, timeout=timeout)
    result: dict[str, Any] = client.call("POST", "/v1/unmount")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not pid_alive(entry.pid) and not _is_mounted(mp):
            break
        time.sleep(0.05)
    else:
        # Pending work was committed before the agent answered, and staged copies are
        # journaled: stopping a stuck agent now loses nothing acknowledged.
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry.pid, signal.SIGKILL)
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, check=False)
        registry.remove_entry(mp, entry.pid)
        if _is_mounted(mp):
            raise MountError(f"the agent of {mp} (pid {entry.pid}) did not stop within 60s")
        result["forced"] = True
    result["unmounted"] = str(mp)
    return result
