"""The operator on a real cluster: its chart installs, the examples run, storage pods
hold chunks a client on this host writes through their Service, scale up and down
without losing one, bad resources are refused, children come back, a killed
operator converges, and DriveVolumes make (and keep, or remove) drives in a real
PostgreSQL and MinIO.

The tests of this module share one operator release and one region namespace and
run in order (each builds on what the earlier left).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mediadrive.core.blob import BlobStore, open_store
from mediadrive.core.blob.holding import HoldingStore
from mediadrive.core.blob.s3 import S3BlobStore, S3Location
from mediadrive.core.config import DriveSettings
from mediadrive.core.errors import DriveNotFound, StoreUnavailable
from mediadrive.core.hashing import chunk_id
from mediadrive.core.meta import connect
from tests.e2e.cluster import REPO_ROOT, Cluster, ClusterError, helm, wait_for
from tests.servers import PostgresServer, S3Server, minio_server, postgres_server

pytestmark = pytest.mark.cluster

CHART = REPO_ROOT / "charts" / "mediadrive"
EXAMPLES = REPO_ROOT / "examples"
TOKEN = "e2e-token"
DRIVE = "e2e"
# Where pods reach this machine: the cluster bridge's address (scripts/cluster/lib.sh).
HOST_FOR_PODS = os.environ.get("MEDIADRIVE_CLUSTER_POD_GATEWAY", "10.250.0.1")
# The example StoragePod keeps chunks in a folder of the node; each run its own.
POD_DATA_ROOT = Path("/var/lib/mediadrive-pods")
RESYNC_SECONDS = 3
GROUP = "mediadrive.io/v1alpha1"
POD_SELECTOR = "app.kubernetes.io/component=storage-pod,app.kubernetes.io/instance=la"


@dataclass(frozen=True)
class Operator:
    namespace: str
    release: str


@dataclass(frozen=True)
class Region:
    namespace: str
    token_file: Path


def example(name: str) -> list[dict[str, Any]]:
    """The mediadrive resources of ``examples/NAME.yaml`` (not the Secrets beside them)."""
    docs = yaml.safe_load_all((EXAMPLES / f"{name}.yaml").read_text())
    return [doc for doc in docs if doc and doc.get("apiVersion") == GROUP]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    """The chart installed into a namespace of its own, its operator Available."""
    release = f"e2e{os.getpid() % 100_000}"
    namespace = f"mediadrive-{release}"
    helm(
        cluster,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--set",
        "operator.image.pullPolicy=Never",
        "--set",
        f"operator.resyncSeconds={RESYNC_SECONDS}",
        # The CSI node plugin (one per cluster: it owns the CSIDriver) is test_csi.py's.
        "--set",
        "node.enabled=false",
    )
    try:
        cluster.kubectl(
            "wait",
            "--for=condition=Available",
            f"deployment/{release}-operator",
            "-n",
            namespace,
            "--timeout=180s",
            timeout=200,
        )
        yield Operator(namespace, release)
    finally:
        helm(cluster, "uninstall", release, "--namespace", namespace, "--wait")
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture(scope="module")
def region(
    cluster: Cluster, operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Region]:
    """The examples' TierPolicy and StoragePod in a test namespace, with a token."""
    token_file = tmp_path_factory.mktemp("region") / "token"
    token_file.write_text(f"{TOKEN} *\n")
    with cluster.namespace("e2e-region") as namespace:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "la-tokens"},
            "stringData": {"tokens": f"{TOKEN} *\n"},
        }
        resources = example("tierpolicy") + example("storagepod")
        for resource in resources:
            if resource["kind"] == "StoragePod":
                resource["spec"]["storage"]["hostPath"] = str(POD_DATA_ROOT / namespace)
        cluster.apply(secret, *resources, namespace=namespace)
        try:
            yield Region(namespace, token_file)
        finally:
            _remove_region(cluster, namespace)


def _remove_region(cluster: Cluster, namespace: str) -> None:
    # DriveVolumes have the operator's finalizer: gone before the operator is.
    cluster.kubectl("delete", "drivevolumes", "--all", "-n", namespace, "--timeout=120s")
    # Every pod gone (the namespace with it) before their host folder goes.
    cluster.kubectl("delete", "namespace", namespace, "--timeout=180s", timeout=200)
    shutil.rmtree(POD_DATA_ROOT / namespace, ignore_errors=True)


