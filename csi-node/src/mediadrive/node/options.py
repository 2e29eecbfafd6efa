"""The node agent's settings: what a mount is asked to do and where its drive lives.

Validated once, at the boundary (the CLI, the CSI service), then passed around:
nothing in the node reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mediadrive.core import paths
from mediadrive.core.config import DriveRef, TierRules, check_drive_name
from mediadrive.core.identity import Identity
from mediadrive.core.triggers import CommitOn
from mediadrive.core.units import ByteSize, parse_duration

__all__ = ["DEFAULT_CACHE_SIZE", "DEFAULT_CHECKPOINT", "CommitOn", "MountOptions"]

DEFAULT_CACHE_SIZE = 10 << 30
DEFAULT_CHECKPOINT = 30.0
# The agent's log rotates at this size, keeping this many old files: a busy mount
# logs megabytes a minute at INFO.
DEFAULT_LOG_SIZE = 10 << 20
DEFAULT_LOG_BACKUPS = 3


class MountOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drive: str
    meta_url: str
    store_url: str
    # This machine's storage pods in front of the store, and their region (see DriveRef).
    pod_url: str | None = None
    region: str | None = None
    mountpoint: Path
    # Local cache and staging folder of this mount.
    cache_dir: Path
    # Where mount entries and control sockets live (see :class:`.registry.MountRegistry`).
    run_dir: Path
    # Recorded with every version and event; None: the login user, as user@host.
    author: str | None = None
    log_level: str = "INFO"
    log_max_size: ByteSize = DEFAULT_LOG_SIZE
    log_backups: int = Field(default=DEFAULT_LOG_BACKUPS, ge=1, le=100)
    cache_size: ByteSize = DEFAULT_CACHE_SIZE
    # Seconds between background commits of dirty files; None turns checkpoints off.
    checkpoint_interval: float | None = DEFAULT_CHECKPOINT
    commit_on: CommitOn = CommitOn.CLOSE
    read_only: bool = False
    subdir: str = "/"
    # Seconds between polls of the drive's event log (collaborators' changes).
    follow_interval: float = Field(default=0.5, gt=0)
    # Base URL of a storage pod that relays the drive's events (``http://HOST:PORT``):
    # the mount reads them from its stream and polls the store only while it is down.
    relay_url: str | None = None
    # The bearer token for the relay: a file whose first word is the token.
    relay_token_file: Path | None = None
    writeback_cache: bool = True
    # Send a large chunk's bytes in two parts, the first while the second is written
    # (``ChunkStream``): the wait after a large write's last byte shrinks to about half
    # a chunk's put, for a multipart upload per chunk (three more requests, and a
    # redirect read once per chunk per process). Off: each chunk in one put.
    stream_chunks: bool = True
    # Read-only mounts let the kernel read cached files directly, where it can.
    passthrough: bool = True
    # Let other users reach the mount (FUSE allow_other). Off unless asked for, root
    # included: the CSI service passes it for pods that run as other users.
    allow_other: bool = False
    # Mount over a folder that has files in it (hiding them until unmounted).
    nonempty: bool = False

    @field_validator("drive")
    @classmethod
    def _drive(cls, value: str) -> str:
        return check_drive_name(value)

    @field_validator("subdir")
    @classmethod
    def _subdir(cls, value: str) -> str:
        return paths.normalize(value)

    @field_validator("mountpoint", "cache_dir", "run_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return Path(value).expanduser().absolute()

    @field_validator("relay_url")
    @classmethod
    def _relay_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = value.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be a pod's http(s)://HOST:PORT base URL, not {value!r}")
        return url

    @field_validator("relay_token_file")
    @classmethod
    def _token_file(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(value).expanduser().absolute()

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        return value.upper()

    @field_validator("checkpoint_interval", mode="before")
    @classmethod
    def _checkpoint(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and value.strip().lower() == "off"):
            return None
        if isinstance(value, str | int | float):
            seconds = parse_duration(value)
            return seconds if seconds > 0 else None
        return value

    def drive_ref(self) -> DriveRef:
        """Where the mounted drive lives, as :meth:`Drive.open_ref` takes it."""
        return DriveRef(
            name=self.drive,
            meta_url=self.meta_url,
            store_url=self.store_url,
            pod_url=self.pod_url,
            region=self.region,
        )

    def with_policy(self, rules: TierRules) -> MountOptions:
        """These options with the drive policy's mount defaults (``localCacheSize``,
        ``checkpointInterval``, ``commitOn``) for those this mount was not given."""
        update: dict[str, object] = {}
        given = self.model_fields_set
        if "cache_size" not in given and rules.local_cache_size is not None:
            update["cache_size"] = rules.local_cache_size
        if "checkpoint_interval" not in given and rules.checkpoint_interval is not None:
            interval = rules.checkpoint_interval
            update["checkpoint_interval"] = interval if interval > 0 else None
        if "commit_on" not in given and rules.commit_on is not None:
            update["commit_on"] = rules.commit_on
        return self.model_copy(update=update) if update else self

    def identity(self) -> Identity:
        return Identity.local(self.author)
