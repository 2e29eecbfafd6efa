"""DriveVolume handlers: make the drive in its stores, then its volume and claim.

The PersistentVolume is cluster-scoped, so it cannot be owned by the namespaced
DriveVolume: the delete handler removes it, and removes the drive's data only
when ``reclaimPolicy`` is ``Delete``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from mediadrive.core.errors import MediadriveError
from mediadrive.core.policy import TierPolicy

from .. import apply
from ..conditions import set_condition
from ..drives import destroy_drive, ensure_drive
from ..resources import drivevolume, storagepod
from ..resources.drivevolume import DriveVolumeSpec
from ..resync import resync_seconds
from ..schema import GROUP, VERSION
from .common import namespace_of, parse_spec
from .tierpolicy import apply_policy

RESOURCE = (GROUP, VERSION, drivevolume.KIND.plural)
TIER_POLICY = (GROUP, VERSION, "tierpolicies")
RESYNC_SECONDS = resync_seconds(30.0)
# Waiting for a Secret or a StoragePod someone has yet to create.
WAIT_SECONDS = 10.0

log = logging.getLogger(__name__)


async def _meta_url(namespace: str, spec: DriveVolumeSpec) -> str:
    ref = spec.metadata.secret_ref
    url = await apply.secret_value(namespace, ref.name, ref.key)
    if url is None:
        raise kopf.TemporaryError(
            f"spec.metadata.secretRef: Secret {ref.name!r} with key {ref.key!r} "
            f"is not in namespace {namespace}",
            delay=WAIT_SECONDS,
        )
    return url.strip()


async def _s3_keys(namespace: str, spec: DriveVolumeSpec) -> tuple[str, str] | None:
    creds = spec.object_store.credentials_secret
    if creds is None:
        return None
    key_id = await apply.secret_value(namespace, creds.name, creds.access_key_id_key)
    secret = await apply.secret_value(namespace, creds.name, creds.secret_access_key_key)
    if key_id is None or secret is None:
        raise kopf.TemporaryError(
            f"spec.objectStore.credentialsSecret: Secret {creds.name!r} needs keys "
            f"{creds.access_key_id_key!r} and {creds.secret_access_key_key!r}",
            delay=WAIT_SECONDS,
        )
    return key_id, secret


async def _pod_urls(namespace: str, name: str, spec: DriveVolumeSpec) -> dict[str, str]:
    """``pod://CLUSTER_IP:PORT/DRIVE`` per region (an IP: nodes may have no cluster DNS)."""
    urls = {}
    for ref in spec.storage_pods:
        service = await apply.get("v1", "Service", storagepod.client_name(ref.name), namespace)
        ip = ((service or {}).get("spec") or {}).get("clusterIP")
        if not ip:
            raise kopf.TemporaryError(
                f"spec.storagePods: StoragePod {ref.name!r} (region {ref.region}) has no "
                "Service yet",
                delay=WAIT_SECONDS,
            )
        drive = drivevolume.drive_name(name, spec)
        urls[ref.region] = f"pod://{ip}:{storagepod.POD_PORT}/{drive}"
    return urls


async def _pod_token(namespace: str, name: str, spec: DriveVolumeSpec) -> str | None:
    """The ``podToken`` for the mount Secret: a token of the StoragePods' token
    Secrets that opens this drive on all of them (None when they use no tokens)."""
    files = []
    for ref in spec.storage_pods:
        body = await apply.get(f"{GROUP}/{VERSION}", storagepod.KIND.kind, ref.name, namespace)
        if body is None:
            raise kopf.TemporaryError(
                f"spec.storagePods: StoragePod {ref.name!r} (region {ref.region}) is not in "
                f"namespace {namespace}",
                delay=WAIT_SECONDS,
            )
        secret = (body.get("spec") or {}).get("tokenSecret")
        if not secret:
            continue
        tokens = await apply.secret_value(namespace, secret, storagepod.TOKENS_KEY)
        if tokens is None:
            raise kopf.TemporaryError(
                f"spec.storagePods: StoragePod {ref.name!r} names token Secret {secret!r}, "
                f"which has no key {storagepod.TOKENS_KEY!r} in namespace {namespace}",
                delay=WAIT_SECONDS,
            )
        files.append((secret, tokens))
    if not files:
        return None
    drive = drivevolume.drive_name(name, spec)
    token = drivevolume.pod_token(drive, [tokens for _, tokens in files])
    if token is None:
        raise kopf.TemporaryError(
            f"spec.storagePods: no token opens drive {drive!r} on every storage pod; add "
            f"a line `TOKEN {drive}` (the same token) to Secrets "
            + ", ".join(sorted({secret for secret, _ in files})),
            delay=WAIT_SECONDS,
        )
    return token


