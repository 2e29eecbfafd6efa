"""The blob-store contract: every engine passes the same tests.

Engines: a local folder, an in-memory engine registered by this suite (the
proof that an engine is one module plus its registration), a WrappedStore
subclass around a local folder, the tier chain (an in-memory storage-pod stand-in
in front of a local folder, writing to the pod), a storage pod process, and moto's
standalone S3 server and MinIO, all over real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mediadrive.core import buffers
from mediadrive.core.blob import PART_ALIGN, BlobStore, ChunkStream, open_store
from mediadrive.core.blob.s3 import S3BlobStore
from mediadrive.core.blob.tiers import TieredStore
from mediadrive.core.blob.wrapper import WrappedStore
from mediadrive.core.config import TierRules
from mediadrive.core.errors import ConfigError, NotFound, StoreUnavailable
from mediadrive.core.hashing import chunk_id
from tests.integration import holding_store, memory_store
from tests.servers import PodServer, S3Server, pod_server

S3_ENGINES = [
    pytest.param("moto", marks=[pytest.mark.s3, pytest.mark.moto]),
    pytest.param("minio", marks=[pytest.mark.s3, pytest.mark.minio]),
]
ENGINES = ["local", "memory", "wrapped", "tiered", "pod", *S3_ENGINES]


class CountingStore(WrappedStore):
    """A wrapper that only counts the calls it overrides and passes them on."""

    def __init__(self, inner: BlobStore) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        self.calls["put"] += 1
        await super().put(chunk_id, data)

    async def get(self, chunk_id: str) -> bytes:
        self.calls["get"] += 1
        return await super().get(chunk_id)


@dataclass(frozen=True)
class Engine:
    kind: str
    url: str
    server: S3Server | None
    bucket: str = ""
    pod: PodServer | None = None

    def url_for(self, location: str, prefix: str = "chunks-under-test") -> str:
        """A store URL of the same engine at another folder or bucket."""
        if self.kind == "memory":
            return memory_url(location)
        if self.pod is not None:
            return self.pod.store_url(pod_drive(location))
        if self.server is None:
            return f"file://{location}"
        return f"s3://{location}/{prefix}?endpoint={self.server.endpoint_url}"

    def open(self, url: str, *, create: bool = False) -> BlobStore:
        store = open_store(url, create=create)
        if self.kind == "tiered":
            # Opened again at the same URL, the same pods: they share their chunks.
            pods = open_store(f"memhold://{memory_url(url).removeprefix('memory://')}")
            return TieredStore(store, pods, TierRules(write_target="pod"))
        return CountingStore(store) if self.kind == "wrapped" else store


def memory_url(location: str) -> str:
    """A memory store named after a folder path (a URL host cannot hold slashes)."""
    return f"memory://{hashlib.sha256(location.encode()).hexdigest()[:16]}"


def pod_drive(location: str) -> str:
    """A drive on the test pod named after a folder path: one drive per location."""
    return f"d-{hashlib.sha256(location.encode()).hexdigest()[:16]}"


@pytest.fixture(scope="session")
def contract_pod() -> Iterator[PodServer]:
    """One storage pod process for the suite; each test uses drives of its own."""
    with pod_server() as pod:
        yield pod


@pytest.fixture(autouse=True)
def fresh_memory_stores() -> Iterator[None]:
    yield
    memory_store.forget_all()
    holding_store.forget_all()


def use_credentials(monkeypatch: pytest.MonkeyPatch, server: S3Server) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", server.region)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def make_engine(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Engine:
    if kind in ("local", "wrapped", "tiered"):
        return Engine(kind, f"file://{tmp_path}/store", None)
    if kind == "memory":
        return Engine(kind, memory_url(f"{tmp_path}/store"), None)
    if kind == "pod":
        pod: PodServer = request.getfixturevalue("contract_pod")
        return Engine(kind, pod.store_url(pod_drive(f"{tmp_path}/store")), None, pod=pod)
    server: S3Server = request.getfixturevalue(f"{kind}_s3")
    use_credentials(monkeypatch, server)
    bucket = server.new_bucket("blob")
    return Engine(kind, f"s3://{bucket}/drives/show?endpoint={server.endpoint_url}", server, bucket)


@pytest.fixture(params=ENGINES)
def engine(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Engine:
    return make_engine(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=S3_ENGINES)
def s3_engine(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Engine:
    return make_engine(request.param, request, tmp_path, monkeypatch)


async def opened(engine: Engine) -> AsyncIterator[BlobStore]:
    """The engine's store at its URL, made and checked; closed after the test."""
    blobs = engine.open(engine.url, create=True)
    await blobs.check()
    try:
        yield blobs
    finally:
        await blobs.close()


