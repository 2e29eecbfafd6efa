"""The cluster runs the mediadrive images: a Deployment becomes Ready from a locally
built image (never pulled), and a client on this host reaches it through a Service."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.cluster import POD_IMAGE, Cluster, finished_log

pytestmark = pytest.mark.cluster

_PORT = 8080
_LABELS = {"app.kubernetes.io/name": "smoke"}


def _deployment(command: list[str]) -> dict[str, Any]:
    container = {
        "name": "web",
        "image": POD_IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
        "ports": [{"containerPort": _PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/", "port": _PORT},
            "periodSeconds": 1,
        },
        "resources": {"limits": {"memory": "128Mi", "cpu": "200m"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "smoke", "labels": _LABELS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _LABELS},
            "template": {
                "metadata": {"labels": _LABELS},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 1},
            },
        },
    }


def _service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "smoke"},
        "spec": {"selector": _LABELS, "ports": [{"port": 80, "targetPort": _PORT}]},
    }


def test_deployment_of_pod_image_is_reached_through_a_service(cluster: Cluster) -> None:
    # The image's own python serves a file the test knows; the storage pod's server
    # takes its place once `mediadrive storage-pod serve` exists.
    command = [
        "sh",
        "-c",
        "mkdir -p /srv && echo mediadrive-smoke >/srv/index.html"
        f" && exec python3 -m http.server {_PORT} --directory /srv",
    ]
    with cluster.namespace("smoke") as namespace:
        cluster.apply(_deployment(command), _service(), namespace=namespace)
        cluster.kubectl("rollout", "status", "deployment/smoke", "-n", namespace, "--timeout=120s")
        with cluster.service_url(namespace, "smoke", 80) as url:
            assert cluster.http_get(url + "/").strip() == b"mediadrive-smoke"


def test_pod_image_runs_the_mediadrive_command(cluster: Cluster) -> None:
    with cluster.namespace("smoke") as namespace:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "cli"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "cli",
                        "image": POD_IMAGE,
                        "imagePullPolicy": "Never",
                        "args": ["--help"],
                    }
                ],
            },
        }
        cluster.apply(pod, namespace=namespace)
        cluster.kubectl(
            "wait",
            "pod/cli",
            "-n",
            namespace,
            "--for=jsonpath={.status.phase}=Succeeded",
            "--timeout=120s",
        )
        log = finished_log(cluster, "cli", namespace, lambda text: "Usage: mediadrive" in text)
        assert "Usage: mediadrive" in log


# What an in-cluster client (the operator) does: the kubernetes Service's address
# from the environment, the pod's service-account token and the cluster's CA.
_API_CLIENT = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host = os.environ["KUBERNETES_SERVICE_HOST"]
port = os.environ["KUBERNETES_SERVICE_PORT"]
token = open(sa + "/token").read()
context = ssl.create_default_context(cafile=sa + "/ca.crt")
request = urllib.request.Request(
    f"https://{host}:{port}/version", headers={"Authorization": "Bearer " + token}
)
print(json.load(urllib.request.urlopen(request, context=context, timeout=10))["gitVersion"])
"""


def test_pod_reaches_the_apiserver_through_the_kubernetes_service(cluster: Cluster) -> None:
    with cluster.namespace("smoke") as namespace:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "api"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "api",
                        "image": POD_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", _API_CLIENT],
                    }
                ],
            },
        }
        cluster.apply(pod, namespace=namespace)
        cluster.kubectl(
            "wait",
            "pod/api",
            "-n",
            namespace,
            "--for=jsonpath={.status.phase}=Succeeded",
            "--timeout=120s",
        )
        log = finished_log(cluster, "api", namespace, lambda text: text.startswith("v1."))
        assert log.startswith("v1.")


# Cluster DNS follows the apiserver within seconds (as CoreDNS does): a pod started
# right after a rollout may ask before the new endpoints are known, so it asks again.
_RESOLVE = """
import socket, sys, time
for name in sys.argv[1:]:
    deadline = time.monotonic() + 60
    while True:
        try:
            print(name, socket.gethostbyname(name), flush=True)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise
            print(name, "not yet:", exc, file=sys.stderr, flush=True)
            time.sleep(1)
"""


def _answers(log: str) -> dict[str, str]:
    """The "NAME ADDRESS" lines of _RESOLVE's output (the "not yet" ones are longer)."""
    return dict(line.split() for line in log.splitlines() if len(line.split()) == 2)


def test_pods_resolve_services_and_statefulset_pods_by_name(cluster: Cluster) -> None:
    labels = {"app.kubernetes.io/name": "peers"}
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "peers"},
        "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": _PORT}]},
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "peer"},
        "spec": {
            "serviceName": "peers",
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "peer",
                            "image": POD_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["python3", "-m", "http.server", str(_PORT)],
                        }
                    ],
                },
            },
        },
    }
    with cluster.namespace("dns") as namespace:
        cluster.apply(headless, statefulset, namespace=namespace)
        cluster.kubectl("rollout", "status", "statefulset/peer", "-n", namespace, "--timeout=120s")
        peer_ip = cluster.kubectl(
            "get", "pod", "peer-0", "-n", namespace, "-o", "jsonpath={.status.podIP}"
        )
        names = ["kubernetes.default", "peers", f"peer-0.peers.{namespace}.svc.cluster.local"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "resolve"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "resolve",
                        "image": POD_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", _RESOLVE, *names],
                    }
                ],
            },
        }
        cluster.apply(pod, namespace=namespace)
        cluster.kubectl(
            "wait",
            "pod/resolve",
            "-n",
            namespace,
            "--for=jsonpath={.status.phase}=Succeeded",
            "--timeout=120s",
        )
        resolved = _answers(
            finished_log(
                cluster, "resolve", namespace, lambda text: len(_answers(text)) == len(names)
            )
        )
        kubernetes_ip = cluster.kubectl(
            "get", "service", "kubernetes", "-n", "default", "-o", "jsonpath={.spec.clusterIP}"
        )
        assert resolved == {names[0]: kubernetes_ip, names[1]: peer_ip, names[2]: peer_ip}
