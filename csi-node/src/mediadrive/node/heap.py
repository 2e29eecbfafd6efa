"""How the agent's process allocates its large buffers.

The agent moves large buffers all the time: a cold read receives each run of blocks
(up to 16 MiB) into a new one, an upload reads each 64 MiB chunk into another. glibc's
malloc serves allocations that large with a fresh ``mmap`` and unmaps it when freed,
so every page of every buffer is faulted in and zeroed again: measured, about a sixth
of the agent's CPU during a cold read, and a third of it while writing. Served from
the heap and kept there once freed, the next buffer reuses the same pages.

So the agent (:func:`keep_freed_buffers`, at start-up) asks glibc for one arena,
no ``mmap``-ed allocations, and up to ``TRIM_THRESHOLD`` of free memory kept at the
top of the heap before any is given back. The glibc variables (``MALLOC_ARENA_MAX``,
``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``) still win:
a setting given in the environment is left as it is. Other C libraries are left alone.

Kept pages still have to be faulted in once, each zeroed by the kernel: measured, a
256 MiB copy into a fresh mount cost the agent 0.78 s of CPU, the next ones 0.46-0.48
s, a fifth of the first one's samples in ``clear_page``. So once a mount is live the
agent faults in its upload window (:func:`fault_in`, on a thread of the lowest
priority, a few MiB at a time) and leaves it free in the heap: the memory an agent
holds after its first large write, held from the start. A first few MiB are faulted
in before the mount is announced (:func:`fault_in_now`, milliseconds): an edit right
after a mount otherwise faults in every buffer it takes (its bytes as written, the
piece its fsync sends), measured 0.3-0.4 ms a MiB, about a tenth of a 1 MiB edit
until durable. Neither is done where memory is short (:func:`memory_to_spare`: less
than four times what would be faulted in left under the container's limit, or
available on the machine): a node plugin given a memory limit, or a workstation with
many drives mounted, keeps its memory for what is actually written.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
import time
from pathlib import Path

from mediadrive.core.buffers import address, aligned

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

# Free memory the heap keeps at its top: a write's chunks in flight and a read's
# runs of blocks fit, so a steady stream reuses the same pages.
TRIM_THRESHOLD = 512 << 20
# What the heap keeps when it does give memory back (and grows by beyond a request).
TOP_PAD = 64 << 20

# glibc's own variable for each setting: one set in the environment wins.
_SETTINGS = {
    "MALLOC_ARENA_MAX": (_M_ARENA_MAX, 1),
    "MALLOC_MMAP_MAX_": (_M_MMAP_MAX, 0),
    "MALLOC_TRIM_THRESHOLD_": (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    "MALLOC_TOP_PAD_": (_M_TOP_PAD, TOP_PAD),
}

# Whether keep_freed_buffers made this process keep what it frees.
_kept = False


def keep_freed_buffers() -> dict[str, int]:
    """Tune glibc's malloc as the module says; returns what was set (empty when the C
    library is not glibc). Call it before the process starts its threads."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied: dict[str, int] = {}
    for variable, (parameter, value) in _SETTINGS.items():
        if variable not in os.environ and mallopt(parameter, value) == 1:
            applied[variable] = value
    global _kept
    _kept = "MALLOC_MMAP_MAX_" in applied and "MALLOC_TRIM_THRESHOLD_" in applied
    return applied


def fault_in_now(size: int, step: int | None = None, pause: float = 0.0) -> bool:
    """Fault ``size`` bytes of the heap in, then free them (kept, see the module), on
    this thread, ``step`` bytes at a time with ``pause`` seconds after each (all at
    once by default); False where freed memory would not be kept."""
    if not _kept:
        return False
    view = aligned(size)
    start = address(view)
    step = step or size
    for offset in range(0, size, step):
        # memset runs without the GIL; every page is written, so every page is faulted.
        ctypes.memset(start + offset, 0, min(step, size - offset))
        if pause:
            time.sleep(pause)
    del view
    return True


# How the heap is faulted in once a mount is quiet: a slice, then a pause. All at once
# (256 MiB, about 0.2 s of a core) it slowed whatever else ran on the machine then,
# measured: JuiceFS's 1 MiB edits beside it took 10.2 ms against 8.3 ms (medians of
# ten rounds), where other work on the node, and the next mount's, are what this
# warm-up is meant to leave alone. A slice takes about 1.5 ms of a core.
FAULT_IN_STEP = 2 << 20
FAULT_IN_PAUSE = 0.02


def fault_in(size: int) -> threading.Thread | None:
    """Fault ``size`` bytes of the heap in, then free them (kept, see the module), on a
    thread of the lowest priority, paced (FAULT_IN_STEP, FAULT_IN_PAUSE); returns the
    thread, started. None where freed memory would not be kept (not glibc's malloc,
    or not tuned here)."""
    if not _kept:
        return None

    def run() -> None:
        # Per thread on Linux: the mount's own work comes first, and (SCHED_IDLE)
        # anything else the machine runs.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        fault_in_now(size, FAULT_IN_STEP, FAULT_IN_PAUSE)

    thread = threading.Thread(target=run, name="heap-fault-in", daemon=True)
    thread.start()
    return thread


def memory_to_spare(
    proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """Bytes this process may still take: what the machine has available, or less
    where its cgroup (v2, or v1's memory controller) has a limit; None when neither is
    known."""
    spare = None
    with contextlib.suppress(OSError, ValueError):
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                spare = int(line.split()[1]) * 1024
    left = _cgroup_room(proc, cgroups)
    if left is not None:
        spare = left if spare is None else min(spare, left)
    return spare


def _cgroup_room(proc: Path, cgroups: Path) -> int | None:
    """What is left under this process's cgroup memory limit; None with no limit."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files, base = ("memory.max", "memory.current"), cgroups
        elif "memory" in controllers.split(","):
            files, base = ("memory.limit_in_bytes", "memory.usage_in_bytes"), cgroups / "memory"
        else:
            continue
        # In a container of its own the cgroup is the root of what is mounted there.
        for folder in (base / path.lstrip("/"), base):
            try:
                text = (folder / files[0]).read_text().strip()
                # v1 says "no limit" with a huge number rather than "max".
                limit = 1 << 60 if text == "max" else int(text)
                used = int((folder / files[1]).read_text())
            except (OSError, ValueError):
                continue
            return None if limit >= 1 << 60 else max(limit - used, 0)
    return None
