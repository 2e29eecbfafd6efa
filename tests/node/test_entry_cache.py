"""Lookups and getattrs answered from what the mount last learned (``entries.py``)."""

from __future__ import annotations

import os

from .conftest import DriveFactory, Mounts, drop_kernel_caches, wait_until


def test_names_this_mount_made_are_found_again_without_the_metadata_store(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    m = mounts.mount(make_drive())
    folder = m / "shots"
    folder.mkdir()
    names = [folder / f"frame.{i:04d}.exr" for i in range(40)]
    made = m.status()
    for name in names:
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o640))
    before = m.status()
    # Whether each name existed was answered here: the folder was made here, empty.
    assert before["entry_hits"] - made["entry_hits"] >= len(names)
    assert before["entry_misses"] - made["entry_misses"] <= 2
    drop_kernel_caches()
    assert [os.stat(name).st_mode & 0o777 for name in names] == [0o640] * len(names)
    after = m.status()
    assert after["entry_hits"] - before["entry_hits"] >= len(names)
    # The folder itself (its times moved with every create) is asked for, the files not.
    assert after["entry_misses"] - before["entry_misses"] <= 2
    # Removed names are gone at once, here and for the kernel.
    for name in names[:10]:
        name.unlink()
    drop_kernel_caches()
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in names[10:]]
    assert not any(name.exists() for name in names[:10])


def test_a_change_made_elsewhere_is_never_hidden_by_what_this_mount_remembers(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    """Without the follower dropping the cache, b would answer from it until the entry
    timeout (10 s), longer than the waits below."""
    name = make_drive()
    a = mounts.mount(name)
    b = mounts.mount(name)
    (a / "plate.exr").write_bytes(b"x" * 10)
    wait_until(
        lambda: (b / "plate.exr").exists() and os.stat(b / "plate.exr").st_size == 10,
        timeout=2.5,
    )
    drop_kernel_caches()
    hits = b.status()["entry_hits"]
    assert os.stat(b / "plate.exr").st_size == 10
    assert b.status()["entry_hits"] > hits
    # b lists the folder (it now knows every name in it), then a makes a new one.
    assert sorted(os.listdir(b.path)) == ["plate.exr"]
    (a / "take3.exr").write_bytes(b"3")
    wait_until(lambda: (b / "take3.exr").exists(), timeout=2.5)
    (a / "plate.exr").write_bytes(b"y" * 20)
    os.chmod(a / "plate.exr", 0o600)
    (a / "take2.exr").write_bytes(b"z")

    def b_sees_it() -> bool:
        drop_kernel_caches()
        st = os.stat(b / "plate.exr")
        return (st.st_size, st.st_mode & 0o777) == (20, 0o600) and (b / "take2.exr").exists()

    wait_until(b_sees_it, timeout=3.0)
    assert (b / "plate.exr").read_bytes() == b"y" * 20


def test_a_folder_made_here_is_listed_from_what_the_mount_knows(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive()
    m = mounts.mount(name)
    folder = m / "plates"
    folder.mkdir()
    for i in range(30):
        os.close(os.open(folder / f"p{i:02d}.exr", os.O_CREAT | os.O_WRONLY, 0o640))
    (folder / "p05.exr").unlink()
    (folder / "grades").mkdir()
    os.chmod(folder / "p07.exr", 0o600)
    expected = {f"p{i:02d}.exr": 0o640 for i in range(30) if i not in (5, 7)}
    expected |= {"p07.exr": 0o600, "grades": 0o755 & ~os.umask(os.umask(0))}

    def listed() -> dict[str, int]:
        return {e.name: e.stat(follow_symlinks=False).st_mode & 0o777 for e in os.scandir(folder)}

    # The folder was made here, and every change in it since too: listing it (twice,
    # a new listing each time) needs no metadata query.
    before = m.status()
    assert listed() == expected
    assert listed() == expected
    after = m.status()
    assert after["listings_cached"] == before["listings_cached"] + 2
    assert after["entry_misses"] == before["entry_misses"]
    # A name made elsewhere shows up all the same.
    other = mounts.mount(name)
    (other / "plates" / "p99.exr").write_bytes(b"99")
    wait_until(lambda: "p99.exr" in listed(), timeout=2.5)
