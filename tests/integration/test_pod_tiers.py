"""Storage pods in front of the cloud, with real processes: a pod on loopback, MinIO
as the cloud, PostgreSQL as the metadata store, and the installed ``mediadrive``.

What the user does: hold iterations in the region's pod, publish the final one,
and read it back from the cloud when the pod is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mediadrive.core.blob import open_store
from mediadrive.core.drive import Drive
from mediadrive.core.errors import NotPublished
from mediadrive.core.hashing import chunk_id
from tests.integration.test_cli import Cli
from tests.servers import PodServer, S3Server, create_database, pod_server

MiB = 1 << 20


def bucket_objects(s3: S3Server, bucket: str) -> dict[str, int]:
    """Key → size of every object in the bucket."""
    found: dict[str, int] = {}
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["Size"]
    return found


def chunk_ids(keys: dict[str, int]) -> set[str]:
    return {key.rsplit("/", 1)[-1] for key in keys}


def write_random(path: Path, size: int) -> str:
    """Write ``size`` random bytes; returns their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(MiB):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[PodServer]:
    with pod_server(tmp_path / "pod", "--region", "la") as server:
        yield server


@pytest.fixture
def cloud(minio_s3: S3Server) -> tuple[S3Server, str]:
    return minio_s3, minio_s3.new_bucket("cloud")


