"""The metadata store: the folder tree, every version of every file, chunks and events.

One interface, several engines (SQLite embedded, PostgreSQL/CockroachDB). Every
engine runs the same SQL through :class:`~mediadrive.core.meta.sql.SqlMetaStore`
and passes the same contract tests.
"""

from __future__ import annotations

from .records import (
    ChunkClaim,
    CommitOutcome,
    CommitRequest,
    Event,
    Extent,
    GcCandidate,
    Node,
    NodeKind,
    VersionInfo,
)
from .sql import SqlMetaStore as MetaStore

__all__ = [
    "ChunkClaim",
    "CommitOutcome",
    "CommitRequest",
    "Event",
    "Extent",
    "GcCandidate",
    "MetaStore",
    "Node",
    "NodeKind",
    "VersionInfo",
    "connect",
]


def connect(url: str, drive: str) -> MetaStore:
    """A store for ``drive`` at ``url``; nothing is opened until the first call."""
    from ..config import check_meta_url

    check_meta_url(url)
    if url.startswith("sqlite:"):
        from .sqlite import SqliteMetaStore

        return SqliteMetaStore(url, drive)
    from .postgres import PostgresMetaStore

    return PostgresMetaStore(url, drive)
