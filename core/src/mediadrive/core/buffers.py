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
"""

from __future__ import annotations

import ctypes

# The alignment direct I/O asks for on every Linux file system (a page; the disks'
# logical blocks are at most this).
ALIGNMENT = 4096

# bytearray's constructor with no source: the memory is not zeroed first.
_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]
_new_bytearray.restype = ctypes.py_object


def aligned(size: int) -> memoryview:
    """A writable view of ``size`` uninitialised bytes starting at an aligned address."""
    raw: bytearray = _new_bytearray(None, size + ALIGNMENT)
    start = -address(memoryview(raw)) % ALIGNMENT
    return memoryview(raw)[start : start + size]


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
