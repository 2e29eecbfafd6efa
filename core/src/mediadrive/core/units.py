"""Human units for sizes (``64MiB``) and durations (``7d``), parsed strictly."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

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


# Inside a model a bad value is a ValueError, so the model's error names the field.
def _size(value: object) -> object:
    try:
        return parse_size(value) if isinstance(value, str | int) else value
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _duration(value: object) -> object:
    try:
        return parse_duration(value) if isinstance(value, str | int | float) else value
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


_BINARY_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def size_text(n: int) -> str:
    """The exact size in the largest binary unit that divides it: 67108864 -> ``'64MiB'``."""
    for unit, factor in _BINARY_UNITS:
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def duration_text(seconds: float) -> str:
    """The duration in its largest whole units: 5400 -> ``'1h30m'``; 0.25 -> ``'250ms'``."""
    if seconds != int(seconds):
        ms = seconds * 1000
        return f"{ms:g}ms" if ms == int(ms) else f"{seconds:g}s"
    rest = int(seconds)
    if rest == 0:
        return "0s"
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        factor = int(_DURATION_UNITS[unit])
        if rest >= factor:
            parts.append(f"{rest // factor}{unit}")
            rest %= factor
    return "".join(parts)


# Strings in JSON and in JSON schemas (so custom resources and chart values read
# `64MiB` and `30s`); plain numbers are still accepted when validating.
SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([bB]|[kKmMgGtT]([iI]?[bB])?)?\s*$"
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h|d|w))+)\s*$"

ByteSize = Annotated[
    int,
    BeforeValidator(_size),
    PlainSerializer(size_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": SIZE_PATTERN, "examples": ["64MiB", "10GiB"]}),
]
Seconds = Annotated[
    float,
    BeforeValidator(_duration),
    PlainSerializer(duration_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["30s", "7d"]}),
]
