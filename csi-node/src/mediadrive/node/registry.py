"""The mounts running on this machine: one small JSON file per mount in a run folder.

Each entry names the mount's control socket, so a command given any local path can
find the agent that serves it (:meth:`MountRegistry.find_mount`). The folder is
given by whoever runs the node (the CLI's settings, the CSI service's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mediadrive.core import private

# sun_path is 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100


def mount_key(mountpoint: Path | str) -> str:
    return hashlib.sha256(os.fsencode(str(mountpoint))).hexdigest()[:16]


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    drive: str
    subdir: str
    socket: str
    pid: int
    cache_dir: str
    log: str
    started: float

    @property
    def alive(self) -> bool:
        return pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped) is as good as dead.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def read_entry(path: Path) -> MountEntry | None:
    try:
        return MountEntry(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


class MountRegistry:
    """The entries and control sockets of the mounts under one run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def _entry_path(self, mountpoint: Path | str) -> Path:
        return self.run_dir / f"{mount_key(mountpoint)}.json"

    def socket_path_for(self, mountpoint: Path) -> Path:
        key = mount_key(mountpoint)
        preferred = self.run_dir / f"{key}.sock"
        if len(os.fsencode(str(preferred))) <= _MAX_SOCKET_PATH:
            return preferred
        return Path(tempfile.gettempdir()) / f"mediadrive-{os.getuid()}-{key}.sock"

    def write_entry(self, entry: MountEntry) -> Path:
        private.make_dir(self.run_dir, tighten=True)
        path = self._entry_path(entry.mountpoint)
        tmp = path.with_suffix(".tmp")
        private.write_file(tmp, json.dumps(asdict(entry), indent=2) + "\n")
        tmp.replace(path)
        return path

    def remove_entry(self, mountpoint: Path | str, pid: int | None = None) -> None:
        path = self._entry_path(mountpoint)
        if pid is not None:
            entry = read_entry(path)
            if entry is not None and entry.pid != pid:
                return
        path.unlink(missing_ok=True)

    def entries(self, live_only: bool = True) -> list[MountEntry]:
        if not self.run_dir.is_dir():
            return []
        found = []
        for path in sorted(self.run_dir.glob("*.json")):
            entry = read_entry(path)
            if entry is not None and (entry.alive or not live_only):
                found.append(entry)
        return found

    def entry_for(self, mountpoint: Path | str, live_only: bool = True) -> MountEntry | None:
        entry = read_entry(self._entry_path(Path(mountpoint).absolute()))
        return entry if entry is not None and (entry.alive or not live_only) else None

    def find_mount(self, path: Path | str) -> tuple[MountEntry, str] | None:
        """The live mount holding ``path`` and the path inside it (``/a/b``), or None."""
        live = self.entries()
        if not live:
            return None
        candidates = [os.path.abspath(path)]
        with contextlib.suppress(OSError):
            real = os.path.realpath(path)
            if real != candidates[0]:
                candidates.append(real)
        for candidate in candidates:
            best: MountEntry | None = None
            for entry in live:
                mp = entry.mountpoint.rstrip("/") or "/"
                inside = candidate == mp or candidate.startswith(mp.rstrip("/") + "/")
                if inside and (best is None or len(mp) > len(best.mountpoint)):
                    best = entry
            if best is not None:
                rel = candidate[len(best.mountpoint.rstrip("/")) :] or "/"
                return best, rel if rel.startswith("/") else "/" + rel
        return None
