"""StoragePod: a region's storage pods, as a StatefulSet and its Services.

``render`` is pure: from a StoragePod's name, namespace and spec it builds the
children the operator applies (tested without a cluster). The pods find each
other through the headless Service's DNS records; each drains its held chunks
to the remaining owners on SIGTERM, so the termination grace period is long.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mediadrive.core.units import ByteSize, size_text

from ..naming import child_labels, qualified
from ..schema import Column, Kind
from .k8s_types import (
    Condition,
    ObjectName,
    ObjectStore,
    Quantity,
    Resources,
    Spec,
    Toleration,
)

POD_PORT = 7700
DATA_DIR = "/var/lib/mediadrive/pod"
SETTINGS_DIR = "/etc/mediadrive"
TOKENS_DIR = "/etc/mediadrive/tokens"
# The key of the token Secret the pods read (one `TOKEN DRIVE[,DRIVE...]` a line).
TOKENS_KEY = "tokens"
DEFAULT_IMAGE = "mediadrive/pod:dev"


class PodStorage(Spec):
    """The volume each pod keeps its chunks on."""

    size: Quantity = "10Gi"
    storage_class_name: ObjectName | None = Field(None, alias="storageClassName")
    host_path: str | None = Field(
        None,
        alias="hostPath",
        pattern=r"^/[^\s]*$",
        description="keep chunks in a folder of the node (one subfolder per pod) "
        "instead of a volume claim",
    )


class StoragePodSpec(Spec):
    region: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    replicas: int = Field(1, ge=0, le=100)
    replication: int = Field(1, ge=1, le=5, description="copies of each held chunk")
    storage: PodStorage = PodStorage()
    capacity: ByteSize | None = Field(
        None, description="bytes a pod may keep (held + cached); default: the volume size"
    )
    upstream: ObjectStore | None = Field(None, description="cloud store for read-through")
    token_secret: ObjectName | None = Field(
        None, alias="tokenSecret", description="Secret with a `tokens` key (one token per line)"
    )
    image: str = Field(DEFAULT_IMAGE, min_length=1)
    image_pull_policy: str = Field(
        "IfNotPresent", alias="imagePullPolicy", pattern=r"^(Always|IfNotPresent|Never)$"
    )
    resources: Resources = Resources()
    node_selector: dict[str, str] = Field({}, alias="nodeSelector")
    tolerations: list[Toleration] = []
    drain_seconds: int = Field(
        600, alias="drainSeconds", ge=10, description="how long a stopping pod may hand over"
    )


class StoragePodStatus(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    replicas: int = 0
    ready_replicas: int = Field(0, alias="readyReplicas")
    held_bytes: int = Field(0, alias="heldBytes")
    cached_bytes: int = Field(0, alias="cachedBytes")
    endpoint: str = ""
    selector: str = ""
    observed_generation: int | None = Field(None, alias="observedGeneration")
    conditions: list[Condition] = []


KIND = Kind(
    kind="StoragePod",
    plural="storagepods",
    short_names=("spod",),
    spec=StoragePodSpec,
    status=StoragePodStatus,
    columns=(
        Column("Region", ".spec.region"),
        Column("Desired", ".spec.replicas", "integer"),
        Column("Ready", ".status.readyReplicas", "integer"),
        Column("Held", ".status.heldBytes", "integer", "bytes held, not yet published"),
        Column("Endpoint", ".status.endpoint"),
    ),
    scale=(".spec.replicas", ".status.replicas"),
    validations=(
        {
            "rule": "!has(self.upstream) || has(self.upstream.endpoint) "
            "|| has(self.upstream.region)",
            "message": "upstream needs an endpoint or a region",
            "fieldPath": ".upstream",
        },
    ),
)


def labels(name: str) -> dict[str, str]:
    return child_labels("storage-pod", name)


def statefulset_name(name: str) -> str:
    return qualified(name, "pod")


def headless_name(name: str) -> str:
    return qualified(name, "peers")


def client_name(name: str) -> str:
    return qualified(name, "pod")


def client_url(name: str, namespace: str) -> str:
    """What mounts and the CLI put in their ``pod://`` URLs."""
    return f"{client_name(name)}.{namespace}.svc:{POD_PORT}"


