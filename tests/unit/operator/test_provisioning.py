"""Dynamic provisioning without a cluster: StorageClass parameters, the DriveVolume
made for a claim, its PersistentVolume bound to the claim, and what a released
volume's reclaim policy does; the handlers against a stand-in for the apiserver."""

from __future__ import annotations

import copy
from typing import Any, cast

import kopf
import pytest

from mediadrive.operator import apply
from mediadrive.operator.handlers import provisioning as handlers
from mediadrive.operator.resources import drivevolume, provisioning
from mediadrive.operator.resources.drivevolume import DriveVolumeSpec
from mediadrive.operator.resources.provisioning import ProvisioningError

UID = "6f1c2a7e-3b7d-4d0e-9a51-0c6a8f2e1b44"
PARAMETERS = {
    "metadataSecret": "studio-meta",
    "bucket": "studio-media",
    "prefix": "volumes",
    "endpoint": "http://10.0.0.5:9000",
    "region": "us-west-2",
    "credentialsSecret": "studio-s3",
    "tierPolicy": "hold-in-pods",
    "storagePods": "la=la, ny=ny-pods",
    "workspaces": "comp=/shots/comp,plates=/plates",
}


def storage_class(**fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "mediadrive"},
        "provisioner": "csi.mediadrive.io",
        "parameters": {"metadataSecret": "studio-meta", "bucket": "studio-media"},
        **fields,
    }


def claim(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "renders",
            "namespace": "studio",
            "uid": UID,
            "annotations": {"volume.kubernetes.io/storage-provisioner": "csi.mediadrive.io"},
        },
        "spec": {
            "storageClassName": "mediadrive",
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "50Gi"}},
            **spec,
        },
        "status": {"phase": "Pending"},
    }


def test_every_parameter_lands_in_the_drive_volume_spec() -> None:
    fields = provisioning.parse_parameters(PARAMETERS, "studio", "pvc-1")
    assert fields == {
        "metadata": {"secretRef": {"name": "studio-meta", "key": "url"}},
        "objectStore": {
            "bucket": "studio-media",
            # Each volume has its own folder: deleting it deletes every chunk there.
            "prefix": "volumes/studio/pvc-1",
            "endpoint": "http://10.0.0.5:9000",
            "region": "us-west-2",
            "credentialsSecret": {"name": "studio-s3"},
        },
        "tierPolicyRef": "hold-in-pods",
        "storagePods": [{"region": "la", "name": "la"}, {"region": "ny", "name": "ny-pods"}],
        "workspaces": [
            {"name": "comp", "path": "/shots/comp"},
            {"name": "plates", "path": "/plates"},
        ],
    }


def test_the_secret_key_the_prefix_and_empty_parameters() -> None:
    fields = provisioning.parse_parameters(
        {"metadataSecret": "meta/dsn", "bucket": "b-1", "region": "", "storagePods": ""},
        "ns",
        "pvc-2",
    )
    assert fields["metadata"] == {"secretRef": {"name": "meta", "key": "dsn"}}
    assert fields["objectStore"] == {"bucket": "b-1", "prefix": "ns/pvc-2"}
    assert "storagePods" not in fields
    assert provisioning.volume_prefix("/a/b/", "ns", "pvc-2") == "a/b/ns/pvc-2"


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"fsType": "ext4"}, "fsType"),
        ({"csi.storage.k8s.io/fstype": "ext4"}, "csi.storage.k8s.io/fstype"),
        ({"metadataSecret": ""}, "metadataSecret"),
        ({"bucket": " "}, "bucket"),
        ({"metadataSecret": "a/b/c"}, "metadataSecret"),
        ({"metadataSecret": "meta/"}, "metadataSecret"),
        ({"metadataSecret": "Bad_Secret"}, "metadataSecret"),
        ({"bucket": "A"}, "bucket"),
        ({"prefix": "a b"}, "prefix"),
        ({"endpoint": "minio:9000"}, "endpoint"),
        ({"credentialsSecret": "keys!"}, "credentialsSecret"),
        ({"tierPolicy": "Hold"}, "tierPolicy"),
        ({"storagePods": "la"}, "storagePods"),
        ({"storagePods": "la=la,la=la2"}, "storagePods"),
        ({"storagePods": "la=La"}, "storagePods"),
        ({"workspaces": "comp:/shots"}, "workspaces"),
        ({"workspaces": "comp=shots"}, "workspaces"),
        ({"workspaces": "comp=/a,comp=/b"}, "workspaces"),
    ],
)
def test_a_bad_parameter_is_named(parameters: dict[str, str], field: str) -> None:
    sc = storage_class()
    sc["parameters"] = {**sc["parameters"], **parameters}
    with pytest.raises(ProvisioningError) as caught:
        provisioning.drive_volume_spec(claim(), sc)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("sc", "pvc", "field"),
    [
        (storage_class(reclaimPolicy="Recycle"), claim(), "reclaimPolicy"),
        (storage_class(), claim(volumeMode="Block"), "spec.volumeMode"),
        (storage_class(), claim(resources={"requests": {"storage": "lots"}}), "spec.resources"),
        (storage_class(), claim(resources={}), "spec.resources"),
        (storage_class(), claim(accessModes=["ReadWriteSometimes"]), "claim"),
    ],
)
def test_a_class_or_claim_the_drive_cannot_serve_is_named(
    sc: dict[str, Any], pvc: dict[str, Any], field: str
) -> None:
    with pytest.raises(ProvisioningError) as caught:
        provisioning.drive_volume(pvc, sc)
    assert caught.value.field.startswith(field)


