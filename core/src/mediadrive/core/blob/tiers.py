"""The tier chain: the region's storage pods in front of the cloud store.

:class:`TieredStore` wraps the cloud store (``inner``) and puts a
:class:`~.holding.HoldingStore` (the pods) in front of it, following the drive's
:class:`~mediadrive.core.config.TierRules`:

- writes go to the pods, *held* (never evicted) until published, or to the cloud
  (then a best-effort *cached* copy goes to the pods). With every pod down a write
  waits and retries for a bounded time, then raises StoreUnavailable naming the
  pods; or, if the rules say so, goes to the cloud. Nothing is dropped silently.
- reads try the pods, then the cloud (filling the pods when ``read_through``); with
  the pods down they go to the cloud.
- :meth:`TieredStore.publish` copies to the cloud what it lacks and releases the
  chunks in the pods.

Two context variables carry what a store call cannot: :func:`holding_for` makes the
chunks put inside it held with a TTL (a temporary file's), and :func:`recording`
collects where the chunks of an upload went, so a commit records its version's tier.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import heapq
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import cast

from ..config import TierRules
from ..credentials import redact_url
from ..errors import NotFound, StoreUnavailable
from . import BlobStore
from .holding import HoldingStore, is_holding
from .wrapper import WrappedStore

__all__ = [
    "PublishReport",
    "TieredStore",
    "WriteRecord",
    "holding_for",
    "pod_region",
    "recording",
]

log = logging.getLogger(__name__)

CLOUD = "cloud"
POD_PREFIX = "pod:"
# After a pod call fails, reads skip the pods for this long (no timeout per read).
POD_RETRY_AFTER = 5.0
# First pause between tries of a write while every pod is down; doubles up to the cap.
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 5.0
# Read-through copies filled in the background at once, at most.
MAX_FILLS = 8


def pod_region(tier: str) -> str | None:
    """``'pod:la'`` -> ``'la'``; None for a tier that is not a pod's."""
    return tier.removeprefix(POD_PREFIX) if tier.startswith(POD_PREFIX) else None


@dataclass
class WriteRecord:
    """Where the chunks put while it was recording went."""

    held: int = 0
    cloud: int = 0
    # Writes that went to the cloud because every pod was down.
    fell_back: int = 0
    # The chunks put.
    ids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class PublishReport:
    """What a publish sent to the cloud and what the cloud already had."""

    chunks_sent: int = 0
    bytes_sent: int = 0
    chunks_present: int = 0

    def __add__(self, other: PublishReport) -> PublishReport:
        return PublishReport(
            self.chunks_sent + other.chunks_sent,
            self.bytes_sent + other.bytes_sent,
            self.chunks_present + other.chunks_present,
        )


_HOLD_TTL: ContextVar[float | None] = ContextVar("mediadrive_hold_ttl", default=None)
_RECORD: ContextVar[WriteRecord | None] = ContextVar("mediadrive_write_record", default=None)


@contextlib.contextmanager
def holding_for(ttl: float | None) -> Iterator[None]:
    """Chunks put inside are held in the pods (whatever the write target) for ``ttl``
    seconds: a temporary file's, which never reach the cloud. None changes nothing."""
    token = _HOLD_TTL.set(ttl)
    try:
        yield
    finally:
        _HOLD_TTL.reset(token)


@contextlib.contextmanager
def recording() -> Iterator[WriteRecord]:
    """Count where the chunks put inside (tasks started inside included) went."""
    record = WriteRecord()
    token = _RECORD.set(record)
    try:
        yield record
    finally:
        _RECORD.reset(token)


def _note(chunk_id: str, **counts: int) -> None:
    record = _RECORD.get()
    if record is not None:
        record.ids.add(chunk_id)
        for name, n in counts.items():
            setattr(record, name, getattr(record, name) + n)


@dataclass
class _PodHealth:
    down_until: float = 0.0
    fills: set[asyncio.Task[None]] = field(default_factory=set)


