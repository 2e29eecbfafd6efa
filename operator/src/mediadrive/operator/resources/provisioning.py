"""Dynamic provisioning: a claim on a ``csi.mediadrive.io`` StorageClass gets a drive.

Pure functions, as out-of-tree provisioners work: the StorageClass's
``parameters`` (all strings) describe the drive like a DriveVolume spec; a
claim that asks for a volume of such a class gets a DriveVolume ``pvc-UID`` in
its namespace with a ``claimRef`` to it, whose PersistentVolume is pre-bound
to the claim (Kubernetes' volume controller then binds the claim). When the
claim is deleted the volume is Released and its reclaim policy (the class's)
says whether the DriveVolume and the drive go too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import ValidationError

from ..naming import LABEL_PREFIX, MANAGED_BY
from ..schema import GROUP, VERSION
from .drivevolume import (
    CSI_DRIVER,
    DRIVE_VOLUME_ANNOTATION,
    KIND,
    PROVISIONED_BY,
    DriveVolumeSpec,
)
from .k8s_types import QUANTITY_PATTERN

PROVISIONER = CSI_DRIVER
# Set on a claim by Kubernetes' volume controller once it waits for an external
# provisioner (with WaitForFirstConsumer: once the claim's pod has a node).
STORAGE_PROVISIONER = (
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
)
SELECTED_NODE = "volume.kubernetes.io/selected-node"
# On a provisioned DriveVolume: the claim it was made for.
CLAIM_ANNOTATION = f"{LABEL_PREFIX}/claim"
CLAIM_UID_LABEL = f"{LABEL_PREFIX}/claim-uid"
STORAGE_CLASS_LABEL = f"{LABEL_PREFIX}/storage-class"

DEFAULT_SECRET_KEY = "url"
ReclaimPolicy = Literal["Retain", "Delete"]


class ProvisioningError(ValueError):
    """A claim that cannot get a volume as asked; ``field`` names what is wrong (a
    StorageClass parameter, or a field of the class or the claim)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _pairs(parameter: str, value: str, hint: str) -> list[tuple[str, str]]:
    """``KEY=VALUE,KEY=VALUE`` (spaces around items allowed; empty: none)."""
    found = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ProvisioningError(parameter, f"{item!r}: write {hint}")
        found.append((key.strip(), val.strip()))
    return found


def _unique(parameter: str, keys: list[str], what: str) -> None:
    seen = set()
    for key in keys:
        if key in seen:
            raise ProvisioningError(parameter, f"{what} {key!r} is given twice")
        seen.add(key)


def _metadata_secret(value: str) -> dict[str, Any]:
    name, sep, key = value.strip().partition("/")
    if sep and (not key or "/" in key):
        raise ProvisioningError("metadataSecret", f"{value!r}: write NAME or NAME/KEY")
    return {"secretRef": {"name": name, "key": key or DEFAULT_SECRET_KEY}}


def _storage_pods(value: str) -> list[dict[str, str]]:
    pairs = _pairs("storagePods", value, "REGION=STORAGEPOD[,REGION=STORAGEPOD...]")
    _unique("storagePods", [region for region, _ in pairs], "region")
    return [{"region": region, "name": name} for region, name in pairs]


def _workspaces(value: str) -> list[dict[str, str]]:
    pairs = _pairs("workspaces", value, "NAME=/PATH[,NAME=/PATH...]")
    _unique("workspaces", [name for name, _ in pairs], "workspace")
    return [{"name": name, "path": path} for name, path in pairs]


# Parameter -> where it goes in the spec (a function of its value).
_SETTERS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "metadataSecret": lambda spec, v: spec.update(metadata=_metadata_secret(v)),
    "bucket": lambda spec, v: spec["objectStore"].update(bucket=v),
    "prefix": lambda spec, v: spec["objectStore"].update(prefix=v),
    "endpoint": lambda spec, v: spec["objectStore"].update(endpoint=v),
    "region": lambda spec, v: spec["objectStore"].update(region=v),
    "credentialsSecret": lambda spec, v: spec["objectStore"].update(credentialsSecret={"name": v}),
    "tierPolicy": lambda spec, v: spec.update(tierPolicyRef=v),
    "storagePods": lambda spec, v: spec.update(storagePods=_storage_pods(v)),
    "workspaces": lambda spec, v: spec.update(workspaces=_workspaces(v)),
}
PARAMETERS = frozenset(_SETTERS)
REQUIRED = ("metadataSecret", "bucket")

