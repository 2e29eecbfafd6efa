"""``mediadrive storage-pod``: run a regional storage pod (``docs/storage-pods.md``).

Only typer is imported here; the pod's server (aiohttp, prometheus-client) loads
when ``serve`` runs, so ``mediadrive --help`` stays quick.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mediadrive.pod.settings import PodSettings

app = typer.Typer(
    help="Run a regional storage pod: held and cached chunks between machines and the cloud.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _settings(values: dict[str, Any]) -> PodSettings:
    from pydantic import ValidationError

    from mediadrive.core.errors import ConfigError

    try:
        from mediadrive.pod.settings import PodSettings, settings_error
    except ImportError:
        # The CLI's distribution does not depend on the pod's.
        raise ConfigError(
            "the storage pod is not installed here (install the mediadrive-pod package)"
        ) from None
    try:
        return PodSettings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(settings_error(exc)) from None


def _relay(pairs: list[str]) -> dict[str, str]:
    from mediadrive.core.errors import ConfigError

    relay: dict[str, str] = {}
    for pair in pairs:
        drive, sep, url = pair.partition("=")
        if not sep or not drive or not url:
            raise ConfigError(f"--relay {pair!r}: write DRIVE=META_URL")
        relay[drive] = url
    return relay


@app.command("serve")
def serve(
    data: Annotated[
        Path | None,
        typer.Option(help="Folder for the pod's chunks and index [or MEDIADRIVE_POD_DATA]."),
    ] = None,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on [default: 0.0.0.0:8600].")
    ] = None,
    capacity: Annotated[
        str | None, typer.Option(help="Bound of held + cached bytes, e.g. 500GiB.")
    ] = None,
    upstream: Annotated[
        str | None, typer.Option(help="Blob store URL cached chunks are read from on a miss.")
    ] = None,
    region: Annotated[str | None, typer.Option(help="The region this pod serves.")] = None,
    peers: Annotated[
        str | None, typer.Option(help="Other pods' base URLs, comma-separated.")
    ] = None,
    peers_dns: Annotated[
        str | None, typer.Option(help="A DNS name whose A records are the pods (same port).")
    ] = None,
    replication: Annotated[
        int | None, typer.Option(help="Members holding each held chunk.")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="Bearer tokens, one `TOKEN DRIVE[,DRIVE...]` or `TOKEN *` a line."),
    ] = None,
    relay: Annotated[
        list[str] | None, typer.Option(help="DRIVE=META_URL: relay the drive's events.")
    ] = None,
    advertise: Annotated[
        str | None, typer.Option(help="The URL peers reach this pod at [default: http://LISTEN].")
    ] = None,
    probe_interval: Annotated[
        str | None, typer.Option(help="How often peers are probed, e.g. 5s.")
    ] = None,
    sweep_interval: Annotated[
        str | None, typer.Option(help="How often expired held chunks are removed, e.g. 1m.")
    ] = None,
) -> None:
    """Serve chunks until SIGTERM, then drain: hand held chunks to the other members."""
    from mediadrive.core.errors import MediadriveError

    try:
        settings = _settings(
            {
                "data": data,
                "listen": listen,
                "capacity": capacity,
                "upstream": upstream,
                "region": region,
                "peers": [p for p in peers.split(",") if p.strip()] if peers else None,
                "peers_dns": peers_dns,
                "replication": replication,
                "token_file": token_file,
                "relay": _relay(relay) if relay else None,
                "advertise": advertise,
                "probe_interval": probe_interval,
                "sweep_interval": sweep_interval,
            }
        )
        from mediadrive.pod.service import serve as serve_pod
        from mediadrive.pod.service import setup_logging

        setup_logging()
        asyncio.run(serve_pod(settings))
    except MediadriveError as exc:
        from mediadrive.core.credentials import redact_url

        sys.stderr.write(f"mediadrive: error: {redact_url(str(exc))}\n")
        raise typer.Exit(1) from None
