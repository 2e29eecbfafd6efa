"""The CSI node plugin on a real cluster: drives mounted into render pods.

The chart is installed with its node DaemonSet (the plugin registering itself with
kubelet) and a StorageClass; the drives live in a PostgreSQL and a MinIO on this
machine that pods reach at the cluster bridge. A render Job writes, a second Job
reads back byte for byte, a read-only workspace pod sees only its folder, a claim
of the StorageClass gets a drive, deleting pods commits what was pending, and
neither killing the plugin's process nor an agent's loses a pod's mount.

The tests of this module share one release and run in order.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from mediadrive.core.drive import Drive
from mediadrive.core.errors import DriveNotFound, PathNotFound, VersionNotFound
from tests.e2e.cluster import (
    REPO_ROOT,
    Cluster,
    ClusterError,
    cluster_dir,
    finished_log,
    helm,
    wait_for,
)
from tests.servers import PostgresServer, S3Server, minio_server, postgres_server

pytestmark = pytest.mark.cluster

CHART = REPO_ROOT / "charts" / "mediadrive"
EXAMPLES = REPO_ROOT / "examples"
HOST_FOR_PODS = os.environ.get("MEDIADRIVE_CLUSTER_POD_GATEWAY", "10.250.0.1")
KUBELET_DIR = Path(os.environ.get("MEDIADRIVE_CLUSTER_KUBELET_DIR", "/var/lib/kubelet"))
IMAGE = "mediadrive/pod:dev"
DRIVER = "csi.mediadrive.io"
FILE_SIZE = 5 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    # Where the workloads run, with the drives' Secrets.
    apps: str
    storage_class: str
    state_dir: Path


@dataclass(frozen=True)
class Stores:
    pg: PostgresServer
    s3: S3Server
    meta_url: str
    bucket: str

    def store_url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint={self.s3.endpoint_url}"


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores() -> Iterator[Stores]:
    with postgres_server(host=HOST_FOR_PODS) as pg, minio_server(host=HOST_FOR_PODS) as s3:
        yield Stores(pg, s3, pg.new_database("csi"), s3.new_bucket("csi"))


@pytest.fixture(scope="module")
def release(cluster: Cluster, stores: Stores) -> Iterator[Release]:
    suffix = os.getpid() % 100_000
    name = f"csi{suffix}"
    namespace = f"mediadrive-{name}"
    apps = f"render-{suffix}"
    storage_class = f"mediadrive-e2e-{suffix}"
    state_dir = cluster_dir() / f"csi-state-{suffix}"
    cluster.kubectl("create", "namespace", apps)
    cluster.apply(
        _secret("studio-meta", {"url": stores.meta_url}),
        _secret(
            "studio-s3",
            {"accessKeyId": stores.s3.access_key, "secretAccessKey": stores.s3.secret_key},
        ),
        namespace=apps,
    )
    values = {
        "operator": {
            "image": {"pullPolicy": "Never"},
            "resyncSeconds": 3,
            "watchNamespaces": [apps],
        },
        "node": {
            "image": {"pullPolicy": "Never"},
            "kubeletDir": str(KUBELET_DIR),
            "stateDir": str(state_dir),
            "healthInterval": 2,
            "logLevel": "debug",
        },
        "storageClass": {
            "create": True,
            "name": storage_class,
            "reclaimPolicy": "Delete",
            "parameters": {
                "metadataSecret": "studio-meta",
                "bucket": stores.bucket,
                "endpoint": stores.s3.endpoint_url,
                "credentialsSecret": "studio-s3",
            },
        },
    }
    helm(
        cluster, "install", name, str(CHART), "--namespace", namespace, "--create-namespace",
        "--values", "-", "--wait", "--timeout", "300s", stdin=json.dumps(values), timeout=330,
    )  # fmt: skip
    release = Release(name, namespace, apps, storage_class, state_dir)
    try:
        # helm's --wait asks a DaemonSet for desired minus maxUnavailable ready pods:
        # none on one node, so it can return before the plugin is up.
        wait_for(
            "the CSI node plugin ready",
            lambda: _plugin_ready(cluster, release),
            180,
            explain=lambda: _explain(cluster, release),
        )
        yield release
    finally:
        with_errors = _delete_workloads(cluster, apps)
        helm(cluster, "uninstall", name, "--namespace", namespace, "--wait", timeout=300)
        cluster.kubectl("delete", "namespace", namespace, apps, "--wait=false")
        shutil.rmtree(state_dir, ignore_errors=True)
        assert not with_errors, with_errors


def _delete_workloads(cluster: Cluster, namespace: str) -> str:
    """Delete what the tests left running (so their volumes unmount) and the drives."""
    try:
        cluster.kubectl(
            "delete", "jobs,pods,pvc,drivevolumes", "--all", "-n", namespace,
            "--timeout=180s", timeout=200,
        )  # fmt: skip
    except ClusterError as exc:
        return str(exc)
    return ""


# --- helpers --------------------------------------------------------------------


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def _drive_volume(
    name: str, stores: Stores, *, workspaces: dict[str, str] | None = None, policy: str = ""
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "metadata": {"secretRef": {"name": "studio-meta", "key": "url"}},
        "objectStore": {
            "bucket": stores.bucket,
            "prefix": name,
            "endpoint": stores.s3.endpoint_url,
            "credentialsSecret": {"name": "studio-s3"},
        },
        "reclaimPolicy": "Delete",
        "workspaces": [{"name": k, "path": v} for k, v in (workspaces or {}).items()],
    }
    if policy:
        spec["tierPolicyRef"] = policy
    return {
        "apiVersion": "mediadrive.io/v1alpha1",
        "kind": "DriveVolume",
        "metadata": {"name": name},
        "spec": spec,
    }


def _volume(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, **source}


def _claim(claim: str) -> dict[str, Any]:
    return {"persistentVolumeClaim": {"claimName": claim}}


def _pod_spec(
    script: str,
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    restart: str = "Never",
) -> dict[str, Any]:
    return {
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "work",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-ec", script],
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }


# A job's script ends by printing this line: a container that exits at once can be
# reported complete before the runtime has written all of its output to the log.
JOB_DONE = "job-script-finished"


def _job(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    command = spec["containers"][0]["command"]
    command[-1] = f"{command[-1].rstrip()}\necho {JOB_DONE}\n"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": spec}},
    }


def _pod(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _explain(cluster: Cluster, release: Release) -> str:
    parts = []
    for args in (
        ("get", "pods,pvc,drivevolumes", "-n", release.apps, "-o", "wide"),
        ("get", "events", "-n", release.apps, "--sort-by=.lastTimestamp"),
        ("logs", "-n", release.namespace, f"daemonset/{release.name}-node", "-c", "plugin",
         "--tail=30"),
    ):  # fmt: skip
        try:
            parts.append(cluster.kubectl(*args))
        except ClusterError as exc:
            parts.append(str(exc))
    return "\n".join(parts)


def _wait_volume_ready(cluster: Cluster, release: Release, name: str) -> None:
    def ready() -> bool:
        volume = cluster.get("drivevolume", name, "-n", release.apps)
        return bool(volume["status"]["phase"] == "Ready")

    wait_for(f"DriveVolume {name} Ready", ready, 120, explain=lambda: _explain(cluster, release))


def _wait_job(cluster: Cluster, release: Release, name: str, timeout: float = 240) -> str:
    def finished() -> bool:
        status = cluster.get("job", name, "-n", release.apps).get("status", {})
        if status.get("failed"):
            raise AssertionError(
                f"job {name} failed:\n{_logs(cluster, release, f'job/{name}')}\n"
                + _explain(cluster, release)
            )
        return bool(status.get("succeeded"))

    wait_for(f"job {name} complete", finished, timeout, explain=lambda: _explain(cluster, release))
    pod = cluster.get("job", name, "-n", release.apps)["spec"]["template"]["spec"]
    marked = any(JOB_DONE in " ".join(c.get("command", [])) for c in pod["containers"])
    log = finished_log(
        cluster, f"job/{name}", release.apps, lambda text: not marked or JOB_DONE in text
    )
    if marked and JOB_DONE not in log:
        raise AssertionError(f"job {name}'s whole log: not within 30s\n{log!r}")
    return log.replace(f"{JOB_DONE}\n", "")


def _logs(cluster: Cluster, release: Release, what: str) -> str:
    try:
        return cluster.kubectl("logs", "-n", release.apps, what)
    except ClusterError as exc:
        return str(exc)


def _sums(log: str) -> dict[str, str]:
    """``sha256sum`` output lines, by file name."""
    found = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            found[Path(parts[1]).name] = parts[0]
    return found


def _outside(
    stores: Stores, drive: str, body: Callable[[Drive], Awaitable[T]], store_url: str = ""
) -> T:
    """``body`` on the drive as a machine outside the cluster opens it (the S3 keys in
    its environment)."""
    keys = {"AWS_ACCESS_KEY_ID": stores.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": stores.s3.secret_key}  # fmt: skip
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)

    async def run() -> T:
        opened = await Drive.open(drive, stores.meta_url, store_url or stores.store_url(drive))
        async with opened:
            return await body(opened)

    try:
        return asyncio.run(run())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _read_drive(stores: Stores, drive: str, path: str, store_url: str = "") -> bytes:
    async def read(opened: Drive) -> bytes:
        reader = await opened.reader(path)
        return b"".join([data async for data in reader.chunks()])

    return _outside(stores, drive, read, store_url)


def _committed(
    stores: Stores, drive: str, path: str, store_url: str = "", timeout: float = 90
) -> bytes:
    """The file once its writer's commit (after close, in the background) landed."""
    found: list[bytes] = []

    def read() -> bool:
        try:
            found.append(_read_drive(stores, drive, path, store_url))
        except (PathNotFound, VersionNotFound):
            return False
        return True

    wait_for(f"{drive}:{path} committed", read, timeout)
    return found[-1]


