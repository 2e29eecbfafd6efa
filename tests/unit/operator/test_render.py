"""The operator's pure parts: specs, rendered children and CRD schemas, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from mediadrive.operator import crds
from mediadrive.operator.handlers.common import field_error
from mediadrive.operator.naming import qualified
from mediadrive.operator.resources import drivevolume, storagepod
from mediadrive.operator.resources.drivevolume import DriveVolumeSpec
from mediadrive.operator.resources.storagepod import StoragePodSpec

ROOT = Path(__file__).resolve().parents[3]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for obj in objects:
        key = obj["kind"]
        if key in found:
            key = f"{key}/{obj['metadata']['name']}"
        found[key] = obj
    return found


def pod_spec(**fields: Any) -> StoragePodSpec:
    return StoragePodSpec.model_validate({"region": "la", **fields})


def test_storage_pod_renders_its_statefulset_services_budget_and_settings() -> None:
    spec = pod_spec(replicas=3, replication=2, capacity="200GiB", tokenSecret="la-tokens")
    children = by_kind(storagepod.render("la", "studio", spec))
    assert set(children) == {
        "ConfigMap",
        "Service",
        "Service/la-pod",
        "PodDisruptionBudget",
        "StatefulSet",
    }
    sts = children["StatefulSet"]
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == children["Service"]["metadata"]["name"] == "la-peers"
    assert children["Service"]["spec"]["clusterIP"] == "None"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[:2] == ["storage-pod", "serve"]
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    assert flags["--replication"] == "2"
    assert flags["--region"] == "la"
    assert flags["--capacity"] == "200GiB"
    assert flags["--peers-dns"] == "la-peers.studio.svc"
    assert flags["--token-file"].startswith(storagepod.TOKENS_DIR)
    volumes = sts["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "tokens",
        "secret": {"secretName": "la-tokens", "defaultMode": 0o400},
    } in volumes
    # Labels select exactly the pods of this StoragePod.
    selector = sts["spec"]["selector"]["matchLabels"]
    assert sts["spec"]["template"]["metadata"]["labels"] == selector
    assert children["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    settings = json.loads(children["ConfigMap"]["data"]["settings.json"])
    assert settings["replication"] == 2
    # A draining pod gets its whole hand-off time before it is killed.
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == spec.drain_seconds


def test_storage_pod_keeps_chunks_in_a_claim_or_a_node_folder() -> None:
    claim = by_kind(storagepod.render("la", "ns", pod_spec(storage={"size": "50Gi"})))
    templates = claim["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert templates[0]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    local = by_kind(storagepod.render("la", "ns", pod_spec(storage={"hostPath": "/srv/md"})))
    sts = local["StatefulSet"]["spec"]
    assert sts["volumeClaimTemplates"] == []
    pod = sts["template"]["spec"]
    assert pod["volumes"][0]["hostPath"]["path"] == "/srv/md"
    # One folder per pod, so replicas on one node never share chunks.
    assert pod["containers"][0]["volumeMounts"][0]["subPathExpr"] == "$(POD_NAME)"


def test_upstream_credentials_come_from_the_secret_by_reference() -> None:
    spec = pod_spec(
        upstream={
            "bucket": "studio-media",
            "prefix": "shows",
            "endpoint": "http://minio.storage:9000",
            "credentialsSecret": {"name": "s3-keys"},
        }
    )
    sts = by_kind(storagepod.render("la", "ns", spec))["StatefulSet"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["valueFrom"].get("secretKeyRef") for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "s3-keys", "key": "accessKeyId"}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "s3-keys", "key": "secretAccessKey"}
    args = container["args"]
    assert args[args.index("--upstream") + 1] == (
        "s3://studio-media/shows?endpoint=http://minio.storage:9000"
    )
    assert "s3-keys" not in json.dumps(container["args"])


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"replicas": -1}, "spec.replicas"),
        ({"replication": 0}, "spec.replication"),
        ({"capacity": "lots"}, "spec.capacity"),
        ({"region": "Los Angeles"}, "spec.region"),
        ({"storage": {"size": "ten gigs"}}, "spec.storage.size"),
        ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy"),
        ({"replicaCount": 3}, "spec.replicaCount"),
    ],
)
def test_a_bad_storage_pod_spec_names_the_field(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        pod_spec(**fields)
    assert field_error(caught.value).startswith(f"{where}:")


def drive_spec(**fields: Any) -> DriveVolumeSpec:
    return DriveVolumeSpec.model_validate(
        {
            "metadata": {"secretRef": {"name": "meta-dsn", "key": "dsn"}},
            "objectStore": {"bucket": "studio-media", "endpoint": "http://10.0.0.5:9000"},
            **fields,
        }
    )


def test_drive_volume_renders_a_csi_volume_and_its_claim() -> None:
    spec = drive_spec(
        tierPolicyRef="hold-in-pods",
        workspaces=[{"name": "comp", "path": "/shots/comp"}],
    )
    pv, pvc = drivevolume.render("show", "studio", spec, {"la": "pod://10.1.2.3:7700/show"})
    csi = pv["spec"]["csi"]
    assert csi["driver"] == "csi.mediadrive.io"
    assert csi["volumeHandle"] == "studio.show"
    assert csi["volumeAttributes"] == {
        "drive": "show",
        "storeUrl": "s3://studio-media?endpoint=http://10.0.0.5:9000",
        "tierPolicy": "hold-in-pods",
        "pod.la": "pod://10.1.2.3:7700/show",
        "workspace.comp": "/shots/comp",
    }
    secret = {"name": "show-mount", "namespace": "studio"}
    assert csi["nodeStageSecretRef"] == csi["nodePublishSecretRef"] == secret
    # The claim binds to exactly this volume, and the volume to exactly this claim.
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pv["spec"]["claimRef"] == {"namespace": "studio", "name": pvc["metadata"]["name"]}
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert "namespace" not in pv["metadata"]


def test_the_mount_secret_holds_every_credential_a_node_needs() -> None:
    secret = drivevolume.mount_secret("show", "studio", "postgresql://db/md", ("AK", "SK"))
    assert secret["stringData"] == {
        "metaUrl": "postgresql://db/md",
        "awsAccessKeyId": "AK",
        "awsSecretAccessKey": "SK",
    }


def test_the_mount_secret_carries_a_pod_token_when_the_pods_use_tokens() -> None:
    secret = drivevolume.mount_secret("show", "studio", "postgresql://db/md", None, "tok-1")
    assert secret["stringData"] == {"metaUrl": "postgresql://db/md", "podToken": "tok-1"}
    # Storage pods without tokens: no key at all (the node plugin then sends none).
    assert "podToken" not in drivevolume.mount_secret("show", "studio", "x", None)["stringData"]


@pytest.mark.parametrize(
    ("files", "token"),
    [
        # The pods' own `*` token opens every drive.
        (["change-this-token *\n"], "change-this-token"),
        # One scoped to the drive is preferred to the `*` one.
        (["# peers\npeer-token *\nshow-token show,other\n"], "show-token"),
        (["other-token other\n"], None),
        # Every region's pods must take it: the node mounts from whichever is its own.
        (["la-only show\nshared *\n", "shared *\nny-only show\n"], "shared"),
        (["both show\n", "both other,show\n"], "both"),
        (["la show\n", "ny show\n"], None),
        ([], None),
    ],
)
def test_the_pod_token_is_one_every_storage_pod_takes_for_the_drive(
    files: list[str], token: str | None
) -> None:
    assert drivevolume.pod_token("show", files) == token


def test_token_files_read_as_the_pods_read_them() -> None:
    text = "# comment\n\nt1 a,b\nt1 c\nbroken line here\nt2 *\n"
    assert drivevolume.token_scopes(text) == {
        "t1": frozenset({"a", "b", "c"}),
        "t2": frozenset({"*"}),
    }


def test_names_stay_within_kubernetes_limits() -> None:
    long = "a" * 70
    name = qualified(long, "pod-settings")
    assert len(name) <= 63
    assert name.endswith("-pod-settings")
    assert qualified(long, "pod-settings") == name
    assert qualified("a" * 69, "pod-settings") != name


def walk(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(walk(value))
    return found


@pytest.mark.parametrize("kind", crds.KINDS, ids=lambda k: k.kind)
def test_crd_schemas_are_structural(kind: Any) -> None:
    crd = kind.definition()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in walk(schema):
        assert "$ref" not in node
        assert "anyOf" not in node or all("type" not in o for o in node["anyOf"])
        assert node.get("additionalProperties") is not False
        assert "title" not in node
    names = crd["spec"]["names"]
    assert "mediadrive" in names["categories"]
    assert names["shortNames"]
    assert crd["spec"]["versions"][0]["subresources"]["status"] == {}


def test_storage_pods_scale_through_the_scale_subresource() -> None:
    version = storagepod.KIND.definition()["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
    }


def test_generated_files_match_the_models() -> None:
    """CRDs and the chart's values schema come from `make crds`; edit the models, then
    regenerate."""
    files = crds.generated()
    for relative, text in files.items():
        path = ROOT / relative
        assert path.exists(), f"{relative} is missing: run make crds"
        assert path.read_text() == text, f"{relative} is stale: run make crds"
    for folder in (ROOT / "crds", ROOT / crds.CHART / "crds"):
        on_disk = {p.relative_to(ROOT) for p in folder.glob("*.yaml")}
        assert on_disk <= set(files), f"{folder} holds files no model defines"


def test_duration_and_size_defaults_are_strings_like_the_values() -> None:
    for kind in crds.KINDS:
        schema = kind.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for node in walk(schema):
            if node.get("type") == "string" and "default" in node:
                assert isinstance(node["default"], str), node


def test_the_examples_are_valid_resources() -> None:
    import yaml

    from mediadrive.core.policy import TierPolicy

    models: dict[str, type[BaseModel]] = {
        "TierPolicy": TierPolicy,
        "StoragePod": StoragePodSpec,
        "DriveVolume": DriveVolumeSpec,
    }
    seen = set()
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "mediadrive.io/v1alpha1":
                models[doc["kind"]].model_validate(doc["spec"])
                seen.add(doc["kind"])
    assert seen == set(models)


def test_pods_advertise_their_pod_ip_as_peers_see_it() -> None:
    sts = by_kind(storagepod.render("la", "ns", pod_spec()))["StatefulSet"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--advertise") + 1] == "http://$(POD_IP):7700"
    assert args[args.index("--peers-dns") + 1] == "la-peers.ns.svc"
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_pod_counts_and_ready_condition_come_from_the_statefulset() -> None:
    from mediadrive.operator.handlers.storagepod import pods_status

    body = {"metadata": {"generation": 4}, "status": {}}
    starting = pods_status(body, pod_spec(replicas=3), {"replicas": 3, "readyReplicas": 1})
    assert (starting["replicas"], starting["readyReplicas"]) == (3, 1)
    [condition] = starting["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Ready",
        "False",
        "PodsStarting",
    )
    assert condition["message"] == "1 of 3 storage pods ready"
    assert starting["observedGeneration"] == 4
    ready = pods_status(body, pod_spec(replicas=3), {"replicas": 3, "readyReplicas": 3})
    assert ready["conditions"][0]["status"] == "True"


async def test_the_pod_token_comes_from_the_storage_pods_token_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kopf

    from mediadrive.operator import apply
    from mediadrive.operator.handlers import drivevolume as handler

    pods = {"la": {"spec": {"tokenSecret": "la-tokens"}}, "ny": {"spec": {}}}
    secrets = {("la-tokens", "tokens"): "peer *\nshow-token show\n"}

    async def get(api_version: str, kind: str, name: str, namespace: str | None = None) -> Any:
        assert (kind, namespace) == ("StoragePod", "studio")
        return pods.get(name)

    async def secret_value(namespace: str, name: str, key: str) -> str | None:
        return secrets.get((name, key))

    monkeypatch.setattr(apply, "get", get)
    monkeypatch.setattr(apply, "secret_value", secret_value)
    spec = drive_spec(storagePods=[{"region": "la", "name": "la"}, {"region": "ny", "name": "ny"}])
    # The ny pods use no tokens: only la's Secret counts.
    assert await handler._pod_token("studio", "show", spec) == "show-token"
    assert await handler._pod_token("studio", "other", spec) == "peer"
    secrets[("la-tokens", "tokens")] = "only-this other\n"
    with pytest.raises(kopf.TemporaryError, match=r"no token opens drive 'show'.*la-tokens"):
        await handler._pod_token("studio", "show", spec)
    del secrets[("la-tokens", "tokens")]
    with pytest.raises(kopf.TemporaryError, match="'la-tokens', which has no key 'tokens'"):
        await handler._pod_token("studio", "show", spec)
    del pods["la"]
    with pytest.raises(kopf.TemporaryError, match="StoragePod 'la'"):
        await handler._pod_token("studio", "show", spec)
    assert await handler._pod_token("studio", "show", drive_spec()) is None
