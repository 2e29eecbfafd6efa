"""A drive's settings and where it lives: plain models, cheap to import.

Nothing here reads the environment or imports an engine, so every deployable (the
CLI, the node agent, the storage pod, the operator) can build its own settings
and the JSON schemas of the custom resources from these models.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal, Self
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ConfigError
from .units import ByteSize, Seconds

DRIVE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

DEFAULT_FIXED_SIZE = 64 << 20
DEFAULT_CDC_AVERAGE = 2 << 20
# Limits of the FastCDC implementation.
CDC_MIN_AVERAGE = 1 << 10
CDC_MAX_AVERAGE = 4 << 20

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
    chunk_size: ByteSize = 0
    conflict: ConflictPolicy = ConflictPolicy.LAST_WRITER_WINS
    retention: Retention = Retention()

    @model_validator(mode="after")
    def _default_chunk_size(self) -> Self:
        if self.chunk_size == 0:
            self.chunk_size = (
                DEFAULT_FIXED_SIZE if self.chunking == "fixed" else DEFAULT_CDC_AVERAGE
            )
        if self.chunking == "cdc" and not CDC_MIN_AVERAGE <= self.chunk_size <= CDC_MAX_AVERAGE:
            raise ValueError("chunk_size for cdc chunking must be between 1KiB and 4MiB")
        if self.chunking == "fixed" and self.chunk_size < 4096:
            raise ValueError("chunk_size for fixed chunking must be at least 4KiB")
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


class StoreUrl(BaseModel):
    """A parsed blob store URL: ``file:///dir`` or ``s3://bucket/prefix?endpoint=...``."""

    scheme: str
    path: str = ""
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None


def parse_store_url(url: str) -> StoreUrl:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"endpoint", "region"}
    if unknown:
        raise ConfigError(f"store URL {url!r} has unknown option(s): {', '.join(sorted(unknown))}")
    if parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ConfigError(f"store URL {url!r} must be file:///ABSOLUTE/PATH")
        return StoreUrl(scheme="file", path=parts.path)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"store URL {url!r} names no bucket: use s3://BUCKET/PREFIX")
        endpoint = query.get("endpoint")
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ConfigError(f"store URL {url!r}: endpoint must be an http:// or https:// URL")
        return StoreUrl(
            scheme="s3",
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            endpoint=endpoint,
            region=query.get("region"),
        )
    raise ConfigError(f"store URL {url!r} must start with file:// or s3://")


def check_meta_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if not parts.path.startswith("/") or parts.netloc:
            raise ConfigError(f"metadata URL {url!r} must be sqlite:///ABSOLUTE/PATH")
        return url
    if parts.scheme in ("postgresql", "postgres", "cockroachdb"):
        if not parts.hostname:
            raise ConfigError(f"metadata URL {url!r} names no host")
        return url
    raise ConfigError(
        f"metadata URL {url!r} must start with sqlite://, postgresql:// or cockroachdb://"
    )
