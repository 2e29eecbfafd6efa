"""Human units for sizes (``64MiB``) and durations (``7d``), parsed strictly."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

from .errors import ConfigError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """``'64MiB'`` -> 67108864. Plain integers are bytes."""
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"size {text} is negative")
        return text
    match = _NUMBER_UNIT.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ConfigError(f"size {text!r} is not a size like 64MiB, 1GiB or 4096")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str | float) -> float:
    """``'7d'`` -> 604800.0 seconds; ``'1h30m'`` works too. Plain numbers are seconds."""
    if isinstance(text, int | float):
        if text < 0:
            raise ConfigError(f"duration {text} is negative")
        return float(text)
    compact = text.strip().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", compact):
        return float(compact)
    if not _DURATION.match(compact):
        raise ConfigError(f"duration {text!r} is not a duration like 30s, 15m, 2h or 7d")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(compact))


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _size(value: object) -> object:
    return parse_size(value) if isinstance(value, str | int) else value


def _duration(value: object) -> object:
    return parse_duration(value) if isinstance(value, str | int | float) else value


ByteSize = Annotated[int, BeforeValidator(_size)]
Seconds = Annotated[float, BeforeValidator(_duration)]
