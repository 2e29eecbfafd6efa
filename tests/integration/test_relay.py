"""The storage pod's event relay over real HTTP on loopback, and the mount's follower on it.

The relay follows real metadata stores (SQLite, PostgreSQL); mounts read its
server-sent events with the node's client, and fall back to polling when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pydantic import ValidationError

from mediadrive.core.config import DriveSettings
from mediadrive.core.meta import Event, MetaStore, connect
from mediadrive.node.follower import Follower
from mediadrive.node.options import MountOptions
from mediadrive.node.relay import RelaySource, SseParser, decode_event, relay_events
from mediadrive.pod.relay import EventRelay, _Feed, encode_event, setup
from tests.unit.node.vfs_harness import drive_urls, make_test_vfs

DRIVE = "media"
REPO_ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def serve_relay(
    drives: dict[str, str], port: int = 0, ring: int = 4096
) -> AsyncIterator[tuple[EventRelay, str, int]]:
    """An aiohttp app with only the relay on it, on a loopback port."""
    app = web.Application()
    relay = setup(app, drives, poll=0.05, ring=ring, keepalive=0.5)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield relay, f"http://127.0.0.1:{bound}", bound
    finally:
        await runner.cleanup()


async def until(check: Callable[[], bool]) -> None:
    """Wait (up to 10 s) for ``check`` to hold."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not hold within 10 s")


async def new_drive(meta_url: str) -> MetaStore:
    meta = connect(meta_url, DRIVE)
    await meta.create_drive(DriveSettings())
    return meta


async def record(meta: MetaStore, count: int, kind: str = "note") -> list[int]:
    return [await meta.record_event(kind, f"/f{i}", "writer@test", n=i) for i in range(count)]


async def collect(base: str, since: int, count: int) -> list[Event]:
    """The first ``count`` events after ``since`` through the node's relay client."""
    source = RelaySource(base, DRIVE, read_timeout=5.0)
    got: list[Event] = []
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        async for event in relay_events(session, source, since):
            got.append(event)
            if len(got) == count:
                break
    return got


def catchups() -> float:
    value = REGISTRY.get_sample_value("mediadrive_pod_relay_catchups_total", {"drive": DRIVE})
    return value or 0.0


async def test_stream_delivers_events_after_since_in_order(meta_url: str) -> None:
    meta = await new_drive(meta_url)
    try:
        async with serve_relay({DRIVE: meta_url}) as (relay, base, _):
            await until(lambda: relay.head(DRIVE) is not None)
            start = relay.head(DRIVE)
            assert start is not None
            seqs = await record(meta, 6)
            await until(lambda: relay.head(DRIVE) == seqs[-1])
            before = catchups()
            reader = asyncio.create_task(collect(base, seqs[1], 8))
            await asyncio.sleep(0.2)
            more = await record(meta, 4)
            got = await reader
            # All of it from the ring and the live stream: no store read for this one.
            assert catchups() == before
        assert [e.seq for e in got] == seqs[2:] + more
        assert [e.detail["n"] for e in got] == [2, 3, 4, 5, 0, 1, 2, 3]
        assert all(e.kind == "note" and e.actor == "writer@test" for e in got)
        assert got == (await meta.events_after(seqs[1]))[:8]
    finally:
        await meta.close()


async def test_since_older_than_the_ring_is_served_from_the_store(meta_url: str) -> None:
    meta = await new_drive(meta_url)
    try:
        old = await record(meta, 5)
        async with serve_relay({DRIVE: meta_url}, ring=3) as (relay, base, _):
            await until(lambda: relay.head(DRIVE) == old[-1])
            recent = await record(meta, 6)
            await until(lambda: relay.head(DRIVE) == recent[-1])
            before = catchups()
            reader = asyncio.create_task(collect(base, 0, 13))
            await asyncio.sleep(0.2)
            live = await record(meta, 2)
            got = await reader
            assert catchups() > before
        assert [e.seq for e in got] == old + recent + live
        assert len({e.seq for e in got}) == len(got)
    finally:
        await meta.close()


async def test_unknown_drive_is_404_and_a_bad_since_is_400(tmp_path: Path) -> None:
    meta_url = f"sqlite:///{tmp_path}/meta.db"
    meta = await new_drive(meta_url)
    try:
        async with (
            serve_relay({DRIVE: meta_url}) as (_, base, _),
            aiohttp.ClientSession() as session,
        ):
            async with session.get(f"{base}/v1/drives/other/events?since=0") as response:
                assert response.status == 404
                body = await response.json()
                assert "other" in body["error"]
            for bad in ("x", "-1", "1.5"):
                async with session.get(f"{base}/v1/drives/{DRIVE}/events?since={bad}") as response:
                    assert response.status == 400
                    assert "since" in (await response.json())["error"]
            headers = {"Last-Event-ID": "nope"}
            async with session.get(f"{base}/v1/drives/{DRIVE}/events", headers=headers) as response:
                assert response.status == 400
                assert "Last-Event-ID" in (await response.json())["error"]
    finally:
        await meta.close()


