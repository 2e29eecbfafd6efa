"""Page-aligned buffers, for bytes that go to disk with direct I/O.

A block fetched from the store is written to the block cache's disk. Through the page
cache that write copies every byte into a new page, and a cold read pays it for every
byte on top of the copies off the socket and into the FUSE reply (about a fifth of the
agent's CPU); written with ``O_DIRECT`` the disk takes the bytes from the buffer they
were received into. Direct I/O wants the memory aligned to the disk's blocks, which a
``bytes`` object never is, hence :func:`aligned`.

The memory comes from the C heap like any other buffer (the agent keeps freed buffers
there, see ``node/heap.py``), so a steady stream of reads reuses the same pages, and is
left uninitialised: whoever asks for a buffer fills all of it.

A large buffer's first use faults its pages in one 4 KiB page at a time: for a 64 MiB
chunk gathered after a mount, measured, 0.6 ms a MiB, a third of what the write then
costs. Transparent huge pages fault in 2 MiB at a time (a third of that time), and most
kernels give them only where asked (``madvise`` mode), so :func:`aligned` asks for them
over a large buffer; the advice stays with the heap's pages when they are reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from collections.abc import Callable

# The alignment direct I/O asks for on every Linux file system (a page; the disks'
# logical blocks are at most this).
ALIGNMENT = 4096

# bytearray's constructor with no source: the memory is not zeroed first.
_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]
_new_bytearray.restype = ctypes.py_object

HUGE_PAGE = 2 << 20
# Below this a buffer holds few huge pages, if any: not worth a system call.
HUGE_PAGES_FROM = 4 * HUGE_PAGE


def _madvise() -> Callable[[int, int, int], int] | None:
    try:
        call = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    call.restype = ctypes.c_int
    return call


_MADVISE = _madvise()
_MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)


def aligned(size: int) -> memoryview:
    """A writable view of ``size`` uninitialised bytes starting at an aligned address."""
    raw: bytearray = _new_bytearray(None, size + ALIGNMENT)
    start = -address(memoryview(raw)) % ALIGNMENT
    view = memoryview(raw)[start : start + size]
    if size >= HUGE_PAGES_FROM:
        advise_huge_pages(view)
    return view


def advise_huge_pages(view: memoryview) -> bool:
    """Ask for transparent huge pages over the whole 2 MiB pages inside ``view``
    (advice only: False where the kernel or the C library cannot take it)."""
    if _MADVISE is None or _MADV_HUGEPAGE is None:
        return False
    lo, hi = huge_page_span(view)
    return hi > lo and _MADVISE(lo, hi - lo, _MADV_HUGEPAGE) == 0


def huge_page_span(view: memoryview) -> tuple[int, int]:
    """The addresses where the whole 2 MiB pages inside ``view`` start and end (equal
    when it holds none)."""
    begin = address(view)
    lo = -(-begin // HUGE_PAGE) * HUGE_PAGE
    return lo, max(lo, (begin + len(view)) // HUGE_PAGE * HUGE_PAGE)


def address(view: memoryview) -> int:
    """Where a writable buffer starts in memory."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def direct_io_ready(data: bytes | memoryview) -> bool:
    """Whether ``data`` can be written with direct I/O as it is: writable memory (a
    ``bytes`` object's never is aligned) starting at an aligned address, a whole
    number of aligned units long."""
    if not data or len(data) % ALIGNMENT or not isinstance(data, memoryview) or data.readonly:
        return False
    if not data.c_contiguous:
        return False
    return address(data) % ALIGNMENT == 0