def settings(name: str, namespace: str, spec: StoragePodSpec) -> dict[str, Any]:
    """The pod server's settings (``mediadrive storage-pod serve`` flags), as JSON."""
    values: dict[str, Any] = {
        "data": DATA_DIR,
        "listen": f"0.0.0.0:{POD_PORT}",
        "region": spec.region,
        "replication": spec.replication,
        "peers_dns": f"{headless_name(name)}.{namespace}.svc",
    }
    if spec.capacity is not None:
        values["capacity"] = size_text(spec.capacity)
    if spec.upstream is not None:
        values["upstream"] = spec.upstream.store_url()
    if spec.token_secret is not None:
        values["token_file"] = f"{TOKENS_DIR}/{TOKENS_KEY}"
    return values


def serve_args(values: dict[str, Any]) -> list[str]:
    args = ["storage-pod", "serve"]
    for key, value in values.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    # Peers found through the headless Service's DNS are known by their pod IPs:
    # each pod must call itself by the same URL to recognise itself among them.
    args += ["--advertise", f"http://$(POD_IP):{POD_PORT}"]
    return args


def render(name: str, namespace: str, spec: StoragePodSpec) -> list[dict[str, Any]]:
    """The children of one StoragePod, in the order they are applied."""
    labels = child_labels("storage-pod", name)
    values = settings(name, namespace, spec)
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": qualified(name, "pod-settings"), "namespace": namespace},
        "data": {"settings.json": json.dumps(values, indent=2, sort_keys=True) + "\n"},
    }
    ports = [{"name": "http", "port": POD_PORT, "targetPort": "http"}]
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": headless_name(name), "namespace": namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            # Peers must find a starting pod before it is ready, to hand it chunks.
            "publishNotReadyAddresses": True,
            "selector": labels,
            "ports": ports,
        },
    }
    client = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": client_name(name), "namespace": namespace, "labels": labels},
        "spec": {"selector": labels, "ports": ports},
    }
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": qualified(name, "pod"), "namespace": namespace, "labels": labels},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
    }
    return [config, headless, client, budget, statefulset(name, namespace, spec, values)]


def statefulset(
    name: str, namespace: str, spec: StoragePodSpec, values: dict[str, Any]
) -> dict[str, Any]:
    labels = child_labels("storage-pod", name)
    container: dict[str, Any] = {
        "name": "pod",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": serve_args(values),
        "ports": [{"name": "http", "containerPort": POD_PORT}],
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            *_upstream_env(spec),
        ],
    }
    if spec.resources.requests or spec.resources.limits:
        container["resources"] = spec.resources.render()
    volumes: list[dict[str, Any]] = []
    if spec.token_secret is not None:
        container["volumeMounts"].append(
            {"name": "tokens", "mountPath": TOKENS_DIR, "readOnly": True}
        )
        volumes.append(
            {
                "name": "tokens",
                "secret": {"secretName": spec.token_secret, "defaultMode": 0o400},
            }
        )
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": spec.drain_seconds,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.render() for t in spec.tolerations]
    claims = _data_volume(spec, container, volumes)
    if volumes:
        pod_spec["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": statefulset_name(name), "namespace": namespace, "labels": labels},
        "spec": {
            "serviceName": headless_name(name),
            "replicas": spec.replicas,
            # Pods start and stop one at a time, so each drain finds the others up.
            "podManagementPolicy": "OrderedReady",
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            "volumeClaimTemplates": claims,
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
        },
    }


def _upstream_env(spec: StoragePodSpec) -> list[dict[str, Any]]:
    credentials = spec.upstream.credentials_secret if spec.upstream else None
    if credentials is None:
        return []
    return [
        {
            "name": env,
            "valueFrom": {"secretKeyRef": {"name": credentials.name, "key": key}},
        }
        for env, key in (
            ("AWS_ACCESS_KEY_ID", credentials.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key_key),
        )
    ]


def _data_volume(
    spec: StoragePodSpec, container: dict[str, Any], volumes: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The chunks' volume: a claim per pod, or a per-pod folder of the node."""
    if spec.storage.host_path is not None:
        container["env"].append(
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        )
        container["volumeMounts"][0]["subPathExpr"] = "$(POD_NAME)"
        volumes.append(
            {
                "name": "data",
                "hostPath": {"path": spec.storage.host_path, "type": "DirectoryOrCreate"},
            }
        )
        return []
    claim: dict[str, Any] = {
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage.size}},
        },
    }
    if spec.storage.storage_class_name is not None:
        claim["spec"]["storageClassName"] = spec.storage.storage_class_name
    return [claim]
