"""Two mounts of one drive: two machines, in effect."""

from __future__ import annotations

import io
import os
import threading
import time
from typing import Any

import pytest

from mediadrive.core.config import ConflictPolicy
from mediadrive.core.errors import ConflictError

from .conftest import DriveFactory, Mounts, drive_call, wait_until


def test_a_save_on_one_mount_is_seen_on_the_other_within_two_seconds(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive()
    a = mounts.mount(name, commit_on="save")
    b = mounts.mount(name, commit_on="save")
    (a / "shot.txt").write_text("first take")
    a.save("/shot.txt")
    wait_until(
        lambda: (b / "shot.txt").exists() and (b / "shot.txt").read_text() == "first take",
        timeout=2.5,
    )
    # While a writes without saving, b keeps seeing the last committed version.
    (a / "shot.txt").write_text("uncommitted draft")
    time.sleep(1.0)
    assert (b / "shot.txt").read_text() == "first take"
    # b has read it: its kernel caches it. A new, longer version from a replaces it.
    (a / "shot.txt").write_text("second take, longer")
    a.save("/shot.txt")
    wait_until(lambda: (b / "shot.txt").read_text() == "second take, longer", timeout=2.5)
    (a / "shot.txt").write_text("3")
    a.save("/shot.txt")
    wait_until(lambda: (b / "shot.txt").read_text() == "3", timeout=2.5)
    wait_until(lambda: os.stat(b / "shot.txt").st_size == 1, timeout=2.5)
    # Renames and deletes travel too.
    (a / "shot.txt").rename(a / "final.txt")
    wait_until(lambda: not (b / "shot.txt").exists() and (b / "final.txt").exists(), timeout=2.5)
    (a / "final.txt").unlink()
    wait_until(lambda: not (b / "final.txt").exists(), timeout=2.5)


def test_attribute_and_folder_changes_on_one_mount_reach_the_other_within_two_seconds(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    """The kernel may trust attributes for longer than that (ATTR_TIMEOUT): the event
    follower invalidates what each change touched."""
    name = make_drive()
    a = mounts.mount(name)
    b = mounts.mount(name)
    (a / "shots").mkdir()
    (a / "shots" / "cut.txt").write_text("take")
    wait_until(lambda: (b / "shots" / "cut.txt").exists(), timeout=2.5)
    # b's kernel now caches both; every change below must still show within 2 s.
    before = os.stat(b / "shots")
    assert (before.st_nlink, os.stat(b / "shots" / "cut.txt").st_mode & 0o777) == (2, 0o644)
    os.chmod(a / "shots" / "cut.txt", 0o600)
    wait_until(lambda: os.stat(b / "shots" / "cut.txt").st_mode & 0o777 == 0o600, timeout=2.5)
    os.chown(a / "shots" / "cut.txt", 1234, 5678)
    wait_until(
        lambda: (
            (os.stat(b / "shots" / "cut.txt").st_uid, os.stat(b / "shots" / "cut.txt").st_gid)
            == (1234, 5678)
        ),
        timeout=2.5,
    )
    os.utime(a / "shots" / "cut.txt", ns=(1_000_000_000, 2_000_000_000))
    wait_until(lambda: os.stat(b / "shots" / "cut.txt").st_mtime_ns == 2_000_000_000, timeout=2.5)
    os.chmod(a / "shots", 0o750)
    wait_until(lambda: os.stat(b / "shots").st_mode & 0o777 == 0o750, timeout=2.5)
    # A new subfolder: the folder's link count and times change on b too.
    (a / "shots" / "010").mkdir()
    wait_until(lambda: os.stat(b / "shots").st_nlink == 3, timeout=2.5)
    assert os.stat(b / "shots").st_mtime_ns > before.st_mtime_ns
    (a / "shots" / "010").rmdir()
    wait_until(lambda: os.stat(b / "shots").st_nlink == 2, timeout=2.5)


@pytest.mark.parametrize("policy", list(ConflictPolicy))
def test_simultaneous_saves_follow_the_policy_and_lose_no_version(
    make_drive: DriveFactory, mounts: Mounts, policy: ConflictPolicy
) -> None:
    name = make_drive(conflict=policy)
    drive_call(name, lambda d: d.write_file("/cut.txt", io.BytesIO(b"base")))
    a = mounts.mount(name, commit_on="save")
    b = mounts.mount(name, commit_on="save")
    (a / "cut.txt").write_text("edit from a")
    (b / "cut.txt").write_text("edit from b")
    results: dict[str, Any] = {}

    def save(label: str, handle: Any) -> None:
        try:
            results[label] = handle.save("/cut.txt")
        except ConflictError as exc:
            results[label] = exc

    threads = [threading.Thread(target=save, args=p) for p in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def contents(d: Any) -> dict[str, list[bytes]]:
        found: dict[str, list[bytes]] = {}
        for node in await d.listdir("/"):
            path = f"/{node.name}"
            found[path] = []
            for v in await d.versions(path):
                reader = await d.reader(path, v.version)
                found[path].append(await reader.read(0, reader.size))
        return found

    stored = drive_call(name, contents)
    everything = [blob for blobs in stored.values() for blob in blobs]
    if policy is ConflictPolicy.REJECT:
        refused = [k for k, v in results.items() if isinstance(v, ConflictError)]
        assert len(refused) == 1
        loser = a if refused == ["a"] else b
        winner_text = "edit from b" if refused == ["a"] else "edit from a"
        assert stored == {"/cut.txt": [b"base", winner_text.encode()]}
        # The refused edit stays on its machine, uncommitted, not lost.
        assert loser.status()["dirty_files"] == 1
        assert (loser / "cut.txt").read_text() == ("edit from a" if loser is a else "edit from b")
        return
    assert b"edit from a" in everything and b"edit from b" in everything
    if policy is ConflictPolicy.LAST_WRITER_WINS:
        assert list(stored) == ["/cut.txt"] and len(stored["/cut.txt"]) == 3
    else:
        assert len(stored) == 2
        sibling = next(p for p in stored if p != "/cut.txt")
        assert "(conflict from" in sibling
        # Both machines end up showing both files.
        wait_until(
            lambda: (
                sorted(p.name for p in a.path.iterdir()) == sorted(p.name for p in b.path.iterdir())
                and len(list(a.path.iterdir())) == 2
            ),
            timeout=2.5,
        )


def test_pages_of_an_unchanged_file_stay_cached_and_a_change_elsewhere_drops_them(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive()
    a = mounts.mount(name)
    b = mounts.mount(name)
    first = os.urandom(3 << 20)
    (a / "plate.exr").write_bytes(first)
    wait_until(
        lambda: (b / "plate.exr").exists() and (b / "plate.exr").read_bytes() == first,
        timeout=2.5,
    )
    # The first open after the change read around the kernel's cache; once closed,
    # the kernel takes a fresh inode. Read once into its pages.
    time.sleep(1.0)
    assert (b / "plate.exr").read_bytes() == first
    # Opened again unchanged: the kernel keeps its pages, the agent serves no read.
    hits = b.status()["cache_hits"]
    for _ in range(3):
        assert (b / "plate.exr").read_bytes() == first
    assert b.status()["cache_hits"] == hits
    # The same size, other bytes, committed elsewhere: never the old pages.
    second = os.urandom(3 << 20)
    (a / "plate.exr").write_bytes(second)
    wait_until(lambda: (b / "plate.exr").read_bytes() == second, timeout=2.5)
    time.sleep(1.0)
    assert (b / "plate.exr").read_bytes() == second
