"""A drive: the folder tree, versions and chunks, on one metadata and one blob store.

Writing a file is two steps. :meth:`Drive.upload` chunks and hashes the bytes and
stores the chunks the drive lacks; :meth:`Drive.commit` then records a version that
points at them. A version therefore never names a chunk that is not durably stored,
and an upload killed half-way leaves no version behind, only chunks for GC.

A drive is opened from its store URLs and an identity alone (no home folder, no
environment): the CLI, the node agent, the operator and the CSI service all do so.
The work is done by parts it composes: :class:`~.upload.Uploader`,
:class:`~.reading.BlockReader` and :class:`~.gc.Collector`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import stat as stat_mode
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import paths
from .blob import BlobStore, check_store_url, open_store
from .blob.tiers import CLOUD, PublishReport, TieredStore, holding_for, pod_region, recording
from .config import DriveRef, DriveSettings, check_drive_name
from .errors import (
    AlreadyExists,
    ChunkMissing,
    InvalidPath,
    IsADirectory,
    NotADirectory,
    NotPublished,
    PathNotFound,
    StoreUnavailable,
    VersionNotFound,
)
from .gc import Collector, GcReport
from .identity import Identity
from .meta import (
    CommitOutcome,
    CommitRequest,
    DeletedEntry,
    Event,
    Extent,
    MetaStore,
    Node,
    NodeKind,
    VersionInfo,
    connect,
)
from .reading import BlockReader, VersionReader
from .upload import Progress, Uploader, UploadResult

__all__ = [
    "CommitResult",
    "Drive",
    "DriveStats",
    "GcReport",
    "Progress",
    "PublishReport",
    "PublishResult",
    "UploadResult",
    "VersionReader",
]

log = logging.getLogger(__name__)

# Called as each file is published: (files done, files to publish, the file's path).
PublishProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class CommitResult:
    path: str
    file_id: int
    version: int
    size: int
    bytes_uploaded: int
    chunks_total: int
    chunks_new: int
    conflict: bool

    @classmethod
    def of(cls, outcome: CommitOutcome, upload: UploadResult) -> CommitResult:
        return cls(
            outcome.path,
            outcome.file_id,
            outcome.version,
            upload.size,
            upload.bytes_uploaded,
            upload.chunks_total,
            upload.chunks_new,
            outcome.conflict,
        )


@dataclass(frozen=True)
class PublishResult:
    """What :meth:`Drive.publish` did."""

    files: int = 0
    versions: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    # Chunks the cloud already had (nothing sent for them).
    chunks_present: int = 0
    # Files left in the pods because they match the temporary globs.
    temporary_skipped: int = 0
    paths: list[str] = dataclasses.field(default_factory=list)
    # Files under a published folder held in another region's pods (publish them there).
    held_elsewhere: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DriveStats:
    files_bytes: int
    stored_bytes: int
    stored_chunks: int

    @property
    def dedup_ratio(self) -> float:
        return self.files_bytes / self.stored_bytes if self.stored_bytes else 1.0


def open_blobs(ref: DriveRef, settings: DriveSettings, *, create: bool = False) -> BlobStore:
    """The drive's chunk store: the cloud store, behind this machine's storage pods when
    the ref names some (the tier chain, following the drive's tier rules)."""
    if ref.pod_url is None:
        return open_store(ref.store_url, create=create)
    # Checked first: a bad pod URL must not leave the cloud store opened.
    check_store_url(ref.pod_url)
    return TieredStore(
        open_store(ref.store_url, create=create),
        # The pods are this region's tier of the drive, not a bucket a typo could
        # name: a pod that does not know the drive yet (a new drive, a new pod) makes it.
        open_store(ref.pod_url, create=True),
        settings.tiers,
        region=ref.region,
    )


class Drive:
    def __init__(
        self,
        ref: DriveRef,
        settings: DriveSettings,
        meta: MetaStore,
        blobs: BlobStore,
        identity: Identity | None = None,
    ) -> None:
        self.ref = ref
        self.name = ref.name
        self.settings = settings
        self.meta = meta
        self.blobs = blobs
        self.identity = identity or Identity.local()
        self.blocks = BlockReader(meta, blobs, ref.name)
        self.uploader = Uploader(meta, blobs, settings)

    @property
    def tiers(self) -> TieredStore | None:
        """The tier chain, when this machine has storage pods in front of the cloud."""
        return self.blobs if isinstance(self.blobs, TieredStore) else None

    @property
    def author(self) -> str:
        return self.identity.author

    @property
    def host(self) -> str:
        return self.identity.host

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        name: str,
        meta_url: str,
        store_url: str,
        settings: DriveSettings | None = None,
        *,
        identity: Identity | None = None,
        create_store: bool = False,
        pod_url: str | None = None,
        region: str | None = None,
    ) -> Drive:
        """Make a new drive in these stores (``pod_url``: this machine's storage pods).

        A missing bucket is made only with ``create_store``: a typo in its name must
        not make a new one. A local store's missing folder is made either way.
        """
        ref = DriveRef(
            name=check_drive_name(name),
            meta_url=meta_url,
            store_url=store_url,
            pod_url=pod_url,
            region=region,
        )
        settings = settings or DriveSettings()
        meta = connect(meta_url, name)
        blobs: BlobStore | None = None
        try:
            local = store_url.startswith("file:")
            blobs = open_blobs(ref, settings, create=create_store or local)
            await blobs.check()
            await meta.create_drive(settings)
        except BaseException:
            await meta.close()
            if blobs is not None:
                await blobs.close()
            raise
        return cls(ref, settings, meta, blobs, identity)

    @classmethod
    async def open(
        cls,
        name: str,
        meta_url: str,
        store_url: str,
        *,
        identity: Identity | None = None,
        pod_url: str | None = None,
        region: str | None = None,
    ) -> Drive:
        """An existing drive, from its store URLs alone (and this machine's pods)."""
        return await cls.open_ref(
            DriveRef(
                name=check_drive_name(name),
                meta_url=meta_url,
                store_url=store_url,
                pod_url=pod_url,
                region=region,
            ),
            identity=identity,
        )

    @classmethod
    async def open_ref(cls, ref: DriveRef, *, identity: Identity | None = None) -> Drive:
        """An existing drive; with ``ref.pod_url`` its chunks go through the tier chain."""
        meta = connect(ref.meta_url, ref.name)
        blobs: BlobStore | None = None
        try:
            settings = await meta.open_drive()
            blobs = open_blobs(ref, settings)
            await blobs.check()
        except BaseException:
            await meta.close()
            if blobs is not None:
                await blobs.close()
            raise
        return cls(ref, settings, meta, blobs, identity)

    async def check_stores(self, tries: int = 200) -> None:
        """StoreUnavailable unless the chunk store holds a chunk the metadata names.

        Catches a drive attached with the wrong bucket or prefix before its reads
        fail. Looks at the first file whose head version is in the cloud, walking at
        most ``tries`` folders (versions held in a region's storage pods are not in
        the cloud yet); a drive with no such file yet passes.
        """
        chunk = await self._some_chunk(tries)
        if chunk is not None and not await self.blobs.exists(chunk):
            raise StoreUnavailable(
                f"the chunk store {self.ref.store_url} does not hold drive {self.name!r}: "
                f"chunk {chunk} of its metadata is not there (wrong bucket or prefix?)"
            )

    async def _some_chunk(self, tries: int) -> str | None:
        folders = [(await self.stat("/")).id]
        while folders and tries > 0:
            tries -= 1
            for node in await self.meta.list_dir(folders.pop(0)):
                if node.is_dir:
                    folders.append(node.id)
                elif node.kind is NodeKind.FILE and node.head_version is not None:
                    info, extents = await self.meta.version(node.id, node.head_version)
                    if extents and info.tier == CLOUD:
                        return extents[0].chunk_id
        return None

    async def close(self) -> None:
        await self.meta.close()
        await self.blobs.close()

    async def __aenter__(self) -> Drive:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the tree ---------------------------------------------------------------------------

    async def stat(self, path: str) -> Node:
        path = paths.normalize(path)
        node = await self.meta.resolve(path)
        if node is None:
            raise PathNotFound(f"{self.name}:{path} does not exist")
        return node

    async def _folder(self, path: str) -> Node:
        node = await self.stat(path)
        if not node.is_dir:
            raise NotADirectory(f"{self.name}:{path} is not a folder")
        return node

    async def listdir(self, path: str = "/") -> list[Node]:
        return await self.meta.list_dir((await self._folder(path)).id)

    async def mkdir(self, path: str, parents: bool = False, mode: int = 0o755) -> Node:
        path = paths.normalize(path)
        parent_path, name = paths.split(path)
        if parents and parent_path != "/":
            try:
                await self._folder(parent_path)
            except PathNotFound:
                await self.mkdir(parent_path, parents=True, mode=mode)
        parent = await self._folder(parent_path)
        try:
            return await self.meta.make_node(
                parent.id, parent_path, name, NodeKind.DIR, mode, self.author
            )
        except AlreadyExists:
            existing = await self.stat(path)
            if parents and existing.is_dir:
                return existing
            raise

    async def move(self, src: str, dst: str) -> Node:
        src, dst = paths.normalize(src), paths.normalize(dst)
        src_parent, _ = paths.split(src)
        with contextlib.suppress(PathNotFound):
            if (await self.stat(dst)).is_dir:
                dst = paths.normalize(f"{dst}/{paths.split(src)[1]}")
        dst_parent, _ = paths.split(dst)
        return await self.meta.rename(
            (await self._folder(src_parent)).id,
            src,
            (await self._folder(dst_parent)).id,
            dst,
            self.author,
        )

    async def remove(self, path: str, recursive: bool = False) -> Node:
        path = paths.normalize(path)
        parent_path, name = paths.split(path)
        parent = await self._folder(parent_path)
        return await self.meta.remove(parent.id, parent_path, name, self.author, recursive)

    # -- writing ------------------------------------------------------------------------------

    async def upload(
        self,
        source: BinaryIO,
        progress: Progress | None = None,
        reuse: Mapping[int, Extent] | None = None,
        path: str | None = None,
    ) -> UploadResult:
        """Chunk, hash and store ``source`` (see :meth:`Uploader.upload`); the result
        names the tier its chunks went to. ``path``, the drive path the upload is for,
        keeps a temporary file's chunks in the pods (with the policy's TTL)."""
        tiers = self.tiers
        if tiers is None:
            return await self.uploader.upload(source, progress, reuse)
        rules = self.settings.tiers
        temporary = path is not None and rules.is_temporary(paths.normalize(path))
        with recording() as record, holding_for(rules.temporary.ttl if temporary else None):
            result = await self.uploader.upload(source, progress, reuse)
        tier = await tiers.write_tier(record)
        if tier == "cloud":
            # A chunk found already stored may be held in the pods only (another file's,
            # not published yet): a cloud version must not name it, so it is copied.
            await tiers.copy_to_cloud(
                [e.chunk_id for e in result.extents if e.chunk_id not in record.ids]
            )
        return dataclasses.replace(result, tier=tier)

    async def commit(
        self,
        path: str,
        upload: UploadResult,
        base_version: int | None,
        message: str = "",
        mode: int = 0o644,
        mtime_ns: int | None = None,
        origin: str = "commit",
        file_id: int | None = None,
        revive: bool = False,
    ) -> CommitOutcome:
        path = paths.normalize(path)
        parent_path, name = paths.split(path)
        # A file known by id lands where it is now: its folder is looked up by the
        # commit itself, and only if the file is gone.
        parent_id = None if file_id is not None else (await self._folder(parent_path)).id
        request = CommitRequest(
            parent_id=parent_id,
            parent_path=parent_path,
            name=name,
            base_version=base_version,
            extents=upload.extents,
            size=upload.size,
            mode=stat_mode.S_IMODE(mode),
            mtime_ns=time.time_ns() if mtime_ns is None else mtime_ns,
            author=self.author,
            message=message,
            host=self.host,
            origin=origin,
            hold_token=upload.token,
            file_id=file_id,
            revive=revive,
            tier=upload.tier,
            landing=tuple(landing.chunk for landing in upload.landing),
        )
        landed: asyncio.Future[Any] | None = None
        if upload.landing:
            puts = [landing.put for landing in upload.landing]
            # One put (an edit's piece) is waited for as it is: a gather would be a turn
            # of the loop more between its answer and the commit.
            landed = puts[0] if len(puts) == 1 else asyncio.gather(*puts)
            # Its puts' own waiters see a failure; a commit that gave up early does not.
            landed.add_done_callback(lambda done: done.cancelled() or done.exception())
        outcome = await self.meta.commit(request, self.settings.conflict, landed)
        if self.settings.tiers.publish_on_save and pod_region(upload.tier) and not outcome.rejected:
            await self._publish_after_commit(outcome)
        return outcome

    async def _publish_after_commit(self, outcome: CommitOutcome) -> None:
        """The ``on-save`` policy: a version reaches the cloud as soon as it is committed.
        A failure leaves it held in the pods (publish it later); it is logged."""
        if self.settings.tiers.is_temporary(outcome.path):
            return
        try:
            await self.publish_version(outcome.file_id, outcome.version, outcome.path)
        except (StoreUnavailable, NotPublished, ChunkMissing) as exc:
            log.warning(
                "%s:%s version %d stays in the storage pods: publish failed: %s",
                self.name,
                outcome.path,
                outcome.version,
                exc,
            )

    async def head_version(self, path: str) -> int | None:
        """The version a writer starts from: ``None`` if the file does not exist yet."""
        try:
            node = await self.stat(path)
        except PathNotFound:
            return None
        if node.is_dir:
            raise IsADirectory(f"{self.name}:{paths.normalize(path)} is a folder")
        return node.head_version

    async def write_file(
        self,
        path: str,
        source: BinaryIO,
        message: str = "",
        mode: int = 0o644,
        mtime_ns: int | None = None,
        progress: Progress | None = None,
    ) -> CommitResult:
        """Upload ``source`` and commit it as the next version of ``path``."""
        base = await self.head_version(path)
        await self._folder(paths.split(paths.normalize(path))[0])
        start = source.tell() if source.seekable() else None
        for attempt in range(2):
            upload = await self.upload(source, progress, path=path)
            try:
                outcome = await self.commit(path, upload, base, message, mode, mtime_ns)
            except BaseException as exc:
                # No commit will name these chunks: GC may have them (see gc's grace).
                with contextlib.suppress(Exception):
                    ids = sorted({e.chunk_id for e in upload.extents})
                    await self.uploader.release(ids, upload.token)
                # GC took a chunk this upload found already stored; send it again once.
                if not isinstance(exc, ChunkMissing) or attempt or start is None:
                    raise
                source.seek(start)
                continue
            return CommitResult.of(outcome, upload)
        raise AssertionError("unreachable")

    # -- reading -----------------------------------------------------------------------------

    async def read_block(self, chunk: str, index: int) -> bytes:
        """Block ``index`` of a chunk, verified (see :class:`BlockReader`)."""
        return await self.blocks.read_block(chunk, index)

    async def read_blocks(self, chunk: str, first: int, count: int) -> list[bytes]:
        return await self.blocks.read_blocks(chunk, first, count)

    async def read_block_views(self, chunk: str, first: int, count: int) -> list[memoryview]:
        return await self.blocks.read_block_views(chunk, first, count)

    async def check_block(self, chunk: str, index: int, data: bytes) -> bool:
        return await self.blocks.check_block(chunk, index, data)

    async def block_digests(self, chunk: str) -> bytes | None:
        return await self.blocks.digests(chunk)

    # -- the time machine ----------------------------------------------------------------------

    async def history(self, path: str) -> list[Node]:
        """Every file, symlink or folder that lived at ``path``: the live one first, then
        deleted ones, most recently deleted first (see :meth:`MetaStore.history`)."""
        return await self.meta.history(paths.normalize(path))

    async def deleted(self, path: str = "/") -> list[DeletedEntry]:
        """What was removed at or under the folder ``path`` (a trash view)."""
        path = paths.normalize(path)
        found = await self.meta.history(path)
        if not found:
            raise PathNotFound(f"{self.name}:{path} does not exist")
        if not any(n.is_dir for n in found):
            raise NotADirectory(f"{self.name}:{path} is not a folder")
        return await self.meta.deleted_under(path)

    async def find_file(self, path: str, file_id: int | None = None) -> Node:
        """The file at ``path``: the live one, else the one deleted last (also inside a
        removed folder); or, given ``file_id``, that one of the files that lived there."""
        path = paths.normalize(path)
        found = await self.meta.history(path)
        if file_id is not None:
            found = [n for n in found if n.id == file_id]
            if not found:
                raise PathNotFound(f"{self.name}:{path} never held a file with id {file_id}")
        if not found:
            raise PathNotFound(f"{self.name}:{path} does not exist")
        node = found[0]
        if node.is_dir:
            raise IsADirectory(f"{self.name}:{path} is a folder")
        return node

    async def versions(self, path: str, file_id: int | None = None) -> list[VersionInfo]:
        return await self.meta.versions((await self.find_file(path, file_id)).id)

    async def reader(
        self, path: str, version: int | None = None, file_id: int | None = None
    ) -> VersionReader:
        return await self._reader(await self.find_file(path, file_id), path, version)

    async def _reader(self, node: Node, path: str, version: int | None) -> VersionReader:
        number = node.head_version if version is None else version
        if number is None:
            if node.kind is NodeKind.FILE:
                empty = VersionInfo(
                    node.id, 0, 0, node.mode, node.mtime_ns, 0, "", "", None, "", ""
                )
                return VersionReader(self.blobs, self.read_block, empty, [])
            raise VersionNotFound(f"{self.name}:{paths.normalize(path)} has no versions")
        try:
            info, extents = await self.meta.version(node.id, number)
        except VersionNotFound:
            raise VersionNotFound(
                f"{self.name}:{paths.normalize(path)} has no version {number}"
            ) from None
        await self._check_reachable(path, info, extents)
        return VersionReader(
            self.blobs, self.read_block, info, extents, on_damage=self.blocks.mark_damaged
        )

    async def read_to(
        self,
        path: str,
        dest: BinaryIO,
        version: int | None = None,
        progress: Progress | None = None,
    ) -> VersionInfo:
        reader = await self.reader(path, version)
        async for data in reader.chunks():
            await asyncio.to_thread(dest.write, data)
            if progress:
                progress(len(data))
        return reader.info

    async def copy_version(
        self, reader: VersionReader, path: str, message: str = "", origin: str = "commit"
    ) -> CommitResult:
        """Commit an existing version's chunks at ``path``: no byte is uploaded."""
        return await self._commit_version(
            reader, path, await self.head_version(path), message, origin
        )

    async def _commit_version(
        self,
        reader: VersionReader,
        path: str,
        base: int | None,
        message: str,
        origin: str,
        file_id: int | None = None,
        revive: bool = False,
    ) -> CommitResult:
        token = await self.uploader.claim_existing(reader.extents)
        upload = UploadResult(
            reader.extents, reader.size, 0, len(reader.extents), 0, token, reader.info.tier
        )
        outcome = await self.commit(
            path,
            upload,
            base,
            message,
            reader.info.mode,
            origin=origin,
            file_id=file_id,
            revive=revive,
        )
        return CommitResult.of(outcome, upload)

    async def restore(
        self,
        path: str,
        version: int,
        message: str = "",
        *,
        file_id: int | None = None,
        to: str | None = None,
    ) -> CommitResult:
        """A new head with the content of ``version``; history is never rewritten.

        A deleted file (``file_id`` picks one of those that lived at ``path``) comes
        back with its id, so its old versions stay its history: at ``path``, or at
        ``to`` when another file took its name; missing folders are made again.
        """
        path = paths.normalize(path)
        node = await self.find_file(path, file_id)
        reader = await self._reader(node, path, version)
        message = message or f"restore version {version}"
        if node.deleted_ns is None:
            if to is not None and paths.normalize(to) != path:
                raise InvalidPath(f"{self.name}:{path} is not deleted; it is restored in place")
            return await self.copy_version(reader, path, message, origin="restore")
        dest = paths.normalize(to) if to is not None else path
        with contextlib.suppress(PathNotFound):
            await self.stat(dest)
            raise AlreadyExists(
                f"{self.name}:{dest} is another file now; restore the deleted one to a free path"
            )
        parent = paths.split(dest)[0]
        if parent != "/":
            await self.mkdir(parent, parents=True)
        return await self._commit_version(
            reader, dest, node.head_version, message, "restore", file_id=node.id, revive=True
        )

    # -- tiers and publishing ----------------------------------------------------------------------

    async def _check_reachable(self, path: str, info: VersionInfo, extents: list[Extent]) -> None:
        """NotPublished for a version held in pods this machine does not use (another
        region's, or any when it has none) whose chunks it cannot reach anywhere."""
        region = pod_region(info.tier)
        if region is None or not extents:
            return
        tiers = self.tiers
        if tiers is not None:
            with contextlib.suppress(StoreUnavailable):
                if await tiers.region() == region:
                    return
        ids = list(dict.fromkeys(e.chunk_id for e in extents))
        for start in range(0, len(ids), 32):
            found = await asyncio.gather(*(self.blobs.exists(c) for c in ids[start : start + 32]))
            if not all(found):
                raise NotPublished(
                    f"{self.name}:{paths.normalize(path)} version {info.version} is held in "
                    f"the storage pods of region {region}; publish it there to read it here"
                )

    async def _my_region(self) -> str | None:
        """The region of this machine's pods; None without pods."""
        tiers = self.tiers
        return None if tiers is None else await tiers.region()

    def _publisher(self, path: str, region: str) -> TieredStore:
        """The tier chain that can publish a version held in ``region``'s pods."""
        tiers = self.tiers
        if tiers is None:
            raise NotPublished(
                f"{self.name}:{path} is held in the storage pods of region {region}; "
                "this machine uses no storage pod: publish it from that region"
            )
        return tiers

    async def publish_version(
        self, file_id: int, version: int, path: str, message: str = ""
    ) -> PublishReport:
        """Copy one pod-held version's chunks to the cloud, release them in the pods and
        record its tier as ``cloud`` (with a ``publish`` event)."""
        info, extents = await self.meta.version(file_id, version)
        region = pod_region(info.tier)
        if region is None:
            return PublishReport()
        tiers = self._publisher(path, region)
        mine = await tiers.region()
        if mine != region:
            raise NotPublished(
                f"{self.name}:{path} version {version} is held in the storage pods of region "
                f"{region}, not in this machine's ({mine}); publish it there"
            )
        report = await tiers.publish([e.chunk_id for e in extents])
        detail = dataclasses.asdict(report)
        await self.meta.set_version_tier(
            file_id, version, "cloud", path, self.author, message=message, region=region, **detail
        )
        return report

    async def _files_under(self, path: str) -> list[tuple[str, Node]]:
        node = await self.stat(path)
        if not node.is_dir:
            return [(paths.normalize(path), node)]
        found: list[tuple[str, Node]] = []
        folders = [(paths.normalize(path), node)]
        while folders:
            where, folder = folders.pop()
            for child in await self.meta.list_dir(folder.id):
                child_path = paths.normalize(f"{where}/{child.name}")
                if child.is_dir:
                    folders.append((child_path, child))
                elif child.kind is NodeKind.FILE and child.head_version is not None:
                    found.append((child_path, child))
        return sorted(found, key=lambda item: item[0])

    async def publish(
        self, path: str, message: str = "", progress: PublishProgress | None = None
    ) -> PublishResult:
        """Publish the head version of the file at ``path``, or of every file under the
        folder at ``path``, that is still held in the storage pods: its chunks the cloud
        lacks are sent, its tier becomes ``cloud``. Files matching the temporary globs
        are left in the pods."""
        rules = self.settings.tiers
        todo: list[tuple[str, Node, int]] = []
        skipped = 0
        elsewhere: list[str] = []
        folder = (await self.stat(path)).is_dir
        files = await self._files_under(path)
        mine = await self._my_region() if folder else None
        for file_path, node in files:
            assert node.head_version is not None
            info, _ = await self.meta.version(node.id, node.head_version)
            region = pod_region(info.tier)
            if region is None:
                continue
            if rules.is_temporary(file_path):
                skipped += 1
                continue
            if folder and region != mine:
                # A folder is published as far as this region can; a file asked for by
                # name fails with NotPublished instead.
                elsewhere.append(file_path)
                continue
            todo.append((file_path, node, node.head_version))
        total = PublishReport()
        for done, (file_path, node, version) in enumerate(todo):
            total += await self.publish_version(node.id, version, file_path, message)
            if progress:
                progress(done + 1, len(todo), file_path)
        return PublishResult(
            files=len(todo),
            versions=len(todo),
            chunks_sent=total.chunks_sent,
            bytes_sent=total.bytes_sent,
            chunks_present=total.chunks_present,
            temporary_skipped=skipped,
            paths=[p for p, _, _ in todo],
            held_elsewhere=elsewhere,
        )

    async def publish_due(self, now: float | None = None, limit: int = 1000) -> PublishResult:
        """The ``after DURATION`` policy: publish every version held in this machine's
        pods for longer than DURATION (old versions and deleted files' too; temporary
        files never). Nothing to do without pods or without such a policy."""
        after = self.settings.tiers.publish_after
        tiers = self.tiers
        if after is None or tiers is None:
            return PublishResult()
        cutoff = (time.time() if now is None else now) - after
        due = await self.meta.versions_in_tier(f"pod:{await tiers.region()}", cutoff, limit)
        total = PublishReport()
        files: set[int] = set()
        published: list[str] = []
        skipped = 0
        for held in due:
            if self.settings.tiers.is_temporary(held.path):
                skipped += 1
                continue
            info = held.info
            total += await self.publish_version(info.file_id, info.version, held.path)
            files.add(info.file_id)
            published.append(held.path)
        return PublishResult(
            files=len(files),
            versions=len(published),
            chunks_sent=total.chunks_sent,
            bytes_sent=total.bytes_sent,
            chunks_present=total.chunks_present,
            temporary_skipped=skipped,
            paths=sorted(set(published)),
        )

    # -- events, GC, figures ----------------------------------------------------------------------

    async def events(self, since: int = 0, follow: bool = False) -> AsyncIterator[Event]:
        if follow:
            async for event in self.meta.follow_events(since):
                yield event
            return
        while batch := await self.meta.events_after(since):
            for event in batch:
                yield event
            since = batch[-1].seq

    async def gc(self, grace: float = 3600.0) -> GcReport:
        """Prune versions retention lets go, then sweep chunks nothing references
        (see :class:`Collector`)."""
        return await Collector(self.meta, self.blobs, self.settings.retention, self.author).run(
            grace
        )

    async def stats(self) -> DriveStats:
        chunks, stored = await self.meta.chunk_stats()
        return DriveStats(await self.meta.logical_bytes(), stored, chunks)