def storagepod(cluster: Cluster, namespace: str) -> Any:
    return cluster.get("storagepod", "la", "-n", namespace)


def ready_replicas(cluster: Cluster, namespace: str) -> int:
    return int(storagepod(cluster, namespace).get("status", {}).get("readyReplicas") or 0)


def wait_ready_pods(cluster: Cluster, namespace: str, count: int, timeout: float = 180) -> None:
    def ready() -> bool:
        sts = cluster.get("statefulset", "la-pod", "-n", namespace)
        status = sts.get("status", {})
        return (
            sts["spec"]["replicas"] == count
            and int(status.get("readyReplicas") or 0) == count
            and int(status.get("replicas") or 0) == count
            and int(status.get("updatedReplicas") or 0) == count
        )

    wait_for(
        f"{count} ready storage pods", ready, timeout, explain=lambda: explain(cluster, namespace)
    )
    wait_for(
        f"StoragePod status readyReplicas {count}",
        lambda: ready_replicas(cluster, namespace) == count,
        60,
    )


def pod_stats(region: Region, ip: str) -> Any:
    request = urllib.request.Request(
        f"http://{ip}:7700/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def wait_members(cluster: Cluster, region: Region, count: int, timeout: float = 60) -> None:
    """Every storage pod sees ``count`` live members (pod IPs are routed from the host)."""

    def agreed() -> bool:
        pods = cluster.get("pods", "-n", region.namespace, "-l", POD_SELECTOR)
        ips = [p["status"].get("podIP") for p in pods["items"]]
        if len(ips) != count or not all(ips):
            return False
        for ip in ips:
            members = pod_stats(region, ip)["members"]
            if sum(1 for m in members if m["alive"]) != count:
                return False
        return True

    wait_for(f"{count} storage pods know each other", agreed, timeout)


def explain(cluster: Cluster, namespace: str) -> str:
    """What a failed wait shows: the namespace's objects and events, the operator's log."""
    parts = []
    selector = "app.kubernetes.io/component=operator"
    try:
        where = cluster.kubectl(
            "get", "pods", "-A", "-l", selector, "-o", "jsonpath={.items[0].metadata.namespace}"
        )
    except ClusterError:
        where = "default"
    for args in (
        ("get", "storagepods,statefulsets,pods,drivevolumes", "-n", namespace, "-o", "wide"),
        ("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"),
        ("logs", "-n", where, "-l", selector, "--tail=60"),
    ):
        try:
            parts.append(cluster.kubectl(*args))
        except ClusterError as exc:
            parts.append(str(exc))
    return "\n".join(parts)


def pod_store(cluster: Cluster, region: Region) -> BlobStore:
    ip = cluster.kubectl(
        "get", "service", "la-pod", "-n", region.namespace, "-o", "jsonpath={.spec.clusterIP}"
    )
    return open_store(f"pod://{ip}:7700/{DRIVE}?token_file={region.token_file}", create=True)


def chunks(label: str, count: int) -> dict[str, bytes]:
    blobs = [f"{label} {i} ".encode() * (1000 + i) for i in range(count)]
    return {chunk_id(blob): blob for blob in blobs}


def wait_service(cluster: Cluster, region: Region, timeout: float = 60) -> None:
    """The storage pods' Service answers: kube-proxy routes its address a moment after
    the pods are ready (longer on a busy machine)."""

    async def answers() -> bool:
        store = pod_store(cluster, region)
        try:
            await store.check()
        except StoreUnavailable:
            return False
        finally:
            await store.close()
        return True

    wait_for("the storage pods' Service answers", lambda: bool(run(answers())), timeout)


async def put_all(cluster: Cluster, region: Region, blobs: dict[str, bytes]) -> None:
    store = pod_store(cluster, region)
    try:
        await store.check()
        for key, blob in blobs.items():
            await store.put(key, blob)
    finally:
        await store.close()


async def read_all(
    cluster: Cluster, region: Region, keys: list[str]
) -> tuple[dict[str, bytes], dict[str, str]]:
    store = pod_store(cluster, region)
    try:
        got = {key: await store.get(key) for key in keys}
        assert isinstance(store, HoldingStore)
        holding: dict[str, str] = dict(await store.holding(keys))
    finally:
        await store.close()
    return got, holding


# --- 1. the chart ----------------------------------------------------------------


def test_chart_lints_renders_for_the_server_and_installs(
    cluster: Cluster, operator: Operator
) -> None:
    helm(cluster, "lint", str(CHART), "--strict")
    rendered = helm(
        cluster,
        "template",
        "dry",
        str(CHART),
        "--namespace",
        operator.namespace,
        "--include-crds",
        "--set",
        "operator.image.pullPolicy=Never",
    )
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "deployment.apps/dry-operator created (server dry run)" in out
    deployment = cluster.get(f"deployment/{operator.release}-operator", "-n", operator.namespace)
    conditions = {c["type"]: c["status"] for c in deployment["status"]["conditions"]}
    assert conditions["Available"] == "True"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


# --- 2. the examples run -----------------------------------------------------------


def test_example_storage_pods_become_ready_and_report(cluster: Cluster, region: Region) -> None:
    ns = region.namespace
    wait_ready_pods(cluster, ns, 1)
    status = storagepod(cluster, ns)["status"]
    assert status["readyReplicas"] == 1
    assert status["endpoint"].endswith(":7700")
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "True"
    table = cluster.kubectl("get", "storagepods,tierpolicies,drivevolumes", "-n", ns)
    lines = [line.split() for line in table.splitlines() if line.strip()]
    header = next(line for line in lines if line[0] == "NAME" and "REGION" in line)
    row = lines[lines.index(header) + 1]
    assert header == ["NAME", "REGION", "DESIRED", "READY", "HELD", "ENDPOINT", "AGE"]
    assert row[:4] == ["storagepod.mediadrive.io/la", "la", "1", "1"]
    policy_header = next(line for line in lines if line[0] == "NAME" and "WRITE" in line)
    policy_row = lines[lines.index(policy_header) + 1]
    assert policy_header[:4] == ["NAME", "WRITE", "PUBLISH", "CONFLICT"]
    assert policy_row[:4] == ["tierpolicy.mediadrive.io/hold-in-pods", "pod", "manual", "keep-both"]


# --- 3. a client on this host --------------------------------------------------------


def test_host_client_writes_and_reads_held_chunks_through_the_service(
    cluster: Cluster, region: Region
) -> None:
    blobs = chunks("first", 8)
    wait_service(cluster, region)
    run(put_all(cluster, region, blobs))
    got, holding = run(read_all(cluster, region, list(blobs)))
    assert got == blobs
    assert set(holding.values()) == {"held"}
    total = sum(len(blob) for blob in blobs.values())
    wait_for(
        "StoragePod status heldBytes",
        lambda: storagepod(cluster, region.namespace)["status"]["heldBytes"] >= total,
        30,
    )


# --- 4. scale up and down ------------------------------------------------------------


def test_scaling_keeps_every_held_chunk(cluster: Cluster, region: Region) -> None:
    ns = region.namespace
    before = chunks("first", 8)
    cluster.kubectl("scale", "storagepod/la", "--replicas", "3", "-n", ns)
    wait_ready_pods(cluster, ns, 3, timeout=240)
    wait_members(cluster, region, 3)
    more = chunks("scaled", 24)
    run(put_all(cluster, region, more))
    everything = {**before, **more}
    got, _ = run(read_all(cluster, region, list(everything)))
    assert got == everything
    cluster.kubectl("scale", "storagepod/la", "--replicas", "1", "-n", ns)
    wait_ready_pods(cluster, ns, 1, timeout=240)
    got, holding = run(read_all(cluster, region, list(everything)))
    assert got == everything
    # The pods that stopped handed their chunks to the one left: all of them held there.
    assert holding == dict.fromkeys(everything, "held")
    wait_for(
        "only la-pod-0 left",
        lambda: (
            [
                p["metadata"]["name"]
                for p in cluster.get("pods", "-n", ns, "-l", POD_SELECTOR)["items"]
            ]
            == ["la-pod-0"]
        ),
        60,
    )


# --- 5. bad resources are refused ------------------------------------------------------


def _pod(**spec: Any) -> dict[str, Any]:
    body = {"region": "la", "replicas": 1, **spec}
    return {"apiVersion": GROUP, "kind": "StoragePod", "metadata": {"name": "bad"}, "spec": body}


def _policy(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": GROUP, "kind": "TierPolicy", "metadata": {"name": "bad"}, "spec": spec}


def _volume(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "metadata": {"secretRef": {"name": "meta", "key": "url"}},
        "objectStore": {"bucket": "media"},
        "reclaimPolicy": "Retain",
    }
    spec.update(changes)
    return {"apiVersion": GROUP, "kind": "DriveVolume", "metadata": {"name": "bad"}, "spec": spec}


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "negative-replicas": (_pod(replicas=-1), "spec.replicas"),
    "replication-0": (_pod(replication=0), "spec.replication"),
    "bad-capacity": (_pod(capacity="lots"), "spec.capacity"),
    "region-uppercase": (_pod(region="LA"), "spec.region"),
    "upstream-nowhere": (_pod(upstream={"bucket": "media"}), "upstream needs an endpoint"),
    "unknown-field": (_pod(replicaz=3), 'unknown field "spec.replicaz"'),
    "unknown-write-target": (_policy(writeTarget="tape"), "spec.writeTarget"),
    "bad-publish-rule": (_policy(publish="sometimes"), "spec.publish"),
    "bad-duration": (_policy(checkpointInterval="soon"), "spec.checkpointInterval"),
    "unknown-conflict": (_policy(conflict="merge"), "spec.conflict"),
    "no-metadata-secret": (_volume(metadata={}), "spec.metadata.secretRef"),
    "bad-reclaim-policy": (_volume(reclaimPolicy="Recycle"), "spec.reclaimPolicy"),
    "duplicate-workspaces": (
        _volume(workspaces=[{"name": "comp", "path": "/a"}, {"name": "comp", "path": "/b"}]),
        "workspace names must be unique",
    ),
    "two-pods-one-region": (
        _volume(storagePods=[{"region": "la", "name": "a"}, {"region": "la", "name": "b"}]),
        "one StoragePod per region",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_resources_are_refused_naming_the_field(
    cluster: Cluster, region: Region, case: str
) -> None:
    resource, named = INVALID[case]
    with pytest.raises(ClusterError) as refused:
        cluster.kubectl(
            "apply", "-n", region.namespace, "-f", "-", stdin=json.dumps(copy.deepcopy(resource))
        )
    assert named in str(refused.value)


# --- 6. a deleted child comes back -------------------------------------------------------


def test_deleted_statefulset_is_put_back(cluster: Cluster, region: Region) -> None:
    ns = region.namespace
    old = cluster.get("statefulset", "la-pod", "-n", ns)["metadata"]["uid"]
    cluster.kubectl("delete", "statefulset", "la-pod", "-n", ns, "--wait=false")

    def back() -> bool:
        return bool(cluster.get("statefulset", "la-pod", "-n", ns)["metadata"]["uid"] != old)

    wait_for("the StatefulSet re-applied", back, 60)
    wait_ready_pods(cluster, ns, 1, timeout=180)


# --- 7. the operator killed mid-reconcile ---------------------------------------------------


def test_operator_killed_mid_reconcile_converges(
    cluster: Cluster, operator: Operator, region: Region
) -> None:
    ns = region.namespace
    patch = {"spec": {"resources": {"limits": {"memory": "640Mi"}}}}
    cluster.kubectl(
        "patch", "storagepod", "la", "-n", ns, "--type", "merge", "-p", json.dumps(patch)
    )
    cluster.kubectl(
        "delete",
        "pod",
        "-n",
        operator.namespace,
        "-l",
        "app.kubernetes.io/component=operator",
        "--wait=false",
    )

    def converged() -> bool:
        sts = cluster.get("statefulset", "la-pod", "-n", ns)
        container = sts["spec"]["template"]["spec"]["containers"][0]
        return bool(container["resources"]["limits"]["memory"] == "640Mi")

    wait_for("the StatefulSet follows the edited spec", converged, 120)
    wait_ready_pods(cluster, ns, 1, timeout=240)


# --- 8. DriveVolumes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores() -> Iterator[tuple[PostgresServer, S3Server]]:
    with postgres_server(host=HOST_FOR_PODS) as pg, minio_server(host=HOST_FOR_PODS) as s3:
        yield pg, s3


def _drive_volume(
    name: str, reclaim: str, secret: str, s3: S3Server, bucket: str
) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": "DriveVolume",
        "metadata": {"name": name},
        "spec": {
            "metadata": {"secretRef": {"name": secret, "key": "url"}},
            "objectStore": {
                "bucket": bucket,
                "prefix": name,
                "endpoint": s3.endpoint_url,
                "credentialsSecret": {"name": "e2e-s3"},
            },
            "tierPolicyRef": "hold-in-pods",
            "storagePods": [{"region": "la", "name": "la"}],
            "workspaces": [{"name": "comp", "path": "/shots/comp"}],
            "reclaimPolicy": reclaim,
        },
    }


def _volume_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.get("drivevolume", name, "-n", namespace).get("status", {})
    return status


async def _drive_settings(meta_url: str, drive: str) -> DriveSettings | None:
    meta = connect(meta_url, drive)
    try:
        return await meta.open_drive()
    except DriveNotFound:
        return None
    finally:
        await meta.close()


def _drive_exists(meta_url: str, drive: str) -> bool:
    return run(_drive_settings(meta_url, drive)) is not None


async def _put_chunk(s3: S3Server, url: str, blob: bytes) -> None:
    store = S3BlobStore(url, S3Location.parse(url), credentials=(s3.access_key, s3.secret_key))
    try:
        await store.put(chunk_id(blob), blob)
    finally:
        await store.close()


async def _count_chunks(s3: S3Server, url: str) -> int:
    store = S3BlobStore(url, S3Location.parse(url), credentials=(s3.access_key, s3.secret_key))
    try:
        return len([chunk async for chunk in store.list()])
    finally:
        await store.close()


def test_drive_volumes_make_keep_and_remove_drives(
    cluster: Cluster, region: Region, stores: tuple[PostgresServer, S3Server]
) -> None:
    pg, s3 = stores
    ns = region.namespace
    meta_url = pg.new_database("e2e")
    bucket = s3.new_bucket("e2e")
    cluster.apply(
        _secret("e2e-meta", {"url": meta_url}),
        _secret("e2e-s3", {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key}),
        _drive_volume("kept", "Retain", "e2e-meta", s3, bucket),
        _drive_volume("gone", "Delete", "e2e-meta", s3, bucket),
        namespace=ns,
    )
    for name in ("kept", "gone"):
        wait_for(
            f"DriveVolume {name} Ready",
            lambda name=name: _volume_status(cluster, ns, name).get("phase") == "Ready",  # type: ignore[misc]
            120,
            explain=lambda: explain(cluster, ns),
        )
        _assert_volume_and_claim(cluster, ns, name)
        settings = run(_drive_settings(meta_url, name))
        # The drive follows the example TierPolicy it names.
        assert settings is not None and settings.conflict == "keep-both"
    wait_for(
        "the TierPolicy lists the drives that follow it",
        lambda: _policy_drives(cluster, ns) == ["gone", "kept"],
        30,
    )
    gone_store = f"s3://{bucket}/gone?endpoint={s3.endpoint_url}"
    run(_put_chunk(s3, gone_store, b"a chunk of the drive that goes" * 100))
    assert run(_count_chunks(s3, gone_store)) == 1

    cluster.kubectl("delete", "drivevolume", "kept", "-n", ns, "--timeout=120s", timeout=150)
    assert _drive_exists(meta_url, "kept")
    cluster.kubectl("delete", "drivevolume", "gone", "-n", ns, "--timeout=120s", timeout=150)
    assert not _drive_exists(meta_url, "gone")
    assert run(_count_chunks(s3, gone_store)) == 0
    assert _policy_drives(cluster, ns) == []
    pvs = cluster.get("persistentvolumes")["items"]
    assert not [pv for pv in pvs if pv["metadata"]["name"].startswith(f"mediadrive-{ns}")]


def test_drive_volume_without_its_secret_is_degraded_naming_it(
    cluster: Cluster, region: Region, stores: tuple[PostgresServer, S3Server]
) -> None:
    _, s3 = stores
    ns = region.namespace
    cluster.apply(_drive_volume("orphan", "Retain", "no-such-secret", s3, "orphan"), namespace=ns)

    def degraded() -> bool:
        status = _volume_status(cluster, ns, "orphan")
        messages = [c.get("message", "") for c in status.get("conditions", [])]
        return status.get("phase") == "Degraded" and any("no-such-secret" in m for m in messages)

    wait_for(
        "DriveVolume orphan Degraded naming its Secret",
        degraded,
        60,
        explain=lambda: explain(cluster, ns),
    )
    cluster.kubectl("delete", "drivevolume", "orphan", "-n", ns, "--timeout=120s", timeout=150)


def _policy_drives(cluster: Cluster, namespace: str) -> list[str]:
    policy = cluster.get("tierpolicy", "hold-in-pods", "-n", namespace)
    drives: list[str] = policy.get("status", {}).get("drives") or []
    return drives


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def _assert_volume_and_claim(cluster: Cluster, namespace: str, name: str) -> None:
    status = _volume_status(cluster, namespace, name)
    pv = cluster.get("persistentvolume", status["persistentVolume"])
    assert pv["spec"]["csi"]["driver"] == "csi.mediadrive.io"
    claim = status["persistentVolumeClaim"]

    def bound() -> bool:
        pvc = cluster.get("persistentvolumeclaim", claim, "-n", namespace)
        return bool(pvc["status"].get("phase") == "Bound")

    wait_for(f"claim {claim} Bound", bound, 60)


def test_helm_upgrade_and_uninstall_leave_no_orphans(cluster: Cluster) -> None:
    """A release of its own (watching one namespace, so it never competes with the
    module's operator): upgraded in place, then uninstalled without leftovers while
    the CRDs, and so everyone's resources, stay."""
    release = f"up{os.getpid() % 100_000}"
    namespace = f"mediadrive-{release}"
    watched = f"{namespace}-watched"
    cluster.kubectl("create", "namespace", watched)
    selector = f"app.kubernetes.io/instance={release}"
    try:
        helm(
            cluster, "install", release, str(CHART), "--namespace", namespace,
            "--create-namespace", "--set", "operator.image.pullPolicy=Never",
            "--set", f"operator.watchNamespaces={{{watched}}}", "--set", "node.enabled=false",
            "--wait", "--timeout", "180s",
        )  # fmt: skip
        assert cluster.kubectl("get", "kopfpeering", "mediadrive", "-n", watched, "-o", "name")
        helm(
            cluster, "upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
            "--set", "operator.logLevel=debug", "--wait", "--timeout", "180s",
        )  # fmt: skip
        deployment = cluster.get(f"deployment/{release}-operator", "-n", namespace)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--log-level=debug" in args
        assert f"--namespace={watched}" in args
    finally:
        helm(cluster, "uninstall", release, "--namespace", namespace, "--wait")
    leftovers = {
        "namespaced": cluster.kubectl(
            "get", "deployments,serviceaccounts,configmaps,secrets", "-n", namespace,
            "-l", selector, "-o", "name",
        ),
        "peering": cluster.kubectl("get", "kopfpeerings", "-n", watched, "-o", "name"),
        "cluster": cluster.kubectl(
            "get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name"
        ),
    }  # fmt: skip
    assert leftovers == {"namespaced": "", "peering": "", "cluster": ""}
    # The CRDs are kept: deleting them would delete every drive's resources.
    for kind in ("drivevolumes", "storagepods", "tierpolicies"):
        assert cluster.kubectl("get", "crd", f"{kind}.mediadrive.io", "-o", "name")
    cluster.kubectl("delete", "namespace", namespace, watched, "--wait=false")
