"""What to bring onto this machine: globs and manifests (see docs/hydrate-manifest.md)."""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mediadrive.core import paths


class ManifestEntry(BaseModel):
    """One line of a manifest: a file (optionally at a version) or a glob."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    glob: str | None = None
    # 64-bit in the metadata stores: larger is bad input, not an overflow.
    version: int | None = Field(default=None, ge=1, le=(1 << 63) - 1)

    @model_validator(mode="after")
    def _one_of(self) -> ManifestEntry:
        if (self.path is None) == (self.glob is None):
            raise ValueError("give exactly one of 'path' or 'glob'")
        if self.glob is not None and self.version is not None:
            raise ValueError("'version' applies to a 'path', not to a 'glob'")
        return self


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=1, ge=1, le=1)
    pin: bool = True
    include: list[ManifestEntry | str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("include")
    @classmethod
    def _strings_are_globs(cls, value: list[ManifestEntry | str]) -> list[ManifestEntry | str]:
        return [ManifestEntry(glob=v) if isinstance(v, str) else v for v in value]

    def entries(self) -> list[ManifestEntry]:
        return [e for e in self.include if isinstance(e, ManifestEntry)]


def normalize_pattern(pattern: str) -> str:
    """Patterns are mount paths; a relative one is relative to the mount's root."""
    if not pattern.startswith("/"):
        pattern = "/" + pattern
    return pattern


def fixed_prefix(pattern: str) -> str:
    """The folder a pattern cannot match outside of: ``/a/b/*.exr`` -> ``/a/b``."""
    parts = normalize_pattern(pattern).split("/")
    fixed: list[str] = []
    for part in parts[1:]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    else:
        fixed = fixed[:-1]
    return paths.normalize("/" + "/".join(fixed))


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay inside one name; ``**`` crosses folders."""
    text = normalize_pattern(pattern)
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if text.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif text.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = text.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = text[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(pattern: str, path: str) -> bool:
    return compile_glob(pattern).match(path) is not None
