"""csi-sanity, the CSI reference suite, against ``mediadrive csi-node run``.

The plugin has no controller (drives are made by the operator, not by CreateVolume),
so the suite's Node and Identity tests run; the ones that provision a volume first
get it from a stand-in controller here, which hands out the test drive's volume
context as every new volume's. The suite's whole-lifecycle tests ("should work",
"should be idempotent") run only against a plugin that says it has a controller:
for them the stand-in sits in front of the plugin, says so, and passes every Node
call through."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from .conftest import DriveFixture, PluginProcess, csi

CSI_SANITY = Path.home() / ".cache/mediadrive/cluster/bin/csi-sanity"
NODE_METHODS = (
    "NodeGetCapabilities",
    "NodeGetInfo",
    "NodeStageVolume",
    "NodeUnstageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeGetVolumeStats",
)


class StandInController:
    """CreateVolume and DeleteVolume only: what csi-sanity's node tests need."""

    def __init__(self, drive: DriveFixture, plugin: Path, front: bool = False) -> None:
        self.context = drive.context()
        # csi-sanity asks the controller's Identity too: it answers the plugin's.
        self.plugin = grpc.insecure_channel(f"unix://{plugin}")
        self.front = front

    def forward(self, service: str, method: str) -> Any:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.plugin.unary_unary(
            f"/{service}/{method}"
        )

        def relay(raw: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return call(raw, timeout=300)
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
                raise

        return grpc.unary_unary_rpc_method_handler(relay)

    def plugin_capabilities(
        self, request: csi.GetPluginCapabilitiesRequest, context: Any
    ) -> csi.GetPluginCapabilitiesResponse:
        service = csi.PluginCapability.Service
        return csi.GetPluginCapabilitiesResponse(
            capabilities=[csi.PluginCapability(service=service(type=service.CONTROLLER_SERVICE))]
        )

    def create(self, request: csi.CreateVolumeRequest, context: Any) -> csi.CreateVolumeResponse:
        return csi.CreateVolumeResponse(
            volume=csi.Volume(
                volume_id=request.name,
                capacity_bytes=request.capacity_range.required_bytes,
                volume_context=self.context,
            )
        )

    def delete(self, request: csi.DeleteVolumeRequest, context: Any) -> csi.DeleteVolumeResponse:
        return csi.DeleteVolumeResponse()

    def capabilities(
        self, request: csi.ControllerGetCapabilitiesRequest, context: Any
    ) -> csi.ControllerGetCapabilitiesResponse:
        rpc = csi.ControllerServiceCapability.RPC
        return csi.ControllerGetCapabilitiesResponse(
            capabilities=[csi.ControllerServiceCapability(rpc=rpc(type=rpc.CREATE_DELETE_VOLUME))]
        )

    def serve(self, socket: Path) -> grpc.Server:
        def handler(method: Any, request: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )

        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "csi.v1.Controller",
                    {
                        "CreateVolume": handler(self.create, csi.CreateVolumeRequest),
                        "DeleteVolume": handler(self.delete, csi.DeleteVolumeRequest),
                        "ControllerGetCapabilities": handler(
                            self.capabilities, csi.ControllerGetCapabilitiesRequest
                        ),
                    },
                ),
                grpc.method_handlers_generic_handler(
                    "csi.v1.Identity",
                    {
                        name: self.forward("csi.v1.Identity", name)
                        for name in ("GetPluginInfo", "GetPluginCapabilities", "Probe")
                    }
                    | (
                        {
                            "GetPluginCapabilities": handler(
                                self.plugin_capabilities, csi.GetPluginCapabilitiesRequest
                            )
                        }
                        if self.front
                        else {}
                    ),
                ),
                grpc.method_handlers_generic_handler(
                    "csi.v1.Node",
                    {name: self.forward("csi.v1.Node", name) for name in NODE_METHODS},
                ),
            ]
        )
        server.add_insecure_port(f"unix://{socket}")
        server.start()
        return server


@pytest.fixture
def controller(base: Path, drive: DriveFixture, plugin: PluginProcess) -> Iterator[Path]:
    socket = base / "controller.sock"
    server = StandInController(drive, plugin.socket).serve(socket)
    try:
        yield socket
    finally:
        server.stop(None)


@pytest.fixture
def front(base: Path, drive: DriveFixture, plugin: PluginProcess) -> Iterator[Path]:
    socket = base / "front.sock"
    server = StandInController(drive, plugin.socket, front=True).serve(socket)
    try:
        yield socket
    finally:
        server.stop(None)


def csi_sanity(base: Path, drive: DriveFixture, node: Path, controller: Path, focus: str) -> str:
    """Run csi-sanity; its summary line, or a failure with its output."""
    if not CSI_SANITY.exists():
        pytest.fail(f"{CSI_SANITY} is missing: run `make test-deps`", pytrace=False)
    secrets = base / "secrets.yaml"
    # JSON is YAML; both kinds of node call carry the drive's secrets.
    secrets.write_text(
        json.dumps(
            {"NodeStageVolumeSecret": drive.secrets(), "NodePublishVolumeSecret": drive.secrets()}
        )
    )
    os.chmod(secrets, 0o600)
    argv = [
        str(CSI_SANITY),
        f"--csi.endpoint=unix://{node}",
        f"--csi.controllerendpoint=unix://{controller}",
        f"--csi.stagingdir={base / 'sanity-staging'}",
        f"--csi.mountdir={base / 'sanity-mount'}",
        f"--csi.secrets={secrets}",
        f"--ginkgo.focus={focus}",
        "--ginkgo.no-color",
        "--ginkgo.timeout=8m",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=540, check=False)
    output = done.stdout + done.stderr
    summary = [line for line in output.splitlines() if "Passed" in line and "Failed" in line]
    assert done.returncode == 0, f"csi-sanity failed:\n{output[-20000:]}"
    assert summary, output[-5000:]
    print(summary[-1])
    return summary[-1]


def test_csi_sanity(
    base: Path, drive: DriveFixture, plugin: PluginProcess, controller: Path
) -> None:
    summary = csi_sanity(base, drive, plugin.socket, controller, "Node Service|Identity Service")
    assert "| 0 Failed |" in summary


def test_csi_sanity_lifecycle(
    base: Path, drive: DriveFixture, plugin: PluginProcess, front: Path
) -> None:
    summary = csi_sanity(base, drive, front, front, "Node Service should (work|be idempotent)$")
    assert "2 Passed | 0 Failed" in summary
