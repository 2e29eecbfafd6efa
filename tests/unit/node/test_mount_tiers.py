"""A mount on a machine with storage pods: the tier xattr, publish through the mount
service, and the ``after DURATION`` publisher (in process, no kernel)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mediadrive.core.drive import Drive
from mediadrive.core.policy import TierPolicy
from mediadrive.node.options import CommitOn, MountOptions
from mediadrive.node.service import MountService
from mediadrive.node.vfs import XATTR_TIER
from tests.integration import holding_store
from tests.unit.node.vfs_harness import TestVFS, create_test_drive, drive_urls, make_test_vfs


async def set_policy(base: Path, **fields: object) -> None:
    if not (base / "meta.db").exists():
        await create_test_drive(base)
    meta_url, store_url = drive_urls(base)
    async with await Drive.open("media", meta_url, store_url) as drive:
        policy = TierPolicy.model_validate(fields)
        await drive.meta.update_settings(policy.apply(drive.settings))


@pytest.fixture
def pod_url() -> Iterator[str]:
    yield f"memhold://{uuid.uuid4().hex[:12]}?region=la"
    holding_store.forget_all()


async def tier(fs: TestVFS, path: str) -> str:
    return (await fs.vfs.getxattr(await fs.inode(path), XATTR_TIER)).decode()


async def test_publish_through_the_mount_service(tmp_path: Path, pod_url: str) -> None:
    await set_policy(tmp_path, writeTarget="pod", chunking={"kind": "fixed", "size": "4KiB"})
    fs = await make_test_vfs(tmp_path, pod_url=pod_url)
    try:
        await fs.mkdir("shots")
        await fs.write_file("shots/a.exr", b"x" * 10_000)
        await fs.save()
        assert await tier(fs, "shots/a.exr") == "pod:la"
        service = MountService(fs.parts, tmp_path / "mnt", lambda: None)
        await fs.write_file("shots/b.exr", b"y" * 5000)
        result = await service.publish("/shots", "review")
        assert len(result["saved"]) == 1
        assert (result["files"], result["paths"]) == (2, ["/shots/a.exr", "/shots/b.exr"])
        # Two distinct chunks each: a.exr is 4KiB of x twice then the rest, b.exr 4KiB + rest.
        assert (result["chunks_sent"], result["bytes_sent"]) == (4, 4096 + 1808 + 4096 + 904)
        assert await tier(fs, "shots/a.exr") == "cloud"
        assert (await service.publish("/shots/a.exr", ""))["tier"] == "cloud"
        status = service.status()
        assert (status.pods, status.write_target, status.publish) == (pod_url, "pod", "manual")
    finally:
        await fs.close()


async def test_the_mount_publishes_versions_held_longer_than_the_policy(
    tmp_path: Path, pod_url: str
) -> None:
    await set_policy(tmp_path, writeTarget="pod", publish="after 0s")
    fs = await make_test_vfs(tmp_path, pod_url=pod_url)
    try:
        publisher = fs.parts.publisher
        assert publisher is not None and publisher.enabled
        await fs.write_file("a.bin", b"z" * 3000)
        await fs.save()
        for _ in range(100):
            if await tier(fs, "a.bin") == "cloud":
                break
            await asyncio.sleep(0.05)
        assert await tier(fs, "a.bin") == "cloud"
        assert publisher.published >= 1
    finally:
        await fs.close()


async def test_without_pods_the_publisher_stays_idle(tmp_path: Path) -> None:
    await set_policy(tmp_path, publish="after 1h")
    fs = await make_test_vfs(tmp_path)
    try:
        assert fs.parts.publisher is not None and not fs.parts.publisher.enabled
        await fs.write_file("a.bin", b"q")
        await fs.save()
        assert await tier(fs, "a.bin") == "cloud"
    finally:
        await fs.close()


def test_the_drive_policy_fills_the_mount_options_not_given(tmp_path: Path) -> None:
    rules = TierPolicy.model_validate(
        {"localCacheSize": "2GiB", "checkpointInterval": "5m", "commitOn": "fsync"}
    ).rules()
    base = {
        "drive": "media",
        "meta_url": "sqlite:///x",
        "store_url": "file:///y",
        "mountpoint": tmp_path / "m",
        "cache_dir": tmp_path / "c",
        "run_dir": tmp_path / "r",
    }
    filled = MountOptions.model_validate(base).with_policy(rules)
    assert (filled.cache_size, filled.checkpoint_interval, filled.commit_on) == (
        2 << 30,
        300.0,
        CommitOn.FSYNC,
    )
    given = MountOptions.model_validate(
        {**base, "cache_size": "1GiB", "checkpoint_interval": "off", "commit_on": "close"}
    )
    # Sent to the agent as JSON, what was given stays given.
    given = MountOptions.model_validate_json(given.model_dump_json(exclude_unset=True))
    kept = given.with_policy(rules)
    assert (kept.cache_size, kept.checkpoint_interval, kept.commit_on) == (
        1 << 30,
        None,
        CommitOn.CLOSE,
    )


async def test_temporary_files_written_through_a_mount_stay_in_the_pods(
    tmp_path: Path, pod_url: str
) -> None:
    await set_policy(tmp_path, writeTarget="cloud", temporary={"globs": ["*.tmp"], "ttl": "10m"})
    fs = await make_test_vfs(tmp_path, pod_url=pod_url)
    try:
        await fs.write_file("render.tmp", b"t" * 100)
        await fs.write_file("final.exr", b"f" * 100)
        await fs.save()
        assert await tier(fs, "render.tmp") == "pod:la"
        assert await tier(fs, "final.exr") == "cloud"
        pod = holding_store.pod(holding_store.parse(pod_url)[0])
        held = [c for c in pod.chunks.values() if c.holding == "held"]
        assert len(held) == 1 and held[0].data == b"t" * 100 and held[0].expires is not None
        service = MountService(fs.parts, tmp_path / "mnt", lambda: None)
        result = await service.publish("/", "")
        assert (result["files"], result["temporary_skipped"]) == (0, 1)
    finally:
        await fs.close()
