"""What `mediadrive mount` refuses, and how to insist."""

from __future__ import annotations

from pathlib import Path

from .conftest import DriveFactory, Mounts, force_unmount
from .test_cli_api import cli


def test_mount_refuses_a_folder_with_files_unless_nonempty(
    make_drive: DriveFactory, mounts: Mounts, home: Path
) -> None:
    name = make_drive()
    mnt = mounts.folder("nonempty-mnt")
    (mnt / "local.txt").write_text("mine")
    refused = cli("mount", name, str(mnt), "--cache-dir", str(home / "c1"), check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"mediadrive: error: mount point {mnt} is not empty: the mount would hide its files "
        "(--nonempty mounts over them)"
    ]
    assert (mnt / "local.txt").read_text() == "mine"
    try:
        cli("mount", name, str(mnt), "--cache-dir", str(home / "c2"), "--nonempty")
        assert not (mnt / "local.txt").exists()
        cli("umount", str(mnt))
    finally:
        force_unmount(mnt)
    assert (mnt / "local.txt").read_text() == "mine"
