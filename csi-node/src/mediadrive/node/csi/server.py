"""The plugin's process: CSI Identity and Node over gRPC on a unix socket, kubelet's
plugin registration, ``/metrics`` and ``/healthz``, and a loop that restarts dead
agents. ``mediadrive csi-node run`` starts it (:func:`run`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from mediadrive.core.credentials import redact_url
from mediadrive.core.logs import JsonFormatter

from .. import client
from . import DRIVER_NAME, VERSION
from .launcher import AgentLauncher, LocalLauncher, MounterClient, MounterLauncher, mounter_path
from .node import CsiError, NodeVolumes, invalid
from .proto import csi_pb2 as csi
from .proto import registration_pb2 as reg
from .state import StateStore

log = logging.getLogger("mediadrive.node.csi")

Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Context], Awaitable[Message]]

_READ_ONLY_MODES = {
    csi.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY,
    csi.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY,
}


@dataclass
class PluginSettings:
    endpoint: str  # unix:///path
    node_id: str
    state_dir: Path
    registration_dir: Path | None = None
    # The CSI socket as kubelet sees it (the plugin may run in a container).
    kubelet_endpoint: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    region: str | None = None
    max_volumes: int = 0
    health_interval: float = 10.0
    # The mounter's socket (unix:///path): agents start there, not as this process's
    # children (see .mounter); None: they are this process's children.
    mounter: str | None = None


def socket_path(endpoint: str) -> Path:
    if endpoint.startswith("unix://"):
        return Path(endpoint.removeprefix("unix://"))
    if endpoint.startswith("/"):
        return Path(endpoint)
    raise ValueError(f"endpoint {endpoint!r}: give unix:///PATH")


def _capability(volume_id: str, cap: csi.VolumeCapability, has: bool) -> None:
    if not has:
        raise invalid(f"volume {volume_id}: no volume capability given")
    if cap.HasField("block"):
        raise invalid(f"volume {volume_id}: a drive is a file system, not a block device")
    if cap.access_mode.mode == csi.VolumeCapability.AccessMode.UNKNOWN:
        raise invalid(f"volume {volume_id}: no access mode given")


class Plugin:
    def __init__(self, settings: PluginSettings) -> None:
        self.settings = settings
        self.state = StateStore(settings.state_dir)
        self.mounter: MounterClient | None = None
        launcher: AgentLauncher = LocalLauncher(self.state.registry)
        if settings.mounter is not None:
            launcher = MounterLauncher(mounter_path(settings.mounter))
            self.mounter = launcher.mounter
        self.volumes = NodeVolumes(self.state, settings.node_id, settings.region, launcher)
        self._locks: dict[str, asyncio.Lock] = {}
        # Mounting waits for an agent (up to a minute): volumes must not queue behind
        # one another in the loop's small default pool.
        self._pool = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="volume")
        self.registered: bool | None = None
        self.registration_error = ""

    async def _locked(self, volume_id: str, body: Callable[[], Any]) -> Any:
        lock = self._locks.setdefault(volume_id, asyncio.Lock())
        async with lock:
            return await asyncio.get_running_loop().run_in_executor(self._pool, body)

    # -- Identity ------------------------------------------------------------------------------

    async def get_plugin_info(
        self, request: csi.GetPluginInfoRequest, context: Context
    ) -> csi.GetPluginInfoResponse:
        return csi.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=VERSION)

    async def get_plugin_capabilities(
        self, request: csi.GetPluginCapabilitiesRequest, context: Context
    ) -> csi.GetPluginCapabilitiesResponse:
        return csi.GetPluginCapabilitiesResponse()

    async def probe(self, request: csi.ProbeRequest, context: Context) -> csi.ProbeResponse:
        return csi.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))

    # -- Node ----------------------------------------------------------------------------------

    async def node_get_capabilities(
        self, request: csi.NodeGetCapabilitiesRequest, context: Context
    ) -> csi.NodeGetCapabilitiesResponse:
        rpc = csi.NodeServiceCapability.RPC
        kinds = [rpc.STAGE_UNSTAGE_VOLUME, rpc.GET_VOLUME_STATS, rpc.VOLUME_CONDITION]
        return csi.NodeGetCapabilitiesResponse(
            capabilities=[csi.NodeServiceCapability(rpc=rpc(type=k)) for k in kinds]
        )

    async def node_get_info(
        self, request: csi.NodeGetInfoRequest, context: Context
    ) -> csi.NodeGetInfoResponse:
        response = csi.NodeGetInfoResponse(
            node_id=self.settings.node_id, max_volumes_per_node=self.settings.max_volumes
        )
        if self.settings.region:
            response.accessible_topology.segments["topology.mediadrive.io/region"] = (
                self.settings.region
            )
        return response

    async def node_stage_volume(
        self, request: csi.NodeStageVolumeRequest, context: Context
    ) -> csi.NodeStageVolumeResponse:
        if not request.volume_id:
            raise invalid("no volume_id given")
        if not request.staging_target_path:
            raise invalid(f"volume {request.volume_id}: no staging_target_path given")
        _capability(
            request.volume_id, request.volume_capability, request.HasField("volume_capability")
        )
        staging = Path(request.staging_target_path)
        await self._locked(
            request.volume_id,
            lambda: self.volumes.stage(
                request.volume_id, staging, dict(request.volume_context), dict(request.secrets)
            ),
        )
        return csi.NodeStageVolumeResponse()

    async def node_unstage_volume(
        self, request: csi.NodeUnstageVolumeRequest, context: Context
    ) -> csi.NodeUnstageVolumeResponse:
        if not request.volume_id:
            raise invalid("no volume_id given")
        if not request.staging_target_path:
            raise invalid(f"volume {request.volume_id}: no staging_target_path given")
        staging = Path(request.staging_target_path)
        await self._locked(
            request.volume_id, lambda: self.volumes.unstage(request.volume_id, staging)
        )
        return csi.NodeUnstageVolumeResponse()

    async def node_publish_volume(
        self, request: csi.NodePublishVolumeRequest, context: Context
    ) -> csi.NodePublishVolumeResponse:
        if not request.volume_id:
            raise invalid("no volume_id given")
        if not request.target_path:
            raise invalid(f"volume {request.volume_id}: no target_path given")
        _capability(
            request.volume_id, request.volume_capability, request.HasField("volume_capability")
        )
        read_only = request.readonly or request.volume_capability.access_mode.mode in (
            _READ_ONLY_MODES
        )
        staging = Path(request.staging_target_path) if request.staging_target_path else None
        await self._locked(
            request.volume_id,
            lambda: self.volumes.publish(
                request.volume_id,
                Path(request.target_path),
                staging,
                dict(request.volume_context),
                dict(request.secrets),
                read_only,
            ),
        )
        return csi.NodePublishVolumeResponse()

    async def node_unpublish_volume(
        self, request: csi.NodeUnpublishVolumeRequest, context: Context
    ) -> csi.NodeUnpublishVolumeResponse:
        if not request.volume_id:
            raise invalid("no volume_id given")
        if not request.target_path:
            raise invalid(f"volume {request.volume_id}: no target_path given")
        target = Path(request.target_path)
        await self._locked(
            request.volume_id, lambda: self.volumes.unpublish(request.volume_id, target)
        )
        return csi.NodeUnpublishVolumeResponse()

    async def node_get_volume_stats(
        self, request: csi.NodeGetVolumeStatsRequest, context: Context
    ) -> csi.NodeGetVolumeStatsResponse:
        if not request.volume_id:
            raise invalid("no volume_id given")
        if not request.volume_path:
            raise invalid(f"volume {request.volume_id}: no volume_path given")
        path = Path(request.volume_path)
        stats = await self._locked(
            request.volume_id, lambda: self.volumes.stats(request.volume_id, path)
        )
        unit = csi.VolumeUsage.Unit
        usage = []
        if not stats.abnormal:
            usage = [
                csi.VolumeUsage(
                    unit=unit.BYTES,
                    total=stats.bytes_total,
                    available=stats.bytes_available,
                    used=stats.bytes_used,
                ),
                csi.VolumeUsage(
                    unit=unit.INODES,
                    total=stats.inodes_total,
                    available=stats.inodes_available,
                    used=stats.inodes_used,
                ),
            ]
        return csi.NodeGetVolumeStatsResponse(
            usage=usage,
            volume_condition=csi.VolumeCondition(abnormal=stats.abnormal, message=stats.message),
        )

    # -- kubelet plugin registration -------------------------------------------------------

    async def get_info(self, request: reg.InfoRequest, context: Context) -> reg.PluginInfo:
        endpoint = self.settings.kubelet_endpoint or str(socket_path(self.settings.endpoint))
        return reg.PluginInfo(
            type="CSIPlugin", name=DRIVER_NAME, endpoint=endpoint, supported_versions=["1.0.0"]
        )

    async def notify_registration_status(
        self, request: reg.RegistrationStatus, context: Context
    ) -> reg.RegistrationStatusResponse:
        self.registered = request.plugin_registered
        self.registration_error = request.error
        if request.plugin_registered:
            log.info("kubelet registered %s", DRIVER_NAME)
        else:
            log.error("kubelet did not register %s: %s", DRIVER_NAME, request.error)
        return reg.RegistrationStatusResponse()

    # -- upkeep ----------------------------------------------------------------------------

    async def heal_all(self) -> None:
        for record in self.state.records():
            if record.options is None:
                continue
            volume_id = record.volume_id
            try:
                await self._locked(volume_id, functools.partial(self._heal, volume_id))
            except CsiError as exc:
                log.error("volume %s: %s", volume_id, exc.message)

    def _heal(self, volume_id: str) -> None:
        # Read again under the volume's lock: an unstage or unpublish may have run since.
        record = self.state.load(volume_id)
        if record is not None and self.volumes.heal(record):
            log.info("restarted the agent of volume %s", volume_id)

    async def health_loop(self) -> None:
        while True:
            await self.heal_all()
            await asyncio.sleep(self.settings.health_interval)

    def metrics(self) -> str:
        records = self.state.records()
        lines = [
            "# HELP mediadrive_csi_volumes Volumes staged (or ephemeral) on this node.",
            "# TYPE mediadrive_csi_volumes gauge",
            f"mediadrive_csi_volumes {len(records)}",
            "# HELP mediadrive_csi_published_targets Bind mounts of staged volumes.",
            "# TYPE mediadrive_csi_published_targets gauge",
            f"mediadrive_csi_published_targets {sum(len(r.targets) for r in records)}",
            "# HELP mediadrive_csi_agent_restarts_total Agents this plugin restarted.",
            "# TYPE mediadrive_csi_agent_restarts_total counter",
            f"mediadrive_csi_agent_restarts_total {self.volumes.restarts}",
        ]
        if self.mounter is not None:
            lines += [
                "# HELP mediadrive_csi_mounter_up The mounter answers on its socket.",
                "# TYPE mediadrive_csi_mounter_up gauge",
                f"mediadrive_csi_mounter_up {int(self.mounter.health())}",
            ]
        figures = ("cache_bytes", "bytes_fetched", "bytes_uploaded", "pending_upload_bytes")
        rows: list[str] = []
        commits: list[str] = []
        for record in records:
            drive = str((record.options or {}).get("drive", ""))
            labels = f'volume="{_label(record.volume_id)}",drive="{_label(drive)}"'
            entry = self.state.registry.entry_for(record.mountpoint)
            rows.append(f"mediadrive_csi_agent_up{{{labels}}} {int(entry is not None)}")
            if entry is None:
                continue
            try:
                status = client.MountClient(entry, timeout=2).status()
            except Exception:
                continue
            for name in figures:
                rows.append(f"mediadrive_csi_{name}{{{labels}}} {int(status.get(name, 0))}")
            commits += _commit_histogram(labels, status)
        lines += ["# TYPE mediadrive_csi_agent_up gauge"] + [
            r for r in rows if r.startswith("mediadrive_csi_agent_up")
        ]
        for name in figures:
            lines.append(f"# TYPE mediadrive_csi_{name} gauge")
            lines += [r for r in rows if r.startswith(f"mediadrive_csi_{name}{{")]
        lines += [
            "# HELP mediadrive_csi_commit_seconds Time from the start of a commit that "
            "recorded a version to its end (upload included), per volume's agent.",
            "# TYPE mediadrive_csi_commit_seconds histogram",
            *commits,
        ]
        return "\n".join(lines) + "\n"


def _commit_histogram(labels: str, status: dict[str, Any]) -> list[str]:
    """An agent's commit latency (its status's ``commit_seconds_*``) as histogram rows."""
    buckets = status.get("commit_seconds_buckets") or {}
    if "+Inf" not in buckets:
        return []  # an agent from before commit latency was reported
    name = "mediadrive_csi_commit_seconds"
    rows = [f'{name}_bucket{{{labels},le="{le}"}} {int(n)}' for le, n in buckets.items()]
    rows.append(f"{name}_sum{{{labels}}} {float(status.get('commit_seconds_sum', 0.0))}")
    rows.append(f"{name}_count{{{labels}}} {int(buckets['+Inf'])}")
    return rows


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# Calls that change mounts are logged at INFO (never their secrets), the rest at DEBUG.
_CHANGES = {"NodeStageVolume", "NodeUnstageVolume", "NodePublishVolume", "NodeUnpublishVolume"}


def _wrap(rpc: str, method: Handler) -> Handler:
    level = logging.INFO if rpc in _CHANGES else logging.DEBUG

    async def call(request: Any, context: Context) -> Message:
        volume = getattr(request, "volume_id", "")
        path = getattr(request, "target_path", "") or getattr(request, "staging_target_path", "")
        log.log(level, "%s %s %s", rpc, volume, path)
        try:
            return await method(request, context)
        except CsiError as exc:
            log.warning("%s %s: %s", rpc, volume, exc.message)
            await context.abort(exc.code, exc.message)
            raise
        except Exception as exc:
            log.exception("%s %s failed", rpc, volume)
            message = redact_url(f"{type(exc).__name__}: {exc}")
            await context.abort(grpc.StatusCode.INTERNAL, message)
            raise

    return call


class LogFormatter(JsonFormatter):
    """JSON lines with every URL's password masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


