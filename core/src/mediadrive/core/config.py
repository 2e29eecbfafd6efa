"""Drive settings, store URLs and the registry of drives under ``MEDIADRIVE_HOME``."""

from __future__ import annotations

import json
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .chunking import (
    CDC_MAX_AVERAGE,
    CDC_MIN_AVERAGE,
    DEFAULT_CDC_AVERAGE,
    DEFAULT_FIXED_SIZE,
    ChunkingKind,
)
from .errors import ConfigError, DriveNotFound
from .units import ByteSize, Seconds

DRIVE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
REF_FILE = "drive.json"


class ConflictPolicy(StrEnum):
    LAST_WRITER_WINS = "last-writer-wins"
    KEEP_BOTH = "keep-both"
    REJECT = "reject"


class Retention(BaseModel):
    """A version is kept if any rule keeps it; the head is always kept."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int | None = Field(default=None, ge=1)
    keep_within: Seconds | None = Field(default=None, ge=0)


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


class Environment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDIADRIVE_")

    home: Path = Path.home() / ".local" / "share" / "mediadrive"
    author: str | None = None


def home() -> Path:
    return Environment().home.expanduser()


def check_drive_name(name: str) -> str:
    if not DRIVE_NAME.match(name):
        raise ConfigError(
            f"drive name {name!r} is invalid: use 1-63 lowercase letters, digits, '.', '_' or '-'"
        )
    return name


class DriveRef(BaseModel):
    """Where a drive's metadata and chunks live; one small file per drive on this machine."""

    name: str
    meta_url: str
    store_url: str

    @classmethod
    def default(cls, name: str, base: Path | None = None) -> DriveRef:
        root = (base or home()) / name
        return cls(
            name=name,
            meta_url=f"sqlite:///{root / 'meta.db'}",
            store_url=f"file://{root / 'store'}",
        )

    def save(self, base: Path | None = None) -> None:
        folder = (base or home()) / self.name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (REF_FILE + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        tmp.replace(folder / REF_FILE)


def load_ref(name: str, base: Path | None = None) -> DriveRef:
    check_drive_name(name)
    path = (base or home()) / name / REF_FILE
    try:
        return DriveRef.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise DriveNotFound(f"drive {name!r} does not exist (no {path})") from None
    except ValidationError as err:
        raise ConfigError(f"drive file {path} is damaged: {err.errors()[0]['msg']}") from None


def list_refs(base: Path | None = None) -> list[DriveRef]:
    root = base or home()
    refs = []
    for path in sorted(root.glob(f"*/{REF_FILE}")):
        try:
            refs.append(DriveRef.model_validate(json.loads(path.read_text())))
        except (ValueError, ValidationError):
            continue
    return refs


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


def env_author() -> str:
    configured = Environment().author
    if configured:
        return configured
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    return f"{user}@{os.uname().nodename}"
