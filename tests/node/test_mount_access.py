"""Who can reach a mount and what it keeps on disk; bad input to its live API."""

from __future__ import annotations

import http.client
import json
import os
import stat
from pathlib import Path

from mediadrive.node.client import _UnixConnection
from mediadrive.node.options import MountOptions

from .conftest import DriveFactory, MountHandle, Mounts, wait_until


def mount_options(mountpoint: Path) -> set[str]:
    """The superblock options of the FUSE mount at ``mountpoint``."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mountpoint):
                return set(fields[-1].split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


def test_allow_other_only_when_asked_for(make_drive: DriveFactory, mounts: Mounts) -> None:
    assert MountOptions.model_fields["allow_other"].default is False
    name = make_drive()
    private_mount = mounts.mount(name)
    assert os.geteuid() == 0 and "allow_other" not in mount_options(private_mount.path)
    shared = mounts.mount(name, allow_other=True)
    assert "allow_other" in mount_options(shared.path)
    # The options (store URLs) reach the agent on stdin: any user can read a command line.
    with open(f"/proc/{shared.pid()}/cmdline", "rb") as f:
        assert b"sqlite:" not in f.read()


def wide_modes(root: Path) -> list[str]:
    found = []
    for folder, _dirs, files in os.walk(root):
        for path in [Path(folder)] + [Path(folder) / f for f in files]:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode != (0o700 if path.is_dir() else 0o600):
                found.append(f"{path} {mode:o}")
    return found


def test_a_mounts_cache_staging_log_and_entries_are_private(
    make_drive: DriveFactory, mounts: Mounts, home: Path
) -> None:
    old = os.umask(0o022)
    try:
        m = mounts.mount(make_drive(), commit_on="save")
        (m / "secret.txt").write_bytes(b"private " * 1000)
        os.chmod(m / "secret.txt", 0o600)
        m.save("/secret.txt")
        (m / "pending.txt").write_text("staged, not saved")
        assert (m / "secret.txt").read_bytes().startswith(b"private")
        assert any((m.cache_dir / "staging").iterdir())
        assert (m.cache_dir / "agent.log").exists()
        assert wide_modes(m.cache_dir) == []
        assert wide_modes(mounts.settings.mounts_dir) == []
        assert wide_modes(home / "home" / "media") == []
    finally:
        os.umask(old)


def raw(m: MountHandle, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    entry = m.registry.entry_for(m.path)
    assert entry is not None
    conn = _UnixConnection(entry.socket, 30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_the_api_answers_bad_input_with_400(make_drive: DriveFactory, mounts: Mounts) -> None:
    m = mounts.mount(make_drive())
    (m / "a.txt").write_text("v1")
    wait_until(lambda: m.status()["dirty_files"] == 0)
    huge = str(1 << 64)
    cases = [
        ("POST", "/v1/save", b'{"path": "/\xff\xfe"}', "not UTF-8"),
        ("POST", "/v1/restore", b'{"path": "/a.txt", "version": ' + huge.encode() + b"}", ""),
        ("GET", f"/v1/read?path=/a.txt&version={huge}", None, "out of range"),
        ("GET", "/v1/read?path=/a.txt&version=0", None, "out of range"),
        ("GET", f"/v1/events?since={huge}", None, "out of range"),
        (
            "POST",
            "/v1/hydrate",
            b'{"manifest": {"include": [{"path": "/a.txt", "version": ' + huge.encode() + b"}]}}",
            "",
        ),
    ]
    for method, path, body, words in cases:
        status, text = raw(m, method, path, body)
        assert status == 400, (path, status, text)
        message = json.loads(text)["error"]
        assert words in message and "\n" not in message, message
    # Still serving, and the largest allowed number is simply not there.
    status, text = raw(m, "GET", f"/v1/read?path=/a.txt&version={(1 << 63) - 1}")
    assert status == 404, text
    assert raw(m, "GET", "/v1/read?path=/a.txt&version=1") == (200, "v1")
    assert raw(m, "GET", "/v1/status")[0] == http.client.OK
