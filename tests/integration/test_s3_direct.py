"""The S3 store's direct path: a chunk's PUT and a ranged GET go out as plain signed
requests (a small PUT from the event loop, over a kept connection of its own), and
anything but a plain
success is asked again through the boto3 client (whose retries and errors then apply).
Against moto and MinIO on loopback."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config

from mediadrive.core import buffers
from mediadrive.core.blob import put_sent
from mediadrive.core.blob import s3 as s3_module
from mediadrive.core.blob.s3 import (
    _LOOP_PUT_MAX,
    S3BlobStore,
    _Direct,
    _LoopConnections,
    _Signed,
    body_checksum,
)
from mediadrive.core.errors import NotFound
from mediadrive.core.hashing import chunk_id
from tests.integration.test_blob_contract import S3_ENGINES, make_engine
from tests.servers import S3Server


@pytest.fixture(params=S3_ENGINES)
async def s3(
    request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[S3BlobStore, S3Server]]:
    engine = make_engine(request.param, request, tmp_path, monkeypatch)
    assert engine.server is not None
    # A prefix that needs quoting in a URL: the signature must cover the quoted form.
    store = S3BlobStore.from_url(engine.url_for(engine.bucket, "show reel+cuts/é"))
    await store.check()
    try:
        yield store, engine.server
    finally:
        await store.close()


def client_calls(store: S3BlobStore) -> Counter[str]:
    """Operations the store's boto3 client sends from now on, by name."""
    calls: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        calls[event_name.rsplit(".", 1)[-1]] += 1

    store._client.meta.events.register("before-send.s3", count)
    return calls


def direct_of(store: S3BlobStore) -> _Direct:
    assert store._direct is not None
    return store._direct


def payload(size: int, seed: int) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return chunk_id(data), data


async def test_puts_and_ranged_gets_skip_the_client(s3: tuple[S3BlobStore, S3Server]) -> None:
    store, _ = s3
    calls = client_calls(store)
    cid, data = payload(300_000, seed=1)
    await store.put(cid, data)
    assert await store.get_range(cid, 1000, 5000) == data[1000:6000]
    # Past the end: what there is.
    assert await store.get_range(cid, len(data) - 10, 100) == data[-10:]
    assert calls == Counter()
    # The object is an ordinary one: the client reads it back whole.
    assert await store.get(cid) == data
    assert calls == Counter({"GetObject": 1})


def watch_answers(
    store: S3BlobStore,
    monkeypatch: pytest.MonkeyPatch,
    watch: Callable[[str, int | None], int | None],
) -> None:
    """Pass every answer the store's HTTP sessions get from now on (the client's, or
    the event loop's for a small PUT) through ``watch`` (method, status), whose
    return is the status the store then sees."""
    direct = direct_of(store)
    send, exchange = direct._http.send, direct._exchange_on_loop

    def send_and_watch(request: Any) -> Any:
        answer = send(request)
        answer.status_code = watch(request.method, answer.status_code)
        return answer

    async def exchange_and_watch(*args: Any) -> int | None:
        return watch("PUT", await exchange(*args))

    monkeypatch.setattr(direct._http, "send", send_and_watch)
    monkeypatch.setattr(direct, "_exchange_on_loop", exchange_and_watch)


def answer_first_with(
    store: S3BlobStore, monkeypatch: pytest.MonkeyPatch, status: int
) -> list[tuple[str, int | None]]:
    """Make the first answer the store's HTTP sessions get carry ``status``; the
    requests sent from now on (method, status answered), in order."""
    seen: list[tuple[str, int | None]] = []

    def first_with(method: str, answered: int | None) -> int | None:
        if not seen:
            answered = status
        seen.append((method, answered))
        return answered

    watch_answers(store, monkeypatch, first_with)
    return seen


