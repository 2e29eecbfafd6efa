"""Fixtures for the CSI plugin: a drive in SQLite and a local folder, the plugin as
a real process on a unix socket, and a small gRPC client of it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.message import Message

from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.node.csi.proto import csi_pb2 as csi
from mediadrive.node.csi.proto import registration_pb2 as reg

MEDIADRIVE = str(Path(sys.executable).with_name("mediadrive"))
R = TypeVar("R", bound=Message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything that runs the plugin mounts (`base` holds its mounts).
    for item in items:
        if "tests/csi/" in item.nodeid and "base" in getattr(item, "fixturenames", ()):
            item.add_marker("fuse")


class DriveFixture:
    def __init__(self, base: Path, name: str = "media") -> None:
        self.name = name
        self.meta_url = f"sqlite:///{base / 'meta.db'}"
        self.store_url = f"file://{base / 'store'}"

        async def create() -> None:
            drive = await Drive.create(
                name, self.meta_url, self.store_url, DriveSettings(chunking="fixed")
            )
            await drive.close()

        asyncio.run(create())

    def context(self, **extra: str) -> dict[str, str]:
        return {"drive": self.name, "storeUrl": self.store_url, **extra}

    def secrets(self) -> dict[str, str]:
        return {"metaUrl": self.meta_url}

    def read(self, path: str) -> tuple[bytes, int]:
        """The head version's bytes and number, read from the stores directly."""

        async def body() -> tuple[bytes, int]:
            drive = await Drive.open(self.name, self.meta_url, self.store_url)
            try:
                versions = await drive.versions(path)
                reader = await drive.reader(path)
                data = await reader.read(0, reader.size)
                return data, versions[-1].version
            finally:
                await drive.close()

        return asyncio.run(body())


class CsiClient:
    """Calls the plugin's methods by name, as kubelet does."""

    def __init__(self, socket: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")

    def call(self, method: str, request: Message, reply: type[R], timeout: float = 120) -> R:
        service = {
            "GetPluginInfo": "csi.v1.Identity",
            "Probe": "csi.v1.Identity",
            "GetInfo": "pluginregistration.Registration",
            "NotifyRegistrationStatus": "pluginregistration.Registration",
        }.get(method, "csi.v1.Node")
        stub: grpc.UnaryUnaryMultiCallable[Message, R] = self.channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply.FromString,
        )
        result: R = stub(request, timeout=timeout)
        return result

    def close(self) -> None:
        self.channel.close()


def mount_capability(read_only: bool = False) -> csi.VolumeCapability:
    mode = csi.VolumeCapability.AccessMode
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(),
        access_mode=mode(
            mode=mode.MULTI_NODE_READER_ONLY if read_only else mode.MULTI_NODE_MULTI_WRITER
        ),
    )


class PluginProcess:
    """``mediadrive csi-node run`` as a child process; restartable."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "csi.sock"
        self.registration_dir = base / "registry"
        self.state_dir = base / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "plugin.log"

    def start(self, *extra: str, health_interval: float = 1.0) -> None:
        argv = [
            MEDIADRIVE,
            "csi-node",
            "run",
            "--endpoint",
            f"unix://{self.socket}",
            "--node-id",
            "node-1",
            "--state-dir",
            str(self.state_dir),
            "--registration-dir",
            str(self.registration_dir),
            "--health-interval",
            str(health_interval),
            *extra,
        ]
        with open(self.log, "ab") as log:
            # Its own process group, as a container's processes are: a test may kill it.
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.socket.exists():
                with contextlib.suppress(grpc.RpcError):
                    client = CsiClient(self.socket)
                    try:
                        client.call("Probe", csi.ProbeRequest(), csi.ProbeResponse, timeout=2)
                        return
                    finally:
                        client.close()
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"the plugin did not start: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self) -> CsiClient:
        return CsiClient(self.socket)


class MounterProcess:
    """``mediadrive csi-node mounter`` as a child process, with the plugin's state
    folder; restartable."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "mounter" / "mounter.sock"
        self.state_dir = base / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "mounter.log"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        argv = [
            MEDIADRIVE,
            "csi-node",
            "mounter",
            "--socket",
            self.endpoint,
            "--state-dir",
            str(self.state_dir),
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        from mediadrive.node.csi.launcher import MounterClient

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.socket.exists() and MounterClient(self.socket, timeout=2).health():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"the mounter did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _cleanup_mounts(base: Path) -> None:
    """Unmount whatever a test left under ``base`` (deepest first) and stop its agents."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    prefix = str(base) + "/"
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    run_dir = base / "state" / "run"
    if run_dir.is_dir():
        import json

        for entry in run_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                os.kill(int(json.loads(entry.read_text())["pid"]), signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def base() -> Iterator[Path]:
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.fail("CSI plugin tests need /dev/fuse and root", pytrace=False)
    # Short: agent sockets live under it and sun_path is 108 bytes.
    folder = Path(f"/tmp/csi-{os.getpid()}-{time.monotonic_ns() % 10**8}")
    folder.mkdir()
    try:
        yield folder
    finally:
        _cleanup_mounts(folder)
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=False)


@pytest.fixture
def drive(base: Path) -> DriveFixture:
    (base / "drive").mkdir()
    return DriveFixture(base / "drive")


@pytest.fixture
def mounter(base: Path) -> Iterator[MounterProcess]:
    process = MounterProcess(base)
    process.start()
    try:
        yield process
    finally:
        # Its agents first, so that it reaps them.
        _cleanup_mounts(base)
        time.sleep(0.2)
        process.stop()


@pytest.fixture
def plugin(base: Path) -> Iterator[PluginProcess]:
    process = PluginProcess(base)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def fields(message: Message) -> dict[str, Any]:
    return {f.name: v for f, v in message.ListFields()}


__all__ = [
    "CsiClient",
    "DriveFixture",
    "MounterProcess",
    "PluginProcess",
    "csi",
    "mount_capability",
    "reg",
]
