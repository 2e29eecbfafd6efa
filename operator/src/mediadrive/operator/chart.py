"""The Helm chart's values, as a model: the source of ``values.schema.json``."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .resources.k8s_types import ObjectName, Resources, Toleration


class Values(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Image(Values):
    repository: str = Field(min_length=1)
    tag: str = Field("dev", min_length=1)
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", alias="pullPolicy"
    )


class OperatorValues(Values):
    image: Image = Image(repository="mediadrive/operator")
    # More than one replica: kopf's peering keeps one active, the others stand by.
    replicas: int = Field(1, ge=1, le=5)
    watch_namespaces: list[ObjectName] = Field(
        [], alias="watchNamespaces", description="namespaces to watch; empty: all of them"
    )
    resources: Resources = Resources(
        requests={"cpu": "50m", "memory": "128Mi"}, limits={"memory": "512Mi"}
    )
    log_level: Literal["debug", "info", "warning"] = Field("info", alias="logLevel")
    metrics_port: int = Field(9090, alias="metricsPort", ge=1, le=65535)
    health_port: int = Field(8080, alias="healthPort", ge=1, le=65535)
    node_selector: dict[str, str] = Field({}, alias="nodeSelector")
    tolerations: list[Toleration] = []
    resync_seconds: int | None = Field(
        None,
        alias="resyncSeconds",
        ge=1,
        description="how often every resource is reconciled again "
        "(MEDIADRIVE_OPERATOR_RESYNC; default 20)",
    )


class RegistrarValues(Values):
    """The node-driver-registrar sidecar, for ``registration: sidecar``."""

    image: Image = Image(
        repository="registry.k8s.io/sig-storage/csi-node-driver-registrar", tag="v2.13.0"
    )


class NodePluginValues(Values):
    """The CSI node plugin (a DaemonSet on every node that runs drives' pods)."""

    enabled: bool = True
    image: Image = Image(repository="mediadrive/node")
    kubelet_dir: str = Field(
        "/var/lib/kubelet",
        alias="kubeletDir",
        pattern=r"^/",
        description="the kubelet's --root-dir on the nodes",
    )
    state_dir: str = Field(
        "/var/lib/mediadrive/csi",
        alias="stateDir",
        pattern=r"^/",
        description="on each node: volume records, agents' sockets, caches, staging journals",
    )
    registration: Literal["builtin", "sidecar"] = Field(
        "builtin",
        description="builtin: the plugin serves kubelet's plugin registration itself; "
        "sidecar: the node-driver-registrar image does",
    )
    registrar: RegistrarValues = RegistrarValues()
    update_strategy: Literal["OnDelete", "RollingUpdate"] = Field(
        "OnDelete",
        alias="updateStrategy",
        description="OnDelete: an upgrade reaches a node when its plugin pod is deleted "
        "(replacing the pod ends its mounts' agents)",
    )
    region: str = Field(
        "", max_length=63, description="the nodes' region: which drive storage pods they use"
    )
    metrics_port: int = Field(9810, alias="metricsPort", ge=1, le=65535)
    health_interval: int = Field(10, alias="healthInterval", ge=1, le=3600)
    log_level: Literal["debug", "info", "warning"] = Field("info", alias="logLevel")
    priority_class_name: str = Field("system-node-critical", alias="priorityClassName")
    resources: Resources = Resources(requests={"cpu": "100m", "memory": "256Mi"})
    node_selector: dict[str, str] = Field({}, alias="nodeSelector")
    # Drives must mount wherever a pod may land: tolerate every taint by default.
    tolerations: list[Toleration] = [Toleration(operator="Exists")]


class StorageClassValues(Values):
    """A StorageClass whose claims the operator provisions drives for."""

    create: bool = False
    name: ObjectName = "mediadrive"
    default: bool = Field(False, description="make it the cluster's default StorageClass")
    reclaim_policy: Literal["Delete", "Retain"] = Field("Delete", alias="reclaimPolicy")
    parameters: dict[str, str] = Field(
        {}, description="the drive each claim gets (docs/operator.md, dynamic provisioning)"
    )


class ChartValues(Values):
    operator: OperatorValues = OperatorValues()
    node: NodePluginValues = NodePluginValues()
    storage_class: StorageClassValues = Field(StorageClassValues(), alias="storageClass")


def values_schema() -> dict[str, Any]:
    from .schema import structural

    schema = structural(ChartValues)
    return {"$schema": "http://json-schema.org/draft-07/schema#", **_closed(schema)}


def _closed(node: Any) -> Any:
    """Helm checks values with JSON schema: unknown keys are typos, so refuse them."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _closed(value) for key, value in node.items()}
    if "properties" in out:
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def render_schema() -> str:
    return json.dumps(values_schema(), indent=2, sort_keys=False) + "\n"
