"""The base layout: the blocks of a version worked out from its extents, exactly as
listing them would give, and a staged copy journaled with either form."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mediadrive.core.extents import ExtentMap
from mediadrive.core.hashing import BLOCK_SIZE, block_digests, chunk_id, identify
from mediadrive.core.meta import Extent
from mediadrive.node.base_layout import BaseBlock, BaseLayout, MissingBlocks
from mediadrive.node.staging import Staging


@st.composite
def contents(draw: st.DrawFn) -> ExtentMap:
    """Versions made of slices: some continue the previous slice of the same chunk
    (as an edit leaves the bytes on each side of it), some start or end mid-block."""
    extents: list[Extent] = []
    offset = 0
    for n in range(draw(st.integers(0, 8))):
        length = draw(st.integers(1, 3 * BLOCK_SIZE + 5))
        previous = extents[-1] if extents else None
        if previous is not None and draw(st.booleans()):
            extent = Extent(
                offset, length, previous.chunk_id, previous.chunk_offset + previous.length
            )
        else:
            start = draw(st.integers(0, 2 * BLOCK_SIZE))
            extent = Extent(offset, length, f"c{n}", start)
        extents.append(extent)
        offset += length
    return ExtentMap.of(1, offset, extents)


def listed(content: ExtentMap) -> list[BaseBlock]:
    """The blocks as the staging area listed them before the layout."""
    return [
        BaseBlock(b.start, b.hi - b.lo, b.chunk_id, b.block, b.lo) for b in content.all_blocks()
    ]


def grouped(blocks: list[BaseBlock]) -> list[range]:
    """Consecutive blocks of one chunk at consecutive offsets, as listed groups were."""
    groups: list[range] = []
    for i, block in enumerate(blocks):
        prev = blocks[i - 1] if i else None
        if (
            prev is not None
            and block.chunk_id == prev.chunk_id
            and block.chunk_position == prev.chunk_position + prev.length
            and block.offset == prev.end
        ):
            groups[-1] = range(groups[-1].start, i + 1)
        else:
            groups.append(range(i, i + 1))
    return groups


@settings(max_examples=300, deadline=None)
@given(contents())
def test_the_layout_gives_the_blocks_a_listing_gives(content: ExtentMap) -> None:
    layout = BaseLayout.of(content)
    blocks = listed(content)
    assert len(layout) == len(blocks)
    assert list(layout) == blocks
    assert [layout[i] for i in range(-len(blocks), 0)] == blocks
    assert layout[1:3] == blocks[1:3]
    assert [group for group, _ in layout.groups()] == grouped(blocks)
    assert list(BaseLayout.from_rows(json.loads(json.dumps(layout.rows())))) == blocks


def test_a_position_past_the_end_is_an_index_error() -> None:
    layout = BaseLayout([Extent(0, BLOCK_SIZE + 1, "a")])
    assert len(layout) == 2
    for i in (2, -3):
        try:
            layout[i]
        except IndexError:
            continue
        raise AssertionError(f"layout[{i}] did not raise")


def test_a_gigabyte_is_written_down_as_its_extents(tmp_path: Path) -> None:
    content = ExtentMap.of(1, 1 << 30, [Extent(i << 26, 1 << 26, f"{i:064x}") for i in range(16)])
    staging = Staging(tmp_path)
    staging.open()
    staged = staging.create(7, "/f", 1, 0o644, 0, base=BaseLayout.of(content), size=content.size)
    assert len(staged.base) == 1024 and len(staged.missing) == 1024
    staged.touch(0, 1)  # its entry is written at its first change
    assert len(json.loads((tmp_path / f"{staged.stem}.json").read_text())["extents"]) == 16
    staging.close()


def test_a_copy_journaled_with_a_block_list_is_recovered(tmp_path: Path) -> None:
    """A staging area left by a release that listed every block of the base."""
    content = ExtentMap.of(
        1,
        2 * BLOCK_SIZE + 9,
        [Extent(0, BLOCK_SIZE + 3, "a"), Extent(BLOCK_SIZE + 3, BLOCK_SIZE + 6, "b", 5)],
    )
    blocks = listed(content)
    staging = Staging(tmp_path)
    staging.open()
    staged = staging.create(7, "/f", 1, 0o644, 0, base=BaseLayout.of(content), size=content.size)
    staged.touch()
    staging.write_journal(staged)
    staged.settle([1])
    staging.close()
    # Named by the node alone, as those releases did.
    for made in tmp_path.glob(f"{staged.stem}.*"):
        made.rename(tmp_path / f"7{made.suffix}")
    rows = [[b.offset, b.length, b.chunk_id, b.index, b.skip] for b in blocks]
    (tmp_path / "7.base").write_text(json.dumps(rows))
    # Its entry named no extents: they were in that file.
    entry = json.loads((tmp_path / "7.json").read_text())
    del entry["extents"]
    (tmp_path / "7.json").write_text(json.dumps(entry))

    again = Staging(tmp_path)
    [found] = again.open()
    assert list(found.base) == blocks
    assert set(found.missing) == set(range(len(blocks))) - {1}
    assert found.lacking(0, content.size) == sorted(found.missing)
    again.close()


def test_identify_names_a_chunk_as_chunk_id_and_block_digests_do() -> None:
    for size in (0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 7):
        data = os.urandom(size)
        assert identify(data) == (chunk_id(data), block_digests(data)), size


@settings(max_examples=150, deadline=None)
@given(contents(), st.data())
def test_what_stays_untouched_follows_settles_and_writes_into_lacking_blocks(
    content: ExtentMap, data: st.DataObject
) -> None:
    """The copy tracks the few blocks it holds or was written into; what it reports
    untouched is what a look at every block would say."""
    with tempfile.TemporaryDirectory() as root:
        staging = Staging(Path(root))
        staging.open()
        layout = BaseLayout.of(content)
        staged = staging.create(7, "/f", 1, 0o644, 0, base=layout, size=content.size)
        for _ in range(data.draw(st.integers(0, 6))):
            if not len(layout):
                break
            i = data.draw(st.integers(0, len(layout) - 1))
            if data.draw(st.booleans()):
                staged.settle([i])
            elif i in staged.missing:
                block = layout[i]
                staged._take_partial(i, block.offset, block.offset + 1)
        untouched = [
            group
            for group, _ in layout.groups()
            if all(p in staged.missing and p not in staged.partial for p in group)
        ]
        assert [list(p) for _, p in staged.untouched_extents()] == [list(g) for g in untouched]
        assert staged.missing_bytes() == sum(layout[i].length for i in staged.missing)
        staging.close()


@given(
    count=st.integers(0, 300),
    settled=st.lists(st.integers(-5, 310), max_size=60),
    probes=st.lists(st.integers(-5, 310), max_size=30),
)
def test_missing_blocks_behave_as_the_set_of_positions_not_yet_held(
    count: int, settled: list[int], probes: list[int]
) -> None:
    missing = MissingBlocks(count)
    model = set(range(count))
    for position in settled:
        missing.discard(position)
        model.discard(position)
        assert len(missing) == len(model) and bool(missing) == bool(model)
    assert list(missing) == sorted(model)
    assert set(missing) == model
    for position in [*probes, *settled]:
        assert (position in missing) == (position in model)
    others = set(probes)
    assert (missing & others, missing | others) == (model & others, model | others)
    assert (missing - others, missing ^ others) == (model - others, model ^ others)
    # The map file a copy keeps (a non-zero byte per block held) gives them back.
    journaled = bytes(0 if i in model else 1 for i in range(count))
    assert set(MissingBlocks.from_map(journaled)) == model


def test_a_copy_of_a_large_file_keeps_only_the_blocks_it_holds(tmp_path: Path) -> None:
    # 100 GiB of 64 MiB chunks: 102,400 blocks, none listed at open.
    chunk = 64 << 20
    content = ExtentMap.of(
        1, 1600 * chunk, [Extent(i * chunk, chunk, f"{i:064x}") for i in range(1600)]
    )
    staging = Staging(tmp_path)
    staging.open()
    staged = staging.create(7, "/plate.exr", 1, 0o644, 0, BaseLayout.of(content), content.size)
    assert len(staged.missing) == 102_400 and staged.missing.held == set()
    staged.settle([5, 102_399])
    assert staged.missing.held == {5, 102_399} and 5 not in staged.missing
    staging.close()
