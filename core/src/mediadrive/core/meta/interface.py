"""The metadata contract: what every metadata engine does for one drive.

The drive engine, the FUSE node and the CLI talk to this protocol only; engines
(``sqlite.py``, ``postgres.py``) implement it and pass the same contract tests
(``tests/integration/test_meta_contract.py``). Paths given next to ids are the
normalized absolute drive paths of those ids, used for events and messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, Protocol

from ..config import ConflictPolicy, DriveSettings, Retention
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
    TieredVersion,
    VersionInfo,
)

# How long a claimed chunk is safe from GC while its upload and commit run; long
# uploads renew the hold.
CHUNK_HOLD = 15 * 60.0


class MetaStore(Protocol):
    """The metadata of one drive: its tree, versions, chunks, holds and events."""

    url: str
    drive: str

    # -- drives and schema ------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply every migration the database lacks; returns the schema version."""

    async def create_drive(self, settings: DriveSettings) -> None:
        """Migrate, then make the drive with its root folder; AlreadyExists if it is there."""

    async def open_drive(self) -> DriveSettings:
        """Check the schema is current and return the drive's settings."""

    async def update_settings(self, settings: DriveSettings) -> None:
        """Replace the drive's settings."""

    async def destroy_drive(self) -> None:
        """Remove the drive and everything recorded of it (its chunks' bytes stay in
        the blob store: the caller deletes them first); a missing drive is no error."""

    async def close(self) -> None:
        """Release connections; the store reconnects if used again."""

    # -- tree ---------------------------------------------------------------------------

    async def get_node(self, node_id: int) -> Node | None:
        """The node with this id, live or deleted; None if there is none."""

    async def lookup(self, parent_id: int, name: str) -> Node | None:
        """The live node called ``name`` in folder ``parent_id``."""

    async def resolve(self, path: str) -> Node | None:
        """The live node at a normalized absolute drive path, in one transaction."""

    async def last_deleted(self, parent_id: int, name: str) -> Node | None:
        """The most recently deleted node of that name, for the time machine."""

    async def history(self, path: str) -> list[Node]:
        """Every node that lived at a normalized absolute drive path, for the time machine.

        Walks the path through live and deleted folders alike, so a file inside a
        removed folder (whose own row was never marked) is found, even after a new
        folder took that folder's name. The live node comes first, then deleted ones,
        most recently deleted first. ``deleted_ns`` of a node under a removed folder is
        set to the time that folder went (its own, if it was removed earlier).
        """

    async def deleted_under(self, path: str) -> list[DeletedEntry]:
        """Files and symlinks removed at or under the folder at ``path`` (any folder
        that lived there), including those inside removed folders; most recent first."""

    async def list_dir(self, dir_id: int) -> list[Node]:
        """The live children of a folder, by name."""

    async def make_node(
        self,
        parent_id: int,
        parent_path: str,
        name: str,
        kind: NodeKind,
        mode: int,
        actor: str,
        target: str | None = None,
        uid: int = 0,
        gid: int = 0,
        rdev: int = 0,
    ) -> Node:
        """A new folder, symlink or empty file (an empty file has no version yet), or a
        FIFO, socket or device node (``rdev``: its device number), which is metadata only."""

    async def set_attrs(
        self,
        node_id: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime_ns: int | None = None,
        path: str = "",
        actor: str = "",
    ) -> Node:
        """Change the attributes given (None keeps one) and return the updated node; an
        ``attrs`` event (with ``path`` and ``actor``) tells other mounts."""

    async def remove(
        self,
        parent_id: int,
        parent_path: str,
        name: str,
        actor: str,
        recursive: bool = False,
        folder: bool | None = None,
    ) -> Node:
        """Delete a file, symlink or folder. Versions stay in history until retention.
        ``folder`` True: the node must be a folder (NotADirectory otherwise); False: it
        must not be one (IsADirectory). Returns the node as removed: ``deleted_ns`` is
        when, also its folder's new mtime and ctime."""

    async def rename(
        self,
        src_parent: int,
        src_path: str,
        dst_parent: int,
        dst_path: str,
        actor: str,
        replace: bool = True,
    ) -> Node:
        """Atomic move; an existing file or empty folder at the target is replaced."""

    async def exchange(
        self, a_parent: int, a_path: str, b_parent: int, b_path: str, actor: str
    ) -> tuple[Node, Node]:
        """Swap two existing names atomically (``RENAME_EXCHANGE``), history and all."""

    # -- versions -----------------------------------------------------------------------

    async def commit(
        self, req: CommitRequest, policy: ConflictPolicy, landed: Awaitable[Any] | None = None
    ) -> CommitOutcome:
        """A new version from stored chunks, applying ``policy`` if the head moved.

        With ``req.revive`` a deleted file ``req.file_id`` first takes the (free) name
        again, in the same transaction; AlreadyExists if the name is taken.

        ``req.landing`` names chunks whose puts end with ``landed``: they are recorded
        as :meth:`record_put` would, in the same transaction, which is prepared while
        they travel and ends only once they are done. LandingFailed, with nothing
        recorded, if a put fails or takes too long, or GC is at one of them.
        """

    async def label_version(
        self, file_id: int, version: int, message: str, replaceable: Sequence[str] = ("",)
    ) -> bool:
        """Set a version's message if its own is one of ``replaceable``; True when it did."""

    async def versions(self, file_id: int) -> list[VersionInfo]:
        """Every version of a file still in history, oldest first."""

    async def version(self, file_id: int, version: int) -> tuple[VersionInfo, list[Extent]]:
        """One version and its extents in file order; VersionNotFound if it is gone."""

    async def set_version_tier(
        self, file_id: int, version: int, tier: str, path: str, actor: str, **detail: Any
    ) -> int:
        """Set a version's tier and record a ``publish`` event, in one transaction; returns
        the event's number (VersionNotFound if the version is gone)."""

    async def versions_in_tier(
        self, prefix: str, before: float, limit: int = 1000
    ) -> list[TieredVersion]:
        """Up to ``limit`` versions whose tier starts with ``prefix`` (``pod:``) made
        before ``before``, oldest first, with their files' (last) paths."""

    # -- chunks and holds ---------------------------------------------------------------

    async def claim_chunks(
        self,
        chunks: Sequence[tuple[str, int, bytes | None]],
        hold: float = CHUNK_HOLD,
        token: str = "",
    ) -> list[ChunkClaim]:
        """Hold (id, size, block digests) chunks for an upload; says which need uploading."""

    async def chunk_deletions(self) -> int:
        """How many chunk deletions GC has finished in this drive (see record_put)."""

    async def record_put(
        self,
        chunk_id: str,
        size: int,
        blocks: bytes | None,
        deletions_seen: int,
        hold: float = CHUNK_HOLD,
        token: str = "",
    ) -> tuple[str, int]:
        """Hold a chunk the caller has just put, in one transaction: ``stored``, or
        ``pending`` when a GC deletion finished since the caller read ``deletions_seen``
        before its put (put it again, then mark_stored), or ``busy`` (GC deletes it
        now); with the current count of deletions."""

    async def hold_chunks(
        self, chunk_ids: Sequence[str], hold: float = CHUNK_HOLD, token: str = ""
    ) -> None:
        """Extend the holds of chunks a long upload is still working on."""

    async def expire_holds(self) -> int:
        """Forget holds whose uploads died without committing; returns how many."""

    async def held_unreferenced(self) -> int:
        """How many chunks no version references are held by an upload now."""

    async def mark_stored(self, chunk_ids: Sequence[str]) -> None:
        """Record that claimed chunks are now in the blob store."""

    async def chunk_blocks(self, chunk_id: str) -> bytes | None:
        """The per-block digests recorded for a chunk, if any."""

    async def chunk_stats(self) -> tuple[int, int]:
        """(number of stored chunks, their total bytes)."""

    async def mark_damaged(self, chunk_ids: Sequence[str]) -> int:
        """Record that stored chunks were found corrupt or missing in the blob store:
        the next claim of each says ``pending`` (so its bytes are uploaded again) and
        ``mark_stored`` clears the mark. Returns how many were marked."""

    async def unrecorded(self, chunk_ids: Sequence[str]) -> list[str]:
        """Those of ``chunk_ids`` the store has no row for, in the order given (objects
        in the blob store nothing records: a put whose record never happened)."""

    async def record_stray(
        self, chunk_id: str, size: int, blocks: bytes | None, deletions_seen: int
    ) -> bool:
        """Record an object the blob store holds and no row names (see fsck), so GC
        collects it once its grace has passed: ``stored`` with its block digests, or
        ``damaged`` when ``blocks`` is None (its bytes do not hash to its id). The
        caller read ``deletions_seen`` before reading the object; False, with nothing
        recorded, when a row exists or a GC deletion has finished since."""

    async def referenced_chunks(self) -> list[ChunkRecord]:
        """Every chunk some version still in history names, by id (state ``absent``
        for one the store has no row for)."""

    async def chunk_users(self, chunk_ids: Sequence[str]) -> list[ChunkUse]:
        """The versions that name these chunks, with their files' paths."""

    async def logical_bytes(self) -> int:
        """Bytes of every version of every file, as if nothing were shared."""

    # -- dump and load ----------------------------------------------------------------------

    async def export_drive(self) -> DriveDump:
        """The drive's whole metadata, read in one transaction (a consistent snapshot)."""

    async def import_drive(self, dump: DriveDump) -> None:
        """Migrate, then make this drive from ``dump`` (under this store's drive name);
        AlreadyExists if the drive, or any row of it, is already here."""

    # -- events ---------------------------------------------------------------------------

    async def record_event(
        self,
        kind: str,
        path: str,
        actor: str,
        file_id: int | None = None,
        version: int | None = None,
        **detail: Any,
    ) -> int:
        """Append an event to the drive's log; returns its sequence number."""

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        """Up to ``limit`` events numbered after ``seq``, in order."""

    async def last_event_seq(self) -> int:
        """The number of the latest event (0 for none)."""

    def follow_events(self, since: int, poll: float = 0.5) -> AsyncIterator[Event]:
        """Every event after ``since``, then new ones as they land."""

    # -- retention and GC -----------------------------------------------------------------

    async def prune_versions(self, retention: Retention, now: float) -> int:
        """Delete versions no retention rule keeps (never a live head); returns how many."""

    async def gc_candidates(self, cutoff: float) -> list[GcCandidate]:
        """Chunks no version references and nobody has held since ``cutoff``."""

    async def begin_delete_chunk(self, chunk_id: str, cutoff: float) -> bool:
        """Mark a chunk as being deleted if it is still unreferenced, unheld and stale."""

    async def finish_delete_chunk(self, chunk_id: str) -> None:
        """Forget a chunk whose blob is deleted."""

    async def deleting_chunks(self) -> list[str]:
        """Chunks whose deletion was begun but not finished (a GC that died midway)."""