def _service(name: str, methods: dict[str, tuple[Handler, type[Message]]]) -> Any:
    handlers: dict[str, Any] = {
        rpc: grpc.unary_unary_rpc_method_handler(
            _wrap(rpc, method),
            request_deserializer=request.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )
        for rpc, (method, request) in methods.items()
    }
    return grpc.method_handlers_generic_handler(name, handlers)


def csi_services(plugin: Plugin) -> list[Any]:
    p = plugin
    return [
        _service(
            "csi.v1.Identity",
            {
                "GetPluginInfo": (p.get_plugin_info, csi.GetPluginInfoRequest),
                "GetPluginCapabilities": (
                    p.get_plugin_capabilities,
                    csi.GetPluginCapabilitiesRequest,
                ),
                "Probe": (p.probe, csi.ProbeRequest),
            },
        ),
        _service(
            "csi.v1.Node",
            {
                "NodeGetCapabilities": (p.node_get_capabilities, csi.NodeGetCapabilitiesRequest),
                "NodeGetInfo": (p.node_get_info, csi.NodeGetInfoRequest),
                "NodeStageVolume": (p.node_stage_volume, csi.NodeStageVolumeRequest),
                "NodeUnstageVolume": (p.node_unstage_volume, csi.NodeUnstageVolumeRequest),
                "NodePublishVolume": (p.node_publish_volume, csi.NodePublishVolumeRequest),
                "NodeUnpublishVolume": (p.node_unpublish_volume, csi.NodeUnpublishVolumeRequest),
                "NodeGetVolumeStats": (p.node_get_volume_stats, csi.NodeGetVolumeStatsRequest),
            },
        ),
    ]