@pytest.fixture
async def store(engine: Engine) -> AsyncIterator[BlobStore]:
    async for blobs in opened(engine):
        yield blobs


def payload(size: int, seed: int = 0) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return chunk_id(data), data


async def listed(store: BlobStore) -> set[str]:
    return {cid async for cid in store.list()}


async def test_put_get_exists(store: BlobStore) -> None:
    cid, data = payload(100_000)
    assert not await store.exists(cid)
    await store.put(cid, data)
    assert await store.exists(cid)
    assert await store.get(cid) == data
    # Putting the same chunk again is harmless.
    await store.put(cid, memoryview(data))
    assert await store.get(cid) == data


async def test_empty_chunk(store: BlobStore) -> None:
    cid = chunk_id(b"")
    await store.put(cid, b"")
    assert await store.exists(cid)
    assert await store.get(cid) == b""


async def test_get_range(store: BlobStore) -> None:
    cid, data = payload(10_000, seed=1)
    await store.put(cid, data)
    assert await store.get_range(cid, 0, 100) == data[:100]
    assert await store.get_range(cid, 4321, 1000) == data[4321:5321]
    assert await store.get_range(cid, 9_999, 1) == data[9_999:]
    assert await store.get_range(cid, 0, 10_000) == data
    # Past the end: only what is there, and nothing at all beyond it.
    assert await store.get_range(cid, 9_000, 5_000) == data[9_000:]
    assert await store.get_range(cid, 10_000, 10) == b""
    assert await store.get_range(cid, 50_000, 10) == b""
    assert await store.get_range(cid, 10, 0) == b""


async def test_get_range_view(store: BlobStore, engine: Engine) -> None:
    size = 3 * buffers.ALIGNMENT + 5
    cid, data = payload(size, seed=11)
    await store.put(cid, data)
    for offset, length in [(0, size), (4096, 8192), (100, 50), (size - 5, 100), (size, 10)]:
        view = await store.get_range_view(cid, offset, length)
        assert bytes(view) == data[offset : offset + length]
    if engine.kind in ("moto", "minio"):
        # Received into aligned memory, which the block cache writes with direct I/O.
        assert buffers.direct_io_ready(await store.get_range_view(cid, 4096, 8192))
    with pytest.raises(NotFound):
        await store.get_range_view(payload(10, seed=12)[0], 0, 10)


async def test_missing_chunk_raises_not_found(store: BlobStore) -> None:
    cid, _ = payload(10, seed=2)
    with pytest.raises(NotFound):
        await store.get(cid)
    with pytest.raises(NotFound):
        await store.get_range(cid, 0, 5)
    assert not await store.exists(cid)


async def test_delete_is_idempotent(store: BlobStore) -> None:
    keep_id, keep = payload(1000, seed=3)
    gone_id, gone = payload(1000, seed=4)
    await store.put(keep_id, keep)
    await store.put(gone_id, gone)
    await store.delete(gone_id)
    assert not await store.exists(gone_id)
    with pytest.raises(NotFound):
        await store.get(gone_id)
    await store.delete(gone_id)
    await store.delete(chunk_id(b"never stored"))
    assert await store.get(keep_id) == keep