async def test_last_event_id_resumes_and_keepalives_flow(tmp_path: Path) -> None:
    meta_url = f"sqlite:///{tmp_path}/meta.db"
    meta = await new_drive(meta_url)
    try:
        seqs = await record(meta, 4)
        async with (
            serve_relay({DRIVE: meta_url}) as (_, base, _),
            aiohttp.ClientSession() as session,
        ):
            # Last-Event-ID (a reconnecting EventSource) wins over the URL's since.
            headers = {"Last-Event-ID": str(seqs[1])}
            url = f"{base}/v1/drives/{DRIVE}/events?since=0"
            ids: list[str | None] = []
            kinds: list[str] = []
            keepalives = 0
            parser = SseParser()
            async with session.get(url, headers=headers) as response, asyncio.timeout(10):
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/event-stream")
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    keepalives += line == ": keepalive"
                    message = parser.feed(line)
                    if message is not None:
                        ids.append(message.id)
                        kinds.append(message.event)
                    if len(ids) == 2 and keepalives >= 1:
                        break
        assert ids == [str(seqs[2]), str(seqs[3])]
        assert kinds == ["note", "note"]
    finally:
        await meta.close()


async def test_follower_uses_the_relay_falls_back_to_polling_and_comes_back(
    tmp_path: Path,
) -> None:
    test_vfs = await make_test_vfs(tmp_path)
    meta_url, _ = drive_urls(tmp_path)
    writer = connect(meta_url, DRIVE)
    seen: list[int] = []
    follower: Follower | None = None
    try:
        await writer.open_drive()
        async with serve_relay({DRIVE: meta_url}) as (_, base, port):
            follower = Follower(test_vfs.vfs, 0.05, RelaySource(base, DRIVE, read_timeout=2.0))
            follower.listeners.append(lambda event: seen.append(event.seq))
            await follower.start()
            await until(lambda: follower is not None and follower.source == "relay")
            first = await record(writer, 5)
            await until(lambda: seen[-1:] == first[-1:])
            assert follower.source == "relay"
            # The relay goes away: events keep landing and the follower polls them.
            await asyncio.sleep(0.1)
        follower.relay_retry = 0.3
        down = []
        for _ in range(3):
            down += await record(writer, 2)
            await asyncio.sleep(0.05)
        await until(lambda: seen[-1:] == down[-1:])
        assert follower.source == "store"
        # It comes back on the same port: the follower resumes after the last event.
        async with serve_relay({DRIVE: meta_url}, port=port) as (relay, _, _):
            await until(lambda: follower is not None and follower.source == "relay")
            assert relay.head(DRIVE) is not None
            back = await record(writer, 5)
            await until(lambda: seen[-1:] == back[-1:])
            assert follower.source == "relay"
        assert seen == first + down + back
        assert follower.applied == len(seen) == len(set(seen))
    finally:
        if follower is not None:
            await follower.stop()
        await writer.close()
        await test_vfs.close()


async def test_follower_polls_when_there_is_no_relay_and_switches_once_it_is_up(
    tmp_path: Path,
) -> None:
    test_vfs = await make_test_vfs(tmp_path)
    meta_url, _ = drive_urls(tmp_path)
    writer = connect(meta_url, DRIVE)
    seen: list[int] = []
    async with serve_relay({}) as (_, _, port):
        pass  # a free port with nobody on it
    follower = Follower(
        test_vfs.vfs, 0.05, RelaySource(f"http://127.0.0.1:{port}", DRIVE, read_timeout=2.0)
    )
    follower.listeners.append(lambda event: seen.append(event.seq))
    try:
        await follower.start()
        follower.relay_retry = 0.2
        polled = await record(writer, 3)
        await until(lambda: seen[-1:] == polled[-1:])
        assert follower.source == "store"
        async with serve_relay({DRIVE: meta_url}, port=port):
            await until(lambda: follower.source == "relay")
            relayed = await record(writer, 3)
            await until(lambda: seen[-1:] == relayed[-1:])
        assert seen == polled + relayed
    finally:
        await follower.stop()
        await writer.close()
        await test_vfs.close()


async def test_follower_falls_back_when_the_relay_does_not_relay_the_drive(
    tmp_path: Path,
) -> None:
    test_vfs = await make_test_vfs(tmp_path)
    meta_url, _ = drive_urls(tmp_path)
    writer = connect(meta_url, DRIVE)
    seen: list[int] = []
    async with serve_relay({"other": meta_url}) as (_, base, _):
        follower = Follower(test_vfs.vfs, 0.05, RelaySource(base, DRIVE, read_timeout=2.0))
        follower.listeners.append(lambda event: seen.append(event.seq))
        try:
            await follower.start()
            polled = await record(writer, 3)
            await until(lambda: seen[-1:] == polled[-1:])
            assert follower.source == "store"
            assert seen == polled
        finally:
            await follower.stop()
            await writer.close()
            await test_vfs.close()


