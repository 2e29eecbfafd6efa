"""Bearer tokens and the drives they open.

The token file has one token per line: ``TOKEN DRIVE[,DRIVE...]`` or ``TOKEN *``
(every drive; pods talk to each other with such a token). Blank lines and lines
starting with ``#`` are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mediadrive.core.errors import ConfigError

ANY_DRIVE = "*"


@dataclass(frozen=True)
class Tokens:
    """Token -> the drives it may use (``{"*"}`` for all of them)."""

    scopes: dict[str, frozenset[str]]

    @classmethod
    def load(cls, path: Path) -> Tokens:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
        scopes: dict[str, frozenset[str]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) != 2:
                raise ConfigError(
                    f"--token-file {path} line {number}: write TOKEN DRIVE[,DRIVE...] or TOKEN *"
                )
            drives = frozenset(d for d in words[1].split(",") if d)
            scopes[words[0]] = scopes.get(words[0], frozenset()) | drives
        return cls(scopes)

    def drives(self, token: str) -> frozenset[str] | None:
        """The drives ``token`` opens; None for an unknown token."""
        return self.scopes.get(token)

    def peer_token(self) -> str | None:
        """A token for every drive: what this pod sends to its peers."""
        for token, drives in self.scopes.items():
            if ANY_DRIVE in drives:
                return token
        return None


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def allows(drives: frozenset[str], drive: str | None) -> bool:
    """Whether a token's ``drives`` open ``drive`` (None: a request for all drives)."""
    if ANY_DRIVE in drives:
        return True
    return drive is not None and drive in drives
