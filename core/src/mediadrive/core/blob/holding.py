"""Stores that hold chunks until they are published: the regional tier.

A storage pod keeps two kinds of chunks. *Held* chunks were written there and
are not in the cloud yet: never evicted (a temporary file's may carry a TTL).
*Cached* chunks are read-through copies of chunks the cloud has: evicted LRU
under the pod's capacity. The tier chain (``tiers.py``) talks to the pod tier
through this protocol; ``pod.py`` is its engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from . import BlobStore

Holding = Literal["held", "cached"]


@runtime_checkable
class HoldingStore(Protocol):
    """A :class:`BlobStore` whose ``put`` holds a chunk; these say how it keeps one."""

    async def put_held(
        self, chunk_id: str, data: bytes | memoryview, ttl: float | None = None
    ) -> None:
        """Store and hold ``chunk_id`` (replicated, durable) until released or ``ttl`` ends."""

    async def put_cached(self, chunk_id: str, data: bytes | memoryview) -> None:
        """Store a copy of a chunk the cloud has; the store may evict it."""

    async def release(self, chunk_ids: Sequence[str]) -> None:
        """The chunks are published: held ones become cached (evictable)."""

    async def holding(self, chunk_ids: Sequence[str]) -> dict[str, Holding]:
        """How the store keeps each of ``chunk_ids``; absent ones are left out."""

    async def region(self) -> str:
        """The region the store serves (``StoreUnavailable`` if no member answers)."""


def is_holding(store: BlobStore) -> bool:
    return isinstance(store, HoldingStore)