async def test_list(store: BlobStore) -> None:
    assert await listed(store) == set()
    ids = []
    for seed in range(5):
        cid, data = payload(500 + seed, seed=10 + seed)
        await store.put(cid, data)
        ids.append(cid)
    assert await listed(store) == set(ids)
    await store.delete(ids[0])
    assert await listed(store) == set(ids[1:])


async def test_stores_at_other_locations_do_not_share_chunks(
    store: BlobStore, engine: Engine, tmp_path: Path
) -> None:
    if engine.server is None:
        other_url = engine.url_for(f"{tmp_path}/other")
    else:
        other_url = engine.url_for(engine.bucket, prefix="drives/other")
    other = engine.open(other_url, create=True)
    try:
        await other.check()
        cid, data = payload(300, seed=5)
        await store.put(cid, data)
        assert not await other.exists(cid)
        assert await listed(other) == set()
        await other.put(cid, data)
        await other.delete(cid)
        assert await store.get(cid) == data
    finally:
        await other.close()


async def test_a_large_chunk_round_trips(store: BlobStore, engine: Engine) -> None:
    size = 40 << 20
    data = os.urandom(size)
    cid = chunk_id(data)
    if isinstance(store, S3BlobStore):
        # Chunks up to 64 MiB go in one PUT; this one takes the multipart path.
        store.single_put_max = 16 << 20
    await store.put(cid, data)
    assert await store.get(cid) == data
    # Ranges across the 16 MiB part boundaries of a multipart upload.
    for offset in (0, (16 << 20) - 10, (32 << 20) - 1, size - 100):
        assert await store.get_range(cid, offset, 4096) == data[offset : offset + 4096]
    if engine.server is not None:
        head = engine.server.client().head_object(
            Bucket=engine.bucket, Key=f"drives/show/chunks/{cid[:2]}/{cid}"
        )
        assert head["ContentLength"] == size
        # An S3 ETag of the form "<md5>-<parts>" marks a multipart upload.
        assert head["ETag"].strip('"').endswith("-3")


async def test_concurrent_puts_and_gets(store: BlobStore) -> None:
    chunks = [payload(50_000 + i, seed=100 + i) for i in range(16)]
    await asyncio.gather(*(store.put(cid, data) for cid, data in chunks))
    got = await asyncio.gather(*(store.get(cid) for cid, _ in chunks))
    assert got == [data for _, data in chunks]
    assert await listed(store) == {cid for cid, _ in chunks}


async def test_check_on_a_usable_store(store: BlobStore) -> None:
    await store.check()


async def test_missing_location_without_create(engine: Engine, tmp_path: Path) -> None:
    if engine.server is None:
        url = engine.url_for(f"{tmp_path}/absent")
        where = tmp_path / "absent"
    else:
        url = engine.url_for(f"absent-{os.urandom(6).hex()}")
        where = None
    store = engine.open(url)
    try:
        with pytest.raises(StoreUnavailable, match="does not exist"):
            await store.check()
    finally:
        await store.close()
    if where is not None:
        assert not where.exists()
    # With create, the folder or bucket is made and then works.
    made = engine.open(url, create=True)
    try:
        await made.check()
        cid, data = payload(64, seed=6)
        await made.put(cid, data)
        assert await made.get(cid) == data
    finally:
        await made.close()


async def test_put_into_a_missing_bucket_is_store_unavailable(s3_engine: Engine) -> None:
    store = open_store(s3_engine.url_for(f"absent-{os.urandom(6).hex()}"))
    try:
        cid, data = payload(64, seed=7)
        with pytest.raises(StoreUnavailable):
            await store.put(cid, data)
        # Large enough for the multipart path.
        assert isinstance(store, S3BlobStore)
        store.single_put_max = 16 << 20
        big_id, big = payload(17 << 20, seed=8)
        with pytest.raises(StoreUnavailable):
            await store.put(big_id, big)
        # Reading from it says the store is unusable, not that one chunk is missing.
        with pytest.raises(StoreUnavailable, match="NoSuchBucket"):
            await store.get(cid)
    finally:
        await store.close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_endpoint_is_store_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nothing")
    url = f"s3://bucket/prefix?endpoint=http://127.0.0.1:{closed_port()}"
    store = open_store(url, create=True)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await store.check()
        with pytest.raises(StoreUnavailable):
            await store.get(chunk_id(b"anything"))
    finally:
        await store.close()
    assert time.monotonic() - started < 60


