"""DriveVolume: a drive, as a PersistentVolume for the CSI driver and a claim on it.

``render`` is pure: from the DriveVolume, the Secrets it names and the
storage pods of its regions it builds the children. Pods mount the claim;
the node plugin (``csi.mediadrive.io``) receives what it needs in the
volume's attributes and, for secrets, one Secret the operator composes.

A DriveVolume made for a user's claim (dynamic provisioning, ``claimRef``)
renders no claim of its own: its PersistentVolume is bound to that claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..naming import child_labels, qualified
from ..schema import Column, Kind
from .k8s_types import Condition, ObjectName, ObjectStore, Quantity, SecretKeyRef, Spec

CSI_DRIVER = "csi.mediadrive.io"
DRIVE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# A DNS-1123 subdomain: the names of claims and storage classes.
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# What Kubernetes and its tools read to tell who made a volume.
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
# On a provisioned PersistentVolume: the DriveVolume (NAMESPACE/NAME) behind it.
DRIVE_VOLUME_ANNOTATION = "mediadrive.io/drive-volume"
AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]


class PodRef(Spec):
    """The StoragePod (in the same namespace) serving one region."""

    region: str = Field(min_length=1, max_length=63)
    name: ObjectName


class Workspace(Spec):
    """A named folder of the drive that a pod may mount alone."""

    name: ObjectName
    path: str = Field(pattern=r"^/[^\x00]*$")


class MetadataStore(Spec):
    """The Secret key holding the metadata store's URL (PostgreSQL or CockroachDB DSN)."""

    secret_ref: SecretKeyRef = Field(alias="secretRef")


class ClaimRef(Spec):
    """The PersistentVolumeClaim (in the same namespace) this DriveVolume was made
    for by dynamic provisioning; its PersistentVolume is bound to exactly that claim."""

    name: str = Field(min_length=1, max_length=253, pattern=SUBDOMAIN_PATTERN)
    uid: str = Field(min_length=1, max_length=128)
    storage_class_name: str = Field(
        alias="storageClassName", min_length=1, max_length=253, pattern=SUBDOMAIN_PATTERN
    )
    access_modes: list[AccessMode] = Field(
        ["ReadWriteMany"], alias="accessModes", min_length=1, max_length=4
    )


class DriveVolumeSpec(Spec):
    drive_name: str | None = Field(
        None,
        alias="driveName",
        pattern=DRIVE_NAME_PATTERN,
        description="the drive's name in its stores; default: the DriveVolume's name",
    )
    metadata: MetadataStore
    object_store: ObjectStore = Field(alias="objectStore")
    tier_policy_ref: ObjectName | None = Field(None, alias="tierPolicyRef")
    storage_pods: list[PodRef] = Field([], alias="storagePods", max_length=16)
    workspaces: list[Workspace] = Field([], max_length=64)
    reclaim_policy: Literal["Retain", "Delete"] = Field("Retain", alias="reclaimPolicy")
    capacity: Quantity = Field("1Ti", description="the size the PersistentVolume announces")
    claim_ref: ClaimRef | None = Field(
        None,
        alias="claimRef",
        description="set by dynamic provisioning: the claim the PersistentVolume is bound to "
        "(no claim of its own is made)",
    )


class DriveVolumeStatus(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    phase: Literal["Pending", "Ready", "Degraded", "Deleting"] = "Pending"
    drive: str = ""
    persistent_volume: str = Field("", alias="persistentVolume")
    persistent_volume_claim: str = Field("", alias="persistentVolumeClaim")
    observed_generation: int | None = Field(None, alias="observedGeneration")
    conditions: list[Condition] = []


KIND = Kind(
    kind="DriveVolume",
    plural="drivevolumes",
    short_names=("dv", "drive"),
    spec=DriveVolumeSpec,
    status=DriveVolumeStatus,
    columns=(
        Column("Drive", ".status.drive"),
        Column("Phase", ".status.phase"),
        Column("Policy", ".spec.tierPolicyRef"),
        Column("Claim", ".status.persistentVolumeClaim"),
        Column("Reclaim", ".spec.reclaimPolicy"),
    ),
    validations=(
        {
            "rule": "self.workspaces.all(w, self.workspaces.exists_one(v, v.name == w.name))",
            "message": "workspace names must be unique",
            "fieldPath": ".workspaces",
        },
        {
            "rule": "self.storagePods.all(p, self.storagePods.exists_one(q, q.region == p.region))",
            "message": "one StoragePod per region",
            "fieldPath": ".storagePods",
        },
    ),
)


def drive_name(name: str, spec: DriveVolumeSpec) -> str:
    return spec.drive_name or name


def volume_handle(namespace: str, name: str, spec: DriveVolumeSpec) -> str:
    """The PersistentVolume's handle: unique in the cluster, stable for the drive."""
    return f"{namespace}.{drive_name(name, spec)}"


def pv_name(namespace: str, name: str, spec: DriveVolumeSpec | None = None) -> str:
    """The PersistentVolume's name: ``pvc-UID`` for a provisioned claim (as every
    provisioner names them), else ``mediadrive-NAMESPACE-NAME``."""
    if spec is not None and spec.claim_ref is not None:
        return f"pvc-{spec.claim_ref.uid}"
    return qualified(f"mediadrive-{namespace}", name)


def claim_name(name: str, spec: DriveVolumeSpec) -> str:
    """The claim pods mount: the user's for a provisioned volume, else ``NAME-drive``."""
    if spec.claim_ref is not None:
        return spec.claim_ref.name
    return qualified(name, "drive")


def mount_secret_name(name: str) -> str:
    return qualified(name, "mount")


def mount_secret(
    name: str,
    namespace: str,
    meta_url: str,
    s3_keys: tuple[str, str] | None,
    pod_token: str | None = None,
) -> dict[str, Any]:
    """One Secret with every credential the node plugin needs for this drive:
    ``podToken`` is a bearer token the drive's storage pods accept for it."""
    data = {"metaUrl": meta_url}
    if s3_keys is not None:
        data["awsAccessKeyId"], data["awsSecretAccessKey"] = s3_keys
    if pod_token:
        data["podToken"] = pod_token
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": mount_secret_name(name),
            "namespace": namespace,
            "labels": child_labels("drive-volume", name),
        },
        "type": "Opaque",
        "stringData": data,
    }


