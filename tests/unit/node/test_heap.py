"""The agent's malloc settings: freed large buffers are reused, not faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
from mediadrive.node.heap import fault_in, keep_freed_buffers

if sys.argv[1] != "untuned":
    keep_freed_buffers()
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_heap_faulted_in_ahead_serves_a_large_buffer_without_new_pages() -> None:
    cold, _ = faults_after("tuned-only")
    warm, started = faults_after("tuned")
    assert started
    assert warm < cold // 4
    # Where freed memory would not be kept, nothing is faulted in for nothing.
    _, started = faults_after("untuned")
    assert not started