async def test_unusable_local_folder_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    store = open_store(f"file://{blocker}/store", create=True)
    with pytest.raises(StoreUnavailable, match="file-not-folder"):
        await store.check()


# -- listing in order, from a point, by prefix, in pages ---------------------------------


def use_small_pages(store: BlobStore) -> None:
    """Make an engine that lists in pages ask for two ids at a time."""
    while isinstance(store, WrappedStore):
        store = store.inner
    if hasattr(store, "page_size"):
        store.page_size = 2


async def listing(store: BlobStore, prefix: str = "", after: str = "") -> list[str]:
    return [cid async for cid in store.list(prefix, after)]


async def test_list_pages_in_order_from_after_by_prefix(store: BlobStore) -> None:
    use_small_pages(store)
    chunks = [payload(200 + i, seed=300 + i) for i in range(9)]
    await asyncio.gather(*(store.put(cid, data) for cid, data in chunks))
    ids = sorted(cid for cid, _ in chunks)

    assert await listing(store) == ids
    assert await listing(store, after=ids[3]) == ids[4:]
    assert await listing(store, after=ids[-1]) == []
    # ``after`` need not be a stored id, nor as long as one.
    assert await listing(store, after=ids[2] + "0") == ids[3:]
    assert await listing(store, after=ids[5][:1]) == [i for i in ids if i > ids[5][:1]]
    assert await listing(store, after="0") == [i for i in ids if i > "0"]

    for length in (1, 2, 3, 64):
        prefix = ids[4][:length]
        assert await listing(store, prefix) == [i for i in ids if i.startswith(prefix)]
    assert await listing(store, "g") == []
    first = ids[0][:1]
    assert await listing(store, first, after=ids[0]) == [i for i in ids[1:] if i.startswith(first)]

    # A walk resumed from the last id seen misses nothing and repeats nothing.
    resumed: list[str] = []
    while True:
        page = [cid async for cid in store.list(after=resumed[-1] if resumed else "")][:3]
        if not page:
            break
        resumed += page
    assert resumed == ids


