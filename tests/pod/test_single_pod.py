"""One pod: the holding protocol, hash checks, capacity, TTLs, restarts and the upstream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from mediadrive.core.blob import open_store
from mediadrive.core.blob.holding import HoldingStore, is_holding
from mediadrive.core.blob.pod import PodBlobStore
from mediadrive.core.errors import NotFound, StoreFull, StoreUnavailable
from tests.pod.conftest import Pods
from tests.pod.support import chunk_url, files_on_disk, http, index_rows, metric, payload
from tests.servers import PodServer


def pod_store(pod: PodServer, drive: str = "show", **query: str) -> PodBlobStore:
    url = pod.store_url(drive)
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    store = open_store(url, create=True)
    assert isinstance(store, PodBlobStore)
    return store


@pytest.fixture
async def opened() -> AsyncIterator[Callable[[PodBlobStore], PodBlobStore]]:
    stores: list[PodBlobStore] = []

    def keep(store: PodBlobStore) -> PodBlobStore:
        stores.append(store)
        return store

    yield keep
    for store in stores:
        await store.close()


async def eventually(check: Callable[[], Coroutine[Any, Any, bool]], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.1)


async def test_the_pod_engine_is_a_holding_store(pods: Pods, opened: Any) -> None:
    pod = pods.start("--region", "eu-west")
    store = opened(pod_store(pod))
    as_object: object = store
    assert is_holding(store) and isinstance(as_object, HoldingStore)
    assert await store.region() == "eu-west"
    held_id, held = payload(20_000, 1)
    cached_id, cached = payload(20_000, 2)
    await store.put(held_id, held)
    await store.put_cached(cached_id, cached)
    absent_id, _ = payload(10, 3)
    assert await store.holding([held_id, cached_id, absent_id]) == {
        held_id: "held",
        cached_id: "cached",
    }
    await store.release([held_id])
    assert await store.holding([held_id]) == {held_id: "cached"}
    assert index_rows(pod.data_dir)[("show", held_id)] is False
    # The same drive through an http:// URL.
    plain = opened(open_store(f"{pod.url}/show"))
    assert await plain.get(held_id) == held
    assert [cid async for cid in plain.list()] == sorted([held_id, cached_id])


async def test_concurrent_puts_of_one_chunk_count_it_once(pods: Pods, opened: Any) -> None:
    pod = pods.start()
    store = opened(pod_store(pod))
    cid, data = payload(60_000, 5)
    await asyncio.gather(*(store.put_held(cid, data) for _ in range(8)))
    await asyncio.gather(*(store.put_cached(cid, data) for _ in range(4)))
    _, _, body = http("GET", f"{pod.url}/v1/stats")
    stats = json.loads(body)
    assert (stats["bytes_held"], stats["bytes_cached"]) == (60_000, 0)
    assert files_on_disk(pod.data_dir, "show") == [cid]


async def test_a_hash_mismatch_is_refused_and_nothing_is_stored(pods: Pods) -> None:
    pod = pods.start()
    cid, data = payload(50_000, 4)
    status, _, body = http("PUT", chunk_url(pod, "show", cid) + "?hold=1", data + b"x")
    assert status == 400
    assert b"hash" in body
    assert http("HEAD", chunk_url(pod, "show", cid))[0] == 404
    assert files_on_disk(pod.data_dir, "show") == []
    assert ("show", cid) not in index_rows(pod.data_dir)


async def test_cached_chunks_are_evicted_lru_and_held_ones_never(pods: Pods, opened: Any) -> None:
    size = 100_000
    pod = pods.start("--capacity", str(3 * size))
    store = opened(pod_store(pod))
    cached = [payload(size, 10 + i) for i in range(3)]
    for cid, data in cached:
        await store.put_cached(cid, data)
    # The first one was read last: the second is now the least recently used.
    assert await store.get(cached[0][0]) == cached[0][1]
    held = [payload(size, 20 + i) for i in range(3)]
    await store.put_held(*held[0])
    assert not await store.exists(cached[1][0])
    assert await store.exists(cached[0][0]) and await store.exists(cached[2][0])
    for cid, data in held[1:]:
        await store.put_held(cid, data)
    # Held data fills the pod: every cached copy went, no held one did.
    assert await store.holding([c for c, _ in cached + held]) == {c: "held" for c, _ in held}
    extra_id, extra = payload(size, 30)
    with pytest.raises(StoreFull, match="capacity"):
        await store.put_held(extra_id, extra)
    status, _, body = http("PUT", chunk_url(pod, "show", extra_id) + "?hold=1", extra)
    assert status == 507 and b"capacity" in body
    for cid, data in held:
        assert await store.get(cid) == data
    assert not await store.exists(extra_id)
    assert metric(pod, "mediadrive_pod_evictions") == 3
    assert metric(pod, "mediadrive_pod_bytes_held") == 3 * size
    assert metric(pod, "mediadrive_pod_bytes_cached") == 0


async def test_a_held_chunk_with_a_ttl_expires(pods: Pods, opened: Any) -> None:
    pod = pods.start("--sweep-interval", "200ms")
    store = opened(pod_store(pod))
    short_id, short = payload(5_000, 40)
    kept_id, kept = payload(5_000, 41)
    await store.put_held(short_id, short, ttl=0.5)
    await store.put_held(kept_id, kept)
    assert await store.holding([short_id]) == {short_id: "held"}

    async def gone() -> bool:
        return not await store.exists(short_id)

    await eventually(gone)
    with pytest.raises(NotFound):
        await store.get(short_id)
    assert await store.get(kept_id) == kept
    assert files_on_disk(pod.data_dir, "show") == [kept_id]


async def test_a_restart_keeps_held_chunks_held(pods: Pods, opened: Any) -> None:
    pod = pods.start(name="pod")
    store = opened(pod_store(pod))
    held_id, held = payload(30_000, 50)
    cached_id, cached = payload(30_000, 51)
    published_id, published = payload(30_000, 52)
    await store.put_held(held_id, held)
    await store.put_cached(cached_id, cached)
    await store.put_held(published_id, published)
    await store.release([published_id])
    expected = {held_id: "held", cached_id: "cached", published_id: "cached"}

    pod.proc.terminate()
    assert pod.proc.wait(30) == 0
    again = pods.start(name="pod")
    store = opened(pod_store(again))
    assert await store.holding(list(expected)) == expected
    assert await store.get(held_id) == held

    # A lost index is rebuilt from the files, and no held chunk stops being held.
    again.proc.kill()
    again.proc.wait(30)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (again.data_dir / name).unlink(missing_ok=True)
    third = pods.start(name="pod")
    store = opened(pod_store(third))
    assert (await store.holding([held_id]))[held_id] == "held"
    assert await store.get(held_id) == held


async def test_a_miss_reads_through_the_upstream_and_caches(
    pods: Pods, opened: Any, tmp_path: Path
) -> None:
    upstream_url = f"file://{tmp_path}/cloud"
    cloud = open_store(upstream_url, create=True)
    await cloud.check()
    cid, data = payload(80_000, 60)
    await cloud.put(cid, data)
    pod = pods.start("--upstream", upstream_url)
    store = opened(pod_store(pod))
    # Readers of one missing chunk share one upstream transfer.
    ranges = await asyncio.gather(*(store.get_range(cid, 1000 * i, 500) for i in range(6)))
    assert ranges == [data[1000 * i : 1000 * i + 500] for i in range(6)]
    assert await store.holding([cid]) == {cid: "cached"}
    assert files_on_disk(pod.data_dir, "show") == [cid]
    assert metric(pod, "mediadrive_pod_upstream_transfers") == 1
    # Now from the pod's own copy, even with the upstream gone.
    await cloud.delete(cid)
    assert await store.get(cid) == data
    assert metric(pod, "mediadrive_pod_upstream_transfers") == 1
    assert metric(pod, "mediadrive_pod_hits") >= 1
    _, _, page = http("GET", f"{pod.url}/metrics")
    assert b'mediadrive_pod_request_seconds_bucket{le="0.005",method="GET"' in page
    absent_id, _ = payload(100, 61)
    with pytest.raises(NotFound):
        await store.get(absent_id)
    await cloud.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_the_client_fails_over_and_names_the_url_when_no_pod_answers(
    pods: Pods, opened: Any
) -> None:
    pod = pods.start()
    dead = _closed_port()
    store = opened(open_store(f"pod://127.0.0.1:{dead},127.0.0.1:{pod.port}/show", create=True))
    await store.check()
    for seed in range(4):
        cid, data = payload(1000, 70 + seed)
        await store.put(cid, data)
        assert await store.get(cid) == data
    nobody = f"pod://127.0.0.1:{dead}/show"
    lost = opened(open_store(nobody))
    with pytest.raises(StoreUnavailable, match=nobody):
        await lost.get(cid)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("pod://127.0.0.1:1/", "drive name"),
        ("pod://127.0.0.1/show", "HOST:PORT"),
        ("pod://127.0.0.1:70000/show", "HOST:PORT"),
        ("pod://127.0.0.1:1/show?color=red", "unknown option"),
        ("http://a:1,b:2/show", "pod://A,B/DRIVE"),
        ("https://a:1/show?tls=1", "tls"),
        ("pod://a:1/Show", "drive name"),
        ("pod://a:1/show?token_file=", "token_file is empty"),
        ("pod://user:secret@a:1/show", "token_file"),
    ],
)
def test_bad_pod_urls_are_refused_in_one_line(url: str, problem: str) -> None:
    from mediadrive.core.blob import check_store_url
    from mediadrive.core.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        check_store_url(url)
    message = str(refused.value)
    assert problem in message and "\n" not in message
