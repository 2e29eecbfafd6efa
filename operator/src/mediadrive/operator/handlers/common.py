"""What every handler shares: reading a spec into its model."""

from __future__ import annotations

from typing import TypeVar

import kopf
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def field_error(exc: ValidationError) -> str:
    """The first problem, as ``spec.FIELD: message``."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"spec.{where}: {first['msg']}" if where else f"spec: {first['msg']}"


def parse_spec(model: type[M], body: kopf.Body) -> M:
    """The resource's spec, or a permanent error naming the field (the CRD schema
    refuses most bad specs before the operator sees them)."""
    try:
        return model.model_validate(dict(body.get("spec") or {}))
    except ValidationError as exc:
        raise kopf.PermanentError(field_error(exc)) from None


def namespace_of(namespace: str | None) -> str:
    """Every mediadrive resource is namespaced; kopf types the namespace as optional."""
    if not namespace:
        raise kopf.PermanentError("mediadrive resources are namespaced; this one has none")
    return namespace
