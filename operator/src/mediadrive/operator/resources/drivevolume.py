"""DriveVolume: a drive, as a PersistentVolume for the CSI driver and a claim on it.

``render`` is pure: from the DriveVolume, the Secrets it names and the
storage pods of its regions it builds the children. Pods mount the claim;
the node plugin (``csi.mediadrive.io``) receives what it needs in the
volume's attributes and, for secrets, one Secret the operator composes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..naming import child_labels, qualified
from ..schema import Column, Kind
from .k8s_types import Condition, ObjectName, ObjectStore, Quantity, SecretKeyRef, Spec

CSI_DRIVER = "csi.mediadrive.io"
DRIVE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


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


def pv_name(namespace: str, name: str) -> str:
    return qualified(f"mediadrive-{namespace}", name)


def mount_secret_name(name: str) -> str:
    return qualified(name, "mount")


def mount_secret(
    name: str, namespace: str, meta_url: str, s3_keys: tuple[str, str] | None
) -> dict[str, Any]:
    """One Secret with every credential the node plugin needs for this drive."""
    data = {"metaUrl": meta_url}
    if s3_keys is not None:
        data["awsAccessKeyId"], data["awsSecretAccessKey"] = s3_keys
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
    carries values read from other Secrets)."""
    labels = child_labels("drive-volume", name)
    volume = pv_name(namespace, name)
    claim = qualified(name, "drive")
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