def registration_service(plugin: Plugin) -> Any:
    return _service(
        "pluginregistration.Registration",
        {
            "GetInfo": (plugin.get_info, reg.InfoRequest),
            "NotifyRegistrationStatus": (
                plugin.notify_registration_status,
                reg.RegistrationStatus,
            ),
        },
    )


async def _unix_server(path: Path, services: list[Any]) -> grpc.aio.Server:
    os.makedirs(path.parent, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a plugin that was killed
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(services)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    return server


async def _metrics_site(plugin: Plugin) -> web.AppRunner:
    async def metrics(request: web.Request) -> web.Response:
        text = await asyncio.to_thread(plugin.metrics)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def healthz(request: web.Request) -> web.Response:
        if plugin.registered is False:
            return web.Response(status=503, text=f"not registered: {plugin.registration_error}\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = plugin.settings.metrics_port
    await web.TCPSite(runner, plugin.settings.metrics_host, port).start()
    return runner


async def serve(settings: PluginSettings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or ``stop``)."""
    plugin = Plugin(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    csi_path = socket_path(settings.endpoint)
    servers = [await _unix_server(csi_path, csi_services(plugin))]
    log.info("serving %s on %s", DRIVER_NAME, csi_path)
    if plugin.mounter is not None:
        where = plugin.mounter.socket_path
        log.info("agents start through the mounter on %s", where)
        if not await asyncio.to_thread(plugin.mounter.health):
            log.warning("the mounter does not answer on %s (yet): mounts wait for it", where)
    if settings.registration_dir is not None:
        reg_path = settings.registration_dir / f"{DRIVER_NAME}-reg.sock"
        servers.append(await _unix_server(reg_path, [registration_service(plugin)]))
        log.info("plugin registration on %s", reg_path)
    runner = await _metrics_site(plugin) if settings.metrics_port is not None else None
    health = asyncio.create_task(plugin.health_loop())
    try:
        await stop.wait()
    finally:
        health.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health
        for server in servers:
            await server.stop(5)
        if runner is not None:
            await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(csi_path)
    # Agents keep running: they serve pods whether or not the plugin does.
    log.info("stopped; the mounts stay")


def run(settings: PluginSettings) -> None:
    asyncio.run(serve(settings))
