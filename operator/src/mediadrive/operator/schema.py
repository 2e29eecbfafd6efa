"""Custom resource definitions from pydantic models.

The models are the single source of a resource's shape: this module turns a
model's JSON schema (draft 2020-12, with ``$defs``) into the structural
OpenAPI v3 schema the apiserver wants (no references, ``nullable`` instead of
``null`` alternatives, OpenAPI 3.0's boolean ``exclusiveMinimum``) and wraps it
in a CustomResourceDefinition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from mediadrive.core.units import DURATION_PATTERN, SIZE_PATTERN, duration_text, size_text

GROUP = "mediadrive.io"
VERSION = "v1alpha1"
CATEGORY = "mediadrive"

# Keywords the apiserver does not take; they only document the model.
_DROPPED = {"title", "examples", "discriminator", "$schema", "readOnly", "writeOnly"}
# Unknown fields are pruned (and refused by kubectl's strict field validation):
# structural schemas may not say ``additionalProperties: false``; a null default
# says nothing.
_NOISE_ITEMS = (("additionalProperties", False), ("default", None))


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of ``model``, references inlined."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    converted: dict[str, Any] = _convert(raw, defs)
    return converted


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs)
    collapsed = _collapse_single_all_of(_collapse_nullable(node))
    if collapsed is not node:
        return _convert(collapsed, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or (key, value) in _NOISE_ITEMS:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _convert(prop, defs) for name, prop in value.items()}
        else:
            out[key] = _convert(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    return _string_default(out)


def _string_default(node: dict[str, Any]) -> dict[str, Any]:
    """Sizes and durations are strings in a resource (``2m``, ``64MiB``), and so must
    their defaults be; pydantic writes the number the model holds."""
    default = node.get("default")
    if node.get("type") != "string" or not isinstance(default, int | float):
        return node
    if node.get("pattern") == DURATION_PATTERN:
        return {**node, "default": duration_text(default)}
    if node.get("pattern") == SIZE_PATTERN:
        return {**node, "default": size_text(int(default))}
    return node


def _collapse_nullable(node: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, {type: null}]`` becomes X with ``nullable: true``."""
    options = node.get("anyOf")
    if not isinstance(options, list):
        return node
    rest = [o for o in options if o != {"type": "null"}]
    if len(rest) == len(options) or len(rest) != 1:
        return node
    merged = {**rest[0], **{k: v for k, v in node.items() if k != "anyOf"}, "nullable": True}
    return merged


def _collapse_single_all_of(node: dict[str, Any]) -> dict[str, Any]:
    options = node.get("allOf")
    if isinstance(options, list) and len(options) == 1:
        return {**options[0], **{k: v for k, v in node.items() if k != "allOf"}}
    return node


def _enum_type(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "boolean"
    if all(isinstance(v, int) for v in values):
        return "integer"
    return "string"


@dataclass(frozen=True)
class Column:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""

    def render(self) -> dict[str, Any]:
        column = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        return column


@dataclass(frozen=True)
class Kind:
    """How one custom resource is named and shown."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[Column, ...] = ()
    # The spec and status paths of ``kubectl scale``, if the resource scales.
    scale: tuple[str, str] | None = None
    validations: tuple[dict[str, str], ...] = field(default=())

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    def definition(self) -> dict[str, Any]:
        spec = structural(self.spec)
        if self.validations:
            spec["x-kubernetes-validations"] = [dict(v) for v in self.validations]
        status = structural(self.status)
        subresources: dict[str, Any] = {"status": {}}
        if self.scale is not None:
            spec_path, status_path = self.scale
            subresources["scale"] = {
                "specReplicasPath": spec_path,
                "statusReplicasPath": status_path,
            }
        columns = [c.render() for c in self.columns]
        columns.append(Column("Age", ".metadata.creationTimestamp", "date").render())
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": self.crd_name},
            "spec": {
                "group": GROUP,
                "scope": "Namespaced",
                "names": {
                    "kind": self.kind,
                    "listKind": f"{self.kind}List",
                    "plural": self.plural,
                    "singular": self.singular,
                    "shortNames": list(self.short_names),
                    "categories": [CATEGORY],
                },
                "versions": [
                    {
                        "name": VERSION,
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "required": ["spec"],
                                "properties": {
                                    "apiVersion": {"type": "string"},
                                    "kind": {"type": "string"},
                                    "metadata": {"type": "object"},
                                    "spec": spec,
                                    "status": status,
                                },
                            }
                        },
                        "subresources": subresources,
                        "additionalPrinterColumns": columns,
                    }
                ],
            },
        }
