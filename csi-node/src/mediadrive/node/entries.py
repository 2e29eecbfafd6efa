"""Names and attributes this mount has seen, for the kernel's lookups and getattrs.

The kernel keeps entries and attributes for the mount's entry timeout, then asks
again; after its caches are dropped (memory pressure, ``drop_caches``) it asks for
every name it meets, and before it creates a name it asks whether the name exists.
Each question is a metadata round trip, which on a server engine costs more than
the whole FUSE request. This cache answers them from what the mount last learned:
lookups, listings, and the nodes its own changes returned. A folder listed whole
(or made here, empty) is *complete*: a name it does not hold is known not to exist,
and listing it again needs no query. This mount's own creates, removals and
attribute changes in it keep it complete.

It is never staler than the kernel's own caches may be: this mount's changes update
or drop the nodes they touch, and any change made elsewhere, as the event follower
meets it, drops everything, at the same moment the follower tells the kernel to
forget. So a node, and a complete folder, stays while the follower keeps reading
the events (it would have dropped it otherwise): a ``stat`` of files the mount met
minutes ago costs no query on a server engine. If the follower cannot read them,
each expires with the entry timeout, or one timeout after the follower last read,
whichever is later. Only the kernel-facing questions use it: opens, writes and
commits read the metadata afresh.
"""

from __future__ import annotations

import dataclasses
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
        # The live children known of each folder: name -> node id.
        self._children: dict[int, dict[str, int]] = {}
        # Folders whose every live child is in ``_children``, until when. Each child was
        # put when the folder was marked or later, so it outlives the mark.
        self._complete: dict[int, float] = {}
        self.hits = 0
        self.misses = 0
        # Folder listings answered here, without a query.
        self.listings = 0
        # Until when the event follower vouches that no change from elsewhere was
        # missed (it read them all a timeout before): folders complete here stay so.
        self._followed = 0.0
        # Bumped by every change: a node read while one went on may predate it and is
        # not kept (see ``put``).
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def node(self, node_id: int) -> Node | None:
        found = self._nodes.get(node_id)
        if found is not None and found[1] < time.monotonic() and not self._vouched():
            self.drop(node_id)
            found = None
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        return found[0]

    def child(self, parent_id: int, name: str) -> Node | None:
        """The live child of that name, if known (an unknown name is counted by
        ``absent``, which a caller asks next)."""
        children = self._children.get(parent_id)
        node_id = None if children is None else children.get(name)
        return None if node_id is None else self.node(node_id)

    def absent(self, parent_id: int, name: str) -> bool:
        """Whether ``name`` is known not to be in the folder (it is complete here)."""
        if not self._is_complete(parent_id) or name in self._children.get(parent_id, ()):
            self.misses += 1
            return False
        self.hits += 1
        return True

    def put(self, node: Node, read_at: int | None = None) -> None:
        """Remember a node as the metadata has it now (a removed one by id only: the
        kernel may still ask for the attributes of an inode it holds open).
        ``read_at``: the ``epoch`` when it was read; if anything changed since, it
        may predate that change and is not kept."""
        if read_at is not None and read_at != self.epoch:
            return
        old = self._nodes.pop(node.id, None)
        if old is not None:
            self._unname(old[0])
        self._nodes[node.id] = (node, time.monotonic() + self.ttl)
        if node.parent_id is not None and node.deleted_ns is None:
            self._children.setdefault(node.parent_id, {})[node.name] = node.id
        while len(self._nodes) > self.limit:
            _, (oldest, _) = self._nodes.popitem(last=False)
            self._unname(oldest)
            self._incomplete(oldest)

    def listing(self, folder_id: int) -> list[Node] | None:
        """The folder's live children by name, if it is complete here (a listing then
        needs no query)."""
        if not self._is_complete(folder_id):
            self.misses += 1
            return None
        self.hits += 1
        self.listings += 1
        children = self._children.get(folder_id, {})
        return [self._nodes[children[name]][0] for name in sorted(children)]

    def _is_complete(self, folder_id: int) -> bool:
        until = self._complete.get(folder_id)
        if until is None:
            return False
        now = time.monotonic()
        return until >= now or self._followed >= now

    def _vouched(self) -> bool:
        return self._followed >= time.monotonic()

    def followed(self) -> None:
        """The event follower has just applied every change made elsewhere: had one
        touched a node or a folder complete here, it would have dropped it. Each stays
        for another timeout, past its own."""
        self._followed = time.monotonic() + self.ttl

    def complete(self, folder_id: int, read_at: int | None = None) -> None:
        """Every live child of the folder has just been put (a whole listing, or the
        folder was just made, empty)."""
        if read_at is None or read_at == self.epoch:
            self._complete[folder_id] = time.monotonic() + self.ttl

    def folder_changed(self, folder_id: int, when_ns: int, subdirs: int = 0) -> None:
        """This mount added or removed a child of the folder at ``when_ns`` (its
        mtime and ctime now), and ``subdirs`` subfolders with it."""
        self.epoch += 1
        found = self._nodes.get(folder_id)
        if found is not None:
            folder = found[0]
            self.put(
                dataclasses.replace(
                    folder, mtime_ns=when_ns, ctime_ns=when_ns, subdirs=folder.subdirs + subdirs
                )
            )

    def changing(self) -> None:
        """A change is under way: a node read meanwhile may predate it."""
        self.epoch += 1

    def drop(self, *node_ids: int) -> None:
        self.epoch += 1
        for node_id in node_ids:
            self._complete.pop(node_id, None)
            old = self._nodes.pop(node_id, None)
            if old is not None:
                self._unname(old[0])
                self._incomplete(old[0])

    def clear(self) -> None:
        self.epoch += 1
        self._nodes.clear()
        self._children.clear()
        self._complete.clear()

    def _unname(self, node: Node) -> None:
        if node.parent_id is None:
            return
        children = self._children.get(node.parent_id)
        if children is not None and children.get(node.name) == node.id:
            del children[node.name]
            if not children:
                del self._children[node.parent_id]

    def _incomplete(self, node: Node) -> None:
        """A live child is no longer known: its folder is not complete here."""
        if node.parent_id is not None and node.deleted_ns is None:
            self._complete.pop(node.parent_id, None)
