"""Where the CLI writes: tables and messages for people, JSON for scripts."""

from __future__ import annotations

import functools
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class _LazyConsole:
    """A rich console made on first use: `mediadrive --help` never imports rich."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr

    @functools.cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(stderr=self._stderr)

    def print(self, *objects: Any, **options: Any) -> None:
        self.console.print(*objects, **options)

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal


out = _LazyConsole(stderr=False)
err = _LazyConsole(stderr=True)


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
