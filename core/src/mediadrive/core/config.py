"""A drive's settings and where it lives: plain models, cheap to import.

Nothing here reads the environment or imports an engine, so every deployable (the
CLI, the node agent, the storage pod, the operator) can build its own settings
and the JSON schemas of the custom resources from these models.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ConfigError
from .units import ByteSize, Seconds, size_text

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


class Retention(BaseModel):
    """A version is kept if any rule keeps it; the head is always kept."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int | None = Field(default=None, ge=1)
    keep_within: Seconds | None = None


class DriveSettings(BaseModel):
    """Policy shared by everyone using a drive; stored in its metadata store."""

    model_config = ConfigDict(extra="forbid")

    chunking: ChunkingKind = "fixed"
    # Default: 64MiB fixed chunks, or a 2MiB cdc average.
    chunk_size: ByteSize = 0
    conflict: ConflictPolicy = ConflictPolicy.LAST_WRITER_WINS
    retention: Retention = Retention()

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
