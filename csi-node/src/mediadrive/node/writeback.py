"""Turning staged copies into versions: on close, on fsync, on save, and by checkpoint.

Commits run in the background, one at a time per file. A commit uploads a snapshot of
the staged copy (only chunks the drive lacks travel) and records a version based on
the version the copy started from; if the head moved meanwhile, the drive's conflict
policy decides. A refused commit (``reject``) leaves the local copy in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mediadrive.core.drive import Drive, UploadResult
from mediadrive.core.errors import (
    ChunkMissing,
    ConflictError,
    LandingFailed,
    MediadriveError,
    PathNotFound,
    StoreFull,
    StoreUnavailable,
)
from mediadrive.core.hashing import BLOCK_SIZE
from mediadrive.core.meta import CommitOutcome, Extent
from mediadrive.core.upload import Landing, layout

from .cache import BlockCache
from .options import CommitOn, MountOptions
from .staging import StagedFile, Staging
from .streaming import EarlyUploads
from .tree import Tree

log = logging.getLogger(__name__)

_RETRY_SECONDS = 5.0
# The blocks of a piece sent ahead of an fsync are held in memory at once and written
# to the block cache's disk once no piece was sent ahead for _KEEP_AFTER seconds: on a
# disk shared with the next edit's flush and with the store, that write slowed each of
# a run of edits by about a millisecond. At most _KEEP_WITHIN seconds later, and at
# once while more than _KEEP_HELD bytes wait (the memory tier is 16 MiB).
_KEEP_AFTER = 0.05
_KEEP_WITHIN = 5.0
_KEEP_HELD = 8 << 20
# Turns of the event loop a save waiting for a commit takes to answer (see
# _commit_snapshot).
_SAVE_TURNS = 2

CHECKPOINT = "checkpoint"
ON_UNMOUNT = "saved on unmount"
AFTER_RESTART = "recovered after restart"
BEFORE_RESTORE = "saved before restore"
# Messages of commits nobody asked for by name; an explicit save of the same bytes
# may replace them with its own.
AUTOMATIC_MESSAGES = ("", CHECKPOINT, ON_UNMOUNT, AFTER_RESTART, BEFORE_RESTORE)


class WriteFailed(StoreFull):
    """A staged copy a write failed into (see ``StagedFile.failed``): not committed."""


@dataclass(frozen=True)
class CommitReport:
    """What a commit did, in mount paths."""

    path: str
    version: int
    size: int
    bytes_uploaded: int
    chunks_total: int
    chunks_new: int
    conflict: bool
    committed: bool
    landed: str
    message: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# Upper bounds (seconds) of the commit latency histogram's buckets.
COMMIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class WritebackFigures:
    bytes_uploaded: int = 0
    commits: int = 0
    conflicts: int = 0
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    # Seconds from the start of a commit that recorded a version to its end: how
    # many fell at or under each of COMMIT_BUCKETS (not cumulative), and their sum.
    commit_seconds_counts: list[int] = field(default_factory=lambda: [0] * len(COMMIT_BUCKETS))
    commit_seconds_over: int = 0
    commit_seconds_sum: float = 0.0

    def observe_commit(self, seconds: float) -> None:
        self.commit_seconds_sum += seconds
        for i, bound in enumerate(COMMIT_BUCKETS):
            if seconds <= bound:
                self.commit_seconds_counts[i] += 1
                return
        self.commit_seconds_over += 1

    def commit_histogram(self) -> dict[str, int]:
        """Cumulative counts by upper bound, Prometheus style (``"+Inf"`` last)."""
        out: dict[str, int] = {}
        total = 0
        for bound, count in zip(COMMIT_BUCKETS, self.commit_seconds_counts, strict=True):
            total += count
            out[f"{bound:g}"] = total
        out["+Inf"] = total + self.commit_seconds_over
        return out


# Called after every commit: (node id the copy belonged to, outcome, upload).
Committed = Callable[[int, CommitOutcome, UploadResult], None]


class Writeback:
    def __init__(
        self,
        drive: Drive,
        tree: Tree,
        staging: Staging,
        cache: BlockCache,
        options: MountOptions,
    ) -> None:
        self.drive = drive
        self.tree = tree
        self.staging = staging
        self.cache = cache
        self.options = options
        # Told of every version this engine records (the VFS updates its caches).
        self.on_commit: list[Committed] = []
        self._queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self._queued: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.figures = WritebackFigures()
        self.last: dict[int, CommitReport] = {}
        # Per file being committed: the copy's generation the commit took and its report,
        # once the version is recorded (None: the commit recorded nothing). A save
        # waiting for that commit answers then, not after its bookkeeping.
        self._recorded: dict[int, asyncio.Future[tuple[int, CommitReport] | None]] = {}
        # Those of them a save is waiting for.
        self._awaited: set[asyncio.Future[tuple[int, CommitReport] | None]] = set()
        self._busy = 0
        # Until when a commit does not wait on the store (it was unreachable just now).
        self._unreachable_until = 0.0
        # Full chunks of copies still being written are sent before their commit.
        self.early = EarlyUploads(drive, stream=options.stream_chunks)
        staging.on_change = self.early.changed
        self.early.on_sent_ahead = self._keep_sent_ahead
        # Blocks of pieces sent ahead of fsyncs on their way into the block cache, their
        # bytes, and when a piece was last sent ahead (see _put_blocks).
        self._keeping: set[asyncio.Task[None]] = set()
        self._held = 0
        self._sent_ahead_at = 0.0

    # -- scheduling ------------------------------------------------------------------------

    def start(self, workers: int = 2) -> None:
        for _ in range(workers):
            self._tasks.append(asyncio.create_task(self._worker()))
        if self.options.checkpoint_interval is not None:
            self._tasks.append(asyncio.create_task(self._checkpoints()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.early.close()
        await asyncio.gather(*self._keeping)

    def schedule(self, node_id: int, message: str = "") -> None:
        if node_id in self._queued:
            return
        self._queued.add(node_id)
        self._queue.put_nowait((node_id, message))

    def schedule_on(self, event: CommitOn, node_id: int, message: str) -> None:
        if self.options.commit_on is event:
            self.schedule(node_id, message)

    async def commit_for_fsync(self, staged: StagedFile) -> bool:
        """Commit ``staged`` for an fsync and wait (unless versions come from saves only):
        True once what the fsync covers is a version in the metadata store with its
        chunks in the object store (it survives the loss of this machine). False when
        not (``--commit-on save``, a store unreachable now or a few seconds ago, a
        conflict, a failed write): the caller makes the copy durable here instead, and
        a later commit retries."""
        if not self.options.commit_on.on_fsync or staged.rejected or staged.orphan:
            return False
        if time.monotonic() < self._unreachable_until:
            # Each fsync would wait out the store's retries first.
            return False
        if not await self._commit_reporting(staged, ""):
            return False
        # A copy the commit left clean has no journal entry any more (_journal_outcome).
        return not (staged.dirty or staged.failed or staged.orphan)

    async def _worker(self) -> None:
        while True:
            node_id, message = await self._queue.get()
            self._queued.discard(node_id)
            staged = self.staging.get(node_id)
            if staged is None or not staged.dirty or staged.rejected or staged.orphan:
                self._queue.task_done()
                continue
            if staged.failed:
                # Part of what was written never reached the copy: not a version.
                self._queue.task_done()
                continue
            self._busy += 1
            try:
                await self._commit_reporting(staged, message)
            finally:
                self._busy -= 1
                self._queue.task_done()

    async def _commit_reporting(self, staged: StagedFile, message: str) -> bool:
        """Commit ``staged``; False, with the error logged and in the status, when it
        failed (a store unreachable: retried in a few seconds)."""
        try:
            await self.commit(staged, message)
        except ConflictError as exc:
            log.warning("%s", exc)
        except StoreUnavailable as exc:
            self._unreachable_until = time.monotonic() + _RETRY_SECONDS
            self._error(f"{staged.path}: {exc}; retrying in {_RETRY_SECONDS:.0f}s")
            asyncio.get_running_loop().call_later(
                _RETRY_SECONDS, self.schedule, staged.node_id, message
            )
        except MediadriveError as exc:
            self._error(f"{staged.path}: {exc}")
        except Exception as exc:
            log.exception("commit of %s failed", staged.path)
            self._error(f"{staged.path}: {exc!r}")
        else:
            return True
        return False

    async def _checkpoints(self) -> None:
        interval = self.options.checkpoint_interval
        assert interval is not None
        while True:
            await asyncio.sleep(interval)
            self.checkpoint()

    def checkpoint(self) -> None:
        """Schedule a commit of every dirty file."""
        for staged in list(self.staging.files.values()):
            if staged.dirty and not staged.rejected and not staged.orphan and not staged.failed:
                self.schedule(staged.node_id, CHECKPOINT)

    def write_failed(self, staged: StagedFile) -> None:
        """Record that a write into ``staged`` failed (journaled: a restart keeps it)."""
        self._error(
            f"{self.tree.to_mount(staged.path) or staged.path}: {staged.failed}; not committed"
        )
        with contextlib.suppress(OSError):
            self.staging.write_journal(staged)

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.figures.errors.append(f"{time.strftime('%H:%M:%S')} {message}")

    @property
    def busy(self) -> bool:
        return self._busy > 0 or not self._queue.empty()

    # -- committing ------------------------------------------------------------------------

    async def commit(self, staged: StagedFile, message: str = "") -> CommitReport | None:
        """Commit a staged copy now; None when it has nothing new (or was unlinked)."""
        async with staged.commit_lock:
            if staged.orphan:
                if staged.writers == 0:
                    self.staging.drop(staged)
                return None
            if not staged.dirty or staged.failed:
                return None
            return await self._commit(staged, message)

    async def _commit(self, staged: StagedFile, message: str) -> CommitReport | None:
        recorded = self._recorded[staged.node_id] = asyncio.get_running_loop().create_future()
        try:
            return await self._commit_staged(staged, message)
        finally:
            if not recorded.done():
                recorded.set_result(None)
            if self._recorded.get(staged.node_id) is recorded:
                del self._recorded[staged.node_id]
            await self.early.done_with(staged)

    async def _commit_staged(self, staged: StagedFile, message: str) -> CommitReport | None:
        try:
            return await self._commit_staged_once(staged, message, landing=True)
        except LandingFailed as exc:
            log.info("%s: %s; committing once its puts are over", staged.path, exc)
            return await self._commit_staged_once(staged, message, landing=False)

    async def _commit_staged_once(
        self, staged: StagedFile, message: str, landing: bool
    ) -> CommitReport | None:
        """Commit ``staged``. ``landing``: pieces an fsync sent whose puts are still on
        their way are recorded by the commit's own transaction, which is prepared
        while they travel (an edit's version is then recorded as soon as its put is
        answered; LandingFailed if that cannot be, with nothing recorded)."""
        started = time.monotonic()
        await staged.fill_local(self.cache.get, self.cache.at_hand)
        while True:
            reuse = self._reusable(staged)
            needed = staged.needing(_ranges(reuse))
            if needed:
                await staged.materialize(needed, self.cache.get)
                # Fetching let other work run: what is kept may have changed.
                again = self._reusable(staged)
                if again.keys() != reuse.keys() or staged.needing(_ranges(again)):
                    continue
            # Worked out while chunks already on their way finish (they are kept by
            # reference, not sent again); a change meanwhile means working it out again.
            gen = staged.gen
            flying = await self.early.settle(staged, landing)
            # Nothing is awaited from here to the start of the snapshot, so the
            # snapshot is of the copy as checked.
            if staged.gen == gen:
                break
        kept_extents = self._kept(staged, reuse)
        if flying:
            report = await self._commit_landing(staged, gen, kept_extents, flying, message)
        else:
            report = await self._commit_kept(staged, gen, kept_extents, message)
        if report is not None and report.committed:
            self.figures.observe_commit(time.monotonic() - started)
        return report

    async def _commit_kept(
        self,
        staged: StagedFile,
        gen: int,
        kept_extents: dict[int, Extent],
        message: str,
        upload: UploadResult | None = None,
    ) -> CommitReport | None:
        """Commit ``staged`` keeping ``kept_extents`` by reference (``upload``: worked
        out already, nothing of the copy to read)."""
        node_id = staged.node_id
        if staged.writers == 0 and staged.copying is None:
            return await self._commit_in_place(staged, gen, kept_extents, message, upload)
        if upload is None:
            upload = self._all_kept(kept_extents, staged.size())
        if upload is not None:
            # Nothing will be read, so no snapshot of the copy to take; a write
            # meanwhile leaves the copy dirty (see _rebase).
            data = self.staging.data_path(staged)
            return await self._commit_snapshot(
                staged, node_id, gen, data, kept_extents, message, upload=upload
            )
        skip = [(offset, kept_extents[offset].length) for offset in sorted(kept_extents)]
        snap = await self.staging.snapshot(staged, skip)
        try:
            return await self._commit_snapshot(staged, node_id, gen, snap, kept_extents, message)
        finally:
            snap.unlink(missing_ok=True)

    async def _commit_landing(
        self,
        staged: StagedFile,
        gen: int,
        kept: dict[int, Extent],
        flying: list[Landing],
        message: str,
    ) -> CommitReport | None:
        """Commit a copy whose every byte is kept, the pieces ``flying`` among them
        (see _commit_staged_once)."""
        kept.update(_disjoint({piece.extent.offset: piece.extent for piece in flying}, kept))
        upload = self._all_kept(kept, staged.size())
        if upload is None:
            raise LandingFailed("the copy has bytes no piece sent holds")
        named = set(upload.extents)
        taken = tuple(piece for piece in flying if piece.extent in named)
        upload = dataclasses.replace(
            upload,
            landing=taken,
            bytes_uploaded=upload.bytes_uploaded + sum(p.chunk.size for p in taken),
            chunks_new=upload.chunks_new + len(taken),
        )
        for piece in taken:
            piece.claimed = True
        recorded = False
        try:
            report = await self._commit_kept(staged, gen, kept, message, upload)
            recorded = report is not None and report.committed
        finally:
            # Each put's own record waits for this (see Uploader._put_first).
            for piece in taken:
                piece.settle(recorded)
        # What is left of those sends is bookkeeping (their blocks into the cache), done
        # by the time the commit is, as when it waits for them.
        await self.early.settle(staged)
        return report

    async def _commit_in_place(
        self,
        staged: StagedFile,
        gen: int,
        reuse: dict[int, Extent],
        message: str,
        upload: UploadResult | None = None,
    ) -> CommitReport | None:
        """Commit a copy nobody has open for writing from the copy itself, not from a
        snapshot (which would copy the whole file first): whoever opens it to write,
        truncate or punch meanwhile waits until the commit is recorded. Reads go on;
        the base blocks they copy in are the kept chunks, which the upload skips."""
        held = asyncio.Event()
        staged.copying = held

        def release() -> None:
            if staged.copying is held:
                staged.copying = None
            held.set()

        try:
            return await self._commit_snapshot(
                staged,
                staged.node_id,
                gen,
                self.staging.data_path(staged),
                reuse,
                message,
                release,
                upload,
            )
        finally:
            release()

    async def send_ahead(self, staged: StagedFile) -> asyncio.Future[None] | None:
        """``staged`` is being fsync'd: start sending the pieces its commit would send
        now, so a commit soon after finds them sent (fixed chunking only: content-defined
        cuts of a changed stretch depend on the bytes after it). Returns what is done
        once their puts are under way, if any are sent."""
        if self.drive.settings.chunking != "fixed" or not staged.dirty or staged.failed:
            return None
        if not self.early.may_send_ahead(staged):
            return None
        kept = self._kept(staged, await self._copy_in_at_hand(staged))
        step = self.drive.settings.chunk_size
        self._sent_ahead_at = time.monotonic()
        return self.early.send_ahead(staged, fixed_stretches(kept, staged.size(), step))

    async def _copy_in_at_hand(self, staged: StagedFile) -> dict[int, tuple[Extent, Sequence[int]]]:
        """Copy in the base bytes the commit would send again beside an edit (the short
        runs a fragmented chunk lets go of, see fixed_reusable) when every block of
        them is at hand here: the pieces sent ahead are then the ones the commit keeps,
        where they would otherwise be left out (the copy lacks their bytes) and sent by
        the commit after fetching them. Blocks only the store has are left to the
        commit: an fsync does not wait on the store. Returns the base bytes the
        commit keeps (see _reusable), as the copy is now."""
        reuse = self._reusable(staged)
        needed = staged.needing(_ranges(reuse))
        if not needed or not all(
            self.cache.at_hand(staged.base[i].chunk_id, staged.base[i].index) for i in needed
        ):
            return reuse
        await staged.materialize(needed, self.cache.get)
        return self._reusable(staged)

    def _kept(
        self, staged: StagedFile, reuse: dict[int, tuple[Extent, Sequence[int]]]
    ) -> dict[int, Extent]:
        """What a commit of ``staged`` keeps by reference, by offset: the untouched base
        bytes ``reuse`` names, and the chunks sent early that overlap none of them."""
        kept = {offset: extent for offset, (extent, _) in reuse.items()}
        kept.update(_disjoint(self.early.ready(staged), kept))
        return kept

    def _reusable(self, staged: StagedFile) -> dict[int, tuple[Extent, Sequence[int]]]:
        """Base bytes the copy has not touched, which the commit keeps as they are
        (never fetched, never sent): by offset, the extent and the positions of its
        blocks. Only what an edit touched is read and cut again (see
        ``upload.pieces``). Content-defined chunking keeps every untouched chunk,
        since its cuts resynchronise at the first one after an edit; fixed chunking
        keeps every run of unchanged base bytes, as a slice of its chunk (see
        :meth:`StagedFile.untouched_runs` and :func:`fixed_reusable`)."""
        if not staged.missing and staged.changed_unknown:
            return {}
        size = staged.size()
        if self.drive.settings.chunking != "fixed":
            return {
                extent.offset: (extent, positions)
                for extent, positions in staged.untouched_extents()
                if extent.offset + extent.length <= size
            }
        return fixed_reusable(staged.untouched_runs(), size, self.drive.settings.chunk_size)

    async def _commit_snapshot(
        self,
        staged: StagedFile,
        node_id: int,
        gen: int,
        snap: Path,
        reuse: dict[int, Extent],
        message: str,
        release: Callable[[], None] | None = None,
        upload: UploadResult | None = None,
    ) -> CommitReport | None:
        """Upload ``snap`` and record it; ``release``, if given, is called once the
        bytes in ``snap`` are no longer needed (before a last-closed copy is dropped).
        ``upload``: the upload already worked out (nothing of ``snap`` to read)."""
        if upload is None:
            upload = await self._upload(snap, reuse, staged.path)
        # What was sent goes into the block cache while the version is recorded (it is
        # content-addressed: right whatever the commit's outcome).
        keeping = asyncio.create_task(self._keep_blocks(snap, upload, reuse))
        try:
            async with self.tree.names:
                landed = await self._land(staged, node_id, snap, reuse, upload, message)
        finally:
            await keeping
        if landed is None:
            return None
        path, outcome, committed = landed
        report = self._report(path, outcome, upload, committed, message)
        waited = False
        if committed:
            self._count_commit(upload, outcome)
            recorded = self._recorded.get(node_id)
            if recorded is not None and not recorded.done():
                recorded.set_result((gen, report))
                waited = recorded in self._awaited
        # keep-both puts our bytes in a new sibling node; a rename elsewhere only moves us.
        landed_elsewhere = outcome.file_id != node_id and outcome.path != path
        self._rebase(staged, outcome, gen, landed_elsewhere)
        if committed:
            for listener in self.on_commit:
                listener(node_id, outcome, upload)
        self.last[outcome.file_id] = report
        if waited:
            # The loop's turns for the save waiting for this version to take the report
            # (through the shield it waits in) and answer before the bookkeeping below,
            # which it does not need: what it may look at next (the file's version and
            # tier, the copy's state) is up to date already.
            for _ in range(_SAVE_TURNS):
                await asyncio.sleep(0)
        await self._journal_outcome(staged, landed_elsewhere)
        if release is not None:
            release()
        if staged.writers == 0:
            self._after_last_close(staged, landed_elsewhere, message)
        return report

    async def _land(
        self,
        staged: StagedFile,
        node_id: int,
        snap: Path,
        reuse: dict[int, Extent],
        upload: UploadResult,
        message: str,
    ) -> tuple[str, CommitOutcome, bool] | None:
        """Record the uploaded snapshot where the file is now (the caller holds the tree's
        name lock): its path, the outcome and whether a version was recorded; None when
        the copy was unlinked meanwhile."""
        if staged.orphan:
            # Unlinked or replaced here meanwhile: it is not part of the tree.
            if staged.writers == 0:
                self.staging.drop(staged)
            return None
        # Where the file was when last seen here: a commit by id lands where it is now
        # (moved elsewhere meanwhile), which its outcome names; the path is used only
        # if the file is gone (deleted elsewhere: it lands where it was, nothing lost).
        path = staged.path
        if staged.recovered and await self._unchanged(staged, upload):
            return path, CommitOutcome(path, node_id, staged.base_version or 0), False
        try:
            outcome = await self._record(staged, path, upload, snap, reuse, message)
        except ConflictError as exc:
            staged.rejected = True
            self.figures.conflicts += 1
            self._error(str(exc))
            raise
        if outcome.file_id == node_id:
            path = staged.path = outcome.path
        return path, outcome, True

    def _count_commit(self, upload: UploadResult, outcome: CommitOutcome) -> None:
        self.figures.commits += 1
        self.figures.bytes_uploaded += upload.bytes_uploaded
        if outcome.conflict:
            self.figures.conflicts += 1

    def _rebase(
        self, staged: StagedFile, outcome: CommitOutcome, gen: int, landed_elsewhere: bool
    ) -> None:
        """Base the copy on what the commit left as its head; clean unless it changed
        during the commit (those writes are not in this version)."""
        if landed_elsewhere:
            # keep-both: our bytes are safe in a sibling; this name follows the other
            # writer's head from now on.
            staged.base_version = outcome.previous_head
        else:
            staged.path = outcome.path
            # (A file deleted elsewhere meanwhile is a new node now; its base is that.)
            staged.base_version = outcome.version
        if staged.gen == gen:
            staged.dirty = False
            staged.recovered = False

    async def _journal_outcome(self, staged: StagedFile, landed_elsewhere: bool) -> None:
        """Journal the copy's new base: a copy with changes still to commit gets it in
        its entry; a clean one loses its entry, since every byte of it is in the version
        (a restart after a power cut cannot bring it back as a change; the next change
        writes the entry again)."""
        if self.staging.get(staged.node_id) is not staged or self._spent(staged, landed_elsewhere):
            return
        if staged.dirty:
            self.staging.write_journal(staged)
        elif self.staging.forget_entry(staged):
            await asyncio.to_thread(self.staging.sync_root)

    def _report(
        self,
        path: str,
        outcome: CommitOutcome,
        upload: UploadResult,
        committed: bool,
        message: str,
    ) -> CommitReport:
        return CommitReport(
            path=self.tree.to_mount(path) or path,
            version=outcome.version,
            size=upload.size,
            bytes_uploaded=upload.bytes_uploaded if committed else 0,
            chunks_total=upload.chunks_total,
            chunks_new=upload.chunks_new if committed else 0,
            conflict=outcome.conflict,
            committed=committed,
            landed=self.tree.to_mount(outcome.path) or outcome.path,
            message=message,
        )

    @staticmethod
    def _spent(staged: StagedFile, landed_elsewhere: bool) -> bool:
        """Whether the commit just recorded leaves the copy with nothing to do: nobody
        has it open, no change waits for it, and it holds nothing uncommitted (it is
        dropped at once, so its journal entry is not written again first)."""
        if staged.writers or staged.waiting:
            # A change that waited for this commit to read the copy goes on in it, and
            # is committed when it is done.
            return False
        return not staged.dirty or landed_elsewhere

    def _after_last_close(self, staged: StagedFile, landed_elsewhere: bool, message: str) -> None:
        """A copy nobody has open: drop it when done with, else commit it again."""
        if staged.waiting:
            return
        if self._spent(staged, landed_elsewhere):
            self.staging.drop(staged)
        else:
            # Changed again while this commit ran, and closed since.
            self.schedule_on(CommitOn.CLOSE, staged.node_id, message)

    def _all_kept(self, reuse: dict[int, Extent], size: int) -> UploadResult | None:
        """The upload of a copy ``size`` bytes long whose every byte ``reuse`` keeps (an
        edit whose new bytes went ahead on its fsync): no bytes to read, only the
        chunks to hold. None when some bytes must be read and sent."""
        if self.drive.tiers is not None:
            return None
        kept = _tiling(reuse, size)
        return self.early.count_in(self.drive.uploader.keep(kept)) if kept else None

    async def _upload(
        self, snap: Path, reuse: dict[int, Extent], path: str | None = None
    ) -> UploadResult:
        kept = self._all_kept(reuse, os.stat(snap).st_size)
        if kept is not None:
            return kept
        source = await asyncio.to_thread(open, snap, "rb")
        try:
            # The path lets a temporary file's chunks stay in the storage pods.
            upload = await self.drive.upload(source, reuse=reuse, path=path)
        finally:
            source.close()
        return self.early.count_in(upload)

    async def _record(
        self,
        staged: StagedFile,
        path: str,
        upload: UploadResult,
        snap: Path,
        reuse: dict[int, Extent],
        message: str,
    ) -> CommitOutcome:
        for attempt in range(2):
            try:
                return await self.drive.commit(
                    path,
                    upload,
                    staged.base_version,
                    message,
                    mode=staged.mode,
                    mtime_ns=staged.mtime_ns,
                    # By id: a rename on another machine moves where this version lands.
                    file_id=staged.node_id,
                )
            except ChunkMissing:
                # GC took a chunk the upload found stored; send the bytes again once.
                if attempt:
                    raise
                upload = await self._upload(snap, reuse, path)
        raise AssertionError("unreachable")

    async def _unchanged(self, staged: StagedFile, upload: UploadResult) -> bool:
        """A copy found after a restart that holds exactly its base version."""
        if staged.base_version is None:
            return False
        node = await self.drive.meta.get_node(staged.node_id)
        if node is None or node.deleted_ns is not None or node.head_version != staged.base_version:
            return False
        _, extents = await self.drive.meta.version(node.id, staged.base_version)
        return extents == upload.extents

    def _keep_sent_ahead(
        self, staged: StagedFile, extent: Extent, data: bytes | memoryview
    ) -> None:
        """The piece an fsync sends ahead (an edit, a few MiB at most) goes into the
        block cache from the very bytes sent, off the commit's path: the commit keeps
        it by reference, so reading the edit back once the copy is dropped would
        otherwise fetch it from the store. (Full chunks sent while a large file is
        written are not kept: see docs/ARCHITECTURE.md.)"""
        if len(data) > self.cache.capacity // 4:
            return  # as _keep_blocks: not what would flush the cache
        view = memoryview(data)
        blocks = [
            (extent.chunk_id, index, view[start : start + BLOCK_SIZE])
            for index, start in enumerate(range(0, len(data), BLOCK_SIZE))
            if not self.cache.has(extent.chunk_id, index)
        ]
        if blocks:
            self.cache.hold(blocks)
            task = asyncio.get_running_loop().create_task(self._put_blocks(blocks))
            self._keeping.add(task)
            task.add_done_callback(self._keeping.discard)

    async def _put_blocks(self, blocks: list[tuple[str, int, memoryview]]) -> None:
        """Write held blocks to the cache's disk once fsyncs pause (see _KEEP_AFTER)."""
        size = sum(len(data) for _, _, data in blocks)
        self._held += size
        latest = time.monotonic() + _KEEP_WITHIN
        try:
            while True:
                await asyncio.sleep(_KEEP_AFTER)
                now = time.monotonic()
                if (
                    now - self._sent_ahead_at >= _KEEP_AFTER
                    or now >= latest
                    or self._held > _KEEP_HELD
                ):
                    break
            await self.cache.put_many(blocks)
        except OSError as exc:
            log.warning("cannot keep sent blocks in the cache: %s", exc)
        finally:
            self._held -= size

    async def _keep_blocks(
        self, snap: Path, upload: UploadResult, reuse: dict[int, Extent]
    ) -> None:
        """Put what was just committed into the block cache: reading it back is local.
        (Kept chunks are holes in the snapshot; their blocks are not in it.)"""
        sent = [extent for extent in upload.extents if extent.offset not in reuse]
        # Nothing sent (an edit whose bytes went on its fsync): no thread hop for it.
        if not sent or upload.size > self.cache.capacity // 4:
            return

        def read_blocks() -> list[tuple[str, int, bytes]]:
            blocks = []
            with open(snap, "rb") as f:
                for extent in sent:
                    for index in range((extent.length + BLOCK_SIZE - 1) // BLOCK_SIZE):
                        if self.cache.has(extent.chunk_id, index):
                            continue
                        f.seek(extent.offset + index * BLOCK_SIZE)
                        size = min(BLOCK_SIZE, extent.length - index * BLOCK_SIZE)
                        blocks.append((extent.chunk_id, index, f.read(size)))
            return blocks

        try:
            await self.cache.put_many(await asyncio.to_thread(read_blocks))
        except OSError as exc:
            log.warning("cannot keep committed blocks in the cache: %s", exc)

    # -- explicit saves --------------------------------------------------------------------

    async def save(self, drive_path: str, message: str) -> list[CommitReport]:
        """Commit every staged file at or under ``drive_path`` now and wait for it."""
        reports = []
        prefix = drive_path.rstrip("/") + "/"
        for staged in list(self.staging.files.values()):
            if staged.orphan:
                continue
            try:
                path = await self.tree.path_of(staged.node_id)
            except PathNotFound:
                path = staged.path
            if path != drive_path and not path.startswith(prefix) and drive_path != "/":
                continue
            if not message:
                # A commit under way (a close's): once it records a version of the
                # copy as it is now, that is what the save asks for.
                early = await self._recorded_now(staged)
                if early is not None:
                    reports.append(early)
                    continue
            async with staged.commit_lock:
                if staged.failed and not staged.orphan:
                    raise WriteFailed(
                        f"{self.tree.to_mount(path) or path} is not committed: {staged.failed}"
                    )
                if staged.dirty and not staged.orphan:
                    report = await self._commit(staged, message)
                    if report is not None:
                        reports.append(report)
        return reports

    async def _recorded_now(self, staged: StagedFile) -> CommitReport | None:
        """The report of the commit of ``staged`` under way, once it records a version
        holding every change to the copy; None if none is under way or it does not."""
        recorded = self._recorded.get(staged.node_id)
        if recorded is None:
            return None
        self._awaited.add(recorded)
        try:
            taken = await asyncio.shield(recorded)
        finally:
            self._awaited.discard(recorded)
        if taken is None or staged.failed:
            return None
        gen, report = taken
        return report if gen == staged.gen else None

    async def settle(self) -> None:
        """Wait until every scheduled commit has run (and the pieces sent ahead of
        fsyncs are in the block cache)."""
        await self._queue.join()
        await asyncio.gather(*self._keeping)

    async def flush(self) -> None:
        """Commit everything pending (unmount); errors are logged, the copies stay."""
        await self._queue.join()
        for staged in list(self.staging.files.values()):
            if staged.dirty and not staged.orphan and not staged.rejected:
                try:
                    await self.commit(staged, ON_UNMOUNT)
                except MediadriveError as exc:
                    self._error(f"{staged.path}: {exc}; the local copy is kept")


# A chunk-sized region of a file in a fixed-chunk drive keeps every run of unchanged
# base bytes as a slice while it holds at most MAX_EXTENTS_PER_CHUNK extents. Past
# that, an edit takes in the short runs (under 1/LONG_RUN_PARTS of a chunk) beside
# what it wrote, up to 1/ABSORB_PARTS of a chunk on each side; past
# hard_extent_bound() extents, only the long runs stay.
MAX_EXTENTS_PER_CHUNK = 8
LONG_RUN_PARTS = 16
ABSORB_PARTS = 64


def hard_extent_bound(step: int) -> int:
    """The most extents a region of a ``step``-byte chunk holds: two a block (a block
    read touches a few objects at most), and never fewer than 2 * LONG_RUN_PARTS + 1."""
    return max(2 * LONG_RUN_PARTS, 2 * (step // BLOCK_SIZE)) + 1


def fixed_reusable(
    runs: Sequence[tuple[Extent, Sequence[int]]], size: int, step: int
) -> dict[int, tuple[Extent, Sequence[int]]]:
    """Which runs of unchanged base bytes a commit of a fixed-chunk file keeps, as
    slices, out of ``runs`` (in file order) for a copy ``size`` bytes long.

    The commit cuts everything else on the chunk boundaries (every ``step`` bytes),
    so each region between two boundaries holds its kept runs plus one new chunk per
    stretch between them. A region that would hold more than MAX_EXTENTS_PER_CHUNK
    extents lets go of the short runs (under a sixteenth of a chunk) that border a
    stretch, as long as what it lets go of beside one end of a stretch stays within
    a sixty-fourth of a chunk (1 MiB of a 64 MiB chunk): those bytes are sent again
    as part of the stretch, one extent instead of two, and an edit never sends more
    than that beside what it wrote. Should the region still hold more than
    :func:`hard_extent_bound` extents, it keeps only its long runs. That bounds how
    fragmented repeated small edits leave a file, and a long run is never sent
    again to do it.
    """
    by_region: dict[int, list[tuple[Extent, Sequence[int]]]] = {}
    for extent, positions in runs:
        end = extent.offset + extent.length
        region = extent.offset // step
        # A run past the end (cut by a truncate) or across a boundary is not kept.
        if end > size or (end - 1) // step != region:
            continue
        by_region.setdefault(region, []).append((extent, positions))
    out: dict[int, tuple[Extent, Sequence[int]]] = {}
    for region, kept in by_region.items():
        start, end = region * step, min((region + 1) * step, size)
        if extents_in_region(start, end, kept) > MAX_EXTENTS_PER_CHUNK:
            kept = _merge_short_runs(start, end, kept, step)
        for extent, positions in kept:
            out[extent.offset] = (extent, positions)
    return out


def fixed_stretches(kept: dict[int, Extent], size: int, step: int) -> list[tuple[int, int]]:
    """The pieces, (offset, length), that an upload of a fixed-chunk file ``size`` bytes
    long cuts around the ``kept`` extents: what ``upload.layout`` reads between them."""
    return [part for part in layout(kept, size, step) if not isinstance(part, Extent)]


def _merge_short_runs(
    start: int, end: int, kept: list[tuple[Extent, Sequence[int]]], step: int
) -> list[tuple[Extent, Sequence[int]]]:
    """The runs of a region with too many extents that it still keeps (see
    :func:`fixed_reusable`): of each group of touching runs, all but the short ones at
    an end that new bytes border, within the budget of each end (a short run between
    two kept ones is an extent either way)."""

    def short(run: tuple[Extent, Sequence[int]]) -> bool:
        return run[0].length * LONG_RUN_PARTS < step

    budget = step // ABSORB_PARTS
    groups: list[list[tuple[Extent, Sequence[int]]]] = []
    for run in kept:
        previous = groups[-1][-1][0] if groups else None
        if previous is not None and previous.offset + previous.length == run[0].offset:
            groups[-1].append(run)
        else:
            groups.append([run])

    def let_go(from_new_bytes: Iterable[tuple[Extent, Sequence[int]]]) -> int:
        """How many runs, from the new bytes outwards, fit in one end's budget."""
        count = taken = 0
        for run in from_new_bytes:
            if not short(run) or taken + run[0].length > budget:
                break
            taken += run[0].length
            count += 1
        return count

    runs: list[tuple[Extent, Sequence[int]]] = []
    for group in groups:
        lo, hi = 0, len(group)
        if group[0][0].offset > start:
            lo = let_go(group)
        if group[-1][0].offset + group[-1][0].length < end:
            hi -= let_go(reversed(group[lo:]))
        runs.extend(group[lo:hi])
    if extents_in_region(start, end, runs) > hard_extent_bound(step):
        runs = [run for run in runs if not short(run)]
    return runs


def extents_in_region(start: int, end: int, kept: Sequence[tuple[Extent, Sequence[int]]]) -> int:
    """Extents of the region ``start``..``end``: the kept ones and a new chunk for
    each stretch between them."""
    count = 0
    position = start
    for extent, _ in kept:
        if extent.offset > position:
            count += 1
        count += 1
        position = extent.offset + extent.length
    return count + (1 if position < end else 0)


def _ranges(reuse: dict[int, tuple[Extent, Sequence[int]]]) -> list[tuple[int, int]]:
    """The file ranges (start, end) that reused extents cover, sorted."""
    return sorted((extent.offset, extent.offset + extent.length) for extent, _ in reuse.values())


def _tiling(kept: dict[int, Extent], size: int) -> list[Extent] | None:
    """The ``kept`` extents in file order when they cover ``0..size`` end to end."""
    extents = [kept[offset] for offset in sorted(kept)]
    position = 0
    for extent in extents:
        if extent.offset != position:
            return None
        position += extent.length
    return extents if position == size else None


def _disjoint(extra: dict[int, Extent], kept: dict[int, Extent]) -> dict[int, Extent]:
    """The extents of ``extra`` that overlap none of ``kept``."""
    spans = sorted((e.offset, e.offset + e.length) for e in kept.values())
    return {
        offset: extent
        for offset, extent in extra.items()
        if not any(start < offset + extent.length and offset < end for start, end in spans)
    }
