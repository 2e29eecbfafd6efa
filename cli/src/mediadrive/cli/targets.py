"""Parsing ``NAME:/path`` and ``NAME:/path@N`` arguments."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mediadrive.core import paths

_TARGET = re.compile(r"^(?P<drive>[a-z0-9][a-z0-9._-]{0,62}):(?P<path>.*?)(?:@(?P<version>\d+))?$")


@dataclass(frozen=True)
class DriveTarget:
    drive: str
    path: str
    version: int | None = None

    def __str__(self) -> str:
        suffix = f"@{self.version}" if self.version is not None else ""
        return f"{self.drive}:{self.path}{suffix}"


def parse_target(text: str) -> DriveTarget | None:
    """A drive path, or ``None`` when ``text`` is a local path.

    Raises :class:`~mediadrive.core.errors.InvalidPath` for a drive path that
    leaves the drive (``demo:/../x``).
    """
    match = _TARGET.match(text)
    if match is None:
        return None
    version = match.group("version")
    return DriveTarget(
        match.group("drive"),
        paths.normalize(match.group("path") or "/"),
        int(version) if version is not None else None,
    )
