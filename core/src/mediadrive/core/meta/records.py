"""Plain records passed across the metadata-store interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class NodeKind(StrEnum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    # Metadata only: no content ever reaches the store.
    FIFO = "fifo"
    CHAR = "char"
    BLOCK = "block"
    SOCKET = "socket"


@dataclass(frozen=True, slots=True)
class Node:
    id: int
    parent_id: int | None
    name: str
    kind: NodeKind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int
    size: int
    head_version: int | None
    target: str | None = None
    deleted_ns: int | None = None
    # The device number of a CHAR or BLOCK node (st_rdev); 0 otherwise.
    rdev: int = 0
    # Live subfolders of a folder (for its link count), where the store counted them.
    subdirs: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind is NodeKind.DIR


@dataclass(frozen=True, slots=True)
class DeletedEntry:
    """A file or symlink removed under a folder: where it last lived, and the node
    (``deleted_ns`` is its own deletion or, inside a removed folder, the folder's)."""

    path: str
    node: Node


@dataclass(frozen=True, slots=True)
class Extent:
    """``length`` bytes at file ``offset`` are chunk ``chunk_id`` from ``chunk_offset``.

    Most extents name a whole chunk (``chunk_offset`` 0, ``length`` its size). A
    *slice* names part of one, starting and ending anywhere in it; readers fetch the
    whole blocks it covers, checked by the digests recorded when the chunk was stored
    (see "How edits are stored" in docs/ARCHITECTURE.md).
    """

    offset: int
    length: int
    chunk_id: str
    chunk_offset: int = 0


@dataclass(frozen=True, slots=True)
class VersionInfo:
    file_id: int
    version: int
    size: int
    mode: int
    mtime_ns: int
    created: float
    author: str
    message: str
    parent_version: int | None
    tier: str
    origin: str


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    kind: str
    path: str
    file_id: int | None
    version: int | None
    actor: str
    created: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """A new version of ``parent_path/name`` made of chunks that are already stored.

    ``base_version`` is the head the writer started from (``None`` for a new file);
    if the head moved since, the drive's conflict policy decides.
    """

    # The folder's id; None: the folder at ``parent_path``, looked up by the commit.
    parent_id: int | None
    parent_path: str
    name: str
    base_version: int | None
    extents: list[Extent]
    size: int
    mode: int
    mtime_ns: int
    author: str
    message: str
    host: str
    origin: str = "commit"
    tier: str = "cloud"
    # The upload whose holds this commit releases (see MetaStore.claim_chunks).
    hold_token: str = ""
    # The file as the writer knew it: if it was renamed meanwhile, the version lands
    # where it is now, not as a new file at the old name.
    file_id: int | None = None
    # Bring the deleted file ``file_id`` back at ``parent_path/name`` with this version,
    # so its history continues under the same id (a restore of a deleted path).
    revive: bool = False
    # Chunks of ``extents`` whose puts are still on their way: the commit records them
    # as stored itself (see MetaStore.commit).
    landing: tuple[LandingChunk, ...] = ()


@dataclass(frozen=True, slots=True)
class LandingChunk:
    """A chunk put just now, to be recorded as MetaStore.record_put would with these
    arguments."""

    chunk_id: str
    size: int
    blocks: bytes | None
    deletions_seen: int
    token: str


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    path: str
    file_id: int
    version: int
    conflict: bool = False
    previous_head: int | None = None
    rejected: bool = False


@dataclass(frozen=True, slots=True)
class ChunkClaim:
    chunk_id: str
    # pending: the caller must upload it; stored: already durable; busy: GC is deleting it.
    state: str


@dataclass(frozen=True, slots=True)
class GcCandidate:
    chunk_id: str
    size: int


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A chunk as the metadata store knows it.

    ``state``: pending (claimed, not yet stored), stored, damaged (found corrupt or
    missing: the next upload of its bytes stores it again), deleting (GC), or absent
    (a version names it but the store has no row for it at all).
    """

    chunk_id: str
    size: int
    state: str
    blocks: bytes | None = None
    held_until: float = 0.0


@dataclass(frozen=True, slots=True)
class ChunkUse:
    """One version that names a chunk, and where its file is (or was)."""

    chunk_id: str
    file_id: int
    version: int
    path: str
    # The version is its live file's head (else it is history, or the file is deleted).
    head: bool
    deleted: bool


@dataclass(frozen=True, slots=True)
class TieredVersion:
    """A version still in a storage-pod tier, with where its file is (or was)."""

    info: VersionInfo
    path: str
    # The version is its live file's head.
    head: bool
    deleted: bool


@dataclass(frozen=True, slots=True)
class StoredExtent:
    """An extent with the version it belongs to (extents keep their order)."""

    file_id: int
    version: int
    extent: Extent


@dataclass
class DriveDump:
    """Everything the metadata store holds about one drive (holds aside: they are
    transient), read in one transaction."""

    name: str
    settings: str
    created: float
    next_node: int
    event_seq: int
    nodes: list[Node] = field(default_factory=list)
    versions: list[VersionInfo] = field(default_factory=list)
    extents: list[StoredExtent] = field(default_factory=list)
    chunks: list[ChunkRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