# The first spec field of a validation error -> the parameter that set it.
_FIELD_PARAMETER = {
    "metadata": "metadataSecret",
    "tierPolicyRef": "tierPolicy",
    "storagePods": "storagePods",
    "workspaces": "workspaces",
    "capacity": "spec.resources.requests.storage",
    "claimRef": "claim",
    "reclaimPolicy": "reclaimPolicy",
}


def _parameter_of(loc: tuple[int | str, ...]) -> str:
    if loc[:1] == ("objectStore",) and len(loc) > 1:
        return str(loc[1])
    return _FIELD_PARAMETER.get(str(loc[0]), str(loc[0])) if loc else "parameters"


def volume_prefix(prefix: str, namespace: str, volume: str) -> str:
    """Where a provisioned drive keeps its chunks: its own folder under the class's
    ``prefix``. Never shared: deleting a volume deletes every chunk under it."""
    return "/".join(part for part in (prefix.strip("/"), namespace, volume) if part)


def parse_parameters(parameters: Mapping[str, str], namespace: str, volume: str) -> dict[str, Any]:
    """The DriveVolume spec fields a StorageClass's parameters give (for the volume
    ``volume`` in ``namespace``); a ProvisioningError names the first bad parameter."""
    unknown = sorted(set(parameters) - PARAMETERS)
    if unknown:
        raise ProvisioningError(
            unknown[0], f"unknown parameter (known: {', '.join(sorted(PARAMETERS))})"
        )
    for name in REQUIRED:
        if not str(parameters.get(name) or "").strip():
            raise ProvisioningError(name, "required")
    spec: dict[str, Any] = {"objectStore": {}}
    for name, value in parameters.items():
        if not isinstance(value, str):
            raise ProvisioningError(name, "must be a string")
        if value.strip():  # an empty optional parameter is one not given
            _SETTERS[name](spec, value.strip())
    store = spec["objectStore"]
    prefix = store.get("prefix", "")
    if not re.fullmatch(r"[A-Za-z0-9._/-]*", prefix):
        raise ProvisioningError("prefix", f"{prefix!r}: letters, digits, '.', '_', '-', '/' only")
    store["prefix"] = volume_prefix(prefix, namespace, volume)
    return spec


def reclaim_policy(storage_class: Mapping[str, Any]) -> ReclaimPolicy:
    """The class's ``reclaimPolicy`` (Kubernetes' default: Delete)."""
    policy = storage_class.get("reclaimPolicy") or "Delete"
    if policy not in ("Retain", "Delete"):
        raise ProvisioningError("reclaimPolicy", f"{policy!r}: Delete or Retain")
    return "Delete" if policy == "Delete" else "Retain"


def volume_name(claim_uid: str) -> str:
    """The DriveVolume (and the drive) made for a claim: unique, as the claim's uid is."""
    return f"pvc-{claim_uid}"


def _claim_fields(claim: Mapping[str, Any]) -> dict[str, Any]:
    meta = claim.get("metadata") or {}
    spec = claim.get("spec") or {}
    if (spec.get("volumeMode") or "Filesystem") != "Filesystem":
        raise ProvisioningError(
            "spec.volumeMode", f"{spec['volumeMode']!r}: a drive is a Filesystem volume"
        )
    storage = str(((spec.get("resources") or {}).get("requests") or {}).get("storage") or "")
    if not re.fullmatch(QUANTITY_PATTERN, storage):
        raise ProvisioningError(
            "spec.resources.requests.storage", f"{storage!r}: a size such as 10Gi is needed"
        )
    return {
        "capacity": storage,
        "claimRef": {
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "storageClassName": spec.get("storageClassName"),
            "accessModes": list(spec.get("accessModes") or ["ReadWriteMany"]),
        },
    }


