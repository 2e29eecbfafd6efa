"""``mediadrive operator ...``: present when the operator's distribution is installed."""

from __future__ import annotations

from typing import Annotated

import typer

operator_app = typer.Typer(
    help="Run the Kubernetes operator (DriveVolume, StoragePod, TierPolicy).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@operator_app.command("run")
def run(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")
    ] = False,
    health_port: Annotated[
        int, typer.Option(help="Port of /healthz (0: none).", min=0, max=65535)
    ] = 8080,
    metrics_port: Annotated[
        int, typer.Option(help="Port of Prometheus /metrics (0: none).", min=0, max=65535)
    ] = 9090,
    log_level: Annotated[
        str, typer.Option(help="debug, info or warning.", case_sensitive=False)
    ] = "info",
) -> None:
    """Reconcile mediadrive's custom resources until stopped."""
    if log_level.lower() not in ("debug", "info", "warning"):
        raise typer.BadParameter(f"--log-level {log_level!r}: use debug, info or warning")
    if all_namespaces == bool(namespace):
        raise typer.BadParameter("give --namespace NS (repeatable) or --all-namespaces")
    from mediadrive.operator.run import run as run_operator

    run_operator(namespace or [], all_namespaces, health_port, metrics_port, log_level.lower())


def register(app: typer.Typer) -> None:
    app.add_typer(operator_app, name="operator")
