"""``mediadrive storage-pod serve``: bad flags end in one line, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.servers import mediadrive_command


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--capacity", "lots"], "--capacity"),
        (["--capacity", "-5GiB"], "--capacity"),
        (["--listen", "nowhere"], "--listen"),
        (["--listen", "127.0.0.1:99999"], "--listen"),
        (["--replication", "0"], "--replication"),
        (["--peers", "ftp://elsewhere"], "--peers"),
        (["--upstream", "ftp://cloud/bucket"], "--upstream"),
        (["--relay", "show"], "--relay"),
        (["--token-file", "/nonexistent/tokens"], "--token-file"),
        (["--peers", "http://a:1", "--peers-dns", "pods.local"], "--peers-dns"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(tmp_path: Path, flags: list[str], named: str) -> None:
    data = tmp_path / "data"
    result = subprocess.run(
        [*mediadrive_command(), "storage-pod", "serve", "--data", str(data), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mediadrive: error: ")
    assert named in lines[0]
    assert "Traceback" not in result.stderr
    assert not data.exists()


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *mediadrive_command(),
                "storage-pod",
                "serve",
                "--data",
                str(tmp_path / "data"),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("mediadrive:")]
    assert len(errors) == 1 and f"--listen 127.0.0.1:{port}: cannot listen" in errors[0]
    assert "Traceback" not in result.stderr


def test_a_pod_runs_from_its_rendered_settings(tmp_path: Path) -> None:
    import json
    import signal
    import sys
    import time

    from mediadrive.pod.settings import PodSettings
    from tests.pod.support import http
    from tests.servers import free_port

    port = free_port()
    settings = PodSettings(data=tmp_path / "data", listen=f"127.0.0.1:{port}", region="lab")
    rendered = tmp_path / "pod.json"
    rendered.write_text(settings.model_dump_json())
    with subprocess.Popen(
        [sys.executable, "-m", "mediadrive.pod", "--settings", str(rendered)],
        stderr=subprocess.PIPE,
    ) as proc:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _, body = http("GET", f"http://127.0.0.1:{port}/v1/stats")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert status == 200 and json.loads(body)["region"] == "lab"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0

    rendered.write_text(json.dumps({"data": str(tmp_path), "capacity": "lots"}))
    result = subprocess.run(
        [sys.executable, "-m", "mediadrive.pod", "--settings", str(rendered)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "mediadrive-pod: error: --capacity: size 'lots' is not a size like 64MiB, 1GiB or 4096"
    ]
