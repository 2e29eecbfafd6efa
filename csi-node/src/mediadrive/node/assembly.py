"""A mount's parts, built from its options: the drive, block cache, staging, write-back
engine, tree, VFS and event follower. The agent puts a FUSE session in front of them;
tests drive the VFS in process (with :class:`~.vfs.NoKernel`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from mediadrive.core import private
from mediadrive.core.blob.pod import PodLocation
from mediadrive.core.drive import Drive
from mediadrive.core.errors import NotADirectory

from . import passthrough
from .cache import BlockCache
from .client import MountError
from .follower import Follower
from .options import MountOptions
from .publisher import Publisher
from .relay import RelaySource
from .staging import StagedFile, Staging
from .tree import Tree
from .vfs import VFS, Kernel
from .writeback import Writeback

log = logging.getLogger(__name__)

Cleanup = Callable[[], Awaitable[None] | None]


@dataclass
class MountParts:
    options: MountOptions
    drive: Drive
    tree: Tree
    cache: BlockCache
    staging: Staging
    writeback: Writeback
    vfs: VFS
    follower: Follower
    views: passthrough.Views | None
    # Staged copies found from before the last stop: committed once the mount is live.
    recovered: list[StagedFile]
    cleanups: list[Cleanup] = field(default_factory=list)
    publisher: Publisher | None = None

    def start(self) -> None:
        """Start the background work: cache index flushes, commits and the publish policy
        (not the follower)."""
        self.cache.start()
        self.writeback.start()
        if self.publisher is not None:
            self.publisher.start()

    async def close(self) -> None:
        """Commit what is pending and release everything, in reverse order of opening."""
        with contextlib.suppress(Exception):
            await self.follower.stop()
        if self.publisher is not None:
            await self.publisher.stop()
        await self.writeback.flush()
        await self.writeback.stop()
        await release(self.cleanups)


async def release(cleanups: list[Cleanup]) -> None:
    for cleanup in reversed(cleanups):
        try:
            result = cleanup()
            if result is not None:
                await result
        except Exception:
            log.exception("cleanup failed")
    cleanups.clear()


async def open_parts(
    options: MountOptions, kernel: Kernel, cleanups: list[Cleanup] | None = None
) -> MountParts:
    """Open the drive and build every part; on failure what was opened is in ``cleanups``
    (released here when the caller gave none)."""
    owned = cleanups is None
    steps: list[Cleanup] = [] if cleanups is None else cleanups
    try:
        return await _open(options, kernel, steps)
    except BaseException:
        if owned:
            await release(steps)
        raise


async def _open(options: MountOptions, kernel: Kernel, cleanups: list[Cleanup]) -> MountParts:
    drive = await Drive.open_ref(options.drive_ref(), identity=options.identity())
    cleanups.append(drive.close)
    options = options.with_policy(drive.settings.tiers)
    root = await drive.meta.resolve(options.subdir)
    if root is None:
        raise MountError(f"--subdir {options.subdir} does not exist in drive {options.drive}")
    if not root.is_dir:
        raise NotADirectory(f"--subdir {options.subdir} is not a folder")
    cache_dir = options.cache_dir
    private.make_dir(cache_dir, tighten=True)
    staging = Staging(cache_dir / "staging", write_behind=not options.commit_on.on_fsync)
    recovered = staging.open()
    cleanups.append(staging.close)
    cache = BlockCache(
        cache_dir,
        options.cache_size,
        drive.read_block,
        fetch_run=drive.read_block_views,
        check=drive.check_block,
    )
    cache.open()
    cleanups.append(cache.close)
    tree = Tree(drive.meta, root, options.subdir)
    views = None
    if options.read_only and options.passthrough and passthrough.supported():
        # Views of cached files take up to a quarter of the cache's size beside it.
        views = passthrough.Views(
            cache_dir / "views", options.cache_size // 4, cache, drive.block_digests
        )
        views.start()
        cleanups.append(views.close)
    writeback = Writeback(drive, tree, staging, cache, options)
    vfs = VFS(drive, tree, cache, staging, writeback, options, kernel, views)
    follower = Follower(vfs, options.follow_interval, _relay(options))
    publisher = Publisher(drive) if not options.read_only else None
    return MountParts(
        options,
        drive,
        tree,
        cache,
        staging,
        writeback,
        vfs,
        follower,
        views,
        recovered,
        cleanups,
        publisher,
    )


def _relay(options: MountOptions) -> RelaySource | None:
    """Where the mount reads its drive's events: the relay it was given, else its
    region's first storage pod (which answers 404 when it does not relay this drive,
    and the mount then polls the store)."""
    if options.relay_url is not None:
        return RelaySource(options.relay_url, options.drive, options.relay_token_file)
    if options.pod_url is None or not PodLocation.handles(options.pod_url):
        return None
    pods = PodLocation.parse(options.pod_url)
    token = Path(pods.token_file) if pods.token_file else None
    return RelaySource(pods.members[0], options.drive, token)
