"""The mount commands of the CLI and the live-filesystem API, end to end."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from mediadrive.core.drive import Drive
from mediadrive.node.client import MountClient

from .conftest import DriveFactory, Mounts, drive_call, force_unmount, wait_until

MiB = 1 << 20
CLI = [sys.executable, "-c", "from mediadrive.cli.main import main; main()"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_mount_save_versions_restore_status_umount(
    make_drive: DriveFactory, mounts: Mounts, home: Path
) -> None:
    name = make_drive()
    mnt = mounts.folder("cli-mnt")
    cache = home / "cli-cache"
    try:
        cli("mount", name, str(mnt), "--cache-dir", str(cache), "--commit-on", "save")
        data = os.urandom(2 * MiB)
        (mnt / "plate.exr").write_bytes(data)
        saved = json.loads(cli("save", str(mnt / "plate.exr"), "-m", "first", "--json").stdout)
        assert saved["version"] == 1 and saved["bytes_uploaded"] == 2 * MiB
        with open(mnt / "plate.exr", "r+b") as f:
            f.write(b"edit")
        saved = json.loads(cli("save", str(mnt / "plate.exr"), "--json").stdout)
        assert saved["version"] == 2
        listed = json.loads(cli("versions", str(mnt / "plate.exr"), "--json").stdout)
        assert [v["version"] for v in listed] == [1, 2] and listed[0]["message"] == "first"
        cli("restore", str(mnt / "plate.exr"), "--version", "1")
        wait_until(lambda: (mnt / "plate.exr").read_bytes() == data, timeout=3)
        figures = json.loads(cli("status", str(mnt), "--json").stdout)
        for key in (
            "cache_bytes",
            "pinned_bytes",
            "pending_upload_bytes",
            "bytes_fetched",
            "bytes_uploaded",
            "open_files",
        ):
            assert isinstance(figures[key], int), key
        assert figures["bytes_uploaded"] >= 2 * MiB and figures["pending_upload_bytes"] == 0
        # A read-write mount keeps the writeback cache, so no passthrough.
        assert figures["passthrough"] is False
        table = cli("status", str(mnt)).stdout
        assert "pending upload" in table and "passthrough" in table
        (mnt / "unsaved.txt").write_text("pending at unmount")
        cli("umount", str(mnt))
        assert drive_call(name, lambda d: d.stat("/unsaved.txt")).head_version == 1
    finally:
        force_unmount(mnt)


def test_errors_are_one_line_without_traceback(make_drive: DriveFactory, home: Path) -> None:
    name = make_drive()
    for args in (
        ("save", str(home)),
        ("status", str(home)),
        ("umount", str(home)),
        ("mount", name, str(home / "missing")),
        ("mount", "no-such-drive", str(home)),
        ("mount", name, str(home), "--cache-size", "lots"),
        ("mount", name, str(home), "--checkpoint-interval", "soon"),
    ):
        result = cli(*args, check=False)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mediadrive: error:"), (args, lines)
        assert "Traceback" not in result.stderr


def test_pin_unpin_and_hydrate_with_a_manifest(
    make_drive: DriveFactory, mounts: Mounts, home: Path
) -> None:
    name = make_drive()
    for path in ("/shots/sh010/a.exr", "/shots/sh010/b.tmp", "/shots/sh020/c.exr", "/x.abc"):

        async def write(d: Drive, p: str = path) -> None:
            if os.path.dirname(p) != "/":
                await d.mkdir(os.path.dirname(p), parents=True)
            await d.write_file(p, io.BytesIO(os.urandom(MiB)))

        drive_call(name, write)
    m = mounts.mount(name)
    manifest = home / "needs.yaml"
    manifest.write_text(
        "version: 1\ninclude:\n  - glob: 'shots/**/*'\n  - path: /x.abc\n    version: 1\n"
        "exclude:\n  - '**/*.tmp'\n"
    )
    result = json.loads(cli("hydrate", str(m.path), "--manifest", str(manifest), "--json").stdout)
    assert result == {"files": 3, "bytes": 3 * MiB, "bytes_fetched": 3 * MiB, "pinned": True}
    status = m.status()
    assert status["pinned_bytes"] == 3 * MiB and status["bytes_fetched"] == 3 * MiB
    # Globs on the command line; nothing new to fetch.
    result = json.loads(cli("hydrate", str(m.path), "shots/sh0?0", "--json").stdout)
    assert result["files"] == 3 and result["bytes_fetched"] == MiB
    cli("unpin", str(m / "shots"))
    cli("pin", str(m / "shots" / "sh020"))
    assert m.status()["pinned_paths"] == ["/shots/sh020", "/x.abc"]
    bad = home / "bad.yaml"
    bad.write_text("include:\n  - path: /x.abc\n    glob: '*'\n")
    failed = cli("hydrate", str(m.path), "--manifest", str(bad), check=False)
    assert failed.returncode == 1 and "exactly one of 'path' or 'glob'" in failed.stderr


def test_api_document_socket_events_read_and_publish(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive()
    m = mounts.mount(name, commit_on="save")
    client: MountClient = m.client()
    assert stat.S_IMODE(os.stat(client.entry.socket).st_mode) == 0o600
    document = client.openapi()
    assert document["openapi"].startswith("3.") and "/v1/hydrate" in document["paths"]
    events = client.events(since=0)
    (m / "e.txt").write_text("v1")
    published = client.publish("/e.txt")
    assert published["saved"][0]["version"] == 1 and published["tier"] == "cloud"
    # No storage pod on this machine: the version went straight to the cloud.
    assert (published["files"], published["chunks_sent"]) == (0, 0)
    kinds = []
    for event in events:
        kinds.append((event["kind"], event["path"]))
        if event["kind"] == "commit":
            break
    assert kinds == [("create", "/e.txt"), ("commit", "/e.txt")]
    (m / "e.txt").write_text("v2")
    client.save("/e.txt")
    assert client.read("/e.txt", 1) == b"v1" and client.read("/e.txt") == b"v2"


def test_a_deleted_file_inside_a_mount_keeps_its_history_and_comes_back(
    make_drive: DriveFactory, mounts: Mounts
) -> None:
    name = make_drive()
    first, second = os.urandom(MiB), os.urandom(MiB)

    async def write_twice(d: Drive) -> None:
        await d.mkdir("/shots/010", parents=True)
        await d.write_file("/shots/010/plate.exr", io.BytesIO(first))
        await d.write_file("/shots/010/plate.exr", io.BytesIO(second))

    drive_call(name, write_twice)
    m = mounts.mount(name)
    plate = m / "shots" / "010" / "plate.exr"
    assert plate.read_bytes() == second
    subprocess.run(["rm", "-r", str(m / "shots")], check=True)
    assert not (m / "shots").exists()

    # Through the mount path of the removed file: its history, then the file itself.
    listed = json.loads(cli("versions", str(plate), "--json").stdout)
    assert [v["version"] for v in listed] == [1, 2]
    cli("restore", str(plate), "--to", "1")
    wait_until(lambda: plate.exists() and plate.read_bytes() == first, timeout=5)
    listed = json.loads(cli("versions", str(plate), "--json").stdout)
    assert [v["version"] for v in listed] == [1, 2, 3]
