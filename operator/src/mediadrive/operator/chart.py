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


class NodePluginValues(Values):
    """The CSI node plugin (a DaemonSet on every node that runs drives' pods)."""

    enabled: bool = False
    image: Image = Image(repository="mediadrive/node")


class ChartValues(Values):
    operator: OperatorValues = OperatorValues()
    node: NodePluginValues = NodePluginValues()


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
