"""The cache of names and attributes that answers the kernel's lookups and getattrs."""

from __future__ import annotations

import dataclasses
import time

import pytest

from mediadrive.core.meta import Node, NodeKind
from mediadrive.node.entries import Entries


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The cache's clock, which a test moves (it starts at 100 s)."""
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    return clock


def names(listing: list[Node] | None) -> list[str] | None:
    return None if listing is None else [n.name for n in listing]


def node(node_id: int, parent_id: int = 1, name: str = "", size: int = 0) -> Node:
    return Node(
        node_id,
        parent_id,
        name or f"n{node_id}",
        NodeKind.FILE,
        0o644,
        0,
        0,
        1,
        1,
        size,
        None,
        None,
    )


def test_a_node_is_found_by_id_and_by_name_until_dropped() -> None:
    cache = Entries()
    cache.put(node(5, name="cut.mov"))
    assert cache.child(1, "cut.mov") == cache.node(5) == node(5, name="cut.mov")
    assert cache.child(2, "cut.mov") is None and cache.child(1, "other") is None
    cache.drop(5)
    assert cache.child(1, "cut.mov") is None and cache.node(5) is None
    assert (cache.hits, cache.misses) == (2, 1)


def test_a_moved_node_is_found_under_its_new_name_only() -> None:
    cache = Entries()
    cache.put(node(5, name="a"))
    cache.put(node(5, parent_id=3, name="b"))
    assert cache.child(1, "a") is None
    assert cache.child(3, "b") == node(5, parent_id=3, name="b")


def test_a_removed_node_keeps_its_attributes_but_not_its_name() -> None:
    cache = Entries()
    cache.put(node(5, name="a"))
    gone = dataclasses.replace(node(5, name="a"), deleted_ns=7)
    cache.put(gone)
    assert cache.child(1, "a") is None
    assert cache.node(5) == gone
    # A new node of that name is found, the removed one still by id.
    cache.put(node(6, name="a"))
    assert cache.child(1, "a") == node(6, name="a") and cache.node(5) == gone


def test_a_node_read_before_a_change_is_not_kept() -> None:
    cache = Entries()
    read_at = cache.epoch
    cache.drop(9)  # a change lands while the read is on its way
    cache.put(node(5, size=1), read_at)
    assert cache.node(5) is None
    cache.put(node(5, size=2), cache.epoch)
    assert cache.node(5) == node(5, size=2)
    read_at = cache.epoch
    cache.clear()
    cache.put(node(5, size=1), read_at)
    assert cache.node(5) is None


def test_entries_expire_with_the_kernel_timeout(now: list[float]) -> None:
    cache = Entries(ttl=10.0)
    cache.put(node(5, name="a"))
    now[0] = 109.0
    assert cache.child(1, "a") is not None
    now[0] = 110.5
    assert cache.child(1, "a") is None and cache.node(5) is None and len(cache) == 0


def test_the_oldest_entries_go_first_past_the_limit() -> None:
    cache = Entries(limit=3)
    for i in range(1, 6):
        cache.put(node(i))
    assert len(cache) == 3
    assert [cache.node(i) is not None for i in range(1, 6)] == [False, False, True, True, True]
    assert cache.child(1, "n1") is None


def folder(node_id: int, parent_id: int = 1, name: str = "", subdirs: int = 0) -> Node:
    return dataclasses.replace(
        node(node_id, parent_id, name or f"d{node_id}"), kind=NodeKind.DIR, subdirs=subdirs
    )


def test_a_complete_folder_knows_which_names_it_lacks() -> None:
    cache = Entries()
    cache.put(folder(2))
    assert not cache.absent(2, "x")
    read_at = cache.epoch
    cache.put(node(5, parent_id=2, name="a"), read_at)
    cache.complete(2, read_at)
    assert cache.absent(2, "x") and not cache.absent(2, "a")
    # A removed child is absent too; a new one is not.
    cache.put(dataclasses.replace(node(5, parent_id=2, name="a"), deleted_ns=3))
    assert cache.absent(2, "a")
    cache.put(node(6, parent_id=2, name="b"))
    assert not cache.absent(2, "b") and cache.child(2, "b") == node(6, parent_id=2, name="b")


