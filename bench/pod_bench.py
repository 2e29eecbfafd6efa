"""Storage pod benchmarks, one section per function; ``main`` runs them and prints a table.

    .venv/bin/python bench/pod_bench.py [--followers 200] [--seconds 10] [--output FILE]

Sections:

- **relay**: metadata queries per second that 200 simulated followers cost the
  drive's PostgreSQL store while one writer commits a version every 100 ms,
  (a) each follower polling ``events_after`` every second, as every mount does
  without a relay, and (b) all of them subscribed to one pod event relay
  (``mediadrive.pod.relay``, in process, over real HTTP on loopback), beside the
  writer alone. Queries are counted by PostgreSQL itself: the database's
  ``xact_commit + xact_rollback`` delta in ``pg_stat_database`` (each metadata
  read is one transaction). Every follower must see every event in both modes.

A section is an async function taking the run's :class:`Bench` and returning
:class:`Figure` rows; add one to ``SECTIONS``. PostgreSQL is started by the script
(``tests/servers.py``) on first use and stopped at the end. Results go to stdout as
a table and to ``bench/results/pod-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp import web
from rich.console import Console
from rich.table import Table

from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.core.meta import MetaStore
from mediadrive.core.meta.postgres import PostgresMetaStore
from mediadrive.node.relay import RelaySource, relay_events
from mediadrive.pod import relay

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.servers import PostgresServer, postgres_server  # noqa: E402 - repo root on sys.path

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "pod-latest.json"
DRIVE = "bench"
# PostgreSQL runs with max_connections=200: the simulated mounts share this many
# stores (one pooled connection each). Sharing changes no query count.
STORES = 100
# Time for PostgreSQL to publish a backend's pending statistics (at most every second).
STATS_SETTLE = 1.5
# The writer commits new versions of this many files in turn.
FILES = 50

out = Console(width=140)


@dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str
    note: str = ""


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

    def postgres(self) -> PostgresServer:
        if self._postgres is None:
            self._postgres = self.stack.enter_context(postgres_server())
        return self._postgres


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


SECTIONS: dict[str, Section] = {"relay": relay_section}


# --- report ---------------------------------------------------------------------------------


def render(figures: list[Figure]) -> None:
    table = Table(title="mediadrive storage pod benchmark")
    for column in ("section", "figure", "value", "unit", "note"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for f in figures:
        table.add_row(f.section, f.name, f"{f.value:,.1f}", f.unit, f.note)
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
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args(argv)
    args.sections = args.sections or list(SECTIONS)
    if args.followers < 1 or args.seconds <= 0 or args.every <= 0:
        parser.error("--followers, --seconds and --every must be positive")
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
        "figures": [asdict(f) for f in figures],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    out.print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
