"""Storage pod benchmarks, one section per function; ``main`` runs them and prints a table.

    .venv/bin/python bench/pod_bench.py [--quick] [--section NAME] [--output FILE]

Sections:

- **relay**: metadata queries per second that 200 simulated followers cost the
  drive's PostgreSQL store while one writer commits a version every 100 ms,
  (a) each follower polling ``events_after`` every second, as every mount does
  without a relay, and (b) all of them subscribed to one pod event relay
  (``mediadrive.pod.relay``, in process, over real HTTP on loopback), beside the
  writer alone. Queries are counted by PostgreSQL itself: the database's
  ``xact_commit + xact_rollback`` delta in ``pg_stat_database`` (each metadata
  read is one transaction). Every follower must see every event in both modes.
- **throughput**: one real pod process (``mediadrive storage-pod serve``) and
  MinIO on loopback, through the engines (``open_store``): PUT, GET and 1 MiB
  ranged GETs of random chunks of 4 MiB and of 64 MiB, a few requests in
  flight (as the uploader does); MB/s of the pod beside MinIO's, median of
  ``--repeat`` runs on fresh chunks, the two taking turns at going first. Every
  byte read is checked against what was written (BLAKE3 ids, ranges against the
  source).
- **mount-read**: the same random file in two drives (SQLite metadata, MinIO
  as the cloud): one with ``writeTarget: pod`` (held in the pod; the cloud
  bucket must hold none of it), one plain on MinIO. Each is mounted (real
  FUSE, the node agent that ``mediadrive mount`` starts) with a fresh cache and
  the page cache dropped, and the file is read sequentially in 1 MiB reads;
  MB/s from the pod beside MinIO's, median of ``--repeat`` alternating runs.

A section is an async function taking the run's :class:`Bench` and returning
:class:`Figure` rows; add one to ``SECTIONS``. PostgreSQL, MinIO and the pod are started by
the script (``tests/servers.py``) on first use and stopped at the end. Results go to stdout as
a table and to ``bench/results/pod-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp import web
from rich.console import Console
from rich.table import Table

from mediadrive.core.blob import BlobStore, open_store
from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.core.hashing import chunk_id
from mediadrive.core.meta import MetaStore
from mediadrive.core.meta.postgres import PostgresMetaStore
from mediadrive.core.policy import TierPolicy
from mediadrive.core.units import format_size, parse_size
from mediadrive.node import client
from mediadrive.node.options import MountOptions
from mediadrive.node.registry import MountRegistry
from mediadrive.node.relay import RelaySource, relay_events
from mediadrive.pod import relay

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.servers import (  # noqa: E402 - repo root on sys.path
    PodServer,
    PostgresServer,
    S3Server,
    minio_server,
    pod_server,
    postgres_server,
)

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "pod-latest.json"
DRIVE = "bench"
# PostgreSQL runs with max_connections=200: the simulated mounts share this many
# stores (one pooled connection each). Sharing changes no query count.
STORES = 100
# Time for PostgreSQL to publish a backend's pending statistics (at most every second).
STATS_SETTLE = 1.5
# The writer commits new versions of this many files in turn.
FILES = 50
MiB = 1 << 20
MB = 1_000_000
# Chunk sizes of the throughput section: a FastCDC-sized one and the fixed default.
CHUNK_SIZES = (4 * MiB, 64 * MiB)
RANGE = MiB
# Reads through a mount, as dd bs=1M does.
READ_SIZE = MiB

out = Console(width=140)


@dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str
    note: str = ""
    # What the same run measured to compare with (same unit), and what it is.
    reference: float | None = None
    reference_name: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.reference is None else _ratio(self.value, self.reference)


@dataclass(frozen=True)
class Counts:
    """PostgreSQL's own counters for one database."""

    # xact_commit + xact_rollback: every metadata call is one transaction.
    transactions: int
    # Scans of the events table: reads of the event log (the writer appends, never scans).
    event_reads: int

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.transactions - other.transactions, self.event_reads - other.event_reads)


