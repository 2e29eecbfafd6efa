"""The tier chain: storage pods in front of the cloud store, tier policies, publish.

The cloud is a real local-folder store; the pods are the in-memory holding store of
``holding_store.py`` (``memhold://``), which tests can take down. Tests on real pods
(``pod://``) live with the pod server.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mediadrive.core.blob import open_store
from mediadrive.core.blob.tiers import TieredStore
from mediadrive.core.config import DriveRef, DriveSettings, TierRules
from mediadrive.core.drive import Drive
from mediadrive.core.errors import NotPublished, StoreUnavailable
from mediadrive.core.hashing import chunk_id
from mediadrive.core.policy import TierPolicy
from tests.integration import holding_store
from tests.integration.holding_store import PodSpace

CHUNK = 64 << 10


@dataclass
class Setup:
    tmp: Path
    meta_url: str
    cloud_url: str
    pod_url: str

    @property
    def pod(self) -> PodSpace:
        return holding_store.pod(holding_store.parse(self.pod_url)[0])

    def ref(self, pod_url: str | None = "", region: str | None = None) -> DriveRef:
        return DriveRef(
            name="show",
            meta_url=self.meta_url,
            store_url=self.cloud_url,
            pod_url=self.pod_url if pod_url == "" else pod_url,
            region=region,
        )

    def cloud_ids(self) -> set[str]:
        return {p.name for p in (self.tmp / "cloud" / "chunks").glob("*/*")}

    def pod_ids(self, holding: str | None = None) -> set[str]:
        return {
            cid
            for cid, chunk in self.pod.chunks.items()
            if holding is None or chunk.holding == holding
        }


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    pod_url = f"memhold://{uuid.uuid4().hex[:12]}?region=la"
    yield Setup(tmp_path, f"sqlite:///{tmp_path}/meta.db", f"file://{tmp_path}/cloud", pod_url)
    holding_store.forget_all()


def settings(**rules: Any) -> DriveSettings:
    return DriveSettings(chunk_size=CHUNK, tiers=TierRules.model_validate(rules))


@pytest.fixture
async def drive(setup: Setup) -> AsyncIterator[Drive]:
    made = await Drive.create(
        "show",
        setup.meta_url,
        setup.cloud_url,
        settings(writeTarget="pod", temporary={"globs": ["*.tmp", "/cache/*"], "ttl": "1h"}),
        pod_url=setup.pod_url,
    )
    try:
        yield made
    finally:
        await made.close()


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


async def write(drive: Drive, path: str, data: bytes) -> int:
    return (await drive.write_file(path, io.BytesIO(data))).version


async def read(drive: Drive, path: str, version: int | None = None) -> bytes:
    out = io.BytesIO()
    await drive.read_to(path, out, version)
    return out.getvalue()


async def chunks_of(drive: Drive, path: str) -> set[str]:
    node = await drive.stat(path)
    assert node.head_version is not None
    _, extents = await drive.meta.version(node.id, node.head_version)
    return {e.chunk_id for e in extents}


async def tier_of(drive: Drive, path: str) -> str:
    return (await drive.versions(path))[-1].tier


# -- writes go to the pod, publish sends what the cloud lacks --------------------------------


async def test_pod_writes_stay_in_the_pod_until_published(setup: Setup, drive: Drive) -> None:
    data = payload(3 * CHUNK + 100)
    await drive.mkdir("/shots")
    await write(drive, "/shots/a.exr", data)
    ids = await chunks_of(drive, "/shots/a.exr")
    assert len(ids) == 4
    assert ids <= setup.pod_ids("held")
    assert not ids & setup.cloud_ids()
    assert await tier_of(drive, "/shots/a.exr") == "pod:la"
    assert await read(drive, "/shots/a.exr") == data

    # One chunk is in the cloud already: publish must not send it again.
    first = data[:CHUNK]
    cloud = open_store(setup.cloud_url)
    await cloud.put(chunk_id(first), first)

    report = await drive.publish("/shots")
    assert (report.files, report.versions, report.chunks_sent, report.chunks_present) == (
        1,
        1,
        3,
        1,
    )
    assert report.bytes_sent == len(data) - CHUNK
    assert report.paths == ["/shots/a.exr"]
    assert ids <= setup.cloud_ids()
    # Released in the pod: cached copies now, evictable.
    assert ids <= setup.pod_ids("cached")
    assert await tier_of(drive, "/shots/a.exr") == "cloud"
    events = [e async for e in drive.events() if e.kind == "publish"]
    assert [(e.path, e.version, e.detail["chunks_sent"]) for e in events] == [
        ("/shots/a.exr", 1, 3)
    ]
    # Published already: nothing more to do.
    again = await drive.publish("/shots/a.exr")
    assert (again.files, again.chunks_sent) == (0, 0)


async def test_write_target_cloud_writes_to_the_cloud_with_a_cached_copy(setup: Setup) -> None:
    drive = await Drive.create(
        "show",
        setup.meta_url,
        setup.cloud_url,
        settings(writeTarget="cloud"),
        pod_url=setup.pod_url,
    )
    async with drive:
        await write(drive, "/a.bin", payload(CHUNK + 1))
        ids = await chunks_of(drive, "/a.bin")
        assert ids <= setup.cloud_ids()
        assert ids <= setup.pod_ids("cached")
        assert not setup.pod_ids("held")
        assert await tier_of(drive, "/a.bin") == "cloud"


async def test_a_drive_without_pods_writes_to_the_cloud(setup: Setup, drive: Drive) -> None:
    async with await Drive.open_ref(setup.ref(pod_url=None)) as plain:
        assert plain.tiers is None
        await write(plain, "/b.bin", payload(100))
        assert await tier_of(plain, "/b.bin") == "cloud"
        assert await chunks_of(plain, "/b.bin") <= setup.cloud_ids()


# -- pods down ---------------------------------------------------------------------------------


async def test_reads_fall_through_to_the_cloud_when_the_pod_is_down(
    setup: Setup, drive: Drive
) -> None:
    data = payload(2 * CHUNK, seed=3)
    await write(drive, "/a.bin", data)
    await drive.publish("/a.bin")
    setup.pod.down = True
    async with await Drive.open_ref(setup.ref()) as other:
        assert await read(other, "/a.bin") == data


async def test_read_through_fills_the_pod_cache(setup: Setup) -> None:
    data = payload(CHUNK, seed=5)
    drive = await Drive.create("show", setup.meta_url, setup.cloud_url, settings())
    async with drive:
        await write(drive, "/a.bin", data)
    async with await Drive.open_ref(setup.ref()) as tiered:
        assert not setup.pod_ids()
        assert await read(tiered, "/a.bin") == data
        tiers = tiered.tiers
        assert tiers is not None
        await tiers.drain()
        assert await chunks_of(tiered, "/a.bin") <= setup.pod_ids("cached")


async def test_writes_wait_for_the_pods_then_fail_and_commit_nothing(
    setup: Setup, drive: Drive
) -> None:
    policy = TierPolicy.model_validate({"writeTarget": "pod", "podsDownWait": "300ms"})
    await drive.meta.update_settings(policy.apply(drive.settings))
    setup.pod.down = True
    async with await Drive.open_ref(setup.ref()) as other:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"storage pods memhold://.* are down"):
            await write(other, "/a.bin", payload(1000))
        waited = time.monotonic() - started
        assert 0.3 <= waited < 5
        # It tried again meanwhile (backoff), not once.
        assert setup.pod.calls["put_held"] > 2
        assert await other.meta.resolve("/a.bin") is None
        assert not setup.cloud_ids()
    setup.pod.down = False


async def test_writes_go_to_the_cloud_when_the_pods_are_down_if_the_policy_says_so(
    setup: Setup, drive: Drive
) -> None:
    policy = TierPolicy.model_validate({"writeTarget": "pod", "whenPodsDown": "cloud"})
    await drive.meta.update_settings(policy.apply(drive.settings))
    setup.pod.down = True
    data = payload(CHUNK + 5, seed=9)
    async with await Drive.open_ref(setup.ref()) as other:
        await write(other, "/a.bin", data)
        assert await chunks_of(other, "/a.bin") <= setup.cloud_ids()
        assert await tier_of(other, "/a.bin") == "cloud"
        assert await read(other, "/a.bin") == data


# -- temporary files, other regions ----------------------------------------------------------


async def test_temporary_files_never_reach_the_cloud(setup: Setup, drive: Drive) -> None:
    await drive.mkdir("/shots")
    await drive.mkdir("/cache")
    await write(drive, "/shots/a.exr", payload(100, 1))
    await write(drive, "/shots/scratch.tmp", payload(100, 2))
    await write(drive, "/cache/sim.bin", payload(100, 3))
    temporary = await chunks_of(drive, "/shots/scratch.tmp") | await chunks_of(
        drive, "/cache/sim.bin"
    )
    # Held with the policy's TTL.
    for cid in temporary:
        expires = setup.pod.chunks[cid].expires
        assert expires is not None and 3500 < expires - time.time() <= 3600

    report = await drive.publish("/")
    assert report.paths == ["/shots/a.exr"]
    assert report.temporary_skipped == 2
    assert not temporary & setup.cloud_ids()
    assert await tier_of(drive, "/shots/scratch.tmp") == "pod:la"
    # Asked for by name, still not.
    assert (await drive.publish("/shots/scratch.tmp")).files == 0
    assert not temporary & setup.cloud_ids()


async def test_a_version_held_in_another_region_is_not_published(
    setup: Setup, drive: Drive
) -> None:
    await write(drive, "/a.bin", payload(500))
    elsewhere = f"memhold://{uuid.uuid4().hex[:12]}?region=ny"
    for ref in (setup.ref(pod_url=None), setup.ref(pod_url=elsewhere)):
        async with await Drive.open_ref(ref) as other:
            with pytest.raises(NotPublished) as caught:
                await read(other, "/a.bin")
            assert str(caught.value) == (
                "show:/a.bin version 1 is held in the storage pods of region la; "
                "publish it there to read it here"
            )
            with pytest.raises(NotPublished):
                await other.publish("/a.bin")
    await drive.publish("/a.bin")
    async with await Drive.open_ref(setup.ref(pod_url=None)) as other:
        assert await read(other, "/a.bin") == payload(500)


# -- policies -------------------------------------------------------------------------------


async def test_on_save_publishes_each_commit(setup: Setup, drive: Drive) -> None:
    policy = TierPolicy.model_validate(
        {"writeTarget": "pod", "publish": "on-save", "temporary": {"globs": ["*.tmp"]}}
    )
    await drive.meta.update_settings(policy.apply(drive.settings))
    async with await Drive.open_ref(setup.ref()) as other:
        await write(other, "/a.bin", payload(300))
        assert await tier_of(other, "/a.bin") == "cloud"
        assert await chunks_of(other, "/a.bin") <= setup.cloud_ids()
        await write(other, "/b.tmp", payload(300, 4))
        assert await tier_of(other, "/b.tmp") == "pod:la"


async def test_after_duration_publishes_versions_held_longer(setup: Setup, drive: Drive) -> None:
    policy = TierPolicy.model_validate(
        {"writeTarget": "pod", "publish": "after 2h", "temporary": {"globs": ["*.tmp"]}}
    )
    await drive.meta.update_settings(policy.apply(drive.settings))
    async with await Drive.open_ref(setup.ref()) as other:
        await write(other, "/a.bin", payload(300))
        await write(other, "/a.bin", payload(300, 1))
        await write(other, "/c.tmp", payload(300, 2))
        assert (await other.publish_due()).versions == 0
        report = await other.publish_due(now=time.time() + 2 * 3600 + 1)
        assert (report.files, report.versions, report.temporary_skipped) == (1, 2, 1)
        assert [v.tier for v in await other.versions("/a.bin")] == ["cloud", "cloud"]
        assert await tier_of(other, "/c.tmp") == "pod:la"


async def test_gc_deletes_from_every_tier(setup: Setup, drive: Drive) -> None:
    policy = TierPolicy.model_validate({"writeTarget": "pod", "retention": {"keepLast": 1}})
    await drive.meta.update_settings(policy.apply(drive.settings))
    async with await Drive.open_ref(setup.ref()) as other:
        await write(other, "/a.bin", payload(200))
        published = await chunks_of(other, "/a.bin")
        await other.publish("/a.bin")
        await write(other, "/a.bin", payload(200, 1))
        held = await chunks_of(other, "/a.bin")
        await write(other, "/a.bin", payload(200, 2))
        assert published <= setup.cloud_ids() and published <= setup.pod_ids()
        report = await other.gc(grace=0)
        assert report.chunks_deleted == 2
        assert not (published | held) & (setup.cloud_ids() | setup.pod_ids())
        assert await read(other, "/a.bin") == payload(200, 2)


def test_policy_files_name_the_bad_field() -> None:
    with pytest.raises(ValueError, match="writeTarget"):
        TierPolicy.model_validate({"writeTarget": "disk"})
    with pytest.raises(ValueError, match="publish"):
        TierPolicy.model_validate({"publish": "sometimes"})
    with pytest.raises(ValueError, match="unknownField"):
        TierPolicy.model_validate({"unknownField": 1})
    policy = TierPolicy.model_validate(
        {"publish": "after 1h30m", "retention": {"keepLast": 3}, "chunking": {"kind": "cdc"}}
    )
    assert policy.publish_after == 5400
    applied = policy.apply(DriveSettings())
    assert (applied.chunking, applied.chunk_size, applied.retention.keep_last) == (
        "cdc",
        2 << 20,
        3,
    )
    assert TierPolicy.of(applied).publish == "after 1h30m"


def test_old_drive_settings_and_refs_still_load() -> None:
    old = DriveSettings.model_validate_json(
        '{"chunking": "fixed", "chunk_size": 67108864, "conflict": "keep-both",'
        ' "retention": {"keep_last": null, "keep_within": null}}'
    )
    assert old.tiers == TierRules()
    ref = DriveRef.model_validate_json('{"name": "a", "meta_url": "sqlite:///x", "store_url": "y"}')
    assert (ref.pod_url, ref.region) == (None, None)


def test_tiered_store_needs_a_holding_store(setup: Setup) -> None:
    with pytest.raises(TypeError):
        TieredStore(open_store(setup.cloud_url), open_store(setup.cloud_url), TierRules())
