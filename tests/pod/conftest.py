"""Real storage pod processes on loopback ports, started per test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.servers import PodServer, ServerStartError, free_port, pod_server


class Pods:
    """Starts pods for one test; all are stopped (SIGTERM) when the test ends."""

    def __init__(self, stack: ExitStack, tmp_path: Path) -> None:
        self._stack = stack
        self._tmp = tmp_path
        self._count = 0

    def data_dir(self, name: str) -> Path:
        return self._tmp / name

    def start(self, *args: str, name: str | None = None, port: int | None = None) -> PodServer:
        """A pod with its data in ``tmp_path/NAME`` (the same NAME restarts on it)."""
        self._count += 1
        data = self.data_dir(name or f"pod{self._count}")
        try:
            return self._stack.enter_context(pod_server(data, *args, port=port))
        except ServerStartError as exc:
            pytest.fail(f"could not start a storage pod: {exc}", pytrace=False)

    @staticmethod
    def ports(n: int) -> list[int]:
        found: list[int] = []
        while len(found) < n:
            port = free_port()
            if port not in found:
                found.append(port)
        return found


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    with ExitStack() as stack:
        yield Pods(stack, tmp_path)
