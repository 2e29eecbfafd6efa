"""Versioned schema migrations, written once for every SQL engine.

Types are spelled through a small dialect table so SQLite, PostgreSQL and
CockroachDB run the same statements. Append a migration; never edit a shipped one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    name: str
    bigint: str
    real: str
    text: str
    blob: str


SQLITE = Dialect("sqlite", bigint="INTEGER", real="REAL", text="TEXT", blob="BLOB")
POSTGRES = Dialect("postgres", bigint="BIGINT", real="DOUBLE PRECISION", text="TEXT", blob="BYTEA")

MIGRATIONS: list[list[str]] = [
    # 1: drives, the tree, versions and their extents, chunks, events.
    [
        """CREATE TABLE drives (
            name {text} PRIMARY KEY,
            settings {text} NOT NULL,
            next_node {bigint} NOT NULL,
            event_seq {bigint} NOT NULL,
            created {real} NOT NULL)""",
        """CREATE TABLE nodes (
            drive {text} NOT NULL,
            id {bigint} NOT NULL,
            parent_id {bigint},
            name {text} NOT NULL,
            kind {text} NOT NULL,
            mode {bigint} NOT NULL,
            uid {bigint} NOT NULL,
            gid {bigint} NOT NULL,
            mtime_ns {bigint} NOT NULL,
            ctime_ns {bigint} NOT NULL,
            size {bigint} NOT NULL,
            head_version {bigint},
            target {text},
            deleted_ns {bigint},
            PRIMARY KEY (drive, id))""",
        """CREATE UNIQUE INDEX nodes_live_name ON nodes (drive, parent_id, name)
            WHERE deleted_ns IS NULL""",
        "CREATE INDEX nodes_by_parent ON nodes (drive, parent_id)",
        """CREATE TABLE versions (
            drive {text} NOT NULL,
            file_id {bigint} NOT NULL,
            version {bigint} NOT NULL,
            size {bigint} NOT NULL,
            mode {bigint} NOT NULL,
            mtime_ns {bigint} NOT NULL,
            created {real} NOT NULL,
            author {text} NOT NULL,
            message {text} NOT NULL,
            parent_version {bigint},
            tier {text} NOT NULL,
            origin {text} NOT NULL,
            PRIMARY KEY (drive, file_id, version))""",
        """CREATE TABLE extents (
            drive {text} NOT NULL,
            file_id {bigint} NOT NULL,
            version {bigint} NOT NULL,
            idx {bigint} NOT NULL,
            file_offset {bigint} NOT NULL,
            length {bigint} NOT NULL,
            chunk_id {text} NOT NULL,
            PRIMARY KEY (drive, file_id, version, idx))""",
        "CREATE INDEX extents_by_chunk ON extents (drive, chunk_id)",
        """CREATE TABLE chunks (
            drive {text} NOT NULL,
            id {text} NOT NULL,
            size {bigint} NOT NULL,
            state {text} NOT NULL,
            held_until {real} NOT NULL,
            PRIMARY KEY (drive, id))""",
        """CREATE TABLE events (
            drive {text} NOT NULL,
            seq {bigint} NOT NULL,
            kind {text} NOT NULL,
            path {text} NOT NULL,
            file_id {bigint},
            version {bigint},
            actor {text} NOT NULL,
            created {real} NOT NULL,
            detail {text} NOT NULL,
            PRIMARY KEY (drive, seq))""",
    ],
    # 2: per-block digests, so ranged reads are verified without the whole chunk.
    ["ALTER TABLE chunks ADD COLUMN blocks {blob}"],
    # 3: holds per upload, so one commit never ends another upload's hold.
    [
        """CREATE TABLE holds (
            drive {text} NOT NULL,
            chunk_id {text} NOT NULL,
            token {text} NOT NULL,
            until {real} NOT NULL,
            PRIMARY KEY (drive, chunk_id, token))""",
    ],
    # 4: device numbers of character and block device nodes (FIFOs, sockets: 0).
    ["ALTER TABLE nodes ADD COLUMN rdev {bigint} NOT NULL DEFAULT 0"],
    # 5: live subfolders by parent, so a folder's link count (counted at every getattr)
    # reads its subfolders only, not every child it ever had.
    [
        """CREATE INDEX IF NOT EXISTS nodes_live_subdirs ON nodes (drive, parent_id)
            WHERE deleted_ns IS NULL AND kind = 'dir'"""
    ],
    # 6: an extent may name a slice of a chunk (a small edit keeps the rest of it).
    ["ALTER TABLE extents ADD COLUMN chunk_offset {bigint} NOT NULL DEFAULT 0"],
    # 7: children by parent and name, live or deleted. Beside (drive, parent_id) alone,
    # PostgreSQL picked that index for a lookup by name until it had statistics, and a
    # lookup then read every child of the folder (3,000 rows for one name).
    [
        "CREATE INDEX IF NOT EXISTS nodes_by_parent_name ON nodes (drive, parent_id, name)",
        "DROP INDEX IF EXISTS nodes_by_parent",
    ],
    # 8: chunk deletions GC has finished, so an upload that put a chunk before
    # claiming it can tell whether a deletion may have taken its bytes meanwhile.
    ["ALTER TABLE drives ADD COLUMN chunk_deletions {bigint} NOT NULL DEFAULT 0"],
]

LATEST = len(MIGRATIONS)

BOOKKEEPING = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version {bigint} PRIMARY KEY,
    applied {real} NOT NULL)"""


def render(statement: str, dialect: Dialect) -> str:
    return statement.format(
        bigint=dialect.bigint, real=dialect.real, text=dialect.text, blob=dialect.blob
    )