def drive_volume_spec(
    claim: Mapping[str, Any], storage_class: Mapping[str, Any]
) -> DriveVolumeSpec:
    """The DriveVolume spec for ``claim``: the class's parameters, its reclaim
    policy, the claim's size and access modes, and a reference to the claim."""
    meta = claim.get("metadata") or {}
    volume = volume_name(str(meta.get("uid")))
    fields = parse_parameters(
        storage_class.get("parameters") or {}, str(meta.get("namespace")), volume
    )
    fields["reclaimPolicy"] = reclaim_policy(storage_class)
    fields.update(_claim_fields(claim))
    try:
        return DriveVolumeSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProvisioningError(_parameter_of(tuple(first["loc"])), first["msg"]) from None


def drive_volume(claim: Mapping[str, Any], storage_class: Mapping[str, Any]) -> dict[str, Any]:
    """The DriveVolume object made for ``claim`` (not owned by it: with ``Retain``
    the drive outlives the claim)."""
    meta = claim.get("metadata") or {}
    spec = drive_volume_spec(claim, storage_class)
    class_name = (storage_class.get("metadata") or {}).get("name", "")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND.kind,
        "metadata": {
            "name": volume_name(str(meta.get("uid"))),
            "namespace": meta.get("namespace"),
            "labels": {
                "app.kubernetes.io/managed-by": MANAGED_BY,
                CLAIM_UID_LABEL: str(meta.get("uid")),
                STORAGE_CLASS_LABEL: class_name[:63],
            },
            "annotations": {CLAIM_ANNOTATION: f"{meta.get('namespace')}/{meta.get('name')}"},
        },
        "spec": spec.model_dump(by_alias=True, exclude_none=True),
    }


def needs_volume(claim: Mapping[str, Any]) -> bool:
    """A claim that may be waiting for a provisioner: pending, unbound, in a class,
    and not handed to another provisioner (cheap: no lookups)."""
    meta = claim.get("metadata") or {}
    spec = claim.get("spec") or {}
    if meta.get("deletionTimestamp") or spec.get("volumeName"):
        return False
    if ((claim.get("status") or {}).get("phase") or "Pending") != "Pending":
        return False
    if not spec.get("storageClassName"):
        return False
    annotations = meta.get("annotations") or {}
    named = {annotations[key] for key in STORAGE_PROVISIONER if annotations.get(key)}
    return not named or PROVISIONER in named


def should_provision(claim: Mapping[str, Any], storage_class: Mapping[str, Any]) -> bool:
    """Whether ``claim`` gets a volume now: its class is this driver's, and with
    ``WaitForFirstConsumer`` a pod of the claim has been given a node."""
    if not needs_volume(claim) or storage_class.get("provisioner") != PROVISIONER:
        return False
    if storage_class.get("volumeBindingMode") == "WaitForFirstConsumer":
        annotations = (claim.get("metadata") or {}).get("annotations") or {}
        return bool(annotations.get(SELECTED_NODE))
    return True


def release_action(pv: Mapping[str, Any]) -> tuple[Literal["delete", "retain"], str, str] | None:
    """What to do with a volume this driver provisioned once its claim is gone
    (phase Released): ``("delete" | "retain", NAMESPACE, DRIVEVOLUME)``; None for
    any other volume (static DriveVolumes' volumes included)."""
    meta = pv.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if annotations.get(PROVISIONED_BY) != PROVISIONER:
        return None
    if ((pv.get("status") or {}).get("phase")) != "Released":
        return None
    namespace, sep, name = str(annotations.get(DRIVE_VOLUME_ANNOTATION) or "").partition("/")
    if not sep or not namespace or not name:
        return None
    policy = (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy")
    return ("delete" if policy == "Delete" else "retain"), namespace, name
