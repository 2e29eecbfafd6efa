"""``mediadrive csi-node``: the CSI node plugin kubelet calls (``docs/csi.md``).

Only typer is imported here; gRPC and the node agent load when ``run`` runs, so
``mediadrive --help`` stays quick.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Run the CSI node plugin: mounts drives into pods for kubelet.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("run")
def run(
    endpoint: Annotated[
        str, typer.Option(help="The CSI socket to serve, unix:///PATH.", envvar="CSI_ENDPOINT")
    ],
    node_id: Annotated[
        str, typer.Option(help="This node's id (its Kubernetes node name).", envvar="NODE_ID")
    ],
    registration_dir: Annotated[
        Path | None,
        typer.Option(
            help="Serve kubelet's plugin registration here "
            "(e.g. /var/lib/kubelet/plugins_registry)."
        ),
    ] = None,
    kubelet_endpoint: Annotated[
        str | None,
        typer.Option(help="The CSI socket's path as kubelet sees it [default: --endpoint's]."),
    ] = None,
    state_dir: Annotated[
        Path,
        typer.Option(help="Where staged volumes, agent sockets and caches are kept."),
    ] = Path("/var/lib/mediadrive/csi"),
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve /metrics and /healthz on this port.", min=0, max=65535),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(help="This node's region: picks the storage pods (pod.REGION)."),
    ] = None,
    max_volumes: Annotated[
        int, typer.Option(help="Volumes this node takes; 0: no limit.", min=0)
    ] = 0,
    health_interval: Annotated[
        float, typer.Option(help="Seconds between checks of the agents.", min=0.1)
    ] = 10.0,
    mounter: Annotated[
        str | None,
        typer.Option(
            help="Start agents through the mounter on this socket, unix:///PATH "
            "(`csi-node mounter`); without it they are this process's children."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve CSI Identity and Node on ENDPOINT until SIGTERM; mounts stay when it stops."""
    from mediadrive.core.errors import ConfigError

    try:
        from mediadrive.node.csi.server import LogFormatter, PluginSettings, socket_path
        from mediadrive.node.csi.server import run as serve
    except ImportError:
        raise ConfigError(
            "the node agent is not installed here (install the mediadrive-node package)"
        ) from None
    try:
        socket_path(endpoint)
    except ValueError as exc:
        raise ConfigError(f"--endpoint: {exc}") from None
    if mounter is not None:
        try:
            socket_path(mounter)
        except ValueError as exc:
            raise ConfigError(f"--mounter: {exc}") from None
    _log_to_stderr(LogFormatter(), log_level)
    serve(
        PluginSettings(
            endpoint=endpoint,
            node_id=node_id,
            state_dir=state_dir.absolute(),
            registration_dir=registration_dir,
            kubelet_endpoint=kubelet_endpoint,
            metrics_port=metrics_port,
            region=region,
            max_volumes=max_volumes,
            health_interval=health_interval,
            mounter=mounter,
        )
    )


@app.command("mounter")
def mounter(
    socket: Annotated[
        str,
        typer.Option(
            help="The socket to serve, unix:///PATH; the plugin's --mounter.",
            envvar="MOUNTER_SOCKET",
        ),
    ],
    state_dir: Annotated[
        Path,
        typer.Option(help="The plugin's --state-dir: agents' caches and sockets are there."),
    ] = Path("/var/lib/mediadrive/csi"),
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Start node agents for the plugin (`run --mounter`) until SIGTERM, as this
    process's children: in its own container, they outlive the plugin's container."""
    from mediadrive.core.errors import ConfigError

    try:
        from mediadrive.node.csi.mounter import MounterSettings
        from mediadrive.node.csi.mounter import run as serve
        from mediadrive.node.csi.server import LogFormatter, socket_path
    except ImportError:
        raise ConfigError(
            "the node agent is not installed here (install the mediadrive-node package)"
        ) from None
    try:
        socket_path(socket)
    except ValueError as exc:
        raise ConfigError(f"--socket: {exc}") from None
    _log_to_stderr(LogFormatter(), log_level)
    serve(MounterSettings(socket=socket, state_dir=state_dir.absolute()))


def _log_to_stderr(formatter: logging.Formatter, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])
