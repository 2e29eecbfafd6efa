"""StoragePod handlers: apply the rendered children, report how the pods are doing."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
from pydantic import ValidationError

from .. import apply
from ..conditions import set_condition
from ..naming import MANAGED_BY
from ..resources import storagepod
from ..resources.storagepod import StoragePodSpec
from ..resync import resync_seconds
from ..schema import GROUP, VERSION
from .common import namespace_of, parse_spec

RESOURCE = (GROUP, VERSION, storagepod.KIND.plural)
KIND_NAME = storagepod.KIND.kind
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
    await _converge(body, name, namespace, _spec(body), patch)


@kopf.timer(*RESOURCE, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, idle=5)
async def resync(
    body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, **_: Any
) -> None:
    """Put back a child someone deleted or edited, and refresh the status."""
    try:
        spec = _spec(body)
    except kopf.PermanentError:
        return
    await _converge(body, name, namespace, spec, patch)


async def _converge(
    body: kopf.Body, name: str, namespace: str | None, spec: StoragePodSpec, patch: kopf.Patch
) -> None:
    """Apply every rendered child (owned by the StoragePod), then report the status."""
    for child in storagepod.render(name, namespace_of(namespace), spec):
        await apply.apply(child, owner=body)
    await _report(body, name, namespace, spec, patch)


async def _report(
    body: kopf.Body, name: str, namespace: str | None, spec: StoragePodSpec, patch: kopf.Patch
) -> None:
    sts = await apply.get("apps/v1", "StatefulSet", storagepod.statefulset_name(name), namespace)
    service = await apply.get("v1", "Service", storagepod.client_name(name), namespace)
    ip = ((service or {}).get("spec") or {}).get("clusterIP") or ""
    endpoint = f"{ip}:{storagepod.POD_PORT}" if ip else ""
    status = pods_status(body, spec, (sts or {}).get("status") or {})
    token = await _token(namespace_of(namespace), spec) if status["readyReplicas"] else None
    held, cached = await _stats(endpoint, token) if status["readyReplicas"] else (0, 0)
    patch.status.update(
        {
            **status,
            "heldBytes": held,
            "cachedBytes": cached,
            "endpoint": endpoint,
            "selector": ",".join(f"{k}={v}" for k, v in storagepod.labels(name).items()),
        }
    )


def pods_status(
    body: Mapping[str, Any], spec: StoragePodSpec, sts_status: Mapping[str, Any]
) -> dict[str, Any]:
    """The StoragePod's pod counts and Ready condition, from its StatefulSet's status."""
    ready = int(sts_status.get("readyReplicas") or 0)
    generation = (body.get("metadata") or {}).get("generation")
    conditions = set_condition(
        list((body.get("status") or {}).get("conditions") or []),
        "Ready",
        ready >= spec.replicas > 0 or spec.replicas == 0,
        "PodsReady" if ready >= spec.replicas else "PodsStarting",
        f"{ready} of {spec.replicas} storage pods ready",
        generation,
    )
    return {
        "replicas": int(sts_status.get("replicas") or 0),
        "readyReplicas": ready,
        "observedGeneration": generation,
        "conditions": conditions,
    }


@kopf.on.event(
    "apps",
    "v1",
    "statefulsets",
    labels={
        "app.kubernetes.io/component": "storage-pod",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    },
)
async def statefulset_changed(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """Pods became ready or went away: say so in the owner's status now, not at the
    next resync (``kubectl get storagepods`` and ``kubectl scale`` users watch it)."""
    owner = next(
        (o for o in body.metadata.get("ownerReferences") or [] if o.get("kind") == KIND_NAME),
        None,
    )
    if owner is None or not namespace:
        return
    parent = await apply.get(f"{GROUP}/{VERSION}", KIND_NAME, owner["name"], namespace)
    if parent is None or parent.get("metadata", {}).get("deletionTimestamp"):
        return
    try:
        spec = StoragePodSpec.model_validate(parent.get("spec") or {})
    except ValidationError:
        return
    status = pods_status(parent, spec, body.get("status") or {})
    old = parent.get("status") or {}
    if all(old.get(key) == value for key, value in status.items() if key != "conditions") and [
        (c.get("type"), c.get("status"), c.get("message")) for c in old.get("conditions") or []
    ] == [(c["type"], c["status"], c["message"]) for c in status["conditions"]]:
        return
    await apply.patch_status(RESOURCE, owner["name"], namespace, status)


async def _token(namespace: str, spec: StoragePodSpec) -> str | None:
    """A token the pods accept (the first of their token Secret), for their stats."""
    if spec.token_secret is None:
        return None
    tokens = await apply.secret_value(namespace, spec.token_secret, "tokens")
    for line in (tokens or "").splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            return words[0]
    return None


async def _stats(endpoint: str, token: str | None = None) -> tuple[int, int]:
    """Bytes held and cached in the region: each live member's own figures, summed
    (one pod's ``/v1/stats`` lists the members and counts only its own chunks)."""
    if not endpoint:
        return 0, 0
    timeout = aiohttp.ClientTimeout(total=3)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        first = await _pod_stats(session, f"http://{endpoint}")
        if first is None:
            return 0, 0
        held, cached = int(first.get("bytes_held", 0)), int(first.get("bytes_cached", 0))
        for member in first.get("members", []):
            if member.get("self") or not member.get("alive"):
                continue
            other = await _pod_stats(session, str(member.get("url", "")))
            if other is not None:
                held += int(other.get("bytes_held", 0))
                cached += int(other.get("bytes_cached", 0))
    return held, cached


async def _pod_stats(session: aiohttp.ClientSession, base: str) -> dict[str, Any] | None:
    try:
        async with session.get(f"{base}/v1/stats") as response:
            if response.status != 200:
                log.info("no stats from storage pod %s: HTTP %d", base, response.status)
                return None
            stats: dict[str, Any] = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.info("no stats from storage pod %s: %s", base, exc)
        return None
    return stats
