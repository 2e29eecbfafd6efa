"""Page-aligned buffers for direct I/O."""

from __future__ import annotations

from pathlib import Path

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


def _advice_over(view: memoryview) -> set[str]:
    """The VmFlags of the mappings that hold ``view``'s whole huge pages."""
    lo, hi = buffers.huge_page_span(view)
    flags: set[str] = set()
    start = end = 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
        elif head == "VmFlags:" and start < hi and end > lo:
            flags.update(line.split()[1:])
    return flags


def test_a_large_buffer_asks_for_huge_pages() -> None:
    if "[madvise]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text():
        pytest.skip("this kernel gives huge pages without advice, or never")
    large = buffers.aligned(buffers.HUGE_PAGES_FROM + buffers.HUGE_PAGE)
    assert "hg" in _advice_over(large)
    # Advice covers whole huge pages only: none inside a few pages.
    assert not buffers.advise_huge_pages(large[: 4 * buffers.ALIGNMENT])
