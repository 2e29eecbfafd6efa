"""A drive opens from its URLs alone: the embedding example runs with an empty home."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

from mediadrive.core.drive import Drive

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "open_a_drive.py"


async def test_the_embedding_example_opens_reads_and_commits_without_a_home(
    meta_url: str, tmp_path: Path
) -> None:
    store_url = f"file://{tmp_path}/store"
    drive = await Drive.create("show", meta_url, store_url)
    try:
        await drive.mkdir("/shots")
        await drive.write_file("/shots/plate.exr", io.BytesIO(b"EXR-plate-bytes-0123456789"))
    finally:
        await drive.close()

    empty = tmp_path / "empty-home"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIADRIVE_")}
    env.update(HOME=str(empty), MEDIADRIVE_HOME=str(empty))
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(EXAMPLE), meta_url, store_url, "show", "/shots/plate.exr"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "/shots/plate.exr v1: 26 bytes, starts b'EXR-plate-bytes-'" in proc.stdout
    assert "committed v2" in proc.stdout
    assert list(empty.iterdir()) == []

    drive = await Drive.open("show", meta_url, store_url)
    try:
        versions = await drive.versions("/shots/plate.exr")
        assert [(v.version, v.author, v.message) for v in versions] == [
            (1, drive.author, ""),
            (2, "render-job-42@farm", "grade"),
        ]
        reader = await drive.reader("/shots/plate.exr")
        assert await reader.read(0, 100) == b"graded EXR-plate-bytes-"
    finally:
        await drive.close()