@dataclass
class Bench:
    """What a section may use: the options and lazily started servers."""

    args: argparse.Namespace
    workdir: Path
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    # The relay section's database and what one count of its transactions adds to it.
    url: str = ""
    probe_cost: Counts = Counts(0, 0)
    _postgres: PostgresServer | None = None
    _minio: S3Server | None = None
    _pod: PodServer | None = None

    def postgres(self) -> PostgresServer:
        if self._postgres is None:
            self._postgres = self.stack.enter_context(postgres_server())
        return self._postgres

    def minio(self) -> S3Server:
        """MinIO on loopback; its credentials in the environment (engines and agents)."""
        if self._minio is None:
            self._minio = self.stack.enter_context(minio_server())
            os.environ.update(
                AWS_ACCESS_KEY_ID=self._minio.access_key,
                AWS_SECRET_ACCESS_KEY=self._minio.secret_key,
                AWS_DEFAULT_REGION=self._minio.region,
            )
        return self._minio

    def pod(self) -> PodServer:
        """One storage pod process on loopback, its data in the work directory."""
        if self._pod is None:
            data = self.workdir / "pod" / "data"
            self._pod = self.stack.enter_context(pod_server(data, "--region", "bench"))
        return self._pod

    def s3_url(self, bucket: str, prefix: str) -> str:
        return f"s3://{bucket}/{prefix}?endpoint={self.minio().endpoint_url}"


Section = Callable[[Bench], Awaitable[list[Figure]]]


# --- relay ----------------------------------------------------------------------------------