def test_a_folder_is_no_longer_complete_once_a_child_is_forgotten() -> None:
    cache = Entries(limit=3)
    cache.complete(2)
    cache.put(node(5, parent_id=2, name="a"))
    cache.drop(5)
    assert not cache.absent(2, "a") and not cache.absent(2, "x")
    cache.complete(2)
    cache.put(node(6, parent_id=2, name="b"))
    for i in range(10, 13):  # pushes b out
        cache.put(node(i))
    assert cache.node(6) is None and not cache.absent(2, "b")
    cache.complete(2)
    assert cache.absent(2, "b")
    cache.clear()
    assert not cache.absent(2, "b")


def test_a_listing_read_before_a_change_does_not_make_its_folder_complete() -> None:
    cache = Entries()
    read_at = cache.epoch
    cache.drop(7)
    cache.complete(2, read_at)
    assert not cache.absent(2, "x")


def test_a_folder_changed_here_takes_its_new_times_and_link_count() -> None:
    cache = Entries()
    cache.put(folder(2, subdirs=1))
    read_at = cache.epoch
    cache.folder_changed(2, 99, subdirs=1)
    changed = cache.node(2)
    assert changed is not None
    assert (changed.mtime_ns, changed.ctime_ns, changed.subdirs) == (99, 99, 2)
    # What was read before the change does not overwrite it.
    cache.put(folder(2, subdirs=1), read_at)
    assert cache.node(2) == changed
    cache.folder_changed(3, 99)  # not cached: nothing to update
    assert cache.node(3) is None


def test_a_complete_folder_lists_its_live_children_by_name(now: list[float]) -> None:
    cache = Entries(ttl=10.0)
    assert cache.listing(2) is None
    cache.complete(2)  # made here, empty
    assert cache.listing(2) == []
    cache.put(node(6, parent_id=2, name="b"))
    cache.put(node(5, parent_id=2, name="a"))
    cache.put(node(7, parent_id=2, name="c"))
    cache.put(node(8, parent_id=3, name="elsewhere"))
    assert names(cache.listing(2)) == ["a", "b", "c"]
    # Removed and moved children leave the listing; a changed one shows its change.
    cache.put(dataclasses.replace(node(6, parent_id=2, name="b"), deleted_ns=1))
    cache.put(node(7, parent_id=3, name="c"))
    cache.put(node(5, parent_id=2, name="a", size=42))
    assert cache.listing(2) == [node(5, parent_id=2, name="a", size=42)]
    # The listing is known only as long as the folder is complete here.
    now[0] = 110.5
    assert cache.listing(2) is None


def test_a_folder_is_listed_afresh_once_a_child_or_everything_is_forgotten() -> None:
    cache = Entries()
    cache.complete(2)
    cache.put(node(5, parent_id=2, name="a"))
    cache.put(node(6, parent_id=2, name="b"))
    cache.drop(6)
    assert cache.listing(2) is None
    cache.complete(2)
    assert names(cache.listing(2)) == ["a"]
    cache.clear()
    assert cache.listing(2) is None


def test_a_folder_stays_complete_while_the_follower_vouches_for_it(now: list[float]) -> None:
    cache = Entries(ttl=10.0)
    cache.complete(2)
    cache.put(node(5, parent_id=2, name="a"))
    now[0] = 108.0
    cache.followed()  # every change made elsewhere up to now applied: none touched it
    now[0] = 117.0
    assert cache.absent(2, "x") and names(cache.listing(2)) == ["a"]
    # The follower stopped reading: a timeout after it last did, the folder is unknown.
    now[0] = 118.5
    assert not cache.absent(2, "x") and cache.listing(2) is None


def test_a_node_stays_past_its_timeout_while_the_follower_vouches_for_it(
    now: list[float],
) -> None:
    cache = Entries(ttl=10.0)
    cache.put(node(5, name="a"))
    now[0] = 108.0
    cache.followed()
    now[0] = 117.0
    assert cache.child(1, "a") == cache.node(5) == node(5, name="a")
    # A change made elsewhere, as the follower meets it, drops it all the same.
    cache.clear()
    assert cache.node(5) is None
    cache.put(node(5, name="a"))  # read again at 117 s: its own timeout ends at 127 s
    now[0] = 127.5
    assert cache.child(1, "a") is None and len(cache) == 0


def test_a_node_expires_a_timeout_after_the_follower_last_read(now: list[float]) -> None:
    cache = Entries(ttl=10.0)
    cache.put(node(5, name="a"))
    now[0] = 105.0
    cache.followed()  # vouches until 115 s
    now[0] = 114.0
    assert cache.node(5) is not None
    now[0] = 115.5
    assert cache.node(5) is None and cache.child(1, "a") is None
