"""Names and attributes this mount has seen, for the kernel's lookups and getattrs.

The kernel keeps entries and attributes for the mount's entry timeout, then asks
again; after its caches are dropped (memory pressure, ``drop_caches``) it asks for
every name it meets. Each question is a metadata round trip, which on a server
engine costs more than the whole FUSE request. This cache answers them from what
the mount last learned: lookups, listings, and the nodes its own changes returned.

It is never staler than the kernel's own caches may be: entries expire with the
entry timeout; this mount's changes drop the nodes they touch (and their folders,
whose times move); and any change made elsewhere, as the event follower meets it,
drops everything, at the same moment the follower tells the kernel to forget.
Only the kernel-facing questions use it: opens, writes and commits read the
metadata afresh.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from mediadrive.core.meta import Node

# How long the kernel may trust a lookup or attributes without asking again, and this
# cache too. Changes made elsewhere reach both sooner: the event follower invalidates
# what they touched (every change to the tree is an event), within its interval. This
# bounds how stale a name or attribute can get only if the follower cannot read the
# events.
ATTR_TIMEOUT = 10.0
# Nodes kept at most (oldest first out): a few hundred bytes each.
_LIMIT = 200_000


class Entries:
    def __init__(self, ttl: float = ATTR_TIMEOUT, limit: int = _LIMIT) -> None:
        self.ttl = ttl
        self.limit = limit
        self._nodes: OrderedDict[int, tuple[Node, float]] = OrderedDict()
        self._names: dict[tuple[int, str], int] = {}
        self.hits = 0
        self.misses = 0
        # Bumped by every drop: a node read before a change that raced with it (read
        # while the change went on) is not kept (see ``put``).
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def node(self, node_id: int) -> Node | None:
        found = self._nodes.get(node_id)
        if found is None or found[1] < time.monotonic():
            if found is not None:
                self.drop(node_id)
            self.misses += 1
            return None
        self.hits += 1
        return found[0]

    def child(self, parent_id: int, name: str) -> Node | None:
        node_id = self._names.get((parent_id, name))
        if node_id is None:
            self.misses += 1
            return None
        return self.node(node_id)

    def put(self, node: Node, read_at: int | None = None) -> None:
        """Remember a node as the metadata has it now (a removed one by id only: the
        kernel may still ask for the attributes of an inode it holds open).
        ``read_at``: the ``epoch`` when it was read; if anything was dropped since, it
        may predate that change and is not kept."""
        if read_at is not None and read_at != self.epoch:
            return
        old = self._nodes.pop(node.id, None)
        if old is not None:
            self._unname(old[0])
        self._nodes[node.id] = (node, time.monotonic() + self.ttl)
        if node.parent_id is not None and node.deleted_ns is None:
            self._names[(node.parent_id, node.name)] = node.id
        while len(self._nodes) > self.limit:
            _, (oldest, _) = self._nodes.popitem(last=False)
            self._unname(oldest)

    def drop(self, *node_ids: int) -> None:
        self.epoch += 1
        for node_id in node_ids:
            old = self._nodes.pop(node_id, None)
            if old is not None:
                self._unname(old[0])

    def clear(self) -> None:
        self.epoch += 1
        self._nodes.clear()
        self._names.clear()

    def _unname(self, node: Node) -> None:
        if node.parent_id is None:
            return
        key = (node.parent_id, node.name)
        if self._names.get(key) == node.id:
            del self._names[key]
