"""A drive's tier policy: one pydantic model, the source of the ``TierPolicy`` custom
resource and of the YAML files ``mediadrive drive set --policy`` reads.

The tier rules (where writes go, when they are published, temporary files) are kept
with the drive's settings in its metadata store, so every machine follows the same
ones; applying a policy also sets the drive's retention, conflict policy and chunking.
Cheap to import: plain models only.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError

from .config import (
    CamelModel,
    ChunkingKind,
    ConflictPolicy,
    DriveSettings,
    Retention,
    TierRules,
)
from .errors import ConfigError
from .units import ByteSize, Seconds

__all__ = ["Chunking", "PolicyRetention", "TierPolicy", "policy_error"]


class Chunking(CamelModel):
    kind: ChunkingKind = "fixed"
    # None: the kind's default (64MiB fixed chunks, a 2MiB cdc average).
    size: ByteSize | None = None


class PolicyRetention(CamelModel):
    """:class:`~mediadrive.core.config.Retention`, spelled as custom resources spell it."""

    keep_last: int | None = Field(default=None, ge=1)
    keep_within: Seconds | None = None

    def retention(self) -> Retention:
        return Retention(keep_last=self.keep_last, keep_within=self.keep_within)


class TierPolicy(TierRules):
    """Everything a drive's tier policy says: its tier rules and the drive settings."""

    retention: PolicyRetention = PolicyRetention()
    conflict: ConflictPolicy = ConflictPolicy.LAST_WRITER_WINS
    chunking: Chunking = Chunking()

    def rules(self) -> TierRules:
        """The tier rules alone, as a drive's settings keep them."""
        return TierRules.model_validate(self.model_dump(include=set(TierRules.model_fields)))

    def apply(self, settings: DriveSettings) -> DriveSettings:
        """``settings`` under this policy; ConfigError naming the field if they cannot be."""
        fields: dict[str, Any] = settings.model_dump(exclude={"chunk_size"})
        fields.update(
            tiers=self.rules().model_dump(),
            retention=self.retention.retention().model_dump(),
            conflict=self.conflict,
            chunking=self.chunking.kind,
        )
        if self.chunking.size is not None:
            fields["chunk_size"] = self.chunking.size
        elif self.chunking.kind == settings.chunking:
            fields["chunk_size"] = settings.chunk_size
        try:
            return DriveSettings.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(policy_error(exc, prefix="chunking")) from None

    @classmethod
    def of(cls, settings: DriveSettings) -> TierPolicy:
        """The policy a drive follows now."""
        return cls.model_validate(
            {
                **settings.tiers.model_dump(),
                "retention": settings.retention.model_dump(),
                "conflict": settings.conflict,
                "chunking": {"kind": settings.chunking, "size": settings.chunk_size},
            }
        )


def policy_error(exc: ValidationError, prefix: str = "") -> str:
    """The first error of a policy in one line: ``field.path: message``."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    where = where or prefix
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
