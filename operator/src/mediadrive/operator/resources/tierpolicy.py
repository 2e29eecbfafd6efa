"""TierPolicy: a tier policy that DriveVolumes name; its schema is the core model's."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mediadrive.core.policy import TierPolicy

from ..schema import Column, Kind
from .k8s_types import Condition


class TierPolicyStatus(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    drives: list[str] = Field([], description="DriveVolumes that follow this policy")
    observed_generation: int | None = Field(None, alias="observedGeneration")
    conditions: list[Condition] = []


KIND = Kind(
    kind="TierPolicy",
    plural="tierpolicies",
    short_names=("tp",),
    spec=TierPolicy,
    status=TierPolicyStatus,
    columns=(
        Column("Write", ".spec.writeTarget"),
        Column("Publish", ".spec.publish"),
        Column("Conflict", ".spec.conflict"),
        Column("Drives", ".status.drives"),
    ),
)
