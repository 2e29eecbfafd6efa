"""Parsing ``NAME:/path`` and ``NAME:/path@N`` arguments."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mediadrive.core import paths
from mediadrive.core.errors import InvalidPath

# Versions are 64-bit signed integers in every metadata engine.
MAX_VERSION = (1 << 63) - 1

_TARGET = re.compile(r"^(?P<drive>[a-z0-9][a-z0-9._-]{0,62}):(?P<path>.*?)(?:@(?P<version>\d+))?$")


@dataclass(frozen=True)
class DriveTarget:
    drive: str
    path: str
    version: int | None = None
    # Written with a trailing '/': it names a folder, as in cp, rsync and aws s3.
    folder: bool = False

    def __str__(self) -> str:
        suffix = f"@{self.version}" if self.version is not None else ""
        slash = "/" if self.folder else ""
        return f"{self.drive}:{self.path}{slash}{suffix}"


def parse_target(text: str) -> DriveTarget | None:
    """A drive path, or ``None`` when ``text`` is a local path.

    Raises :class:`~mediadrive.core.errors.InvalidPath` for a drive path that
    leaves the drive (``demo:/../x``).
    """
    match = _TARGET.match(text)
    if match is None:
        return None
    version = match.group("version")
    number = int(version) if version is not None else None
    if number is not None and number > MAX_VERSION:
        raise InvalidPath(f"{text!r}: version {number} is larger than any version can be")
    raw = match.group("path") or "/"
    path = paths.normalize(raw)
    return DriveTarget(match.group("drive"), path, number, raw.endswith("/") and path != "/")
