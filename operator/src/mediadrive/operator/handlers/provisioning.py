"""Dynamic provisioning handlers: a claim on a ``csi.mediadrive.io`` StorageClass
gets a DriveVolume, and a released volume is reclaimed as its class says.

These watch every claim and volume, most of them not the operator's, so they are
event handlers: kopf keeps no state on the objects (change handlers would write
their annotations onto every claim and volume in the cluster). What they do is
idempotent and decided from the object as it is; every claim and volume is seen
again when the operator starts, and a claim again whenever it changes (Kubernetes'
volume controller marks it for this provisioner once it waits for one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import kopf
from kubernetes.client import ApiException

from .. import apply
from ..resources import drivevolume, provisioning
from ..resources.provisioning import PROVISIONER, ProvisioningError
from ..schema import GROUP, VERSION

DRIVE_VOLUME_API = f"{GROUP}/{VERSION}"
DRIVE_VOLUME = drivevolume.KIND.kind
# Apiserver hiccups: how long to wait before each new try (then give up until the
# object changes or the operator starts again).
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)

log = logging.getLogger(__name__)
T = TypeVar("T")


def _transient(exc: Exception) -> bool:
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status >= 500 or exc.status in (409, 429)
    return isinstance(exc, OSError)


async def _retrying(what: str, call: Callable[[], Awaitable[T]]) -> T:
    for delay in (*RETRY_DELAYS, None):
        try:
            return await call()
        except Exception as exc:
            if delay is None or not _transient(exc):
                raise
            log.info("%s failed (%s); trying again in %.0f s", what, exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _pending_claim(body: kopf.Body, type: str | None = None, **_: Any) -> bool:
    return type != "DELETED" and provisioning.needs_volume(body)


@kopf.on.event("", "v1", "persistentvolumeclaims", when=_pending_claim)
async def claim_changed(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
    """A pending claim: make its DriveVolume if its class is this driver's."""
    class_name = str(body["spec"]["storageClassName"])
    storage_class = await _retrying(
        f"reading StorageClass {class_name}",
        lambda: apply.get("storage.k8s.io/v1", "StorageClass", class_name),
    )
    if storage_class is None or not provisioning.should_provision(body, storage_class):
        # A missing class is reported by Kubernetes on the claim; once the class is
        # there, the volume controller marks the claim, and it comes back here.
        return
    volume = provisioning.volume_name(str(body.metadata.uid))
    existing = await _retrying(
        f"reading DriveVolume {namespace}/{volume}",
        lambda: apply.get(DRIVE_VOLUME_API, DRIVE_VOLUME, volume, namespace),
    )
    if existing is not None:
        return
    try:
        obj = provisioning.drive_volume(body, storage_class)
        await _retrying(f"creating DriveVolume {namespace}/{volume}", lambda: apply.apply(obj))
    except ProvisioningError as exc:
        _refuse(body, f"StorageClass {class_name}: {exc}")
        return
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        _refuse(body, f"StorageClass {class_name}: DriveVolume {volume} refused: {exc.body}")
        return
    log.info("DriveVolume %s/%s made for claim %s", namespace, volume, name)
    kopf.info(
        body,
        reason="Provisioning",
        message=f"DriveVolume {volume} made for this claim; its PersistentVolume "
        f"pvc-{body.metadata.uid} is bound to the claim once the drive is ready "
        f"(kubectl get drivevolume {volume} -n {namespace} tells why it is not)",
    )


def _refuse(body: kopf.Body, message: str) -> None:
    """The claim stays Pending; its events say why (no retry: a StorageClass's
    parameters cannot change, a new class and claim are needed)."""
    log.warning("claim %s/%s: %s", body.metadata.namespace, body.metadata.name, message)
    kopf.warn(body, reason="ProvisioningFailed", message=message)


def _deleted_claim(body: kopf.Body, type: str | None = None, **_: Any) -> bool:
    return type == "DELETED" and bool((body.get("spec") or {}).get("storageClassName"))


@kopf.on.event("", "v1", "persistentvolumeclaims", when=_deleted_claim)
async def claim_deleted(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """A claim deleted before its volume was made (its DriveVolume never got
    Ready): no volume will be Released, so its DriveVolume is reclaimed here."""
    volume = provisioning.volume_name(str(body.metadata.uid))
    found = await _retrying(
        f"reading DriveVolume {namespace}/{volume}",
        lambda: apply.get(DRIVE_VOLUME_API, DRIVE_VOLUME, volume, namespace),
    )
    if found is None or ((found.get("spec") or {}).get("claimRef") or {}).get("uid") != (
        body.metadata.uid
    ):
        return
    pv = volume  # the PersistentVolume is named pvc-UID too
    if await apply.get("v1", "PersistentVolume", pv) is not None:
        return  # Released soon: volume_released decides
    if (found.get("spec") or {}).get("reclaimPolicy") != "Delete":
        log.info("claim %s/%s deleted: DriveVolume %s kept", namespace, body.metadata.name, volume)
        return
    log.info("claim %s/%s deleted: DriveVolume %s deleted", namespace, body.metadata.name, volume)
    await _retrying(
        f"deleting DriveVolume {namespace}/{volume}",
        lambda: apply.delete(DRIVE_VOLUME_API, DRIVE_VOLUME, volume, namespace),
    )


def _released(body: kopf.Body, type: str | None = None, **_: Any) -> bool:
    return type != "DELETED" and provisioning.release_action(body) is not None


@kopf.on.event(
    "",
    "v1",
    "persistentvolumes",
    annotations={drivevolume.PROVISIONED_BY: PROVISIONER},
    when=_released,
)
async def volume_released(body: kopf.Body, name: str, **_: Any) -> None:
    """A provisioned volume whose claim is gone: reclaim policy ``Delete`` removes
    its DriveVolume (whose own ``reclaimPolicy: Delete`` destroys the drive and its
    chunks) and the volume; ``Retain`` keeps both, the volume Released."""
    action = provisioning.release_action(body)
    if action is None:
        return
    what, namespace, volume = action
    if what == "retain":
        log.info("volume %s released: DriveVolume %s/%s and drive kept", name, namespace, volume)
        kopf.info(
            body,
            reason="Retained",
            message=f"claim deleted; reclaim policy Retain keeps DriveVolume "
            f"{namespace}/{volume} and its drive (delete the DriveVolume to let it go)",
        )
        return
    if await _retrying(
        f"deleting DriveVolume {namespace}/{volume}",
        lambda: apply.delete(DRIVE_VOLUME_API, DRIVE_VOLUME, volume, namespace),
    ):
        log.info("volume %s released: DriveVolume %s/%s deleted", name, namespace, volume)
    await _retrying(
        f"deleting PersistentVolume {name}", lambda: apply.delete("v1", "PersistentVolume", name)
    )