class TieredStore(WrappedStore):
    """The cloud store (``inner``) with the storage pods (``pods``) in front."""

    def __init__(
        self,
        cloud: BlobStore,
        pods: BlobStore,
        rules: TierRules,
        *,
        region: str | None = None,
    ) -> None:
        if not is_holding(pods):
            raise TypeError(f"{pods.url} is not a store that holds chunks (a storage pod)")
        super().__init__(cloud)
        self.pods = pods
        self.holder = cast(HoldingStore, pods)
        self.rules = rules
        self._region = region
        self._health = _PodHealth()

    @property
    def cloud(self) -> BlobStore:
        return self.inner

    @property
    def target(self) -> str:
        """``pod`` or ``cloud``: where writes go."""
        return self.rules.target(has_pod=True)

    def pods_name(self) -> str:
        return redact_url(self.pods.url)

    async def region(self) -> str:
        """The pods' region: as configured on this machine, else as the pods say."""
        if self._region is None:
            self._region = await self.holder.region()
        return self._region

    async def write_tier(self, record: WriteRecord) -> str:
        """The tier of a version whose chunks were put as ``record`` says."""
        if record.held or (self.target == "pod" and not record.fell_back):
            return POD_PREFIX + await self.region()
        return CLOUD

    # -- writing --------------------------------------------------------------------------

    @property
    def signals_sent(self) -> bool:
        # Only what goes straight to the cloud store (held puts go to the pods).
        return self.target == CLOUD and self.inner.signals_sent

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        ttl = _HOLD_TTL.get()
        if ttl is None and self.target == CLOUD:
            await self.inner.put(chunk_id, data)
            _note(chunk_id, cloud=1)
            if self._pods_up():
                with contextlib.suppress(Exception):
                    await self.holder.put_cached(chunk_id, data)
            return
        await self._put_held(chunk_id, data, ttl)

    async def _put_held(self, chunk_id: str, data: bytes | memoryview, ttl: float | None) -> None:
        # A temporary file's chunks never go to the cloud, whatever the rules say.
        to_cloud = ttl is None and self.rules.when_pods_down == CLOUD
        deadline = time.monotonic() + (0.0 if to_cloud else self.rules.pods_down_wait)
        pause = FIRST_BACKOFF
        while True:
            try:
                await self.holder.put_held(chunk_id, data, ttl)
            except StoreUnavailable as exc:
                problem = exc
            else:
                _note(chunk_id, held=1)
                return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, MAX_BACKOFF)
        if to_cloud:
            log.warning(
                "storage pods %s are down (%s): chunk %s goes to the cloud",
                self.pods_name(),
                problem,
                chunk_id,
            )
            await self.inner.put(chunk_id, data)
            _note(chunk_id, cloud=1, fell_back=1)
            return
        raise StoreUnavailable(
            f"the storage pods {self.pods_name()} are down: waited "
            f"{self.rules.pods_down_wait:g}s to write chunk {chunk_id} ({problem}); "
            "nothing was written"
        ) from problem

    # -- reading --------------------------------------------------------------------------

    def _pods_up(self) -> bool:
        return time.monotonic() >= self._health.down_until

    def _pods_failed(self, exc: Exception) -> None:
        if self._pods_up():
            log.warning("storage pods %s: %s; reading from the cloud", self.pods_name(), exc)
        self._health.down_until = time.monotonic() + POD_RETRY_AFTER

    async def get(self, chunk_id: str) -> bytes:
        if self._pods_up():
            try:
                return await self.pods.get(chunk_id)
            except NotFound:
                pass
            except StoreUnavailable as exc:
                self._pods_failed(exc)
        data = await self.inner.get(chunk_id)
        if self.rules.read_through and self._pods_up():
            with contextlib.suppress(Exception):
                await self.holder.put_cached(chunk_id, data)
        return data

    async def get_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        return bytes(await self._range(chunk_id, offset, length, view=False))

    async def get_range_view(self, chunk_id: str, offset: int, length: int) -> memoryview:
        return memoryview(await self._range(chunk_id, offset, length, view=True))

    async def _range(
        self, chunk_id: str, offset: int, length: int, view: bool
    ) -> bytes | memoryview:
        """A range from the pods, else from the cloud (then copied into the pods in the
        background when the rules say so); ``view``: as the store's view."""
        if self._pods_up():
            try:
                if view:
                    return await self.pods.get_range_view(chunk_id, offset, length)
                return await self.pods.get_range(chunk_id, offset, length)
            except NotFound:
                pass
            except StoreUnavailable as exc:
                self._pods_failed(exc)
        if view:
            data: bytes | memoryview = await self.inner.get_range_view(chunk_id, offset, length)
        else:
            data = await self.inner.get_range(chunk_id, offset, length)
        if self.rules.read_through and self._pods_up():
            self._fill(chunk_id)
        return data

    def _fill(self, chunk_id: str) -> None:
        """Copy a chunk the cloud served in part into the pods, in the background."""
        fills = self._health.fills
        if len(fills) >= MAX_FILLS:
            return
        task = asyncio.get_running_loop().create_task(self._fill_one(chunk_id))
        fills.add(task)
        task.add_done_callback(fills.discard)

    async def _fill_one(self, chunk_id: str) -> None:
        try:
            if not await self.pods.exists(chunk_id):
                await self.holder.put_cached(chunk_id, await self.inner.get(chunk_id))
        except Exception as exc:  # a cache fill: the read itself succeeded
            log.debug("read-through copy of %s failed: %s", chunk_id, exc)

    async def drain(self) -> None:
        """Wait for the read-through copies under way."""
        while self._health.fills:
            await asyncio.gather(*self._health.fills, return_exceptions=True)

    async def exists(self, chunk_id: str) -> bool:
        if self._pods_up():
            try:
                if await self.pods.exists(chunk_id):
                    return True
            except StoreUnavailable as exc:
                self._pods_failed(exc)
        return await self.inner.exists(chunk_id)

    def list(self, prefix: str = "", after: str = "") -> AsyncIterator[str]:
        """Ids in any tier, ascending, each once."""
        return _merged(self.inner.list(prefix, after), self.pods.list(prefix, after))

    # -- everything else --------------------------------------------------------------------

    async def delete(self, chunk_id: str) -> None:
        """From every tier (GC): a pod that cannot be reached fails the delete."""
        await self.inner.delete(chunk_id)
        await self.pods.delete(chunk_id)

    async def check(self) -> None:
        """The cloud must answer; pods that do not are logged (reads fall through)."""
        await self.inner.check()
        try:
            await self.pods.check()
        except StoreUnavailable as exc:
            self._pods_failed(exc)

    async def close(self) -> None:
        for task in list(self._health.fills):
            task.cancel()
        await asyncio.gather(*self._health.fills, return_exceptions=True)
        try:
            await self.pods.close()
        finally:
            await self.inner.close()

    async def copy_to_cloud(self, chunk_ids: Sequence[str]) -> int:
        """Copy to the cloud those of ``chunk_ids`` it lacks that the pods have (chunks a
        version recorded as in the cloud found stored by an earlier, pod-held upload);
        returns how many were copied. Nothing is released."""
        copied = 0
        for chunk_id in dict.fromkeys(chunk_ids):
            if await self.inner.exists(chunk_id):
                continue
            try:
                data = await self.pods.get(chunk_id)
            except NotFound:
                continue
            await self.inner.put(chunk_id, data)
            copied += 1
        return copied

    async def publish(self, chunk_ids: Sequence[str]) -> PublishReport:
        """Copy to the cloud the chunks it lacks (read from the pods), then release them
        in the pods (held become cached). NotFound if a chunk is in neither tier."""
        sent = sent_bytes = present = 0
        unique = builtins.list(dict.fromkeys(chunk_ids))
        for chunk_id in unique:
            if await self.inner.exists(chunk_id):
                present += 1
                continue
            try:
                data = await self.pods.get(chunk_id)
            except NotFound:
                raise NotFound(
                    f"chunk {chunk_id} is neither in the storage pods {self.pods_name()} "
                    "nor in the cloud: it cannot be published from here"
                ) from None
            await self.inner.put(chunk_id, data)
            sent += 1
            sent_bytes += len(data)
        if unique:
            await self.holder.release(unique)
        return PublishReport(sent, sent_bytes, present)


async def _merged(a: AsyncIterator[str], b: AsyncIterator[str]) -> AsyncIterator[str]:
    """Two ascending id streams as one, without repeats."""
    heads: builtins.list[tuple[str, int]] = []
    streams = (a, b)
    for index, stream in enumerate(streams):
        with contextlib.suppress(StopAsyncIteration):
            heapq.heappush(heads, (await anext(stream), index))
    last: str | None = None
    while heads:
        chunk_id, index = heapq.heappop(heads)
        if chunk_id != last:
            yield chunk_id
            last = chunk_id
        with contextlib.suppress(StopAsyncIteration):
            heapq.heappush(heads, (await anext(streams[index]), index))