async def test_list_skips_unfinished_local_writes(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/store", create=True)
    await store.check()
    cid, data = payload(100, seed=20)
    await store.put(cid, data)
    folder = tmp_path / "store" / "chunks" / cid[:2]
    (folder / f".{cid}.123.456.tmp").write_bytes(b"half")
    assert await listing(store) == [cid]


# -- engines by URL scheme, and wrappers ----------------------------------------------------


def test_an_engine_registers_its_scheme() -> None:
    store = open_store("memory://registered")
    assert isinstance(store, memory_store.MemoryBlobStore)
    assert store.name == "registered"


def test_unknown_scheme_names_the_url_and_the_known_schemes() -> None:
    with pytest.raises(ConfigError) as refused:
        open_store("ftp://host/dir")
    message = str(refused.value)
    assert "\n" not in message
    assert "'ftp://host/dir'" in message
    for scheme in ("file://", "s3://", "memory://"):
        assert scheme in message


async def test_a_wrapper_passes_calls_through(tmp_path: Path) -> None:
    store = CountingStore(open_store(f"file://{tmp_path}/store", create=True))
    await store.check()
    cid, data = payload(1000, seed=21)
    await store.put(cid, data)
    assert await store.get(cid) == data
    assert await store.get_range(cid, 10, 5) == data[10:15]
    assert await store.exists(cid)
    assert await listing(store) == [cid]
    await store.delete(cid)
    assert not await store.inner.exists(cid)
    assert store.calls == Counter(put=1, get=1)
    assert store.url == f"file://{tmp_path}/store"
    await store.close()


# -- chunks streamed while they are written --------------------------------------------------

STREAMING = {"local", "moto", "minio"}


@pytest.fixture(params=["local", *S3_ENGINES])
def streaming(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Engine:
    """An engine that takes chunks in parts."""
    return make_engine(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
async def streaming_store(streaming: Engine) -> AsyncIterator[BlobStore]:
    async for blobs in opened(streaming):
        yield blobs


async def stream_chunk(
    store: BlobStore, data: bytes, *, finish: bool = True
) -> tuple[str, ChunkStream]:
    """``data`` streamed in parts written concurrently, the last first; named once whole
    (``finish``)."""
    stream = store.stream()
    assert stream is not None
    step = stream.part_size
    offsets = list(range(0, len(data), step))[::-1]
    await asyncio.gather(*(stream.write(o, memoryview(data)[o : o + step]) for o in offsets))
    cid = chunk_id(data)
    if finish:
        await stream.finish(cid, len(data))
    return cid, stream


def stream_objects(engine: Engine, tmp_path: Path) -> list[str]:
    """What streams have left in the store outside chunks: S3 objects and unfinished
    uploads under ``streams/``, or files in the local folder's ``streams/``."""
    if engine.server is None:
        folder = tmp_path / "store" / "streams"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    client = engine.server.client()
    prefix = "drives/show/streams/"
    found = [
        item["Key"]
        for item in client.list_objects_v2(Bucket=engine.bucket, Prefix=prefix).get("Contents", [])
    ]
    # MinIO lists uploads under a prefix only when it is an object's whole key.
    uploads = client.list_multipart_uploads(Bucket=engine.bucket).get("Uploads", [])
    return sorted(found + [f"upload {u['Key']}" for u in uploads if u["Key"].startswith(prefix)])


async def test_only_engines_that_can_say_they_stream(store: BlobStore, engine: Engine) -> None:
    # A wrapper or tier chain changes what a put does: it does not pass streams on.
    assert (store.stream() is not None) == (engine.kind in STREAMING)


async def test_a_streamed_chunk_reads_like_a_put_one(
    streaming_store: BlobStore, streaming: Engine, tmp_path: Path
) -> None:
    store, engine = streaming_store, streaming
    data = os.urandom((17 << 20) + 12_345)
    cid, _ = await stream_chunk(store, data)
    # A fresh store at the same URL, which has not seen the stream, reads it too.
    for reader in (store, engine.open(engine.url)):
        assert await reader.exists(cid)
        assert await listed(reader) == {cid}
        assert await reader.get(cid) == data
        for offset, length in [(0, 10), (100, 4096), ((8 << 20) - 7, 20), (len(data) - 5, 100)]:
            assert await reader.get_range(cid, offset, length) == data[offset : offset + length]
            view = await reader.get_range_view(cid, offset, length)
            assert bytes(view) == data[offset : offset + length]
        assert await reader.get_range(cid, len(data), 10) == b""
        if reader is not store:
            await reader.close()
    assert len(stream_objects(engine, tmp_path)) == (0 if engine.server is None else 1)
    await store.delete(cid)
    assert not await store.exists(cid)
    with pytest.raises(NotFound):
        await store.get_range(cid, 0, 10)
    # Its bytes went with it.
    assert stream_objects(engine, tmp_path) == []


async def test_an_aborted_stream_leaves_nothing(
    streaming_store: BlobStore, streaming: Engine, tmp_path: Path
) -> None:
    store, engine = streaming_store, streaming
    cid, stream = await stream_chunk(store, os.urandom(9 << 20), finish=False)
    assert stream_objects(engine, tmp_path) != []
    await stream.abort()
    assert stream_objects(engine, tmp_path) == []
    assert not await store.exists(cid)
    assert await listed(store) == set()


async def test_a_streamed_chunks_parts_may_differ_in_size(
    streaming_store: BlobStore, streaming: Engine, tmp_path: Path
) -> None:
    # A part as it fills, then the rest in two pieces sent at once, the last first
    # (how a mount sends a chunk's last part once it is named).
    store = streaming_store
    stream = store.stream()
    assert stream is not None
    step, piece = stream.part_size, 6 * PART_ALIGN
    assert piece >= stream.min_part
    data = os.urandom(step + 2 * piece - 1000)
    view = memoryview(data)
    await stream.write(0, view[:step])
    await asyncio.gather(
        stream.write(step + piece, view[step + piece :]),
        stream.write(step, view[step : step + piece]),
    )
    cid = chunk_id(data)
    await stream.finish(cid, len(data))
    assert await store.get(cid) == data
    if streaming.server is not None:
        # A part must start on PART_ALIGN.
        other = store.stream()
        assert other is not None
        with pytest.raises(ValueError, match="multiple of"):
            await other.write(PART_ALIGN + 1, b"x")


async def test_a_stream_missing_a_part_is_refused(
    streaming_store: BlobStore, streaming: Engine, tmp_path: Path
) -> None:
    store, engine = streaming_store, streaming
    stream = store.stream()
    assert stream is not None
    data = os.urandom(2 * stream.part_size)
    await stream.write(stream.part_size, data[stream.part_size :])
    with pytest.raises(StoreUnavailable, match="streamed chunk"):
        await stream.finish(chunk_id(data), len(data))
    assert not await store.exists(chunk_id(data))
    assert stream_objects(engine, tmp_path) == []


async def test_streams_that_never_became_chunks_are_debris(
    streaming_store: BlobStore, streaming: Engine, tmp_path: Path
) -> None:
    store, engine = streaming_store, streaming
    if isinstance(store, S3BlobStore):
        store.stream_debris_age = 0
    kept, _ = await stream_chunk(store, os.urandom(9 << 20))
    # One left unfinished (a writer that crashed), and on S3 one completed whose
    # redirect never landed (a crash between the two).
    await stream_chunk(store, os.urandom(9 << 20), finish=False)
    orphan = None
    if engine.server is not None:
        orphan, _ = await stream_chunk(store, os.urandom(9 << 20))
        engine.server.client().delete_object(
            Bucket=engine.bucket, Key=f"drives/show/chunks/{orphan[:2]}/{orphan}"
        )
    time.sleep(1.1)
    found = await store.debris(older_than=1)
    assert len(found) == (1 if engine.server is None else 2)
    if engine.kind != "moto":
        # (moto dates every multipart upload in 2010.)
        assert await store.debris(older_than=3600) == []
    assert await store.remove_debris(older_than=1) == len(found)
    assert await store.debris(older_than=1) == []
    # The chunk that was named is untouched.
    assert await store.get_range(kept, 0, 100) != b""
    assert len(stream_objects(engine, tmp_path)) == (0 if engine.server is None else 1)


async def test_a_stream_given_up_while_its_first_part_travels_leaves_nothing(
    streaming_store: BlobStore, streaming: Engine, tmp_path: Path
) -> None:
    stream = streaming_store.stream()
    assert stream is not None
    # The writer goes away (a copy dropped) with the upload still being started.
    writing = asyncio.ensure_future(stream.write(0, os.urandom(stream.part_size)))
    await asyncio.sleep(0)
    writing.cancel()
    await stream.abort()
    with contextlib.suppress(asyncio.CancelledError, NotFound, StoreUnavailable):
        await writing
    for _ in range(100):
        if stream_objects(streaming, tmp_path) == []:
            break
        await asyncio.sleep(0.05)
    assert stream_objects(streaming, tmp_path) == []
    assert await listed(streaming_store) == set()