def use_keys(monkeypatch: pytest.MonkeyPatch, s3: S3Server) -> None:
    """The S3 keys for stores opened in this process (the CLI gets them in its env)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)


def make_cli(tmp_path: Path, s3: S3Server) -> Cli:
    return Cli(
        tmp_path / "home",
        {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
    )


def test_a_file_held_in_the_pod_reaches_the_cloud_only_when_published(
    tmp_path: Path, pod: PodServer, cloud: tuple[S3Server, str], postgres_url: str
) -> None:
    s3, bucket = cloud
    cli = make_cli(tmp_path, s3)
    meta = create_database(postgres_url, "tiers")
    cli.run(
        "drive", "create", "show", "--meta", meta,
        "--store", f"s3://{bucket}/show?endpoint={s3.endpoint_url}",
    )  # fmt: skip
    policy = tmp_path / "hold.yaml"
    policy.write_text("writeTarget: pod\npublish: manual\n")
    cli.run("drive", "set", "show", "--pod", pod.store_url("show"), "--policy", str(policy))

    plate = tmp_path / "plate.mov"
    digest = write_random(plate, 128 * MiB)
    cli.run("cp", str(plate), "show:/plate.mov")
    # Held in the pod: not one byte in the cloud.
    assert bucket_objects(s3, bucket) == {}
    assert [v["tier"] for v in cli.json("versions", "show:/plate.mov")] == ["pod:la"]

    report = cli.json("publish", "show:/plate.mov")
    objects = bucket_objects(s3, bucket)
    # Exactly the file's chunks (two of 64MiB), nothing else.
    assert sum(objects.values()) == 128 * MiB
    assert len(objects) == 2
    assert report["chunks_sent"] == 2 and report["bytes_sent"] == 128 * MiB
    assert [v["tier"] for v in cli.json("versions", "show:/plate.mov")] == ["cloud"]

    # Publishing again sends nothing.
    again = cli.json("publish", "show:/plate.mov")
    assert again["chunks_sent"] == 0
    assert bucket_objects(s3, bucket) == objects

    # The pod is gone: the file reads back from the cloud, identical.
    pod.proc.send_signal(signal.SIGKILL)
    pod.proc.wait(timeout=30)
    out = tmp_path / "back.mov"
    cli.run("cp", "show:/plate.mov", str(out))
    assert sha256(out) == digest


def test_an_edit_publishes_only_the_chunks_the_cloud_lacks(
    tmp_path: Path, pod: PodServer, cloud: tuple[S3Server, str], postgres_url: str
) -> None:
    s3, bucket = cloud
    cli = make_cli(tmp_path, s3)
    cli.run(
        "drive", "create", "show", "--meta", create_database(postgres_url, "tiers"),
        "--store", f"s3://{bucket}/show?endpoint={s3.endpoint_url}",
        "--chunking", "fixed", "--chunk-size", "1MiB",
    )  # fmt: skip
    policy = tmp_path / "hold.yaml"
    policy.write_text("writeTarget: pod\n")
    cli.run("drive", "set", "show", "--pod", pod.store_url("show"), "--policy", str(policy))
    cut = tmp_path / "cut.mov"
    write_random(cut, 8 * MiB)
    cli.run("cp", str(cut), "show:/cut.mov")
    cli.json("publish", "show:/cut.mov")
    first = chunk_ids(bucket_objects(s3, bucket))
    assert len(first) == 8

    # An edit of one MiB: one new chunk held in the pod, one sent on publish.
    with cut.open("r+b") as f:
        f.seek(3 * MiB)
        f.write(os.urandom(MiB))
    cli.run("cp", str(cut), "show:/cut.mov")
    assert chunk_ids(bucket_objects(s3, bucket)) == first
    report = cli.json("publish", "show:/cut.mov")
    assert (report["chunks_sent"], report["bytes_sent"]) == (1, MiB)
    assert report["chunks_present"] == 7
    assert len(chunk_ids(bucket_objects(s3, bucket)) - first) == 1


async def test_a_read_completes_from_the_cloud_when_the_pod_dies_mid_read(
    tmp_path: Path, pod: PodServer, cloud: tuple[S3Server, str], postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    s3, bucket = cloud
    use_keys(monkeypatch, s3)
    from mediadrive.core.config import DriveSettings, TierRules
    from mediadrive.core.policy import TierPolicy

    meta = create_database(postgres_url, "tiers")
    store = f"s3://{bucket}/show?endpoint={s3.endpoint_url}"
    settings = TierPolicy(write_target="pod").apply(DriveSettings(chunking="fixed", chunk_size=MiB))
    assert isinstance(settings.tiers, TierRules)
    data = os.urandom(24 * MiB)
    source = tmp_path / "long.mov"
    source.write_bytes(data)
    drive = await Drive.create("show", meta, store, settings, pod_url=pod.store_url("show"))
    try:
        with source.open("rb") as f:
            await drive.write_file("/long.mov", f)
        await drive.publish("/long.mov")
        reader = await drive.reader("/long.mov")
        got = bytearray()
        async for piece in reader.chunks():
            got += piece
            if len(got) == 4 * MiB:
                # The pod goes away in the middle of the read.
                pod.proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(pod.proc.wait, 30)
        assert bytes(got) == data
    finally:
        await drive.close()


async def test_a_version_held_in_another_region_is_listed_but_not_read(
    tmp_path: Path, pod: PodServer, cloud: tuple[S3Server, str], postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    s3, bucket = cloud
    use_keys(monkeypatch, s3)
    from mediadrive.core.config import DriveSettings
    from mediadrive.core.policy import TierPolicy

    meta = create_database(postgres_url, "tiers")
    store = f"s3://{bucket}/show?endpoint={s3.endpoint_url}"
    settings = TierPolicy(write_target="pod").apply(DriveSettings())
    la = await Drive.create("show", meta, store, settings, pod_url=pod.store_url("show"))
    try:
        source = tmp_path / "shot.exr"
        source.write_bytes(os.urandom(300_000))
        with source.open("rb") as f:
            await la.write_file("/shot.exr", f)
    finally:
        await la.close()
    with pod_server(tmp_path / "ny-pod", "--region", "ny") as ny_pod:
        ny = await Drive.open("show", meta, store, pod_url=ny_pod.store_url("show"))
        try:
            [version] = await ny.versions("/shot.exr")
            assert version.tier == "pod:la"
            with pytest.raises(NotPublished, match="region la"):
                reader = await ny.reader("/shot.exr")
                async for _ in reader.chunks():
                    pass
        finally:
            await ny.close()


def test_temporary_files_stay_in_the_pod_and_expire(
    tmp_path: Path, cloud: tuple[S3Server, str], postgres_url: str
) -> None:
    s3, bucket = cloud
    cli = make_cli(tmp_path, s3)
    cli.run(
        "drive", "create", "show", "--meta", create_database(postgres_url, "tiers"),
        "--store", f"s3://{bucket}/show?endpoint={s3.endpoint_url}",
    )  # fmt: skip
    policy = tmp_path / "hold.yaml"
    policy.write_text("writeTarget: pod\ntemporary:\n  globs: ['*.tmp']\n  ttl: 15s\n")
    with pod_server(tmp_path / "pod", "--region", "la", "--sweep-interval", "1s") as pod:
        cli.run("drive", "set", "show", "--pod", pod.store_url("show"), "--policy", str(policy))
        cli.run("mkdir", "show:/shots")
        (tmp_path / "a.exr").write_bytes(os.urandom(200_000))
        scratch = os.urandom(150_000)
        (tmp_path / "render.tmp").write_bytes(scratch)
        cli.run("cp", str(tmp_path / "a.exr"), "show:/shots/a.exr")
        cli.run("cp", str(tmp_path / "render.tmp"), "show:/shots/render.tmp")

        scratch_id = chunk_id(scratch)

        async def held() -> dict[str, str]:
            store = open_store(pod.store_url("show"))
            try:
                return dict(await store.holding([scratch_id]))  # type: ignore[attr-defined]
            finally:
                await store.close()

        assert asyncio.run(held()) == {scratch_id: "held"}
        report = cli.json("publish", "show:/shots")
        assert report["temporary_skipped"] == 1
        # Only a.exr reached the cloud, even though its whole folder was published.
        assert sum(bucket_objects(s3, bucket).values()) == 200_000
        deadline = time.monotonic() + 60
        while asyncio.run(held()) and time.monotonic() < deadline:
            time.sleep(0.5)
        # Past its TTL the pod let it go; the cloud never had it.
        assert asyncio.run(held()) == {}
        assert scratch_id not in chunk_ids(bucket_objects(s3, bucket))
