"""Mounts of this machine as the plugin sees them: bind, remount read-only, detach."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
from pathlib import Path

from mediadrive.core.errors import MediadriveError


class HostMountError(MediadriveError):
    """A mount(8) or umount(8) call that failed."""


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_options(path: Path | str) -> list[str] | None:
    """The per-mount options (``rw``/``ro``, ...) of the topmost mount at ``path``, or
    None when nothing is mounted there."""
    target = os.path.abspath(path)
    found: list[str] | None = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == target:
                found = fields[5].split(",")
    return found


def is_mounted(path: Path | str) -> bool:
    return mount_options(path) is not None


def is_read_only(path: Path | str) -> bool:
    options = mount_options(path)
    return options is not None and "ro" in options


def disconnected(path: Path | str, timeout: float = 5.0) -> bool:
    """The FUSE mount at ``path`` lost its agent: ENOTCONN ("Transport endpoint is
    not connected") or ECONNABORTED. A mount that does not answer within ``timeout``
    counts as connected (busy, not dead): the check must not hang its caller."""
    answer: list[bool] = []

    def check() -> None:
        try:
            os.stat(path)
        except OSError as exc:
            answer.append(exc.errno in (errno.ENOTCONN, errno.ECONNABORTED))
            return
        answer.append(False)

    thread = threading.Thread(target=check, name="stat-mount", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HostMountError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def bind(source: Path, target: Path, read_only: bool) -> None:
    """Bind ``source`` at ``target``; read-only takes a second, remounting step."""
    _run("mount", "--bind", str(source), str(target))
    if read_only:
        try:
            _run("mount", "-o", "remount,bind,ro", str(target))
        except HostMountError:
            unmount(target)
            raise


def unmount(target: Path, lazy: bool = False) -> None:
    """Unmount every mount stacked at ``target`` (one more for each time its agent was
    restarted); a busy or dead one lazily."""
    for _ in range(64):
        if not is_mounted(target):
            return
        if lazy:
            _run("umount", "-l", str(target))
            continue
        try:
            _run("umount", str(target))
        except HostMountError:
            _run("umount", "-l", str(target))


def remove_folder(path: Path) -> None:
    """Remove the (empty) folder the plugin made for a mount; gone already is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