ANY_DRIVE = "*"


def token_scopes(text: str) -> dict[str, frozenset[str]]:
    """A storage pod's token file as the pods read it: ``TOKEN DRIVE[,DRIVE...]``
    or ``TOKEN *`` a line; blank lines, ``#`` comments and malformed lines (which
    the pods themselves refuse) give nothing."""
    scopes: dict[str, frozenset[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) != 2 or words[0].startswith("#"):
            continue
        drives = frozenset(d for d in words[1].split(",") if d)
        scopes[words[0]] = scopes.get(words[0], frozenset()) | drives
    return scopes


def pod_token(drive: str, token_files: Sequence[str]) -> str | None:
    """A token that opens ``drive`` on every one of its storage pods (one token file
    per StoragePod that uses tokens): the node plugin takes one ``podToken`` for
    whichever region it mounts from. A token scoped to the drive is preferred to a
    ``*`` token (every drive's, the one the pods talk to each other with); the
    first one in the first file wins. None when no token opens it everywhere."""
    if not token_files:
        return None
    files = [token_scopes(text) for text in token_files]

    def opens(token: str, scopes: dict[str, frozenset[str]], exact: bool) -> bool:
        drives = scopes.get(token, frozenset())
        return drive in drives or (not exact and ANY_DRIVE in drives)

    for exact in (True, False):
        for token in files[0]:
            if all(opens(token, scopes, exact) for scopes in files):
                return token
    return None


def volume_attributes(name: str, spec: DriveVolumeSpec, pod_urls: dict[str, str]) -> dict[str, str]:
    """What a node needs to mount the drive, besides secrets (all strings, by CSI)."""
    attributes = {
        "drive": drive_name(name, spec),
        "storeUrl": spec.object_store.store_url(),
    }
    if spec.tier_policy_ref:
        attributes["tierPolicy"] = spec.tier_policy_ref
    for region, url in sorted(pod_urls.items()):
        attributes[f"pod.{region}"] = url
    for workspace in spec.workspaces:
        attributes[f"workspace.{workspace.name}"] = workspace.path
    return attributes


def render(
    name: str, namespace: str, spec: DriveVolumeSpec, pod_urls: dict[str, str]
) -> list[dict[str, Any]]:
    """The PersistentVolume and its claim (the mount Secret is rendered apart: it
    carries values read from other Secrets). A provisioned DriveVolume
    (``claimRef``) renders only the volume, bound to the user's claim."""
    labels = child_labels("drive-volume", name)
    volume = pv_name(namespace, name, spec)
    claim = claim_name(name, spec)
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": volume, "labels": labels},
        "spec": {
            "capacity": {"storage": spec.capacity},
            "accessModes": ["ReadWriteMany"],
            # The operator, not Kubernetes, decides what happens to the drive's data.
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"namespace": namespace, "name": claim},
            "csi": {
                "driver": CSI_DRIVER,
                "volumeHandle": volume_handle(namespace, name, spec),
                "volumeAttributes": volume_attributes(name, spec, pod_urls),
                # Stage mounts the drive once per node; publish binds it into pods.
                "nodeStageSecretRef": {"name": mount_secret_name(name), "namespace": namespace},
                "nodePublishSecretRef": {"name": mount_secret_name(name), "namespace": namespace},
            },
        },
    }
    if spec.claim_ref is not None:
        return [_bind_to_claim(pv, name, namespace, spec.reclaim_policy, spec.claim_ref)]
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": namespace, "labels": labels},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": volume,
            "resources": {"requests": {"storage": spec.capacity}},
        },
    }
    return [pv, pvc]


def _bind_to_claim(
    pv: dict[str, Any], name: str, namespace: str, reclaim: str, claim: ClaimRef
) -> dict[str, Any]:
    """A provisioned volume: pre-bound to the claim (its uid too, so a claim made
    again under the same name never gets it), in the claim's class; Kubernetes'
    reclaim policy is the class's, acted on by the operator when it is Released."""
    pv["metadata"]["annotations"] = {
        PROVISIONED_BY: CSI_DRIVER,
        DRIVE_VOLUME_ANNOTATION: f"{namespace}/{name}",
    }
    pv["spec"].update(
        {
            "accessModes": list(claim.access_modes),
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": claim.storage_class_name,
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": namespace,
                "name": claim.name,
                "uid": claim.uid,
            },
        }
    )
    return pv
