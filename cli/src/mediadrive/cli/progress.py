"""Progress bars for long transfers, shown only when a person is watching."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# Below this a bar only flickers.
_MIN_BYTES = 8 << 20


@contextmanager
def transfer_progress(console: Console, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """Yields ``tick(nbytes)``; draws a bar on a terminal, does nothing elsewhere."""
    if not console.is_terminal or total < _MIN_BYTES:
        yield lambda _n: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