async def _follow_policy(namespace: str, name: str, spec: DriveVolumeSpec, meta_url: str) -> None:
    if spec.tier_policy_ref is None:
        return
    body = await apply.get(f"{GROUP}/{VERSION}", "TierPolicy", spec.tier_policy_ref, namespace)
    if body is None:
        raise kopf.TemporaryError(
            f"spec.tierPolicyRef: TierPolicy {spec.tier_policy_ref!r} is not in namespace "
            f"{namespace}",
            delay=WAIT_SECONDS,
        )
    policy = TierPolicy.model_validate(body.get("spec") or {})
    await apply_policy(drivevolume.drive_name(name, spec), meta_url, policy)
    await _list_follower(namespace, spec.tier_policy_ref, body, name, True)


async def _list_follower(
    namespace: str, policy: str, body: Mapping[str, Any] | None, volume: str, follows: bool
) -> None:
    """Keep the TierPolicy's ``status.drives`` (its DRIVES column) naming its followers."""
    if body is None:
        body = await apply.get(f"{GROUP}/{VERSION}", "TierPolicy", policy, namespace)
        if body is None:
            return
    drives = set((body.get("status") or {}).get("drives") or [])
    wanted = drives | {volume} if follows else drives - {volume}
    if wanted != drives:
        await apply.patch_status(TIER_POLICY, policy, namespace, {"drives": sorted(wanted)})


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@kopf.timer(*RESOURCE, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, idle=5)
async def reconcile(
    body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, **_: Any
) -> None:
    ns = namespace_of(namespace)
    spec = parse_spec(DriveVolumeSpec, body)
    conditions = list(body.get("status", {}).get("conditions") or [])
    generation = body.metadata.get("generation")
    try:
        meta_url = await _meta_url(ns, spec)
        keys = await _s3_keys(ns, spec)
        urls = await _pod_urls(ns, name, spec)
        token = await _pod_token(ns, name, spec)
        await ensure_drive(drivevolume.drive_name(name, spec), meta_url)
        await _follow_policy(ns, name, spec, meta_url)
    except (kopf.TemporaryError, MediadriveError) as exc:
        reason = "Waiting" if isinstance(exc, kopf.TemporaryError) else "StoreError"
        patch.status["phase"] = "Degraded"
        patch.status["conditions"] = set_condition(
            set_condition(conditions, "Ready", False, reason, str(exc), generation),
            "Degraded",
            True,
            reason,
            str(exc),
            generation,
        )
        if isinstance(exc, kopf.TemporaryError):
            raise
        raise kopf.TemporaryError(str(exc), delay=WAIT_SECONDS) from None
    await apply.apply(drivevolume.mount_secret(name, ns, meta_url, keys, token), owner=body)
    pv, *claims = drivevolume.render(name, ns, spec, urls)
    await apply.apply(pv)
    for pvc in claims:
        await apply.apply(pvc, owner=body)
    conditions = set_condition(conditions, "Degraded", False, "Reconciled", "", generation)
    patch.status.update(
        {
            "phase": "Ready",
            "drive": drivevolume.drive_name(name, spec),
            "persistentVolume": pv["metadata"]["name"],
            "persistentVolumeClaim": drivevolume.claim_name(name, spec),
            "observedGeneration": generation,
            "conditions": set_condition(
                conditions, "Ready", True, "Reconciled", "volume and claim are in place", generation
            ),
        }
    )


@kopf.on.delete(*RESOURCE)
async def remove(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
    ns = namespace_of(namespace)
    spec = parse_spec(DriveVolumeSpec, body)
    pv = drivevolume.pv_name(ns, name, spec)
    await apply.delete("v1", "PersistentVolume", pv)
    if spec.tier_policy_ref is not None:
        await _list_follower(ns, spec.tier_policy_ref, None, name, False)
    if spec.reclaim_policy != "Delete":
        log.info("drive %s kept (reclaimPolicy Retain)", drivevolume.drive_name(name, spec))
        return
    meta_url = await _meta_url(ns, spec)
    keys = await _s3_keys(ns, spec)
    await destroy_drive(
        drivevolume.drive_name(name, spec), meta_url, spec.object_store.store_url(), keys
    )
