"""A store that fails mid-upload: the error surfaces, nothing is committed, nothing hangs."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.core.errors import StoreUnavailable


async def test_failed_put_leaves_no_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = await Drive.create(
        "fail",
        f"sqlite:///{tmp_path}/meta.db",
        f"file://{tmp_path}/store",
        DriveSettings(chunk_size="64KiB"),
    )
    try:
        data = os.urandom(4 << 20)
        await drive.write_file("/ok", io.BytesIO(data[: 1 << 20]))
        calls = 0
        real_put = drive.blobs.put

        async def flaky_put(chunk: str, payload: bytes | memoryview) -> None:
            nonlocal calls
            calls += 1
            if calls > 3:
                raise StoreUnavailable("S3 store is unreachable")
            await real_put(chunk, payload)

        monkeypatch.setattr(drive.blobs, "put", flaky_put)
        with pytest.raises(StoreUnavailable):
            # A full queue must not leave the chunking thread stuck: bounded wait.
            await asyncio.wait_for(drive.write_file("/big", io.BytesIO(data)), 30)
        assert await drive.meta.resolve("/big") is None
        assert [e.kind for e in [e async for e in drive.events()]] == ["commit"]
        out = io.BytesIO()
        await drive.read_to("/ok", out)
        assert out.getvalue() == data[: 1 << 20]
    finally:
        await drive.close()
