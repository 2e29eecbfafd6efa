"""A real mount reading its drive's events from a pod's event relay, and without it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mediadrive.cli import drive_registry
from tests.servers import free_port

from .conftest import DriveFactory, Mounts, _current_settings, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def relay_for() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_relay(port: int, drive: str, started: list[subprocess.Popen[bytes]]) -> None:
    ref = drive_registry.load_ref(drive, _current_settings())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.relay_server",
            str(port),
            f"{drive}={ref.meta_url}",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )
    started.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"


def test_a_mount_sees_changes_through_the_relay_and_polls_when_it_is_gone(
    make_drive: DriveFactory, mounts: Mounts, relay_for: list[subprocess.Popen[bytes]]
) -> None:
    name = make_drive()
    port = free_port()
    start_relay(port, name, relay_for)
    a = mounts.mount(name, commit_on="save")
    # b polls the store only every 20 s: changes seen sooner came through the relay.
    b = mounts.mount(
        name, commit_on="save", relay_url=f"http://127.0.0.1:{port}", follow_interval=20
    )
    (a / "shot.txt").write_text("first take")
    a.save("/shot.txt")
    wait_until(
        lambda: (b / "shot.txt").exists() and (b / "shot.txt").read_text() == "first take",
        timeout=5,
    )
    (a / "shot.txt").write_text("second take")
    a.save("/shot.txt")
    wait_until(lambda: (b / "shot.txt").read_text() == "second take", timeout=5)
    # The relay dies: b still gets the next change, from its own (slow) polls.
    relay_for[0].kill()
    relay_for[0].wait()
    (a / "shot.txt").write_text("third take, polled")
    a.save("/shot.txt")
    wait_until(lambda: (b / "shot.txt").read_text() == "third take, polled", timeout=45)
