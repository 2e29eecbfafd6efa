"""The metadata store: the folder tree, every version of every file, chunks and events.

One contract (:class:`~mediadrive.core.meta.interface.MetaStore`), several engines
chosen by URL scheme. Each engine registers its schemes from its own module;
the built-in ones (SQLite embedded, PostgreSQL/CockroachDB) are imported the first
time a URL needs them, so importing this package loads no database driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..schemes import SchemeRegistry
from .interface import CHUNK_HOLD, MetaStore
from .records import (
    ChunkClaim,
    ChunkRecord,
    ChunkUse,
    CommitOutcome,
    CommitRequest,
    DeletedEntry,
    DriveDump,
    Event,
    Extent,
    GcCandidate,
    Node,
    NodeKind,
    StoredExtent,
    TieredVersion,
    VersionInfo,
)

__all__ = [
    "CHUNK_HOLD",
    "ChunkClaim",
    "ChunkRecord",
    "ChunkUse",
    "CommitOutcome",
    "CommitRequest",
    "DeletedEntry",
    "DriveDump",
    "Event",
    "Extent",
    "GcCandidate",
    "MetaEngine",
    "MetaStore",
    "Node",
    "NodeKind",
    "StoredExtent",
    "TieredVersion",
    "VersionInfo",
    "check_meta_url",
    "connect",
    "meta_schemes",
    "register",
]


@dataclass(frozen=True)
class MetaEngine:
    """How URLs of one scheme become metadata stores."""

    # (url, drive) -> a store that opens nothing until its first call
    open: Callable[[str, str], MetaStore]
    # Raises ConfigError naming the URL if the engine cannot use it.
    check_url: Callable[[str], None]


_ENGINES = SchemeRegistry[MetaEngine](
    "metadata URL",
    {
        "sqlite": "mediadrive.core.meta.sqlite",
        "postgresql": "mediadrive.core.meta.postgres",
        "postgres": "mediadrive.core.meta.postgres",
        "cockroachdb": "mediadrive.core.meta.postgres",
    },
)


def register(
    scheme: str, open: Callable[[str, str], MetaStore], check_url: Callable[[str], None]
) -> None:
    """Make ``scheme://`` metadata URLs use an engine; engines call this on import."""
    _ENGINES.register(scheme, MetaEngine(open, check_url))


def meta_schemes() -> list[str]:
    """The URL schemes metadata stores can use."""
    return _ENGINES.schemes()


def check_meta_url(url: str) -> str:
    """``url`` if an engine accepts it, checked without connecting; else ConfigError."""
    _ENGINES.engine_for(url).check_url(url)
    return url


def connect(url: str, drive: str) -> MetaStore:
    """A store for ``drive`` at ``url``; nothing is opened until the first call."""
    engine = _ENGINES.engine_for(url)
    engine.check_url(url)
    return engine.open(url, drive)