def test_the_drive_volume_made_for_a_claim() -> None:
    obj = provisioning.drive_volume(claim(), storage_class(parameters=PARAMETERS))
    assert obj["apiVersion"] == "mediadrive.io/v1alpha1"
    assert obj["kind"] == "DriveVolume"
    meta = obj["metadata"]
    assert meta["name"] == f"pvc-{UID}"
    assert meta["namespace"] == "studio"
    assert meta["labels"]["mediadrive.io/claim-uid"] == UID
    assert meta["labels"]["mediadrive.io/storage-class"] == "mediadrive"
    assert meta["annotations"]["mediadrive.io/claim"] == "studio/renders"
    # Not owned by the claim: with Retain the drive outlives it.
    assert "ownerReferences" not in meta
    spec = DriveVolumeSpec.model_validate(obj["spec"])
    assert spec.reclaim_policy == "Delete"  # the class's default
    assert spec.capacity == "50Gi"
    assert spec.claim_ref is not None
    assert (spec.claim_ref.name, spec.claim_ref.uid) == ("renders", UID)
    assert spec.claim_ref.storage_class_name == "mediadrive"
    assert spec.object_store.prefix == f"volumes/studio/pvc-{UID}"
    assert [p.region for p in spec.storage_pods] == ["la", "ny"]
    retained = provisioning.drive_volume(claim(), storage_class(reclaimPolicy="Retain"))
    assert retained["spec"]["reclaimPolicy"] == "Retain"


