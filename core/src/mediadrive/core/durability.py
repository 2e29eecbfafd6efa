"""Making local writes survive a crash: file data and the directory entry naming it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from . import private


def fsync_dir(path: Path) -> None:
    """Flush a directory, so a file created or renamed in it survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(final: Path, data: bytes | memoryview, tmp: Path) -> None:
    """Write ``final`` (owner-only) through ``tmp``: the data is fsynced before the
    rename and the folder after it, so a reader or a crash sees the whole file or
    none of it. On OSError nothing is left at ``tmp`` and the error propagates."""
    try:
        private.make_dir(final.parent)
        with open(tmp, "wb", opener=private.opener) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
