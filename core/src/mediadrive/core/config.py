"""A drive's settings and where it lives: plain models, cheap to import.

Nothing here reads the environment or imports an engine, so every deployable (the
CLI, the node agent, the storage pod, the operator) can build its own settings
and the JSON schemas of the custom resources from these models.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from enum import StrEnum
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .errors import ConfigError
from .triggers import CommitOn
from .units import ByteSize, Seconds, parse_duration, size_text

DRIVE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

DEFAULT_FIXED_SIZE = 64 << 20
DEFAULT_CDC_AVERAGE = 2 << 20
# Limits of the FastCDC implementation.
CDC_MIN_AVERAGE = 1 << 10
CDC_MAX_AVERAGE = 4 << 20
# A fixed chunk is held in memory whole while it is hashed and sent.
FIXED_MIN_SIZE = 4 << 10
FIXED_MAX_SIZE = 256 << 20

ChunkingKind = Literal["fixed", "cdc"]


class ConflictPolicy(StrEnum):
    LAST_WRITER_WINS = "last-writer-wins"
    KEEP_BOTH = "keep-both"
    REJECT = "reject"


class CamelModel(BaseModel):
    """Fields spelled camelCase in custom resources and policy files, snake_case in Python
    (either is accepted); nothing unknown."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Retention(BaseModel):
    """A version is kept if any rule keeps it; the head is always kept."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int | None = Field(default=None, ge=1)
    keep_within: Seconds | None = None


WriteTarget = Literal["pod", "cloud"]
WhenPodsDown = Literal["wait", "cloud"]
PUBLISH_MANUAL = "manual"
PUBLISH_ON_SAVE = "on-save"
DEFAULT_TEMPORARY_TTL = 7 * 86400.0
DEFAULT_PODS_DOWN_WAIT = 120.0
PUBLISH_PATTERN = r"^\s*(manual|on-save|after\s+(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h|d|w))+))\s*$"


class Temporary(CamelModel):
    """Files whose path matches one of ``globs`` never leave the pod tier; they expire
    ``ttl`` after they were written."""

    globs: list[str] = Field(default_factory=list)
    ttl: Seconds = DEFAULT_TEMPORARY_TTL


class TierRules(CamelModel):
    """Where a drive's chunks go and when they reach the cloud: the drive-wide part of
    a :class:`~mediadrive.core.policy.TierPolicy`, kept with the drive's settings."""

    # None: the storage pod when the machine has one, else the cloud.
    write_target: WriteTarget | None = None
    # With every pod down: wait (retrying) up to ``pods_down_wait``, or write to the cloud.
    when_pods_down: WhenPodsDown = "wait"
    pods_down_wait: Seconds = DEFAULT_PODS_DOWN_WAIT
    # manual | on-save | after DURATION (a pod-held version older than that is published).
    publish: str = Field(
        default=PUBLISH_MANUAL,
        json_schema_extra={"pattern": PUBLISH_PATTERN, "examples": ["manual", "after 2h"]},
    )
    temporary: Temporary = Temporary()
    # Reads served by the cloud leave a cached copy in the pod.
    read_through: bool = True
    # Defaults for mounts of the drive (a mount's own options win); None: the mount's.
    local_cache_size: ByteSize | None = None
    checkpoint_interval: Seconds | None = None
    commit_on: CommitOn | None = None

    @field_validator("publish")
    @classmethod
    def _publish(cls, value: str) -> str:
        text = " ".join(value.split())
        if text in (PUBLISH_MANUAL, PUBLISH_ON_SAVE):
            return text
        word, _, duration = text.partition(" ")
        if word == "after" and duration:
            try:
                parse_duration(duration)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            return text
        raise ValueError("must be 'manual', 'on-save' or 'after DURATION' (e.g. 'after 2h')")

    @property
    def publish_after(self) -> float | None:
        """Seconds after which a pod-held version is published (``after DURATION``)."""
        word, _, duration = self.publish.partition(" ")
        return parse_duration(duration) if word == "after" else None

    @property
    def publish_on_save(self) -> bool:
        return self.publish == PUBLISH_ON_SAVE

    def is_temporary(self, path: str) -> bool:
        """Whether the drive path (or its file name) matches a temporary glob."""
        name = posixpath.basename(path)
        return any(
            fnmatch.fnmatchcase(path, glob) or fnmatch.fnmatchcase(name, glob)
            for glob in self.temporary.globs
        )

    def target(self, has_pod: bool) -> WriteTarget:
        """Where writes go on a machine with (or without) a storage pod."""
        if not has_pod:
            return "cloud"
        return self.write_target or "pod"


class DriveSettings(BaseModel):
    """Policy shared by everyone using a drive; stored in its metadata store."""

    model_config = ConfigDict(extra="forbid")

    chunking: ChunkingKind = "fixed"
    # Default: 64MiB fixed chunks, or a 2MiB cdc average.
    chunk_size: ByteSize = 0
    conflict: ConflictPolicy = ConflictPolicy.LAST_WRITER_WINS
    retention: Retention = Retention()
    # Drives made before tiers store no rules: the defaults apply.
    tiers: TierRules = TierRules()

    @model_validator(mode="after")
    def _default_chunk_size(self) -> Self:
        # Left out, the size is the chunking's default; given, it must be in bounds
        # (0 included: it is not a way to ask for the default).
        if "chunk_size" not in self.model_fields_set:
            self.chunk_size = (
                DEFAULT_FIXED_SIZE if self.chunking == "fixed" else DEFAULT_CDC_AVERAGE
            )
        if self.chunking == "cdc" and not CDC_MIN_AVERAGE <= self.chunk_size <= CDC_MAX_AVERAGE:
            raise ValueError(
                f"chunk size {size_text(self.chunk_size)} is out of range: "
                "the average size for cdc chunking must be between 1KiB and 4MiB"
            )
        if self.chunking == "fixed" and not FIXED_MIN_SIZE <= self.chunk_size <= FIXED_MAX_SIZE:
            raise ValueError(
                f"chunk size {size_text(self.chunk_size)} is out of range: "
                "fixed chunks must be between 4KiB and 256MiB"
            )
        return self


def check_drive_name(name: str) -> str:
    if not DRIVE_NAME.match(name):
        raise ConfigError(
            f"drive name {name!r} is invalid: use 1-63 lowercase letters, digits, '.', '_' or '-'"
        )
    return name


class DriveRef(BaseModel):
    """Where a drive lives: its name in the metadata store, and the two store URLs."""

    model_config = ConfigDict(extra="forbid")

    name: str
    meta_url: str
    store_url: str
    # This machine's storage pods (a ``pod://`` URL) in front of the store, and their
    # region (None: asked of the pods). Per machine: another region has other pods.
    pod_url: str | None = None
    region: str | None = None
