"""Page-aligned buffers for direct I/O."""

from __future__ import annotations

import pytest

from mediadrive.core import buffers


@pytest.mark.parametrize("size", [1, 4096, 5000, 16 << 20])
def test_aligned_buffers_start_aligned_and_hold_what_is_written(size: int) -> None:
    view = buffers.aligned(size)
    assert len(view) == size and not view.readonly
    assert buffers.address(view) % buffers.ALIGNMENT == 0
    view[:] = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert bytes(view[:256]) == bytes(range(256))[: min(size, 256)]


def test_only_aligned_memory_of_whole_units_is_ready_for_direct_io() -> None:
    view = buffers.aligned(3 * buffers.ALIGNMENT)
    assert buffers.direct_io_ready(view)
    assert buffers.direct_io_ready(view[buffers.ALIGNMENT :])
    # Off the alignment, not a whole number of units, read-only, or a bytes object.
    assert not buffers.direct_io_ready(view[1 : 1 + buffers.ALIGNMENT])
    assert not buffers.direct_io_ready(view[: buffers.ALIGNMENT + 1])
    assert not buffers.direct_io_ready(view.toreadonly())
    assert not buffers.direct_io_ready(bytes(view))
    assert not buffers.direct_io_ready(memoryview(b""))
