"""The agent's malloc settings: freed large buffers are reused, not faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mediadrive.node.heap import memory_to_spare

# Allocates large buffers the way the agent does and prints the page faults it took:
# 64 MiB ones (an upload's chunks) in the main thread, 8 MiB ones (a read's runs of
# blocks) made in worker threads and freed in the main one. Every page is written.
_ALLOCATE = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
from mediadrive.node.heap import keep_freed_buffers

applied = keep_freed_buffers() if sys.argv[1] == "tuned" else {}

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

before = faults()
for _ in range(12):
    chunk = b"c" * (64 << 20)
    del chunk
with ThreadPoolExecutor(8) as pool:
    for _ in range(6):
        runs = list(pool.map(lambda n: b"r" * (8 << 20), range(8)))
        del runs
print(faults() - before, ",".join(sorted(applied)))
"""


def allocate(mode: str, **env: str) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-c", _ALLOCATE, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), out[1] if len(out) > 1 else ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_buffers_are_reused_instead_of_faulted_in_again() -> None:
    untuned, _ = allocate("untuned")
    tuned, applied = allocate("tuned")
    pages = (12 * (64 << 20) + 6 * 8 * (8 << 20)) // os.sysconf("SC_PAGE_SIZE")
    # Without the settings nearly every page of every buffer is a fresh one.
    assert untuned > pages * 3 // 4
    # With them, about one chunk's and one round of runs' pages, the first time only.
    assert tuned < pages // 4
    assert applied == "MALLOC_ARENA_MAX,MALLOC_MMAP_MAX_,MALLOC_TOP_PAD_,MALLOC_TRIM_THRESHOLD_"


def test_a_setting_given_in_the_environment_is_left_as_it_is() -> None:
    _, applied = allocate("tuned", MALLOC_MMAP_MAX_="65536", MALLOC_ARENA_MAX="4")
    assert applied == "MALLOC_TOP_PAD_,MALLOC_TRIM_THRESHOLD_"


# A 64 MiB buffer written in full, after the heap was faulted in ahead of it (or not):
# the page faults the buffer took, and whether there was a fault-in thread.
_AFTER_FAULT_IN = """
import ctypes, resource, sys
from mediadrive.core.buffers import address, aligned
from mediadrive.node.heap import fault_in, fault_in_now, keep_freed_buffers

if sys.argv[1] != "untuned":
    keep_freed_buffers()
if sys.argv[1] in ("now", "paced"):
    thread = None
    # Paced: 96 MiB in slices of 8 MiB, 0.05 s after each (at least 0.6 s in all).
    step, pause = (8 << 20, 0.05) if sys.argv[1] == "paced" else (None, 0.0)
    if not fault_in_now(96 << 20, step, pause):
        sys.exit("nothing faulted in")
else:
    thread = fault_in(96 << 20) if sys.argv[1] != "tuned-only" else None
if thread is not None:
    thread.join()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
chunk = aligned(64 << 20)
ctypes.memset(address(chunk), 0x63, len(chunk))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, thread is not None)
"""


def faults_after(mode: str) -> tuple[int, bool]:
    out = subprocess.run(
        [sys.executable, "-c", _AFTER_FAULT_IN, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), out[1] == "True"


def seconds_of(mode: str) -> float:
    start = time.monotonic()
    faults_after(mode)
    return time.monotonic() - start


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_heap_faulted_in_ahead_serves_a_large_buffer_without_new_pages() -> None:
    cold, _ = faults_after("tuned-only")
    warm, started = faults_after("tuned")
    assert started
    assert warm < cold // 4
    # Where freed memory would not be kept, nothing is faulted in for nothing.
    _, started = faults_after("untuned")
    assert not started


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_heap_faulted_in_on_the_spot_serves_a_large_buffer_without_new_pages() -> None:
    # What the agent does before it announces a mount (see agent.EARLY_FAULT_IN).
    cold, _ = faults_after("tuned-only")
    warm, _ = faults_after("now")
    assert warm < cold // 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_heap_faulted_in_slice_by_slice_pauses_between_slices_and_serves_as_well() -> None:
    # What the agent does once a mount is quiet (see heap.FAULT_IN_STEP): the work is
    # spread out, and the pages are as faulted in as all at once.
    cold, _ = faults_after("tuned-only")
    warm, _ = faults_after("paced")
    assert warm < cold // 4
    assert seconds_of("paced") >= 12 * 0.05


def _machine(tmp_path: Path, cgroup: str, available_mib: int | None = 8192) -> tuple[Path, Path]:
    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    cgroups.mkdir()
    if available_mib is not None:
        (proc / "meminfo").write_text(
            f"MemTotal:       16000000 kB\nMemAvailable:   {available_mib * 1024} kB\n"
        )
    (proc / "self" / "cgroup").write_text(cgroup)
    return proc, cgroups


def _limit(folder: Path, names: tuple[str, str], limit: str, used: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / names[0]).write_text(limit + "\n")
    (folder / names[1]).write_text(f"{used}\n")


V2 = ("memory.max", "memory.current")
V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes")
MiB = 1 << 20


def test_memory_to_spare_is_what_the_machine_has_without_a_limit(tmp_path: Path) -> None:
    proc, cgroups = _machine(tmp_path, "0::/user.slice\n")
    _limit(cgroups / "user.slice", V2, "max", 300 * MiB)
    assert memory_to_spare(proc, cgroups) == 8192 * MiB


def test_memory_to_spare_is_what_a_v2_limit_leaves(tmp_path: Path) -> None:
    proc, cgroups = _machine(tmp_path, "0::/kubepods/pod1/plugin\n")
    _limit(cgroups / "kubepods/pod1/plugin", V2, str(512 * MiB), 100 * MiB)
    assert memory_to_spare(proc, cgroups) == 412 * MiB


def test_memory_to_spare_in_a_container_reads_the_cgroup_mounted_as_root(tmp_path: Path) -> None:
    # v1 memory controller; the path names the host's view, the container sees its own
    # cgroup at the root of the mount.
    proc, cgroups = _machine(tmp_path, "5:cpu:/\n4:memory:/kubepods/podX/abc\n0::/\n")
    _limit(cgroups / "memory", V1, str(1024 * MiB), 1000 * MiB)
    assert memory_to_spare(proc, cgroups) == 24 * MiB


def test_memory_to_spare_takes_v1s_huge_number_as_no_limit(tmp_path: Path) -> None:
    proc, cgroups = _machine(tmp_path, "4:memory:/x\n", available_mib=2048)
    _limit(cgroups / "memory" / "x", V1, str(9223372036854771712), 10 * MiB)
    assert memory_to_spare(proc, cgroups) == 2048 * MiB


def test_memory_to_spare_is_unknown_with_nothing_to_read(tmp_path: Path) -> None:
    proc, cgroups = _machine(tmp_path, "", available_mib=None)
    assert memory_to_spare(proc, cgroups) is None


def test_memory_to_spare_passes_over_a_limit_it_cannot_read(tmp_path: Path) -> None:
    proc, cgroups = _machine(tmp_path, "4:memory:/x\n", available_mib=2048)
    _limit(cgroups / "memory" / "x", V1, "unreadable", 10 * MiB)
    assert memory_to_spare(proc, cgroups) == 2048 * MiB
