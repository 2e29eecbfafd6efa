"""StoragePod handlers: apply the rendered children, report how the pods are doing."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import kopf

from .. import apply
from ..conditions import set_condition
from ..resources import storagepod
from ..resources.storagepod import StoragePodSpec
from ..resync import resync_seconds
from ..schema import GROUP, VERSION
from .common import namespace_of, parse_spec

RESOURCE = (GROUP, VERSION, storagepod.KIND.plural)
# Drift repair and status: how often each StoragePod is looked at again.
RESYNC_SECONDS = resync_seconds(20.0)

log = logging.getLogger(__name__)


def _spec(body: kopf.Body) -> StoragePodSpec:
    return parse_spec(StoragePodSpec, body)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def reconcile(
    body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, **_: Any
) -> None:
    spec = _spec(body)
    for child in storagepod.render(name, namespace_of(namespace), spec):
        await apply.apply(child, owner=body)
    await _report(body, name, namespace, spec, patch)


@kopf.timer(*RESOURCE, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, idle=5)
async def resync(
    body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, **_: Any
) -> None:
    """Put back a child someone deleted or edited, and refresh the status."""
    try:
        spec = _spec(body)
    except kopf.PermanentError:
        return
    for child in storagepod.render(name, namespace_of(namespace), spec):
        await apply.apply(child, owner=body)
    await _report(body, name, namespace, spec, patch)


async def _report(
    body: kopf.Body, name: str, namespace: str | None, spec: StoragePodSpec, patch: kopf.Patch
) -> None:
    sts = await apply.get("apps/v1", "StatefulSet", storagepod.statefulset_name(name), namespace)
    sts_status = (sts or {}).get("status") or {}
    ready = int(sts_status.get("readyReplicas") or 0)
    service = await apply.get("v1", "Service", storagepod.client_name(name), namespace)
    ip = ((service or {}).get("spec") or {}).get("clusterIP") or ""
    endpoint = f"{ip}:{storagepod.POD_PORT}" if ip else ""
    held, cached = await _stats(endpoint) if ready else (0, 0)
    conditions = set_condition(
        list(body.get("status", {}).get("conditions") or []),
        "Ready",
        ready >= spec.replicas > 0 or spec.replicas == 0,
        "PodsReady" if ready >= spec.replicas else "PodsStarting",
        f"{ready} of {spec.replicas} storage pods ready",
        body.metadata.get("generation"),
    )
    patch.status.update(
        {
            "replicas": int(sts_status.get("replicas") or 0),
            "readyReplicas": ready,
            "heldBytes": held,
            "cachedBytes": cached,
            "endpoint": endpoint,
            "selector": ",".join(f"{k}={v}" for k, v in storagepod.labels(name).items()),
            "observedGeneration": body.metadata.get("generation"),
            "conditions": conditions,
        }
    )


async def _stats(endpoint: str) -> tuple[int, int]:
    """Bytes held and cached, summed over the region's pods as one of them reports."""
    if not endpoint:
        return 0, 0
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"http://{endpoint}/v1/stats") as response,
        ):
            if response.status != 200:
                return 0, 0
            stats = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.info("no stats from storage pods at %s: %s", endpoint, exc)
        return 0, 0
    return int(stats.get("held_bytes", 0)), int(stats.get("cached_bytes", 0))
