"""``mediadrive operator run``: the kopf operator in this process.

Several replicas may run: kopf's peering keeps one active (the others wait), so
two operators never fight over the same objects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import kopf
from kopf._core.engines.peering import Identity
from prometheus_client import start_http_server

PEERING = "mediadrive"
ANNOTATION_PREFIX = "mediadrive.io"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and the last-handled spec live in annotations: the status keeps
    # only what the custom resources' schemas define.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.posting.level = logging.INFO
    settings.peering.name = PEERING
    settings.peering.mandatory = False
    settings.networking.error_backoffs = [1, 2, 5, 10, 30, 60]
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]


def load_handlers() -> None:
    from .handlers import (  # noqa: F401 - registers them
        drivevolume,
        provisioning,
        storagepod,
        tierpolicy,
    )


async def serve(
    namespaces: list[str],
    all_namespaces: bool,
    health_port: int,
    metrics_port: int,
    log_level: str = "info",
) -> None:
    load_handlers()
    kopf.configure(
        log_format=kopf.LogFormat.JSON,
        log_refkey="object",
        debug=log_level == "debug",
        quiet=log_level == "warning",
    )
    if metrics_port:
        start_http_server(metrics_port)
    await kopf.operator(
        clusterwide=all_namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
        peering_name=PEERING,
        identity=identity(),
    )


def identity() -> Identity:
    """This operator among its peers: the pod's name (its host name) and the process.

    kopf's default asks for the login name, which a user without a passwd entry (an
    arbitrary ``runAsUser``) does not have.
    """
    return Identity(f"mediadrive-operator@{socket.gethostname()}/{os.getpid()}")


def run(
    namespaces: list[str],
    all_namespaces: bool,
    health_port: int = 8080,
    metrics_port: int = 9090,
    log_level: str = "info",
) -> None:
    asyncio.run(serve(namespaces, all_namespaces, health_port, metrics_port, log_level))
