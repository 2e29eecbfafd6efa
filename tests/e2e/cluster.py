"""The Kubernetes cluster end-to-end tests run against.

By default the one-node cluster of ``scripts/cluster/up.sh`` on this machine
(root), with the images of ``scripts/images/build.sh`` imported into it. A
cluster that is up is used as it is and left up; one the tests started is
stopped when the last test session using it ends (sessions of several
worktrees may share it: a lock file beside the cluster folder orders them).
With ``MEDIADRIVE_E2E_KUBECONFIG`` set (``make e2e-kind``), that cluster instead,
as given: nothing is started or stopped there, and its images are loaded by
whoever made it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
UP = REPO_ROOT / "scripts" / "cluster" / "up.sh"
DOWN = REPO_ROOT / "scripts" / "cluster" / "down.sh"
BUILD_IMAGES = REPO_ROOT / "scripts" / "images" / "build.sh"

POD_IMAGE = "mediadrive/pod:dev"
OPERATOR_IMAGE = "mediadrive/operator:dev"

# Starting the cluster from nothing takes 10-20 s; building images from an empty
# cache a few minutes (debootstrap).
_UP_TIMEOUT = 300.0
_IMAGES_TIMEOUT = 1200.0
_KUBECTL_TIMEOUT = 180.0


class ClusterError(Exception):
    """The cluster could not be started or a kubectl command failed."""


def cluster_dir() -> Path:
    return Path(os.environ.get("MEDIADRIVE_CLUSTER_DIR", "/var/tmp/mediadrive-cluster"))


def cluster_bin() -> Path:
    cache = Path(os.environ.get("MEDIADRIVE_CACHE", Path.home() / ".cache" / "mediadrive"))
    return Path(os.environ.get("MEDIADRIVE_CLUSTER_BIN", cache / "cluster" / "bin"))


@dataclass(frozen=True)
class Cluster:
    """A cluster and a kubectl that talks to it."""

    kubeconfig: Path
    kubectl_path: Path
    # True on the local cluster: the host routes to Service ClusterIPs (kube-proxy
    # runs on this machine). In kind, reach Services with port-forward instead.
    host_reaches_services: bool

    def kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = _KUBECTL_TIMEOUT
    ) -> str:
        """Run kubectl; return its stdout, raise ClusterError (with stderr) on failure."""
        command = [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args]
        try:
            done = subprocess.run(
                command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"kubectl {' '.join(args)}: no answer in {timeout:.0f}s") from exc
        if done.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def get(self, *args: str) -> Any:
        """``kubectl get ... -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, *manifests: Mapping[str, Any], namespace: str | None = None) -> None:
        """Apply objects given as dicts (JSON is YAML)."""
        document = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
        extra = ["-n", namespace] if namespace else []
        self.kubectl("apply", *extra, "-f", "-", stdin=json.dumps(document))

    @contextmanager
    def namespace(self, prefix: str) -> Iterator[str]:
        """A fresh namespace, deleted (without waiting) afterwards."""
        name = f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 100_000}"
        self.kubectl("create", "namespace", name)
        try:
            yield name
        finally:
            self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")

    @contextmanager
    def service_url(self, namespace: str, service: str, port: int) -> Iterator[str]:
        """An http:// URL on this host that reaches ``service``'s ``port``.

        The Service's ClusterIP itself where the host routes to it (kube-proxy on this
        machine), else a ``kubectl port-forward`` to it for as long as the block runs.
        """
        if self.host_reaches_services:
            ip = self.kubectl(
                "get", "service", service, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
            )
            yield f"http://{ip}:{port}"
            return
        local = _free_port()
        command = [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig)]
        command += ["port-forward", "-n", namespace, f"service/{service}", f"{local}:{port}"]
        forward = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield f"http://127.0.0.1:{local}"
        finally:
            forward.terminate()
            forward.wait(timeout=10)

    def http_get(self, url: str, timeout: float = 60.0) -> bytes:
        """GET ``url`` from this host, retrying while the Service's rules settle."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body: bytes = response.read()
                    return body
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() >= deadline:
                    raise ClusterError(f"GET {url}: {exc}") from exc
                time.sleep(0.5)


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    every: float = 1.0,
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` until true; fail the test naming ``what`` (and ``explain()``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (ClusterError, KeyError, ValueError):
            pass
        if time.monotonic() >= deadline:
            details = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"{what}: not within {timeout:.0f}s{details}")
        time.sleep(every)


def finished_log(
    cluster: Cluster, what: str, namespace: str, whole: Callable[[str], bool], timeout: float = 30
) -> str:
    """The log of a finished pod (``what``: its name, or ``job/NAME``), once ``whole``
    says it is all there: a container that exits at once can be reported done before
    the runtime has written all of its output. Returns the last log read (the
    caller's assertions then say what is missing)."""
    log = ""

    def read() -> bool:
        nonlocal log
        log = cluster.kubectl("logs", what, "-n", namespace)
        return whole(log)

    with contextlib.suppress(AssertionError):
        wait_for(f"{what}'s whole log", read, timeout)
    return log


def helm(cluster: Cluster, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
    """Run the cluster's helm; return its stdout, raise ClusterError on failure."""
    command = [str(cluster_bin() / "helm"), "--kubeconfig", str(cluster.kubeconfig), *args]
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise ClusterError(f"helm {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run(command: list[str], timeout: float) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{command[0]}: no result in {timeout:.0f}s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise ClusterError(f"{command[0]} failed (exit {done.returncode}):\n{tail}")


def local_cluster() -> Cluster:
    return Cluster(
        kubeconfig=cluster_dir() / "kubeconfig",
        kubectl_path=cluster_bin() / "kubectl",
        host_reaches_services=True,
    )


def is_up(cluster: Cluster) -> bool:
    """The local cluster answers and its node is Ready."""
    if not cluster.kubeconfig.exists() or not cluster.kubectl_path.exists():
        return False
    try:
        node = cluster.get("node", "localhost")
    except (ClusterError, json.JSONDecodeError):
        return False
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _external_cluster(kubeconfig: str) -> Cluster:
    kubectl = shutil.which("kubectl") or str(cluster_bin() / "kubectl")
    return Cluster(Path(kubeconfig), Path(kubectl), host_reaches_services=False)


@contextmanager
def _locked() -> Iterator[None]:
    """Serialize starting, image imports and stopping between test sessions."""
    directory = cluster_dir()
    with directory.with_name(directory.name + ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sessions() -> Path:
    return cluster_dir() / "run" / "test-sessions"


def _started_by_tests() -> Path:
    return cluster_dir() / "run" / "started-by-tests"


def _other_live_sessions() -> list[int]:
    live = []
    for entry in _sessions().glob("*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
            continue
        live.append(pid)
    return live


def _join(cluster: Cluster) -> None:
    if not is_up(cluster):
        try:
            _run([str(UP)], _UP_TIMEOUT)
        except ClusterError:
            # Leave nothing half-started behind (processes, mounts, bridge).
            _run([str(DOWN)], _UP_TIMEOUT)
            raise
        _started_by_tests().touch()
    _sessions().mkdir(parents=True, exist_ok=True)
    (_sessions() / str(os.getpid())).touch()
    _run([str(BUILD_IMAGES)], _IMAGES_TIMEOUT)


def _leave() -> None:
    (_sessions() / str(os.getpid())).unlink(missing_ok=True)
    # A cluster someone started by hand stays up; one the tests started goes with
    # the last test session using it.
    if _started_by_tests().exists() and not _other_live_sessions():
        _run([str(DOWN)], _UP_TIMEOUT)


@contextmanager
def cluster_session() -> Iterator[Cluster]:
    """The cluster for a test session (see the module's docstring)."""
    external = os.environ.get("MEDIADRIVE_E2E_KUBECONFIG")
    if external:
        yield _external_cluster(external)
        return
    cluster = local_cluster()
    with _locked():
        _join(cluster)
    try:
        yield cluster
    finally:
        with _locked():
            _leave()
