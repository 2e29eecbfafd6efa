"""Passwords in store URLs: never printed, logged or written to a drive file.

A PostgreSQL password comes from the environment (``PGPASSWORD``), from a
``.pgpass``-style file (libpq reads ``~/.pgpass`` or the URL's ``passfile=``), or
is given once and kept in such a file (0600) next to the drive's ``drive.json``,
whose URL then names the file instead of the password. Every URL or message that
may hold one goes through :func:`redact_url` before anyone sees it.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from . import private

__all__ = [
    "MASK",
    "PGPASS_FILE",
    "redact_url",
    "split_password",
    "with_passfile",
    "write_pgpass",
]

MASK = "***"
PGPASS_FILE = "pgpass"

# scheme://user:PASSWORD@ -- the password part of a URL's user information.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):(?P<secret>[^\s/@]+)@")
# password=... in a query string or a libpq "key=value" connection string.
_PARAMETER = re.compile(
    r"(?P<head>\b(?:password|sslpassword|secret|secret_key|token)\s*=\s*)(?P<secret>'[^']*'|[^&\s'\"]+)",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """``text`` (a URL, or a message quoting URLs or connection strings) with every
    password replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _PARAMETER.sub(lambda m: f"{m['head']}{MASK}", text)


def split_password(url: str) -> tuple[str, str | None]:
    """``url`` without the password of its user information, and that password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    host = parts.netloc.rsplit("@", 1)[1]
    user = quote(unquote(parts.username or ""), safe="")
    netloc = f"{user}@{host}" if user else host
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password)


def with_passfile(url: str, passfile: Path) -> str:
    """``url`` asking libpq to read its password from ``passfile``."""
    parts = urlsplit(url)
    kept = "&".join(p for p in parts.query.split("&") if p and not p.startswith("passfile="))
    query = "&".join(q for q in (kept, "passfile=" + quote(str(passfile), safe="/")) if q)
    return urlunsplit(parts._replace(query=query))


def write_pgpass(path: Path, password: str) -> Path:
    """Keep ``password`` in a ``.pgpass``-format file only its owner can read (libpq
    ignores a group- or world-readable one); it matches any host, database and user."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    tmp = path.with_name(f".{path.name}.tmp")
    private.write_file(tmp, f"*:*:*:*:{escaped}\n")
    tmp.replace(path)
    return path
