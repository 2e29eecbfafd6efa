"""Files and folders only their owner can read, whatever the umask.

Chunks, cached blocks, staged copies, journals and metadata hold the contents and
names of files that may be private in the drive; made with the usual umask (022)
they would be readable by every local user. Everything a drive or a mount keeps
on this machine is made through these helpers: folders 0700, files 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "make_dir", "opener", "touch", "write_file"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_dir(path: Path, *, tighten: bool = False) -> Path:
    """Create ``path`` and its missing parents 0700; folders that already exist are
    left as they are unless ``tighten`` (a folder this program owns, such as a cache)."""
    missing: list[Path] = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for new in reversed(missing):
        try:
            os.mkdir(new, DIR_MODE)
        except FileExistsError:
            continue
        # The umask may have taken bits away from the owner too; set them exactly.
        os.chmod(new, DIR_MODE)
    if tighten and not missing and path.is_dir():
        os.chmod(path, DIR_MODE)
    return path


def opener(path: str | os.PathLike[str], flags: int) -> int:
    """``open(..., opener=private.opener)``: the file is 0600, even one left over
    from before with a wider mode."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def touch(path: Path) -> Path:
    """Create ``path`` empty and 0600 if it does not exist (before a library such as
    SQLite creates it with the umask's mode); an existing file is left as it is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return path
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    return path


def write_file(path: Path, data: str | bytes, durable: bool = False) -> None:
    """Write ``path`` whole, 0600, and (``durable``) flush it to stable storage;
    callers that need atomicity write a temporary name and rename it."""
    # Straight to the descriptor: no file object, which costs more than the write of
    # a small file (a staged copy's journal entry is written at every first change).
    fd = opener(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