def test_a_provisioned_volume_is_bound_to_the_claim_and_renders_no_claim() -> None:
    pvc = claim(accessModes=["ReadWriteOnce"])
    spec = provisioning.drive_volume_spec(pvc, storage_class(reclaimPolicy="Retain"))
    name = provisioning.volume_name(UID)
    [pv] = drivevolume.render(name, "studio", spec, {"la": "pod://10.1.2.3:7700/x"})
    assert pv["kind"] == "PersistentVolume"
    assert pv["metadata"]["name"] == f"pvc-{UID}" == drivevolume.pv_name("studio", name, spec)
    assert pv["metadata"]["annotations"] == {
        "pv.kubernetes.io/provisioned-by": "csi.mediadrive.io",
        "mediadrive.io/drive-volume": f"studio/pvc-{UID}",
    }
    assert pv["spec"]["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": "studio",
        "name": "renders",
        "uid": UID,
    }
    assert pv["spec"]["storageClassName"] == "mediadrive"
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    # The claim's modes: Kubernetes binds a claim only to a volume offering them.
    assert pv["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pv["spec"]["capacity"] == {"storage": "50Gi"}
    csi = pv["spec"]["csi"]
    assert csi["driver"] == "csi.mediadrive.io"
    assert csi["volumeHandle"] == f"studio.pvc-{UID}"
    assert csi["nodePublishSecretRef"] == {"name": f"pvc-{UID}-mount", "namespace": "studio"}
    assert drivevolume.claim_name(name, spec) == "renders"
    deleting = provisioning.drive_volume_spec(pvc, storage_class())
    [pv] = drivevolume.render(name, "studio", deleting, {})
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"


def test_static_drive_volumes_keep_their_own_claim() -> None:
    spec = DriveVolumeSpec.model_validate(
        {
            "metadata": {"secretRef": {"name": "meta", "key": "url"}},
            "objectStore": {"bucket": "studio-media"},
            "reclaimPolicy": "Delete",
        }
    )
    pv, pvc = drivevolume.render("show", "studio", spec, {})
    assert pv["metadata"]["name"] == "mediadrive-studio-show"
    assert "annotations" not in pv["metadata"]
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert pv["spec"]["storageClassName"] == ""
    assert pv["spec"]["claimRef"] == {"namespace": "studio", "name": "show-drive"}
    assert pvc["metadata"]["name"] == drivevolume.claim_name("show", spec) == "show-drive"


def test_which_claims_get_a_volume() -> None:
    sc = storage_class()
    assert provisioning.should_provision(claim(), sc)
    unmarked = claim()
    unmarked["metadata"]["annotations"] = {}
    assert provisioning.should_provision(unmarked, sc)
    assert not provisioning.should_provision(claim(), storage_class(provisioner="ebs.csi.aws.com"))
    assert not provisioning.should_provision(claim(volumeName="pv-1"), sc)
    bound = claim()
    bound["status"]["phase"] = "Bound"
    assert not provisioning.should_provision(bound, sc)
    other = claim()
    other["metadata"]["annotations"] = {"volume.kubernetes.io/storage-provisioner": "other.io"}
    assert not provisioning.needs_volume(other)
    assert not provisioning.needs_volume(claim(storageClassName=""))
    gone = claim()
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not provisioning.needs_volume(gone)
    # WaitForFirstConsumer: once a pod of the claim has a node.
    later = storage_class(volumeBindingMode="WaitForFirstConsumer")
    assert not provisioning.should_provision(claim(), later)
    scheduled = claim()
    scheduled["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = "node-1"
    assert provisioning.should_provision(scheduled, later)


def released(policy: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{UID}",
            "annotations": {
                "pv.kubernetes.io/provisioned-by": "csi.mediadrive.io",
                "mediadrive.io/drive-volume": f"studio/pvc-{UID}",
            },
            **meta,
        },
        "spec": {"persistentVolumeReclaimPolicy": policy},
        "status": {"phase": "Released"},
    }


def test_a_released_volume_follows_its_reclaim_policy() -> None:
    assert provisioning.release_action(released("Delete")) == ("delete", "studio", f"pvc-{UID}")
    assert provisioning.release_action(released("Retain")) == ("retain", "studio", f"pvc-{UID}")
    bound = released("Delete")
    bound["status"]["phase"] = "Bound"
    assert provisioning.release_action(bound) is None
    other = released("Delete")
    other["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] = "ebs.csi.aws.com"
    assert provisioning.release_action(other) is None
    # A static DriveVolume's volume: the DriveVolume's own delete handler decides.
    static = released("Delete")
    static["metadata"]["annotations"] = {}
    assert provisioning.release_action(static) is None


class FakeCluster:
    """What the handlers ask of the apiserver, in memory."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = {self.key(o): copy.deepcopy(o) for o in objects}
        self.deleted: list[tuple[str, str, str | None]] = []
        self.events: list[tuple[str, str, str]] = []

    @staticmethod
    def key(obj: dict[str, Any]) -> tuple[str, str, str | None]:
        return obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace")

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, name, namespace)))

    async def apply(self, obj: dict[str, Any], owner: Any = None) -> dict[str, Any]:
        self.objects[self.key(obj)] = copy.deepcopy(obj)
        return obj

    async def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> bool:
        self.deleted.append((kind, name, namespace))
        return self.objects.pop((kind, name, namespace), None) is not None


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    fake = FakeCluster()
    for verb in ("get", "apply", "delete"):
        monkeypatch.setattr(apply, verb, getattr(fake, verb))
    for level in ("info", "warn"):

        def post(body: Any, *, reason: str, message: str = "", level: str = level) -> None:
            fake.events.append((level, reason, message))

        monkeypatch.setattr(kopf, level, post)
    return fake


def body(obj: dict[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, obj))


# The handlers as plain coroutines (kopf types them as its callbacks).
claim_changed: Any = handlers.claim_changed
claim_deleted: Any = handlers.claim_deleted
volume_released: Any = handlers.volume_released


async def run_claim(pvc: dict[str, Any]) -> None:
    meta = pvc["metadata"]
    await claim_changed(body=body(pvc), name=meta["name"], namespace=meta["namespace"])


async def test_a_claim_gets_its_drive_volume_once(cluster: FakeCluster) -> None:
    cluster.objects[("StorageClass", "mediadrive", None)] = storage_class()
    await run_claim(claim())
    made = cluster.objects[("DriveVolume", f"pvc-{UID}", "studio")]
    assert made["spec"]["claimRef"]["uid"] == UID
    assert [e[:2] for e in cluster.events] == [("info", "Provisioning")]
    # Seen again (an update, the operator restarting): nothing new.
    made["spec"]["reclaimPolicy"] = "Retain"  # an edit someone made
    await run_claim(claim())
    assert cluster.objects[("DriveVolume", f"pvc-{UID}", "studio")]["spec"]["reclaimPolicy"] == (
        "Retain"
    )
    assert len(cluster.events) == 1


async def test_a_bad_class_warns_on_the_claim_and_makes_nothing(cluster: FakeCluster) -> None:
    sc = storage_class()
    sc["parameters"]["storagePods"] = "la"
    cluster.objects[("StorageClass", "mediadrive", None)] = sc
    await run_claim(claim())
    assert not any(kind == "DriveVolume" for kind, _, _ in cluster.objects)
    [(level, reason, message)] = cluster.events
    assert (level, reason) == ("warn", "ProvisioningFailed")
    assert message.startswith("StorageClass mediadrive: storagePods: ")


async def test_claims_of_other_or_missing_classes_are_left_alone(cluster: FakeCluster) -> None:
    await run_claim(claim())  # no such class (yet)
    cluster.objects[("StorageClass", "mediadrive", None)] = storage_class(provisioner="other.io")
    await run_claim(claim())
    assert list(cluster.objects) == [("StorageClass", "mediadrive", None)]
    assert cluster.events == []


async def test_released_volumes_are_deleted_or_kept(cluster: FakeCluster) -> None:
    volume = {"kind": "DriveVolume", "metadata": {"name": f"pvc-{UID}", "namespace": "studio"}}
    cluster.objects[cluster.key(volume)] = volume
    kept = released("Retain")
    cluster.objects[cluster.key(kept)] = kept
    await volume_released(body=body(kept), name=kept["metadata"]["name"])
    assert cluster.deleted == []
    assert [e[:2] for e in cluster.events] == [("info", "Retained")]
    gone = released("Delete")
    await volume_released(body=body(gone), name=gone["metadata"]["name"])
    assert cluster.deleted == [
        ("DriveVolume", f"pvc-{UID}", "studio"),
        ("PersistentVolume", f"pvc-{UID}", None),
    ]


def test_the_handlers_filters_see_only_their_objects() -> None:
    assert handlers._pending_claim(body(claim()), type="ADDED")
    assert handlers._pending_claim(body(claim()), type=None)  # the listing at start
    assert not handlers._pending_claim(body(claim()), type="DELETED")
    assert handlers._released(body(released("Delete")), type="MODIFIED")
    assert not handlers._released(body(released("Delete")), type="DELETED")


async def test_a_claim_deleted_before_its_volume_was_made(cluster: FakeCluster) -> None:
    cluster.objects[("StorageClass", "mediadrive", None)] = storage_class(reclaimPolicy="Retain")
    await run_claim(claim())
    key = ("DriveVolume", f"pvc-{UID}", "studio")
    await claim_deleted(body=body(claim()), namespace="studio")
    assert key in cluster.objects  # Retain keeps it
    cluster.objects[key]["spec"]["reclaimPolicy"] = "Delete"
    pv = {"kind": "PersistentVolume", "metadata": {"name": f"pvc-{UID}"}}
    cluster.objects[cluster.key(pv)] = pv
    await claim_deleted(body=body(claim()), namespace="studio")
    assert key in cluster.objects  # the volume exists: its release decides
    del cluster.objects[cluster.key(pv)]
    await claim_deleted(body=body(claim()), namespace="studio")
    assert key not in cluster.objects
    assert handlers._deleted_claim(body(claim()), type="DELETED")
    assert not handlers._deleted_claim(body(claim()), type="MODIFIED")
