"""Progress bars for long transfers, shown only when a person is watching."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# Below this a bar only flickers.
_MIN_BYTES = 8 << 20


def transfer_bar(console: Console) -> Progress:
    """The bar every long transfer draws: bytes, speed and time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextmanager
def transfer_progress(console: Console, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """Yields ``tick(nbytes)``; draws a bar on a terminal, does nothing elsewhere."""
    if not console.is_terminal or total < _MIN_BYTES:
        yield lambda _n: None
        return
    with transfer_bar(console) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def count_progress(
    console: Console | None, label: str
) -> Iterator[Callable[[int, int, str], None]]:
    """Yields ``tick(done, total, item)`` for work counted in items (files); draws a bar
    on a terminal once there are a few, does nothing elsewhere or with no console."""
    if console is None or not console.is_terminal:
        yield lambda _done, _total, _item: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[item]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=None, item="")

        def tick(done: int, total: int, item: str) -> None:
            bar.update(task, completed=done, total=total, item=item)

        yield tick