def event(seq: int) -> Event:
    return Event(seq, "note", f"/f{seq}", None, None, "writer@test", 0.0, {"n": seq})


def test_the_ring_finds_what_follows_a_seq_even_with_gaps() -> None:
    feed = _Feed(DRIVE, connect("sqlite:///unused.db", DRIVE), deque(maxlen=4), head=0)
    feed.add([event(s) for s in (1, 2, 5, 6, 9, 10)])
    # The ring holds 5, 6, 9, 10: it covers everything after 2.
    assert feed.floor == 2
    assert [e.seq for e in feed.after(2)] == [5, 6, 9, 10]
    assert [e.seq for e in feed.after(5)] == [6, 9, 10]
    assert [e.seq for e in feed.after(7)] == [9, 10]
    assert [e.seq for e in feed.after(9)] == [10]
    assert feed.after(10) == []
    assert feed.after(12) == []


def test_sse_parser_reads_events_comments_and_multiline_data() -> None:
    parser = SseParser()
    lines = [": keepalive", "", "id: 7", "event: commit", "data: {", "data:  1}", "", "data: x", ""]
    messages = [m for m in (parser.feed(line) for line in lines) if m is not None]
    assert [(m.id, m.event, m.data) for m in messages] == [
        ("7", "commit", "{\n 1}"),
        ("7", "message", "x"),
    ]
    encoded = encode_event(event(3)).decode().split("\n")
    fresh = SseParser()
    decoded = [m for m in (fresh.feed(line) for line in encoded) if m is not None]
    assert [decode_event(m) for m in decoded] == [event(3)]


@contextlib.asynccontextmanager
async def relay_process(port: int, meta_url: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """The relay in a process of its own (killed at the end if still there)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.relay_server",
        str(port),
        f"{DRIVE}={meta_url}",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            assert (await proc.stdout.readline()).strip() == b"ready"
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            await proc.wait()


async def test_follower_survives_a_killed_and_a_frozen_relay(tmp_path: Path) -> None:
    test_vfs = await make_test_vfs(tmp_path)
    meta_url, _ = drive_urls(tmp_path)
    writer = connect(meta_url, DRIVE)
    seen: list[int] = []
    async with serve_relay({}) as (_, _, port):
        pass  # a free port
    source = RelaySource(f"http://127.0.0.1:{port}", DRIVE, read_timeout=1.5)
    follower = Follower(test_vfs.vfs, 0.05, source)
    follower.listeners.append(lambda event: seen.append(event.seq))
    try:
        async with relay_process(port, meta_url) as proc:
            await follower.start()
            follower.relay_retry = 0.2
            await until(lambda: follower.source == "relay")
            relayed = await record(writer, 3)
            await until(lambda: seen[-1:] == relayed[-1:])
            proc.kill()  # no goodbye: the connection just drops
            await proc.wait()
            dropped = await record(writer, 3)
            await until(lambda: seen[-1:] == dropped[-1:])
            assert follower.source == "store"
        async with relay_process(port, meta_url) as proc:
            await until(lambda: follower.source == "relay")
            back = await record(writer, 2)
            await until(lambda: seen[-1:] == back[-1:])
            follower.relay_retry = 60.0  # stay on the store once it falls back
            proc.send_signal(signal.SIGSTOP)  # frozen: the socket stays open, silent
            frozen = await record(writer, 3)
            await until(lambda: seen[-1:] == frozen[-1:])
            assert follower.source == "store"
        assert seen == relayed + dropped + back + frozen
        assert follower.applied == len(seen)
    finally:
        await follower.stop()
        await writer.close()
        await test_vfs.close()


def test_mount_options_take_a_relay_url_and_token_file(tmp_path: Path) -> None:
    base = {
        "drive": DRIVE,
        "meta_url": "sqlite:///m.db",
        "store_url": "file:///s",
        "mountpoint": tmp_path / "mnt",
        "cache_dir": tmp_path / "cache",
        "run_dir": tmp_path / "run",
    }
    assert MountOptions(**base).relay_url is None
    options = MountOptions(
        **base, relay_url="http://10.0.0.5:7700/", relay_token_file=tmp_path / "token"
    )
    assert options.relay_url == "http://10.0.0.5:7700"
    assert options.relay_token_file == tmp_path / "token"
    for bad in ("10.0.0.5:7700", "pod://10.0.0.5:7700/media", "http://"):
        with pytest.raises(ValidationError, match="relay_url"):
            MountOptions(**base, relay_url=bad)
    (tmp_path / "token").write_text("# the pod's token\nsecret-1 media,other\n")
    source = RelaySource(options.relay_url or "", DRIVE, options.relay_token_file)
    assert source.headers()["Authorization"] == "Bearer secret-1"
    assert source.events_url() == "http://10.0.0.5:7700/v1/drives/media/events"
