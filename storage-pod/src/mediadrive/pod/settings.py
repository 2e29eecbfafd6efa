"""What one storage pod runs with: one pydantic model, ``PodSettings``.

The ``mediadrive storage-pod serve`` flags fill it; the operator renders it as
JSON (sizes and durations as ``64MiB`` and ``30s``). ``MEDIADRIVE_POD_*``
variables fill the fields no flag gave.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mediadrive.core.errors import ConfigError
from mediadrive.core.units import ByteSize, Seconds, parse_duration, parse_size

DEFAULT_PORT = 8600


def split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> host and port; ValueError naming the problem."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} has no port between 1 and 65535")
    return host, int(port_text)


def member_url(text: str) -> str:
    """A pod's base URL, ``http(s)://HOST:PORT`` without a trailing slash."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not a pod URL like http://HOST:PORT")
    if parts.path.strip("/") or parts.query:
        raise ValueError(f"{text!r} must be a base URL (no path): http://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has no port between 1 and 65535") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
        return f"{parts.scheme}://{parts.netloc}:{port}"
    return f"{parts.scheme}://{parts.netloc}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PodSettings(BaseSettings):
    """One storage pod: its data, where it listens, its peers and its upstream."""

    model_config = SettingsConfigDict(env_prefix="MEDIADRIVE_POD_", extra="forbid")

    data: Path = Field(description="Folder the pod keeps its chunks and index in.")
    listen: str = Field(default=f"0.0.0.0:{DEFAULT_PORT}", description="HOST:PORT to listen on.")
    advertise: str | None = Field(
        default=None,
        description="The URL peers reach this pod at [default: http://LISTEN, or the "
        "host name when listening on every address].",
    )
    capacity: ByteSize = Field(default=100 << 30, gt=0, description="Bound of held + cached bytes.")
    upstream: str | None = Field(
        default=None, description="Blob store URL cached chunks are read from on a miss."
    )
    region: str = Field(default="default", min_length=1, description="The region served.")
    peers: list[str] = Field(default_factory=list, description="Base URLs of the other pods.")
    peers_dns: str | None = Field(
        default=None, description="A DNS name whose A records are the pods (same port)."
    )
    replication: int = Field(default=2, ge=1, le=16, description="Copies of each held chunk.")
    token_file: Path | None = Field(
        default=None, description="Bearer tokens: one `TOKEN DRIVE[,DRIVE...]` or `TOKEN *` a line."
    )
    relay: dict[str, str] = Field(
        default_factory=dict, description="Drive -> metadata store URL whose events are relayed."
    )
    probe_interval: Seconds = Field(default=5.0, gt=0, description="How often peers are probed.")
    sweep_interval: Seconds = Field(
        default=60.0, gt=0, description="How often held chunks past their TTL are removed."
    )
    max_chunk: ByteSize = Field(default=256 << 20, gt=0, description="Largest chunk accepted.")

    @field_validator("capacity", "max_chunk", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        # A ConfigError would escape pydantic without the field's name: make it a ValueError.
        try:
            return parse_size(value) if isinstance(value, str | int) else value
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("probe_interval", "sweep_interval", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        try:
            return parse_duration(value) if isinstance(value, str | int | float) else value
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_host_port(value)
        return value.strip()

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        return None if value is None else member_url(value)

    @field_validator("peers")
    @classmethod
    def _peers(cls, value: list[str]) -> list[str]:
        return [member_url(url) for url in value if url.strip()]

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from mediadrive.core.blob import check_store_url

        try:
            return check_store_url(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("relay")
    @classmethod
    def _relay(cls, value: dict[str, str]) -> dict[str, str]:
        from mediadrive.core.config import DRIVE_NAME

        for drive in value:
            if not DRIVE_NAME.match(drive):
                raise ValueError(f"{drive!r} is not a drive name")
        return value

    @model_validator(mode="after")
    def _one_membership(self) -> Self:
        if self.peers and self.peers_dns:
            raise ValueError("give --peers or --peers-dns, not both")
        return self

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]

    def self_url(self) -> str:
        """The URL this pod is known by among its peers."""
        if self.advertise:
            return self.advertise
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            import socket

            host = socket.gethostname()
        return member_url(
            f"http://{host}:{self.port}" if ":" not in host else f"http://[{host}]:{self.port}"
        )


def settings_error(exc: ValidationError) -> str:
    """The first problem of a validation error, in one line naming its flag."""
    first = exc.errors()[0]
    field = str(first["loc"][0]).replace("_", "-") if first["loc"] else "settings"
    message = " ".join(str(first["msg"]).removeprefix("Value error, ").split())
    return f"--{field}: {message}"