def _versions(stores: Stores, drive: str, path: str) -> list[Any]:
    async def versions(opened: Drive) -> list[Any]:
        try:
            return list(await opened.versions(path))
        except PathNotFound:
            return []

    return _outside(stores, drive, versions)


def _node_pod(cluster: Cluster, release: Release) -> dict[str, Any]:
    pods = cluster.get(
        "pods", "-n", release.namespace, "-l", "app.kubernetes.io/component=csi-node"
    )["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod: dict[str, Any] = pods[0]
    return pod


def _plugin_ready(cluster: Cluster, release: Release) -> bool:
    pods = cluster.get(
        "pods", "-n", release.namespace, "-l", "app.kubernetes.io/component=csi-node"
    )["items"]
    return len(pods) == 1 and _ready(pods[0])


def _restarts(pod: dict[str, Any], container: str) -> int:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    return next(int(s.get("restartCount", 0)) for s in statuses if s["name"] == container)


def _ready(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    return bool(statuses) and all(s.get("ready") for s in statuses)


def _host_pids(*words: str) -> list[int]:
    """Processes of this machine whose command line has every one of ``words``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in argv]
        if all(any(w in a for a in text) for w in words):
            found.append(int(entry.name))
    return found


def _staged(handle_part: str) -> list[str]:
    """Staging mounts (FUSE) of the kubelet whose path has ``handle_part``."""
    mounts = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            point = fields[4]
            if point.endswith("/globalmount") and handle_part in point:
                mounts.append(point)
    return mounts


# --- 1. the plugin --------------------------------------------------------------


def test_node_plugin_registers_with_kubelet_and_serves_metrics(
    cluster: Cluster, release: Release
) -> None:
    csinode = cluster.get("csinode", "localhost")
    assert DRIVER in [d["name"] for d in csinode["spec"].get("drivers") or []]
    driver = cluster.get("csidriver", DRIVER)
    assert driver["spec"]["attachRequired"] is False
    assert set(driver["spec"]["volumeLifecycleModes"]) == {"Persistent", "Ephemeral"}
    pod = _node_pod(cluster, release)
    assert _ready(pod)
    ip = pod["status"]["podIP"]
    metrics = cluster.http_get(f"http://{ip}:9810/metrics").decode()
    assert "mediadrive_csi_volumes" in metrics
    assert cluster.http_get(f"http://{ip}:9810/healthz")


# --- 2. render jobs -------------------------------------------------------------


def test_render_job_writes_and_a_second_job_reads_it_back(
    cluster: Cluster, release: Release, stores: Stores
) -> None:
    cluster.apply(_drive_volume("shots", stores), namespace=release.apps)
    _wait_volume_ready(cluster, release, "shots")
    mounts = [{"name": "drive", "mountPath": "/show"}]
    volumes = [_volume("drive", _claim("shots-drive"))]
    write = (
        "mkdir -p /show/renders/sh010 && cd /show/renders/sh010\n"
        f"for f in 1 2 3; do head -c {FILE_SIZE} /dev/urandom >frame-$f.exr; done\n"
        "sha256sum frame-*.exr\n"
    )
    read = "cd /show/renders/sh010 && sha256sum frame-*.exr\n"
    cluster.apply(_job("render", _pod_spec(write, volumes, mounts)), namespace=release.apps)
    written = _sums(_wait_job(cluster, release, "render"))
    assert sorted(written) == ["frame-1.exr", "frame-2.exr", "frame-3.exr"]
    cluster.apply(_job("review", _pod_spec(read, volumes, mounts)), namespace=release.apps)
    assert _sums(_wait_job(cluster, release, "review")) == written
    # Committed into the drive's stores: a machine outside the cluster reads the bytes.
    for name, digest in written.items():
        data = _committed(stores, "shots", f"/renders/sh010/{name}")
        assert hashlib.sha256(data).hexdigest() == digest


def test_read_only_workspace_pod_sees_only_its_folder(
    cluster: Cluster, release: Release, stores: Stores
) -> None:
    cluster.apply(
        _drive_volume("comp", stores, workspaces={"comp": "/shots/comp"}), namespace=release.apps
    )
    _wait_volume_ready(cluster, release, "comp")
    prepare = (
        "mkdir -p /d/shots/comp /d/shots/anim\n"
        "echo plate >/d/shots/comp/plate.txt\necho secret >/d/shots/anim/rig.txt\n"
    )
    cluster.apply(
        _job(
            "prepare",
            _pod_spec(
                prepare,
                [_volume("d", _claim("comp-drive"))],
                [{"name": "d", "mountPath": "/d"}],
            ),
        ),
        namespace=release.apps,
    )
    _wait_job(cluster, release, "prepare")
    claim = cluster.get("pvc", "comp-drive", "-n", release.apps)
    pv = cluster.get("pv", claim["spec"]["volumeName"])
    attributes = dict(pv["spec"]["csi"]["volumeAttributes"])
    attributes["workspace"] = "comp"
    inline = {
        "csi": {
            "driver": DRIVER,
            "readOnly": True,
            "volumeAttributes": attributes,
            "nodePublishSecretRef": {"name": "comp-mount"},
        }
    }
    look = (
        "ls -A /ws\ncat /ws/plate.txt\n"
        "if touch /ws/new.txt 2>/tmp/err; then echo WROTE; else cat /tmp/err; fi\n"
    )
    cluster.apply(
        _job(
            "look",
            _pod_spec(look, [_volume("ws", inline)], [{"name": "ws", "mountPath": "/ws"}]),
        ),
        namespace=release.apps,
    )
    log = _wait_job(cluster, release, "look")
    lines = log.splitlines()
    assert lines[0] == "plate.txt", log
    assert "plate" in lines
    assert "WROTE" not in log and "Read-only file system" in log
    assert "rig.txt" not in log


# --- 3. dynamic provisioning ----------------------------------------------------


def test_claim_of_the_storage_class_gets_a_drive_and_delete_removes_it(
    cluster: Cluster, release: Release, stores: Stores
) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "scratch"},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": release.storage_class,
            "resources": {"requests": {"storage": "10Gi"}},
        },
    }
    cluster.apply(claim, namespace=release.apps)
    wait_for(
        "claim scratch Bound",
        lambda: cluster.get("pvc", "scratch", "-n", release.apps)["status"].get("phase") == "Bound",
        120,
        explain=lambda: _explain(cluster, release),
    )
    pvc = cluster.get("pvc", "scratch", "-n", release.apps)
    pv = cluster.get("pv", pvc["spec"]["volumeName"])
    assert pv["spec"]["csi"]["driver"] == DRIVER
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert pv["spec"]["storageClassName"] == release.storage_class
    drive = pv["spec"]["csi"]["volumeAttributes"]["drive"]
    store_url = pv["spec"]["csi"]["volumeAttributes"]["storeUrl"]
    script = "echo scratch-data >/s/note.txt\nsync\ncat /s/note.txt\n"
    cluster.apply(
        _job(
            "scratch",
            _pod_spec(
                script, [_volume("s", _claim("scratch"))], [{"name": "s", "mountPath": "/s"}]
            ),
        ),
        namespace=release.apps,
    )
    assert "scratch-data" in _wait_job(cluster, release, "scratch")
    assert _committed(stores, drive, "/note.txt", store_url) == b"scratch-data\n"

    cluster.kubectl("delete", "job", "scratch", "-n", release.apps, "--cascade=foreground")
    cluster.kubectl("delete", "pvc", "scratch", "-n", release.apps, "--timeout=120s")
    wait_for(
        f"PersistentVolume {pv['metadata']['name']} deleted",
        lambda: (
            not cluster.kubectl(
                "get", "pv", pv["metadata"]["name"], "--ignore-not-found", "-o", "name"
            )
        ),
        180,
        explain=lambda: _explain(cluster, release),
    )

    async def opens(opened: Drive) -> bool:
        return True

    def gone() -> bool:
        # While it is destroyed its chunks go first, then its metadata: only a drive
        # that no longer opens is gone.
        try:
            _outside(stores, drive, opens, store_url)
        except DriveNotFound:
            return True
        return False

    wait_for(f"drive {drive} removed", gone, 120)


# --- 4. unmounting uploads what was pending ---------------------------------------


def test_deleting_the_pod_commits_and_uploads_what_was_pending(
    cluster: Cluster, release: Release, stores: Stores
) -> None:
    policy = {
        "apiVersion": "mediadrive.io/v1alpha1",
        "kind": "TierPolicy",
        "metadata": {"name": "explicit-saves"},
        # Nothing is committed until a save: what a pod writes stays pending.
        "spec": {"commitOn": "save", "checkpointInterval": "1h"},
    }
    cluster.apply(policy, _drive_volume("pending", stores, policy="explicit-saves"),
                  namespace=release.apps)  # fmt: skip
    _wait_volume_ready(cluster, release, "pending")
    script = (
        f"head -c {FILE_SIZE} /dev/urandom >/p/take.mov\nsync\nsha256sum /p/take.mov\nsleep 3600\n"
    )
    cluster.apply(
        _pod(
            "writer",
            _pod_spec(script, [_volume("p", _claim("pending-drive"))],
                      [{"name": "p", "mountPath": "/p"}]),
        ),
        namespace=release.apps,
    )  # fmt: skip
    wait_for(
        "writer wrote",
        lambda: len(_sums(_logs(cluster, release, "pod/writer"))) == 1,
        180,
        explain=lambda: _explain(cluster, release),
    )
    digest = _sums(_logs(cluster, release, "pod/writer"))["take.mov"]
    handle = f"{release.apps}.pending"
    # Pending: staged on the node, not yet a version anyone else can read.
    assert not _versions(stores, "pending", "/take.mov")
    cluster.kubectl("delete", "pod", "writer", "-n", release.apps, "--timeout=120s")
    wait_for("the drive unstaged", lambda: not _staged_for(handle), 120)
    data = _read_drive(stores, "pending", "/take.mov")
    assert hashlib.sha256(data).hexdigest() == digest


def _staged_for(handle: str) -> list[str]:
    digest = hashlib.sha256(handle.encode()).hexdigest()
    return [m for m in _staged("") if digest in m or handle in m]


# --- 5. restarts ---------------------------------------------------------------

READER = """
mkdir -p /r/beats
i=0
while [ $i -lt 100000 ]; do
  i=$((i + 1))
  if echo "$i" >/r/beats/$((i % 20)) 2>/tmp/err && [ "$(cat /r/beats/$((i % 20)))" = "$i" ] \
     && sha256sum /r/take.mov >/tmp/sum 2>>/tmp/err; then
    echo "OK $i $(cut -d' ' -f1 /tmp/sum)"
  else
    echo "ERR $i $(tr '\\n' ' ' </tmp/err)"
  fi
  sleep 0.3
done
"""


def _reader(release: Release, name: str, claim: str) -> dict[str, Any]:
    seed = f"head -c {FILE_SIZE} /dev/urandom >/r/take.mov\n"
    spec = _pod_spec(
        seed + READER,
        [_volume("r", _claim(claim))],
        # A new mount at the path (an agent restarted) reaches the container.
        [{"name": "r", "mountPath": "/r", "mountPropagation": "HostToContainer"}],
    )
    return _pod(name, spec)


def _beats(cluster: Cluster, release: Release, pod: str) -> list[str]:
    return [
        line
        for line in _logs(cluster, release, f"pod/{pod}").splitlines()
        if line.startswith(("OK ", "ERR "))
    ]


def test_killing_the_plugin_process_leaves_a_reading_pod_working(
    cluster: Cluster, release: Release, stores: Stores
) -> None:
    cluster.apply(_drive_volume("live", stores), namespace=release.apps)
    _wait_volume_ready(cluster, release, "live")
    cluster.apply(_reader(release, "reader", "live-drive"), namespace=release.apps)
    wait_for("reader reads", lambda: len(_beats(cluster, release, "reader")) >= 5, 180,
             explain=lambda: _explain(cluster, release))  # fmt: skip
    before = _restarts(_node_pod(cluster, release), "plugin")
    plugins = _host_pids("csi-node", "run", f"--state-dir={release.state_dir}")
    assert len(plugins) == 1, plugins
    os.kill(plugins[0], signal.SIGKILL)
    seen = len(_beats(cluster, release, "reader"))
    wait_for(
        "the plugin container restarted and Ready",
        lambda: _restarts(pod := _node_pod(cluster, release), "plugin") > before and _ready(pod),
        180,
        explain=lambda: _explain(cluster, release),
    )
    wait_for("more reads", lambda: len(_beats(cluster, release, "reader")) >= seen + 10, 60)
    beats = _beats(cluster, release, "reader")
    assert not [b for b in beats if b.startswith("ERR")], beats
    assert len({b.split()[2] for b in beats}) == 1, "the file's bytes changed"
    # The restarted plugin answers for the volume it had: stats through kubelet's
    # volume metrics would fail otherwise; ask it directly through its metrics.
    ip = _node_pod(cluster, release)["status"]["podIP"]
    metrics = cluster.http_get(f"http://{ip}:9810/metrics").decode()
    assert 'drive="live"' in metrics


def test_killing_an_agent_recovers_the_mount(
    cluster: Cluster, release: Release, stores: Stores
) -> None:
    beats_before = len(_beats(cluster, release, "reader"))
    digest = _beats(cluster, release, "reader")[-1].split()[2]
    entries = [
        json.loads(p.read_text())
        for p in (release.state_dir / "run").glob("*.json")
        if "live" in p.read_text()
    ]
    assert len(entries) == 1, entries
    node = _node_pod(cluster, release)["metadata"]["name"]
    cluster.kubectl(
        "exec", "-n", release.namespace, node, "-c", "mounter", "--",
        "sh", "-c", f"kill -9 {entries[0]['pid']}",
    )  # fmt: skip

    def recovered() -> bool:
        beats = _beats(cluster, release, "reader")[beats_before:]
        errors = [i for i, b in enumerate(beats) if b.startswith("ERR")]
        return bool(errors) and any(b.startswith("OK") for b in beats[errors[-1] :])

    wait_for("the reader fails, then reads again", recovered, 120,
             explain=lambda: "\n".join(_beats(cluster, release, "reader")[-20:]))  # fmt: skip
    last = [b for b in _beats(cluster, release, "reader") if b.startswith("OK")][-1]
    assert last.split()[2] == digest
    cluster.kubectl("delete", "pod", "reader", "-n", release.apps, "--timeout=120s")


# --- 6. the examples ------------------------------------------------------------


def test_examples_render_job_writes_what_mediadrive_ls_shows_outside(
    cluster: Cluster, release: Release, stores: Stores
) -> None:
    """``kubectl apply -f examples/`` (in a namespace of its own, with the Secrets the
    examples name made from this test's stores): the render Job completes, and
    ``mediadrive ls`` on this machine lists the frames it wrote."""
    docs = [
        doc
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    for doc in docs:
        if doc["kind"] == "StoragePod":
            doc["spec"]["storage"]["hostPath"] = str(release.state_dir / "pods")
    meta_url = stores.pg.new_database("show")
    cluster.apply(
        _secret("show-metadata", {"url": meta_url}),
        _secret(
            "show-s3",
            {"accessKeyId": stores.s3.access_key, "secretAccessKey": stores.s3.secret_key},
        ),
        *[_in_test_stores(doc, stores) for doc in docs],
        namespace=release.apps,
    )
    log = _wait_job(cluster, release, "render-shot-010", timeout=300)
    frames = _sums(log)
    assert len(frames) == 4
    home = Path(tempfile.mkdtemp(prefix="mediadrive-home-"))
    env = {
        **os.environ,
        "HOME": str(home),
        "AWS_ACCESS_KEY_ID": stores.s3.access_key,
        "AWS_SECRET_ACCESS_KEY": stores.s3.secret_key,
    }
    cli = str(REPO_ROOT / ".venv" / "bin" / "mediadrive")
    try:
        store_url = f"s3://{stores.bucket}/show?endpoint={stores.s3.endpoint_url}"
        attach = subprocess.run(
            [cli, "drive", "attach", "show", "--meta", meta_url, "--store", store_url],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert attach.returncode == 0, attach.stderr

        def listed() -> dict[str, int]:
            done = subprocess.run(
                [cli, "ls", "--json", "show:/renders/shot-010"],
                env=env, check=True, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            return {e["name"]: e["size"] for e in json.loads(done.stdout)}

        wait_for(
            "the frames listed with their sizes outside the cluster",
            lambda: all(listed().get(name) == 4 * 1024 * 1024 for name in frames),
            120,
            explain=lambda: json.dumps(listed()),
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _in_test_stores(doc: dict[str, Any], stores: Stores) -> dict[str, Any]:
    """The example DriveVolume's object store is the platform's; here, this test's."""
    if doc["kind"] == "DriveVolume":
        doc["spec"]["objectStore"].update(bucket=stores.bucket, endpoint=stores.s3.endpoint_url)
    return doc
