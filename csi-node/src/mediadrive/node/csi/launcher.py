"""How the plugin starts and stops node agents: as its own children, or through the
mounter (:mod:`.mounter`), a supervisor in another container whose children outlive
the plugin's container.

Both are blocking (the plugin calls them from a worker thread). Stopping is by
mount point: the agent registered there (``STATE/run``) is killed and waited for.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from mediadrive.core.credentials import redact_url
from mediadrive.core.errors import MediadriveError

from .. import client
from ..options import MountOptions
from ..registry import MountRegistry, pid_alive

# How long a mount may take (the agent opens the drive and its stores first).
MOUNT_TIMEOUT = 60.0


class LaunchError(Exception):
    """An agent that did not start or stop; ``unavailable`` when whoever starts
    agents (the mounter) could not be reached at all, so trying again later may do."""

    def __init__(self, message: str, unavailable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.unavailable = unavailable


class AgentLauncher(Protocol):
    def start(self, options: MountOptions, env: dict[str, str]) -> int:
        """Start an agent and return its pid once its mount is live."""
        ...

    def stop(self, mountpoint: Path) -> None:
        """Kill the agent serving ``mountpoint`` (if any) and wait until it is gone."""
        ...


def kill_agent(registry: MountRegistry, mountpoint: Path, timeout: float = 10.0) -> int | None:
    """SIGKILL the live agent registered at ``mountpoint``; its pid, or None."""
    entry = registry.entry_for(mountpoint)
    if entry is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(entry.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pid_alive(entry.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return entry.pid


def start_agent(options: MountOptions, env: dict[str, str]) -> int:
    """Start an agent as a child of this process (in its own session)."""
    try:
        return client.mount(options, timeout=MOUNT_TIMEOUT, env=env or None).pid
    except MediadriveError as exc:
        raise LaunchError(redact_url(str(exc))) from None


class LocalLauncher:
    """Agents are the plugin's children: they outlive the plugin's process, not its
    container."""

    def __init__(self, registry: MountRegistry) -> None:
        self.registry = registry

    def start(self, options: MountOptions, env: dict[str, str]) -> int:
        return start_agent(options, env)

    def stop(self, mountpoint: Path) -> None:
        kill_agent(self.registry, mountpoint)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def mounter_path(endpoint: str) -> Path:
    if endpoint.startswith("unix://"):
        return Path(endpoint.removeprefix("unix://"))
    if endpoint.startswith("/"):
        return Path(endpoint)
    raise ValueError(f"{endpoint!r}: give unix:///PATH")


class MounterClient:
    """The mounter's HTTP/JSON API on its unix socket (``docs/csi.md``)."""

    def __init__(self, socket_path: Path, timeout: float = MOUNT_TIMEOUT + 30) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixConnection(str(self.socket_path), self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except OSError as exc:
                raise LaunchError(
                    f"the mounter does not answer on {self.socket_path}: {exc} "
                    "(is the mounter container running?)",
                    unavailable=True,
                ) from None
        finally:
            conn.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if response.status >= 400:
            message = answer.get("error") if isinstance(answer, dict) else None
            text = message or raw.decode(errors="replace").strip() or response.reason
            raise LaunchError(f"the mounter refused {method} {path}: {text}")
        return answer

    def health(self, timeout: float = 5.0) -> bool:
        try:
            MounterClient(self.socket_path, min(timeout, self.timeout)).call("GET", "/healthz")
        except LaunchError:
            return False
        return True


class MounterLauncher:
    """Agents are the mounter's children: they outlive the plugin's container."""

    def __init__(self, socket_path: Path) -> None:
        self.mounter = MounterClient(socket_path)

    def start(self, options: MountOptions, env: dict[str, str]) -> int:
        answer = self.mounter.call(
            "POST",
            "/v1/mount",
            {"options": options.model_dump(mode="json", exclude_unset=True), "env": env},
        )
        return int(answer["pid"])

    def stop(self, mountpoint: Path) -> None:
        self.mounter.call("POST", "/v1/stop", {"mountpoint": str(mountpoint)})