async def test_a_failed_direct_request_is_asked_again_through_the_client(
    s3: tuple[S3BlobStore, S3Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = s3
    calls = client_calls(store)
    # As if the server had answered 503 Slow Down.
    seen = answer_first_with(store, monkeypatch, 503)
    cid, data = payload(70_000, seed=2)
    await store.put(cid, data)
    assert calls == Counter({"PutObject": 1})
    assert await store.get_range(cid, 0, 10) == data[:10]
    # The client sends through the same HTTP session: its PUT is the 200.
    assert seen == [("PUT", 503), ("PUT", 200), ("GET", 206)]
    assert calls == Counter({"PutObject": 1})


async def test_a_ranged_view_comes_in_aligned_memory_or_through_the_client(
    s3: tuple[S3BlobStore, S3Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = s3
    calls = client_calls(store)
    cid, data = payload(5 * buffers.ALIGNMENT, seed=7)
    await store.put(cid, data)
    view = await store.get_range_view(cid, buffers.ALIGNMENT, 3 * buffers.ALIGNMENT)
    assert bytes(view) == data[buffers.ALIGNMENT : 4 * buffers.ALIGNMENT]
    assert buffers.direct_io_ready(view)
    assert calls == Counter()
    # A failed direct GET (503): the client's answer, the same bytes.
    seen = answer_first_with(store, monkeypatch, 503)
    view = await store.get_range_view(cid, 100, 5000)
    assert bytes(view) == data[100:5100]
    assert seen == [("GET", 503), ("GET", 206)]
    assert calls == Counter({"GetObject": 1})


async def test_an_answer_that_the_requests_are_wrong_here_turns_the_direct_path_off(
    s3: tuple[S3BlobStore, S3Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = s3
    calls = client_calls(store)
    # As if the bucket lived in another region.
    seen = answer_first_with(store, monkeypatch, 301)
    cid, data = payload(5000, seed=5)
    await store.put(cid, data)
    assert await store.get_range(cid, 10, 20) == data[10:30]
    await store.put(*payload(6000, seed=6))
    assert store._direct is not None and store._direct.off
    # The refused PUT, then the client's three requests only.
    assert [method for method, _ in seen] == ["PUT", "PUT", "GET", "PUT"]
    assert calls == Counter({"PutObject": 2, "GetObject": 1})


async def test_a_range_past_the_end_and_a_missing_chunk_answer_as_through_the_client(
    s3: tuple[S3BlobStore, S3Server],
) -> None:
    store, _ = s3
    cid, data = payload(1000, seed=3)
    await store.put(cid, data)
    assert await store.get_range(cid, 5000, 10) == b""
    absent, _ = payload(10, seed=4)
    with pytest.raises(NotFound, match=absent):
        await store.get_range(absent, 0, 10)


def make_client(endpoint: str | None, style: str | None) -> Any:
    s3: Any = {} if style is None else {"addressing_style": style}
    session = boto3.session.Session(aws_access_key_id="id", aws_secret_access_key="secret")
    return session.client(
        "s3", endpoint_url=endpoint, region_name="eu-west-1", config=Config(s3=s3)
    )


@pytest.mark.parametrize(
    ("endpoint", "style", "bucket", "base"),
    [
        ("http://127.0.0.1:9000", "path", "takes", "http://127.0.0.1:9000/takes/"),
        (None, None, "takes", "https://takes.s3.eu-west-1.amazonaws.com/"),
        # A bucket name a virtual host cannot carry: the client alone knows the way.
        (None, None, "takes.v2", None),
        ("http://127.0.0.1:9000", None, "takes", None),
    ],
)
def test_the_direct_url_of_a_bucket(
    endpoint: str | None, style: str | None, bucket: str, base: str | None
) -> None:
    client = make_client(endpoint, style)
    session = boto3.session.Session(aws_access_key_id="id", aws_secret_access_key="secret")
    direct = _Direct.for_client(client, session, bucket, "eu-west-1")
    assert (direct and direct._base) == base


def note_sends(store: S3BlobStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What happens from now on, in order: "sent" when a put says its bytes are sent
    (through put_sent), "answered" when one of the store's HTTP sessions has an
    answer."""
    order: list[str] = []

    def answered(method: str, status: int | None) -> int | None:
        order.append("answered")
        return status

    watch_answers(store, monkeypatch, answered)
    put_sent.set(lambda: order.append("sent"))
    return order


async def test_a_put_says_its_bytes_are_sent_before_the_answer_comes(
    s3: tuple[S3BlobStore, S3Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = s3
    assert store.signals_sent
    order = note_sends(store, monkeypatch)
    cid, data = payload(200_000, seed=5)
    await store.put(cid, data)
    assert order == ["sent", "answered"]
    assert await store.get(cid) == data


async def test_a_put_through_the_client_says_so_as_it_starts(
    s3: tuple[S3BlobStore, S3Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = s3
    order = note_sends(store, monkeypatch)
    seen = answer_first_with(store, monkeypatch, 500)
    cid, data = payload(100_000, seed=6)
    await store.put(cid, data)
    # The direct PUT failed after its bytes went; the client's PUT starts again.
    assert seen[0] == ("PUT", 500)
    assert order.count("sent") == 2
    assert await store.get(cid) == data


def direct_puts(direct: _Direct, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Puts the direct path sends from now on: the way each went (from the event loop's
    thread, or from another) and the body it was handed."""
    noted: list[tuple[str, object]] = []
    loop_thread = threading.get_ident()
    exchange, put = direct._exchange_on_loop, direct.put

    async def exchange_and_note(request: _Signed, body: Any, sent: Any) -> int | None:
        on_loop = threading.get_ident() == loop_thread
        noted.append(("loop" if on_loop else "loop elsewhere", body))
        return await exchange(request, body, sent)

    def put_and_note(key: str, body: Any, sent: Any = None) -> bool:
        on_loop = threading.get_ident() == loop_thread
        noted.append(("thread on the loop" if on_loop else "thread", body))
        return put(key, body, sent)

    monkeypatch.setattr(direct, "_exchange_on_loop", exchange_and_note)
    monkeypatch.setattr(direct, "put", put_and_note)
    return noted


async def test_a_small_put_goes_from_the_event_loop_and_a_large_one_from_a_thread(
    s3: tuple[S3BlobStore, S3Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = s3
    direct, calls = direct_of(store), client_calls(store)
    noted = direct_puts(direct, monkeypatch)
    small = payload(300_000, seed=8)
    large = payload(_LOOP_PUT_MAX + 1, seed=9)
    await store.put(*small)
    await store.put(*large)
    assert [way for way, _ in noted] == ["loop", "thread"]
    assert calls == Counter()
    assert await store.get(small[0]) == small[1]
    assert await store.get(large[0]) == large[1]


async def test_a_put_carries_the_crc32c_of_its_body_and_leaves_the_body_unsigned(
    s3: tuple[S3BlobStore, S3Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No SHA-256 of the body for the signature (here and in the server): the server
    checks the CRC32C the request carries instead."""
    store, _ = s3
    direct = direct_of(store)
    signed: list[_Signed] = []
    sign = direct._signed

    def noting(*args: Any, **kwargs: Any) -> _Signed | None:
        request = sign(*args, **kwargs)
        if request is not None:
            signed.append(request)
        return request

    monkeypatch.setattr(direct, "_signed", noting)
    small = payload(300_000, seed=21)
    large = payload(_LOOP_PUT_MAX + 1, seed=22)
    await store.put(*small)
    await store.put(*large)
    assert [r.headers["X-Amz-Content-SHA256"] for r in signed] == ["UNSIGNED-PAYLOAD"] * 2
    assert [r.headers["x-amz-checksum-crc32c"] for r in signed] == [
        body_checksum(small[1]),
        body_checksum(large[1]),
    ]
    assert await store.get(small[0]) == small[1]
    assert await store.get(large[0]) == large[1]


@pytest.mark.minio
@pytest.mark.parametrize("size", [300_000, _LOOP_PUT_MAX + 1])
async def test_a_body_that_does_not_match_its_crc32c_is_refused_and_put_again_signed(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, size: int
) -> None:
    """What the server stores is what was sent: a body that arrives other than its
    checksum says is refused (here the checksum of other bytes), and the chunk goes
    through the client, whose requests sign the body."""
    engine = make_engine("minio", request, tmp_path, monkeypatch)
    store = S3BlobStore.from_url(engine.url_for(engine.bucket, "chunks"))
    try:
        calls = client_calls(store)
        monkeypatch.setattr(s3_module, "body_checksum", lambda body: body_checksum(b"other"))
        cid, data = payload(size, seed=23)
        await store.put(cid, data)
        assert direct_of(store).off
        assert calls == Counter({"PutObject": 1})
        assert await store.get(cid) == data
    finally:
        await store.close()


async def test_a_view_is_sent_as_it_is_not_copied_first(
    s3: tuple[S3BlobStore, S3Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A chunk gathered as it was written is a view of aligned memory; copying 64 MiB
    # of it before the put cost the event loop up to 50 ms.
    store, _ = s3
    direct, calls = direct_of(store), client_calls(store)
    noted = direct_puts(direct, monkeypatch)
    views = []
    for size, seed in ((300_000, 11), (_LOOP_PUT_MAX + 4096, 12)):
        cid, data = payload(size, seed)
        view = buffers.aligned(size)
        view[:] = data
        views.append((cid, data, view))
        await store.put(cid, view)
    assert [way for way, _ in noted] == ["loop", "thread"]
    assert [id(body) for _, body in noted] == [id(view) for _, _, view in views]
    assert calls == Counter()
    for cid, data, _ in views:
        assert await store.get(cid) == data


@pytest.mark.parametrize(
    ("size", "as_view"),
    [(50_000, False), (_LOOP_PUT_MAX + 4096, True)],
    ids=["small bytes from the loop", "large view from a thread"],
)
async def test_a_put_the_direct_path_cannot_send_goes_through_the_client(
    s3: tuple[S3BlobStore, S3Server], monkeypatch: pytest.MonkeyPatch, size: int, as_view: bool
) -> None:
    store, _ = s3
    direct, calls = direct_of(store), client_calls(store)
    # Nothing listens there: the connection is refused.
    monkeypatch.setattr(direct, "_base", "http://127.0.0.1:1/" + direct._base.split("/", 3)[3])
    cid, data = payload(size, seed=10)
    await store.put(cid, memoryview(bytearray(data)) if as_view else data)
    assert calls == Counter({"PutObject": 1})
    assert not direct.off
    assert await store.get(cid) == data


async def test_puts_from_the_loop_keep_one_connection_and_outlive_its_closing(
    s3: tuple[S3BlobStore, S3Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, server = s3
    if server.kind == "moto":
        pytest.skip("moto's server closes every connection after its answer")
    direct, calls = direct_of(store), client_calls(store)
    opened: list[object] = []
    open_connection = asyncio.open_connection

    async def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return await open_connection(*args, **kwargs)

    monkeypatch.setattr(asyncio, "open_connection", counting)
    pieces = [payload(100_000, seed=20 + i) for i in range(3)]
    await store.put(*pieces[0])
    await store.put(*pieces[1])
    assert len(opened) == 1
    # The server goes away from the kept connection before the next put notices.
    connections = direct._loop_connections
    assert connections is not None
    ((_, writer),) = connections._idle
    writer.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
    await store.put(*pieces[2])
    assert len(opened) == 2
    assert calls == Counter()
    for cid, data in pieces:
        assert await store.get(cid) == data


async def _serve_answer(answer: bytes) -> tuple[asyncio.Server, str]:
    """A server that reads a request (headers and a Content-Length body) and sends
    ``answer``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/bucket/"


@pytest.mark.parametrize(
    ("answer", "status", "kept"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 200, False),
        (b"HTTP/1.1 503 Slow Down\r\nContent-Length: 5\r\n\r\nerror", 503, True),
        (
            b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nerror\r\n0\r\n\r\n",
            500,
            False,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, False),
        (b"SSH-2.0-OpenSSH\r\n", None, False),
    ],
)
async def test_an_answer_from_the_loop_keeps_its_connection_only_when_it_may(
    answer: bytes, status: int | None, kept: bool
) -> None:
    server, base = await _serve_answer(answer)
    try:
        connections = _LoopConnections(
            asyncio.get_running_loop(), base, True, connect_timeout=5, read_timeout=5
        )
        request = _Signed(base + "key", {"Content-Length": "4"})
        assert await connections.put(request, b"body", None) == status
        assert len(connections._idle) == (1 if kept else 0)
        connections.close()
    finally:
        server.close()
        await server.wait_closed()


def test_puts_leave_the_event_loop_only_where_a_proxy_is_set() -> None:
    session = boto3.session.Session(aws_access_key_id="id", aws_secret_access_key="secret")
    plain = make_client("http://127.0.0.1:9000", "path")
    direct = _Direct.for_client(plain, session, "takes", "eu-west-1")
    assert direct is not None and direct.on_loop
    proxied = session.client(
        "s3",
        endpoint_url="http://127.0.0.1:9000",
        region_name="eu-west-1",
        config=Config(s3={"addressing_style": "path"}, proxies={"http": "http://proxy:3128"}),
    )
    direct = _Direct.for_client(proxied, session, "takes", "eu-west-1")
    assert direct is not None and not direct.on_loop


def unfinished_uploads(store: S3BlobStore, server: S3Server) -> list[str]:
    listed = server.client().list_multipart_uploads(Bucket=store.bucket)
    return [upload["Key"] for upload in listed.get("Uploads", [])]


async def test_a_chunk_upload_never_completed_is_debris(
    s3: tuple[S3BlobStore, S3Server],
) -> None:
    store, server = s3
    store.stream_debris_age = 0
    key = store._key(payload(10, seed=60)[0])
    # A chunk over single_put_max whose upload in parts a crash cut off.
    server.client().create_multipart_upload(Bucket=store.bucket, Key=key)
    server.client().create_multipart_upload(Bucket=store.bucket, Key="not-ours/x")
    time.sleep(1.1)
    assert await store.debris(older_than=1) == [f"{key} (unfinished upload)"]
    assert await store.remove_debris(older_than=1) == 1
    assert unfinished_uploads(store, server) == ["not-ours/x"]
