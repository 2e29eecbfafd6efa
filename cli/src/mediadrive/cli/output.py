"""Where the CLI writes: tables and messages for people, JSON for scripts."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from mediadrive.core.errors import MediadriveError

if TYPE_CHECKING:
    from rich.console import Console

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

T = TypeVar("T")


def failure(message: str, code: int = 1) -> typer.Exit:
    """Print ``mediadrive: error: MESSAGE`` (secrets masked); returns the Exit to raise."""
    from mediadrive.core.credentials import redact_url

    sys.stderr.write(f"mediadrive: error: {redact_url(message)}\n")
    return typer.Exit(code)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; an error a person can act on ends it in one line."""
    try:
        return asyncio.run(coro)
    except MediadriveError as exc:
        raise failure(str(exc)) from None


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