def counts(url: str) -> Counts:
    """The database's counters now (this read's own transactions are published later)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
        scans = conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
            "WHERE relname = 'events'"
        ).fetchone()
    assert row is not None and scans is not None
    return Counts(int(row[0]), int(scans[0]))


async def probe_cost(url: str) -> Counts:
    """What one :func:`counts` call itself adds (its connection's transactions)."""
    first = counts(url)
    await asyncio.sleep(STATS_SETTLE)
    return counts(url) - first


@dataclass
class Phase:
    """One measured run: queries the database counted, events each follower saw."""

    label: str
    start: int = 0
    seconds: float = 0.0
    queries: Counts = Counts(0, 0)
    commits: int = 0
    events: list[int] = field(default_factory=list)
    seen: list[list[int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.queries.transactions / self.seconds if self.seconds else 0.0

    @property
    def reads_per_second(self) -> float:
        return self.queries.event_reads / self.seconds if self.seconds else 0.0

    def all_seen(self) -> bool:
        return all(got == self.events for got in self.seen)


# (since, one list per follower to fill with the seqs it sees) -> the followers' tasks
Followers = Callable[[int, list[list[int]]], Awaitable[list[asyncio.Task[None]]]]


async def writer(drive: Drive, stop: asyncio.Event, phase: Phase, every: float) -> None:
    """Commit a small new version every ``every`` seconds (start to start) until ``stop``."""
    tick = time.monotonic()
    while not stop.is_set():
        phase.commits += 1
        n = phase.commits
        await drive.write_file(f"/shots/frame{n % FILES:04d}.exr", io.BytesIO(b"frame %d" % n))
        tick = max(tick + every, time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick - time.monotonic())


async def poller(store: MetaStore, since: int, seen: list[int]) -> None:
    """A mount without a relay: ``events_after`` every second, until cancelled."""
    while True:
        for event in await store.events_after(since):
            seen.append(event.seq)
            since = event.seq
        await asyncio.sleep(1.0)


async def subscriber(
    session: aiohttp.ClientSession, source: RelaySource, since: int, seen: list[int]
) -> None:
    """A mount with a relay: the pod's event stream."""
    async for event in relay_events(session, source, since):
        seen.append(event.seq)


async def all_events(store: MetaStore, since: int) -> list[int]:
    seqs: list[int] = []
    while batch := await store.events_after(since):
        seqs += [event.seq for event in batch]
        since = batch[-1].seq
    return seqs


async def run_phase(
    phase: Phase,
    bench: Bench,
    drive: Drive,
    followers: Followers,
    cleanup: Callable[[], Awaitable[None]] | None = None,
) -> Phase:
    """Followers (maybe none) for ``seconds`` beside the writer; queries from PostgreSQL.

    PostgreSQL publishes an idle connection's counts up to 10 s late, but a closing
    one's at once: every connection to the database is closed before each count, so
    the delta holds exactly what the phase did (connection set-up included).
    """
    url = bench.url
    phase.start = await drive.meta.last_event_seq()
    await drive.meta.close()
    await asyncio.sleep(STATS_SETTLE)
    before = counts(url)
    clock = time.monotonic()
    stop = asyncio.Event()
    await drive.meta.last_event_seq()  # the writer's connection first
    tasks = await followers(phase.start, phase.seen)
    await asyncio.gather(
        writer(drive, stop, phase, bench.args.every), _stop_after(stop, bench.args.seconds)
    )
    # Every follower gets every event before the count closes (relay: ~0.3 s; polls: 1 s).
    last = [await drive.meta.last_event_seq()]
    for _ in range(200):  # up to 10 s
        if all(got[-1:] == last for got in phase.seen):
            break
        await asyncio.sleep(0.05)
    phase.seconds = time.monotonic() - clock
    for task in tasks:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            phase.errors.append(f"{type(result).__name__}: {result}")
    if cleanup is not None:
        await cleanup()
    await drive.meta.close()
    await asyncio.sleep(STATS_SETTLE)
    phase.queries = counts(url) - before - bench.probe_cost
    phase.events = await all_events(drive.meta, phase.start)
    return phase


async def _stop_after(stop: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    stop.set()


async def relay_section(bench: Bench) -> list[Figure]:
    count = bench.args.followers
    url = bench.url = bench.postgres().new_database("pod_bench")
    drive = await Drive.create(
        DRIVE, url, f"file://{bench.workdir / 'store'}", DriveSettings(chunking="fixed")
    )
    try:
        await drive.mkdir("/shots")
        for n in range(FILES):  # every measured commit is a new version of a file
            await drive.write_file(f"/shots/frame{n:04d}.exr", io.BytesIO(b"first"))
        bench.probe_cost = await probe_cost(url)
        alone = await run_phase(Phase("writer alone"), bench, drive, _no_followers)
        polled = await _polled_phase(bench, drive, count)
        relayed = await _relayed_phase(bench, drive, count)
    finally:
        await drive.close()
    return _relay_figures(count, alone, polled, relayed)


async def _no_followers(since: int, seen: list[list[int]]) -> list[asyncio.Task[None]]:
    return []


async def _polled_phase(bench: Bench, drive: Drive, count: int) -> Phase:
    # One connection per store (a mount's own pool would hold one while idle, too).
    stores = [PostgresMetaStore(bench.url, DRIVE, pool_size=1) for _ in range(min(count, STORES))]

    async def start(since: int, seen: list[list[int]]) -> list[asyncio.Task[None]]:
        # Each store opens its pool before followers share it (one first call at a
        # time), a few at once so that no connection waits long on a busy machine.
        for first in range(0, len(stores), 10):
            await asyncio.gather(*(s.last_event_seq() for s in stores[first : first + 10]))
        seen.extend([] for _ in range(count))
        return [
            asyncio.create_task(poller(stores[i % len(stores)], since, got))
            for i, got in enumerate(seen)
        ]

    async def close() -> None:
        await asyncio.gather(*(store.close() for store in stores))

    phase = Phase(f"{count} followers polling every 1 s")
    return await run_phase(phase, bench, drive, start, close)


async def _relayed_phase(bench: Bench, drive: Drive, count: int) -> Phase:
    app = web.Application()
    relay.setup(app, {DRIVE: bench.url})
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    source = RelaySource(base, DRIVE)

    async def start(since: int, seen: list[list[int]]) -> list[asyncio.Task[None]]:
        seen.extend([] for _ in range(count))
        return [asyncio.create_task(subscriber(session, source, since, got)) for got in seen]

    async def close() -> None:
        await session.close()
        await runner.cleanup()  # stops the relay's follow loop and closes its store

    phase = Phase(f"{count} followers on one relay (polls every {relay.DEFAULT_POLL} s)")
    return await run_phase(phase, bench, drive, start, close)


def _relay_figures(count: int, alone: Phase, polled: Phase, relayed: Phase) -> list[Figure]:
    figures = [
        Figure("relay", phase.label, phase.per_second, "queries/s", _seen_note(phase))
        for phase in (alone, polled, relayed)
    ]
    figures += [
        Figure("relay", f"event-log reads, {phase.label}", phase.reads_per_second, "reads/s", "")
        for phase in (alone, polled, relayed)
    ]
    figures += [
        Figure(
            "relay",
            "queries, polling / relay",
            _ratio(polled.per_second, relayed.per_second),
            "x",
            "all the database's transactions, the writer's included",
        ),
        Figure(
            "relay",
            "event-log reads, polling / relay",
            _ratio(polled.reads_per_second, relayed.reads_per_second),
            "x",
            f"what following costs the store, {count} followers",
        ),
    ]
    return figures


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def _seen_note(phase: Phase) -> str:
    events = len(phase.events)
    note = f"{phase.commits} commits, {events} events"
    if not phase.seen:
        return note
    check = "OK" if phase.all_seen() else "MISSING EVENTS"
    fewest = min(len(got) for got in phase.seen)
    most = max(len(got) for got in phase.seen)
    return f"{note}; each follower saw {fewest}..{most}: all of them in order {check}"


# --- throughput -----------------------------------------------------------------------------


@dataclass
class Rates:
    """MB/s of one operation on each engine, in the order they ran."""

    label: str
    note: str = ""
    mb_per_s: dict[str, float] = field(default_factory=dict)


async def _bounded(jobs: Sequence[Callable[[], Awaitable[bytes | None]]], width: int) -> list[Any]:
    """Run the jobs with at most ``width`` in flight; their results in order."""
    gate = asyncio.Semaphore(width)

    async def one(job: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


async def _timed(
    jobs: Sequence[Callable[[], Awaitable[bytes | None]]], width: int
) -> tuple[float, list[Any]]:
    clock = time.perf_counter()
    results = await _bounded(jobs, width)
    return time.perf_counter() - clock, results


def _put(store: BlobStore, cid: str, data: bytes) -> Callable[[], Awaitable[None]]:
    return lambda: store.put(cid, data)


def _get(store: BlobStore, cid: str) -> Callable[[], Awaitable[bytes]]:
    return lambda: store.get(cid)


def _get_range(store: BlobStore, cid: str, offset: int) -> Callable[[], Awaitable[bytes]]:
    return lambda: store.get_range(cid, offset, RANGE)


async def _store_rates(
    stores: dict[str, BlobStore], chunks: list[bytes], ranges: list[tuple[int, int]], width: int
) -> list[Rates]:
    """PUT, GET and ranged GET of ``chunks`` on each store; every byte read checked."""
    ids = [chunk_id(data) for data in chunks]
    total = sum(len(data) for data in chunks)
    whole = f"{len(chunks)} x {format_size(len(chunks[0]))}, {width} in flight; bytes checked"
    put, get = Rates("PUT", whole), Rates("GET whole", whole)
    ranged = Rates(
        f"GET {format_size(RANGE)} ranges",
        f"{len(ranges)} random ranges, {width} in flight; bytes checked",
    )
    for name, store in stores.items():
        seconds, _ = await _timed(
            [_put(store, c, d) for c, d in zip(ids, chunks, strict=True)], width
        )
        put.mb_per_s[name] = total / seconds / MB
    for name, store in stores.items():
        seconds, got = await _timed([_get(store, c) for c in ids], width)
        if [chunk_id(data) for data in got] != ids:
            raise AssertionError(f"{name}: a chunk read back differs from the one written")
        get.mb_per_s[name] = total / seconds / MB
    for name, store in stores.items():
        jobs = [_get_range(store, ids[i], offset) for i, offset in ranges]
        seconds, got = await _timed(jobs, width)
        for (i, offset), data in zip(ranges, got, strict=True):
            if data != chunks[i][offset : offset + RANGE]:
                raise AssertionError(f"{name}: a range read back differs from the one written")
        ranged.mb_per_s[name] = len(ranges) * RANGE / seconds / MB
    return [put, get, ranged]


def _random_ranges(chunks: list[bytes], count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` (chunk index, offset) pairs, offsets 4 KiB-aligned, within the chunk."""
    rng = random.Random(seed)
    picks = []
    for _ in range(count):
        i = rng.randrange(len(chunks))
        picks.append((i, rng.randrange((len(chunks[i]) - RANGE) // 4096 + 1) * 4096))
    return picks


async def throughput_section(bench: Bench) -> list[Figure]:
    args = bench.args
    pod = bench.pod()
    bucket = bench.minio().new_bucket("throughput")
    stores = {
        "pod": open_store(pod.store_url("throughput"), create=True),
        "MinIO": open_store(bench.s3_url(bucket, "throughput"), create=True),
    }
    figures: list[Figure] = []
    try:
        for store in stores.values():
            await store.check()
        for size in CHUNK_SIZES:
            rates = await _size_rates(stores, size, args)
            figures += [
                _pod_figure("throughput", f"{r.label}, {format_size(size)} chunks", r, r.note)
                for r in rates
            ]
    finally:
        for store in stores.values():
            await store.close()
    return figures


async def _size_rates(
    stores: dict[str, BlobStore], size: int, args: argparse.Namespace
) -> list[Rates]:
    """Medians over ``--repeat`` runs, each on fresh random chunks, the engines taking
    turns at going first."""
    runs: list[list[Rates]] = []
    for run in range(args.repeat):
        chunks = [os.urandom(size) for _ in range(max(1, args.total // size))]
        ranges = _random_ranges(chunks, args.ranges, seed=size + run)
        names = list(stores) if run % 2 == 0 else list(reversed(stores))
        order = {name: stores[name] for name in names}
        runs.append(await _store_rates(order, chunks, ranges, args.concurrency))
        del chunks
    return [_median([run[i] for run in runs]) for i in range(len(runs[0]))]


def _median(runs: list[Rates]) -> Rates:
    """The median of each engine's MB/s; the note gives their range."""
    spread = []
    median = Rates(runs[0].label)
    for name in runs[0].mb_per_s:
        values = [r.mb_per_s[name] for r in runs]
        median.mb_per_s[name] = statistics.median(values)
        spread.append(f"{name} {min(values):.0f}-{max(values):.0f}")
    if len(runs) == 1:
        median.note = f"{runs[0].note}; one run"
    else:
        median.note = f"{runs[0].note}; median of {len(runs)} ({', '.join(spread)})"
    return median


def _pod_figure(section: str, name: str, rates: Rates, note: str) -> Figure:
    return Figure(
        section,
        f"{name}: pod",
        rates.mb_per_s["pod"],
        "MB/s",
        note,
        reference=rates.mb_per_s["MinIO"],
        reference_name="MinIO",
    )


# --- mount-read -----------------------------------------------------------------------------


def drop_page_cache() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def write_random(path: Path, size: int) -> str:
    """``size`` random bytes into ``path``; their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 64 * MiB))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def read_sequential(path: Path, size: int) -> tuple[float, str]:
    """Read ``path`` in 1 MiB reads into memory (timed), then hash what was read."""
    buf = bytearray(size + READ_SIZE)
    view = memoryview(buf)
    total = 0
    clock = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view[total : total + READ_SIZE]):
            total += n
    seconds = time.perf_counter() - clock
    return seconds, hashlib.sha256(view[:total]).hexdigest()


@dataclass
class MountedDrive:
    """One drive to mount: where its chunks are and what a mount needs to open it."""

    label: str
    name: str
    meta_url: str
    store_url: str
    pod_url: str | None = None
    seconds: list[float] = field(default_factory=list)
    fetched: list[int] = field(default_factory=list)


async def _make_drive(target: MountedDrive, source: Path) -> str:
    """Create the drive and commit the file; the tier its version is on."""
    settings = DriveSettings()
    if target.pod_url is not None:
        settings = TierPolicy(write_target="pod").apply(settings)
    drive = await Drive.create(
        target.name, target.meta_url, target.store_url, settings, pod_url=target.pod_url
    )
    try:
        with source.open("rb") as f:
            await drive.write_file("/plate.mov", f)
        [version] = await drive.versions("/plate.mov")
        return version.tier
    finally:
        await drive.close()


def bucket_bytes(s3: S3Server, bucket: str) -> int:
    total = 0
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += sum(item["Size"] for item in page.get("Contents", []))
    return total


def _cold_read(bench: Bench, target: MountedDrive, run: int, size: int, digest: str) -> None:
    """Mount with a fresh cache, drop the page cache, read the file, unmount."""
    registry = MountRegistry(bench.workdir / "run")
    mountpoint = bench.workdir / f"mnt-{target.name}"
    mountpoint.mkdir(exist_ok=True)
    cache = bench.workdir / f"cache-{target.name}-{run}"
    client.mount(
        MountOptions(
            drive=target.name,
            meta_url=target.meta_url,
            store_url=target.store_url,
            pod_url=target.pod_url,
            run_dir=registry.run_dir,
            mountpoint=mountpoint,
            cache_dir=cache,
            cache_size=size * 2,
            checkpoint_interval="off",
            read_only=True,
        )
    )
    try:
        if not drop_page_cache():
            raise RuntimeError("mount-read needs root: cannot drop the page cache")
        seconds, got = read_sequential(mountpoint / "plate.mov", size)
        status = client.MountClient.for_mountpoint(mountpoint, registry).status()
    finally:
        client.umount(mountpoint, registry)
    if got != digest:
        raise AssertionError(f"{target.label}: the file read through the mount differs")
    target.seconds.append(seconds)
    target.fetched.append(int(status["bytes_fetched"]))
    shutil.rmtree(cache, ignore_errors=True)


async def mount_read_section(bench: Bench) -> list[Figure]:
    size = bench.args.file_size
    s3 = bench.minio()
    pod = bench.pod()
    source = bench.workdir / "plate.mov"
    digest = write_random(source, size)
    cloud, plain = s3.new_bucket("held-cloud"), s3.new_bucket("plain")
    held = MountedDrive(
        "pod", "held", f"sqlite:///{bench.workdir}/held.db",
        bench.s3_url(cloud, "held"), pod.store_url("held"),
    )  # fmt: skip
    direct = MountedDrive(
        "MinIO", "plain", f"sqlite:///{bench.workdir}/plain.db", bench.s3_url(plain, "plain")
    )
    tiers = [await _make_drive(d, source) for d in (held, direct)]
    source.unlink()
    in_cloud = bucket_bytes(s3, cloud)
    if not tiers[0].startswith("pod:") or in_cloud:
        raise AssertionError(f"the pod drive's file is not held in the pod: {tiers[0]}, {in_cloud}")
    try:
        for run in range(bench.args.repeat):
            for target in (held, direct) if run % 2 == 0 else (direct, held):
                await asyncio.to_thread(_cold_read, bench, target, run, size, digest)
    finally:
        _force_unmount(bench.workdir, (held, direct))
    label = f"cold sequential read of {format_size(size)} through the mount"
    note = (
        f"{tiers[0]}, cloud bucket {in_cloud} B; fetched {format_size(max(held.fetched))} "
        f"from the pod, {format_size(max(direct.fetched))} from MinIO; SHA-256 OK"
    )
    runs = [
        Rates(label, note, {t.label: size / t.seconds[run] / MB for t in (held, direct)})
        for run in range(bench.args.repeat)
    ]
    rates = _median(runs)
    return [_pod_figure("mount-read", rates.label, rates, rates.note)]


def _force_unmount(workdir: Path, targets: tuple[MountedDrive, ...]) -> None:
    """Free any mount point an error left mounted."""
    with open("/proc/self/mountinfo") as mounts:
        mounted = {line.split()[4] for line in mounts}
    for target in targets:
        mountpoint = workdir / f"mnt-{target.name}"
        if str(mountpoint) in mounted:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


SECTIONS: dict[str, Section] = {
    "relay": relay_section,
    "throughput": throughput_section,
    "mount-read": mount_read_section,
}


# --- report ---------------------------------------------------------------------------------


def render(figures: list[Figure]) -> None:
    table = Table(title="mediadrive storage pod benchmark")
    for column in ("section", "figure", "value", "unit", "reference", "ratio", "note"):
        right = column in ("value", "reference", "ratio")
        table.add_column(column, justify="right" if right else "left")
    for f in figures:
        reference = "" if f.reference is None else f"{f.reference_name} {f.reference:,.1f}"
        ratio = "" if f.ratio is None else f"{f.ratio:.2f}x"
        table.add_row(f.section, f.name, f"{f.value:,.1f}", f.unit, reference, ratio, f.note)
    out.print(table)


async def run(args: argparse.Namespace, workdir: Path) -> list[Figure]:
    figures: list[Figure] = []
    with contextlib.ExitStack() as stack:
        bench = Bench(args, workdir, stack)
        for name in args.sections:
            figures += await SECTIONS[name](bench)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=200, help="simulated mounts (200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase (10)")
    parser.add_argument(
        "--every", type=float, default=0.1, help="seconds between the writer's commits (0.1)"
    )
    parser.add_argument(
        "--section",
        dest="sections",
        action="append",
        choices=sorted(SECTIONS),
        help="only these",
    )
    parser.add_argument(
        "--total", type=parse_size, default="256MiB", help="throughput: bytes per chunk size"
    )
    parser.add_argument("--ranges", type=int, default=128, help="throughput: ranged GETs (128)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="throughput: requests in flight (4)"
    )
    parser.add_argument(
        "--file-size", type=parse_size, default="256MiB", help="mount-read: size of the file"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of throughput and mount-read figures (3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short look: 3 s phases, 64MiB per chunk size and file, 32 ranges, 1 read each",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args(argv)
    args.sections = args.sections or list(SECTIONS)
    if args.quick:
        args.seconds, args.total, args.file_size, args.ranges, args.repeat = (
            3.0,
            64 * MiB,
            64 * MiB,
            32,
            1,
        )
    numbers = (args.followers, args.seconds, args.every, args.total, args.file_size)
    if min(numbers) <= 0 or min(args.ranges, args.concurrency, args.repeat) < 1:
        parser.error("every size, count and duration must be positive")
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="mediadrive-pod-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        figures = asyncio.run(run(args, workdir))
    render(figures)
    report: dict[str, Any] = {
        "started": started.isoformat(),
        "followers": args.followers,
        "seconds": args.seconds,
        "every": args.every,
        "total_bytes": args.total,
        "ranges": args.ranges,
        "concurrency": args.concurrency,
        "file_size_bytes": args.file_size,
        "repeat": args.repeat,
        "figures": [{**asdict(f), "ratio": f.ratio} for f in figures],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    out.print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
