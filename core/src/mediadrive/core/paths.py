"""Drive paths: absolute, normalized, and never above the drive's root."""

from __future__ import annotations

import posixpath

from .errors import InvalidPath


def normalize(path: str) -> str:
    """``'a//b/./c'`` -> ``'/a/b/c'``; ``'/../x'`` is refused, not clamped to ``'/x'``."""
    if "\0" in path:
        raise InvalidPath(f"path {path!r} contains a NUL byte")
    try:
        path.encode()
    except UnicodeEncodeError:
        # Bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape).
        raise InvalidPath(f"path '{_shown(path)}' is not valid UTF-8") from None
    depth = 0
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                raise InvalidPath(f"path {path!r} escapes the drive")
            parts.pop()
            continue
        if len(part.encode()) > 255:
            raise InvalidPath(f"name {part[:40]!r}... in {path!r} is longer than 255 bytes")
        depth += 1
        parts.append(part)
    return "/" + "/".join(parts)


def _shown(path: str) -> str:
    """``path`` printable, its bytes that are not UTF-8 written as ``\\xff``."""
    try:
        raw = path.encode(errors="surrogateescape")
    except UnicodeEncodeError:
        return path.encode(errors="backslashreplace").decode()
    return raw.decode(errors="backslashreplace")


def split(path: str) -> tuple[str, str]:
    """Normalized ``'/a/b'`` -> ``('/a', 'b')``; the root has no parent."""
    if path == "/":
        raise InvalidPath("the drive's root folder cannot be used here")
    parent, name = posixpath.split(path)
    return parent, name
