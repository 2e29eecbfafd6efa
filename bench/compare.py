"""mediadrive side by side with JuiceFS, rclone mount and s3fs-fuse (issue 12).

    python bench/compare.py [--quick] [--reps 3] [--only mediadrive,juicefs]
    python bench/compare.py --report-only     # redo report.md and the plots from results.json

Every tool mounts its own bucket of the same MinIO on loopback, gets the same data and
the same cache budget; within each repetition the tools run one after the other
(their order changes between repetitions, see balanced_orders). Metadata scenarios
run on SQLite and PostgreSQL for the tools that have a metadata engine (mediadrive,
JuiceFS). Limits: boto3 with parallel threads against the same MinIO, and the local
disk.

Writes bench/results.json, bench/report.md and bench/*.png. Needs root (FUSE, dropping
the page cache), the MinIO binary of scripts/build-test-binaries.sh and the peers of
scripts/bench/peers.sh (their paths come from that script's output).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO, Any, cast

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.peers import (  # noqa: E402
    BenchError,
    JuiceFS,
    Mediadrive,
    Rclone,
    S3fs,
    S3Target,
    Tool,
    cpu_seconds,
    drop_page_cache,
    fio_randread,
    plain_upload,
    run,
)
from bench.report import Metric, write_outputs  # noqa: E402
from mediadrive.core.triggers import CommitOn  # noqa: E402
from tests.servers import minio_server, postgres_server  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
MB = 10**6
PART = 8 * MiB  # boto3's part size for the limits (its default)
BOTO_THREADS = 10  # boto3's default max_concurrency
TIMEOUT = 900  # seconds for one scenario of one tool
LS_RUNS = 5  # `ls -l` listings per repetition (their median is the figure)
# A warm read of the QUICK file takes about 30 ms, and a stat of its 1,000 files about
# as long: several in a row per repetition, their median the figure, so that one
# scheduling hiccup does not decide.
WARM_READS = 21
# Warm reads fill the page cache with every file a step of each in turn (see
# fill_side_by_side).
FILL_STEP = 4 * MiB
STAT_RUNS = 5
# A drop of the page cache sets every mount's agent forgetting its inodes and the
# machine handing the freed memory back to its host for some milliseconds: the stat
# of 1,000 files, which takes about as long, starts once that is over.
DROP_SETTLE = 0.2
# 1 MiB edits timed per repetition (their median is the figure): the tools that edit in
# one interleaved turn (see edit_turns), and those that rewrite the object at each edit,
# which takes seconds.
EDITS_PER_REP = 16
PLAIN_EDITS = 8
EDIT_SPACING = 5 * MiB  # between their offsets
# Between two interleaved edits (see edit_turns): what one tool's edit leaves running
# (its cache's copy of the patch, MinIO's answer to the traffic count) is not timed
# as the next tool's.
EDIT_PAUSE = 0.05


@dataclass(frozen=True)
class Sizes:
    file: int
    ttfb_offset: int
    files: int
    tree_dirs: int
    tree_files_per_dir: int
    dup: int
    hydrate_files: int
    hydrate_size: int
    fio_seconds: int
    cache_budget: int

    @property
    def tree_entries(self) -> int:
        return self.tree_dirs * (self.tree_files_per_dir + 1)


FULL = Sizes(
    file=1024 * MiB,
    ttfb_offset=900 * MiB,
    files=10_000,
    tree_dirs=50,
    tree_files_per_dir=999,
    dup=512 * MiB,
    hydrate_files=500,
    hydrate_size=4 * MiB,
    fio_seconds=10,
    cache_budget=4096 * MiB,
)
QUICK = Sizes(
    file=256 * MiB,
    ttfb_offset=225 * MiB,
    files=1_000,
    tree_dirs=4,
    tree_files_per_dir=499,
    dup=64 * MiB,
    hydrate_files=50,
    hydrate_size=4 * MiB,
    fio_seconds=3,
    cache_budget=2048 * MiB,
)
SMOKE = Sizes(
    file=32 * MiB,
    ttfb_offset=28 * MiB,
    files=100,
    tree_dirs=2,
    tree_files_per_dir=20,
    dup=8 * MiB,
    hydrate_files=5,
    hydrate_size=MiB,
    fio_seconds=1,
    cache_budget=512 * MiB,
)


# Scenario groups ``--parts`` can pick.
PARTS = ("write", "read", "random", "edit", "dedup", "meta")


def metrics(sizes: Sizes) -> list[Metric]:
    size = f"{sizes.file // MiB} MiB"
    return [
        Metric("write", f"write {size} until durable in S3", "MB/s", True, "data"),
        Metric("cold_read", f"cold sequential read of {size}", "MB/s", True, "data"),
        Metric(
            "cold_cpu",
            "CPU of the file system's process during the cold read",
            "CPU s/GiB",
            False,
            "data",
        ),
        Metric("warm_read", f"warm sequential read of {size}", "MB/s", True, "data"),
        Metric("rand_cold", "4 KiB random reads, cold (fio psync)", "IOPS", True, "data"),
        Metric("rand_warm", "4 KiB random reads, warm (fio psync)", "IOPS", True, "data"),
        Metric(
            "ttfb",
            f"time to first 1 MiB at {sizes.ttfb_offset // MiB} MiB, cold",
            "ms",
            False,
            "data",
        ),
        Metric("edit_time", f"edit 1 MiB of the {size} file until durable", "ms", False, "data"),
        Metric("edit_sent", "edit 1 MiB: bytes received by S3", "MiB", False, "data"),
        Metric(
            "dedup",
            f"two near-duplicate {sizes.dup // MiB} MiB files: bytes stored",
            "MiB",
            False,
            "dedup",
        ),
        Metric("create", f"create {sizes.files:,} empty files", "files/s", True, "meta"),
        Metric("stat", f"stat {sizes.files:,} files (page cache dropped)", "files/s", True, "meta"),
        Metric("ls_l", f"`ls -l` of {sizes.files:,} files", "entries/s", True, "meta"),
        Metric("delete", f"delete {sizes.files:,} files", "files/s", True, "meta"),
        Metric(
            "ls_lr",
            f"`ls -lR` of a {sizes.tree_entries:,}-entry tree after a fresh mount",
            "s",
            False,
            "meta",
        ),
        Metric(
            "hydrate",
            f"hydrate {sizes.hydrate_files} files of {sizes.hydrate_size // MiB} MiB, cold",
            "MB/s",
            True,
            "data",
        ),
    ]


# -- small helpers ------------------------------------------------------------------------


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Timeout(f"timed out after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def write_random(path: Path, size: int, prefix: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(prefix)
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(os.urandom(n))
            left -= n


def stat_all(names: list[Path]) -> None:
    for name in names:
        os.stat(name)


def copy_durable(src: Path, dst: Path) -> None:
    """Copy through the file system as `cp` would, then fsync and close."""
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while n := fin.readinto(view):
            fout.write(view[:n])
        os.fsync(fout.fileno())


def edit_offsets(size: int) -> list[int]:
    """Where the timed 1 MiB edits of a ``size``-byte file go."""
    return [size // 2 + 4321 + k * EDIT_SPACING for k in range(EDITS_PER_REP)]


# The calls an edit makes, in order (see timed_edits).
EDIT_CALLS = ("open", "write", "fsync", "close", "durable")


# Who takes part in an interleaved turn (see Bench.interleaved): a name, the tool (None
# for the limit), and what times its k-th run, in seconds.
Member = tuple[str, "Tool | None", Callable[[int], float]]


def timed_edit(
    tool: Tool,
    path: Path,
    patch: bytes,
    offset: int,
    calls: dict[str, list[float]] | None = None,
) -> float:
    """Write ``patch`` at ``offset`` as an application would (open, write, fsync,
    close) until durable: the seconds it took. ``calls``, if given, gets the seconds
    each of its calls took (EDIT_CALLS; ``durable`` is the tool's own check that it
    is)."""
    before = tool.object_state(path)
    marks = [time.perf_counter()]
    fd = os.open(path, os.O_RDWR)
    try:
        marks.append(time.perf_counter())
        if os.pwrite(fd, patch, offset) != len(patch):
            raise BenchError(f"{tool.name}: short write into {path}")
        marks.append(time.perf_counter())
        os.fsync(fd)
        marks.append(time.perf_counter())
    finally:
        os.close(fd)
    marks.append(time.perf_counter())
    tool.durable(path, before, fsynced=True)
    marks.append(time.perf_counter())
    if calls is not None:
        for name, took in zip(EDIT_CALLS, itertools.pairwise(marks), strict=True):
            calls.setdefault(name, []).append(took[1] - took[0])
    return marks[-1] - marks[0]


def timed_edits(
    tool: Tool,
    path: Path,
    patches: list[bytes],
    offsets: list[int],
    calls: dict[str, list[float]] | None = None,
    pause: float = 0.0,
) -> list[float]:
    """Each patch written at its offset (see timed_edit), one after the other,
    ``pause`` seconds apart: each edit's seconds. Then ask the tool whether anything
    timed as durable is not."""
    times = []
    for patch, offset in zip(patches, offsets, strict=True):
        if pause:
            time.sleep(pause)
        times.append(timed_edit(tool, path, patch, offset, calls))
    tool.check()
    return times


def touch(base: Path, name: str) -> None:
    os.close(os.open(base / name, os.O_CREAT | os.O_WRONLY, 0o644))


# Before each tool's turn: CPUs this idle and disks this quiet over one window, or
# the longest wait.
SETTLE_IDLE = 0.8
SETTLE_WRITTEN = 1 << 20
SETTLE_WINDOW = 0.2
SETTLE_LIMIT = 5.0


def _cpu_ticks() -> tuple[int, int]:
    """All CPUs' ticks so far, and the idle ones among them (idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def _disk_work() -> tuple[int, int]:
    """Bytes written and discarded on the machine's block devices so far (loop and RAM
    disks aside; a deleted file's blocks are discarded where the file system is
    mounted so), and their requests in flight now."""
    done = in_flight = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if len(fields) > 11 and not fields[2].startswith(("loop", "ram", "zram")):
            discarded = int(fields[16]) if len(fields) > 16 else 0
            done += (int(fields[9]) + discarded) * 512
            in_flight += int(fields[11])
    return done, in_flight


def settle() -> float:
    """Wait until the machine is quiet (up to ``SETTLE_LIMIT`` s): what the last
    turn left running (MinIO removing what a tool deleted, a peer's background
    uploads, the pages they left for the disk, the blocks of deleted files being
    discarded) is not timed as the next one's. A disk still at work leaves the CPUs
    idle (its wait counts as idle), hence both. Pages written but not yet sent to
    the disk keep it quiet until the kernel's writeback starts, up to 30 s later,
    in whichever turn then runs (a server-side copy of 256 MiB in MinIO, as s3fs's
    edit makes, left about 270 MiB of them), so a ``sync`` comes first.
    Returns the seconds waited."""
    start = time.monotonic()
    os.sync()
    while time.monotonic() - start < SETTLE_LIMIT:
        total, idle = _cpu_ticks()
        work, _ = _disk_work()
        time.sleep(SETTLE_WINDOW)
        total2, idle2 = _cpu_ticks()
        work2, in_flight = _disk_work()
        cpu_quiet = total2 == total or (idle2 - idle) / (total2 - total) >= SETTLE_IDLE
        if cpu_quiet and work2 - work < SETTLE_WRITTEN and not in_flight:
            break
    return time.monotonic() - start


def read_all(path: Path) -> int:
    total = 0
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


@functools.cache
def balanced_orders(n: int) -> list[tuple[int, ...]]:
    """``n`` orders of ``n`` tools for ``n`` repetitions: each tool takes each place once
    (a Latin square, as a rotation gives), and no tool comes right after the same other
    one in more of them than it has to (a rotation puts every tool after the same one
    each time: a turn's figure depends on what the turn before left the machine doing).
    Where ``n`` is even each tool follows each other one once at most; where it is odd
    that cannot be, and twice at most is. Found by a search, first order ``0..n-1``; a
    rotation past 6 tools."""
    if n > 6:
        return [tuple((k + i) % n for i in range(n)) for k in range(n)]
    orders = list(itertools.permutations(range(n)))
    first = tuple(range(n))
    best: tuple[int, list[tuple[int, ...]]] = (n + 1, [])

    def extend(rows: list[tuple[int, ...]], follows: Counter[tuple[int, int]], worst: int) -> None:
        nonlocal best
        if worst >= best[0]:
            return
        if len(rows) == n:
            best = (worst, list(rows))
            return
        for order in orders:
            if any(order[i] == row[i] for row in rows for i in range(n)):
                continue
            pairs = list(itertools.pairwise(order))
            follows.update(pairs)
            rows.append(order)
            extend(rows, follows, max(worst, *(follows[pair] for pair in pairs)))
            rows.pop()
            follows.subtract(pairs)

    extend([first], Counter(itertools.pairwise(first)), 1)
    return best[1]


def round_orders(n: int) -> list[tuple[int, ...]]:
    """Orders of ``n`` members for the rounds of an interleaved turn: each member right
    after each other one equally often over them (once over ``n`` orders where ``n``
    is even, twice over ``2n`` where it is odd), and in each place as often. A
    rotation puts every member right after the same one each round, and what one run
    leaves the machine doing is met by the next (a Williams design: the first order
    0, 1, n-1, 2, n-2, ..., each next one adding 1 to every member, then, for odd
    ``n``, each of them reversed)."""
    first = [0]
    low, high = 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    orders = [tuple((member + k) % n for member in first) for k in range(n)]
    if n % 2:
        orders += [order[::-1] for order in orders]
    return orders


def fill_side_by_side(paths: Sequence[Path], failed: dict[Path, str]) -> None:
    """Read every file of ``paths`` into the page cache, ``FILL_STEP`` bytes of each in
    turn; a file that cannot be read goes into ``failed`` with the error.

    How fast a file reads from the page cache depends on where in memory its pages
    are, and on these virtual machines that is settled when they are filled and holds
    for as long as they stay: four FUSE file systems' files of 256 MiB, filled one
    after another, read at 7 to 13 GB/s by their turn alone, each its own speed
    every time, the same files filled side by side at 12 GB/s each. Filled side by
    side, every file takes its pages from the same stretches of memory."""
    files: dict[Path, IO[bytes]] = {}
    try:
        for path in paths:
            try:
                files[path] = open(path, "rb", buffering=0)  # noqa: SIM115
            except OSError as exc:
                failed[path] = f"{type(exc).__name__}: {exc}"
        while files:
            for path, f in list(files.items()):
                try:
                    done = len(f.read(FILL_STEP)) < FILL_STEP
                except OSError as exc:
                    failed[path] = f"{type(exc).__name__}: {exc}"
                    done = True
                if done:
                    f.close()
                    del files[path]
    finally:
        for f in files.values():
            f.close()


def read_at(path: Path, offset: int, length: int) -> int:
    got = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while got < length:
            chunk = f.read(length - got)
            if not chunk:
                break
            got += len(chunk)
    return got


class Sink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        return len(memoryview(cast(bytes, b)))


# -- the benchmark --------------------------------------------------------------------------


@dataclass
class Peers:
    rclone: Path
    juicefs: Path
    fio: str


def find_peers(only: set[str] | None) -> Peers:
    names = sorted((only or {"rclone", "juicefs", "s3fs"}) - {"mediadrive"})
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/bench/peers.sh"), *names],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    ).stdout
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return Peers(
        Path(found.get("rclone", "rclone")),
        Path(found.get("juicefs", "juicefs")),
        found.get("fio") or "fio",
    )


class Bench:
    def __init__(self, sizes: Sizes, reps: int, work: Path, target: S3Target) -> None:
        self.sizes = sizes
        self.reps = reps
        self.work = work
        self.target = target
        self.runs: list[dict[str, Any]] = []
        # Every run of an interleaved turn in seconds, in the order taken (a
        # repetition's figure is their median): where one repetition's figure stands
        # out, which of its runs made it.
        self.samples: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        # Seconds spent waiting for a quiet machine before turns (see settle).
        self.settled = 0.0
        self.metrics = {m.key: m for m in metrics(sizes)}
        self.data_tools: list[Tool] = []
        self.dedup_tools: list[Tool] = []
        self.meta_tools: list[Tool] = []
        self.all_tools: list[Tool] = []
        self.local = work / "local"
        self.local.mkdir()
        self.limit_bucket = ""
        self.metrics_url = f"{target.endpoint}/minio/metrics/v3/api/requests"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- bookkeeping ------------------------------------------------------------------------
    def record(self, tool: str, rep: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.runs.append({"metric": key, "tool": tool, "rep": rep, "value": value})
            unit = self.metrics[key].unit
            at = time.perf_counter() - self.started
            print(f"  {at:6.0f}s  {tool:<14} {key:<10} {value:12.3f} {unit}", flush=True)

    def fail(self, tool: str, rep: int, keys: list[str], error: str) -> None:
        for key in keys:
            self.runs.append({"metric": key, "tool": tool, "rep": rep, "error": error})
        at = time.perf_counter() - self.started
        print(f"  {at:6.0f}s  {tool:<14} {','.join(keys)}: n/a ({error})", flush=True)

    def attempt(
        self, tool: Tool | None, name: str, rep: int, keys: list[str], fn: Callable[[], Any]
    ) -> None:
        if tool is not None and tool.broken:
            self.fail(name, rep, keys, tool.broken)
            return
        self.settled += settle()
        try:
            with time_limit(TIMEOUT):
                values = fn()
        except (Exception, Timeout) as exc:
            self.fail(name, rep, keys, f"{type(exc).__name__}: {exc}"[:300])
            if tool is not None:
                self.recover(tool)
            return
        self.record(name, rep, values)

    def recover(self, tool: Tool) -> None:
        """After a failure, start the tool afresh so the next scenario gets a fair try."""
        try:
            with time_limit(300):
                tool.stop()
                tool.mount()
        except (Exception, Timeout) as exc:
            tool.broken = f"could not mount again after a failure: {exc}"[:300]

    def s3_received(self) -> int:
        text = self.opener.open(self.metrics_url, timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("minio_api_requests_traffic_received_bytes") and "s3" in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    # -- setup --------------------------------------------------------------------------------
    def add(self, tool: Tool, *groups: list[Tool]) -> None:
        self.all_tools.append(tool)
        for group in groups:
            group.append(tool)
        start = time.perf_counter()
        try:
            with time_limit(300):
                tool.create()
                tool.mount()
        except (Exception, Timeout) as exc:
            tool.broken = f"could not set up: {exc}"[:300]
            print(f"  {tool.name}: {tool.broken}")
            return
        print(f"  {tool.name} mounted in {time.perf_counter() - start:.1f}s", flush=True)

    def new_bucket(self, name: str) -> str:
        self.target.s3.create_bucket(Bucket=name)
        return name

    def setup(self, peers: Peers, pg_url: str | None, only: set[str] | None) -> None:
        t, budget, w = self.target, self.sizes.cache_budget, self.work

        def wanted(name: str) -> bool:
            return only is None or name.split("-")[0] in only

        self.limit_bucket = self.new_bucket("bench-limit")
        if wanted("mediadrive"):
            md = Mediadrive(w, t, self.new_bucket("bench-mediadrive"), budget)
            self.add(md, self.data_tools, self.dedup_tools, self.meta_tools)
            # fsync durable in the stores, as JuiceFS's is: the data scenarios only
            # (where files are fsync'd).
            md_fsync = Mediadrive(
                w, t, self.new_bucket("bench-mediadrive-fsync"), budget,
                label="mediadrive-fsync", commit_on=CommitOn.FSYNC,
            )  # fmt: skip
            self.add(md_fsync, self.data_tools)
            cdc = Mediadrive(
                w, t, self.new_bucket("bench-mediadrive-cdc"), budget, chunking="cdc",
                label="mediadrive-cdc",
            )  # fmt: skip
            self.add(cdc, self.dedup_tools)
            if pg_url is not None:
                from tests.servers import create_database

                md_pg = Mediadrive(
                    w, t, self.new_bucket("bench-mediadrive-pg"), budget,
                    meta_url=create_database(pg_url, "mediadrive"), label="mediadrive-pg",
                )  # fmt: skip
                self.add(md_pg, self.meta_tools)
        if wanted("juicefs"):
            jfs = JuiceFS(w, t, self.new_bucket("bench-juicefs"), budget, peers.juicefs)
            self.add(jfs, self.data_tools, self.dedup_tools, self.meta_tools)
            if pg_url is not None:
                from tests.servers import create_database

                db = create_database(pg_url, "juicefs").replace("postgresql://", "postgres://")
                jfs_pg = JuiceFS(
                    w, t, self.new_bucket("bench-juicefs-pg"), budget, peers.juicefs,
                    meta_url=db + "?sslmode=disable", label="juicefs-pg",
                )  # fmt: skip
                self.add(jfs_pg, self.meta_tools)
        if wanted("rclone"):
            rc = Rclone(w, t, self.new_bucket("bench-rclone"), budget, peers.rclone)
            self.add(rc, self.data_tools, self.dedup_tools, self.meta_tools)
        if wanted("s3fs"):
            s3fs = S3fs(w, t, self.new_bucket("bench-s3fs"), budget)
            self.add(s3fs, self.data_tools, self.dedup_tools, self.meta_tools)

    def prepare_tree(self) -> None:
        """The tree `ls -lR` lists, made once: through the mount for the tools with a
        metadata engine, as plain objects for rclone and s3fs, on disk for the limit."""
        s = self.sizes
        names = [
            f"tree/d{d:03d}/f{f:05d}"
            for d in range(s.tree_dirs)
            for f in range(s.tree_files_per_dir)
        ]
        dirs = [f"tree/d{d:03d}" for d in range(s.tree_dirs)]
        for base in [self.local, *(t.mountpoint for t in self.meta_tools if not t.plain_objects)]:
            tool = next((t for t in self.meta_tools if t.mountpoint == base), None)
            if tool is not None and tool.broken:
                continue
            start = time.perf_counter()
            try:
                with time_limit(TIMEOUT):
                    for d in dirs:
                        (base / d).mkdir(parents=True, exist_ok=True)
                    # Not timed: made in parallel to keep the setup short.
                    with ThreadPoolExecutor(8) as pool:
                        list(pool.map(partial(touch, base), names))
                    if isinstance(tool, Mediadrive):
                        tool.durable(base / "tree")
            except (Exception, Timeout) as exc:
                if tool is not None:
                    tool.broken = f"could not make the tree: {exc}"[:300]
                    print(f"  {tool.name}: {tool.broken}")
                continue
            label = tool.name if tool is not None else "local disk"
            print(f"  tree of {s.tree_entries:,} entries on {label}: "
                  f"{time.perf_counter() - start:.1f}s", flush=True)  # fmt: skip
        objects = {name: b"" for name in names}
        objects.update({d + "/": b"" for d in ["tree", *dirs]})
        for tool in self.meta_tools:
            if tool.plain_objects and not tool.broken:
                start = time.perf_counter()
                plain_upload(self.target, tool.bucket, objects)
                print(f"  tree of {s.tree_entries:,} entries in {tool.bucket}: "
                      f"{time.perf_counter() - start:.1f}s", flush=True)  # fmt: skip

    def prepare_hydrate(self) -> None:
        s = self.sizes
        names = [f"hyd/h{i:04d}.bin" for i in range(s.hydrate_files)]
        objects = {name: os.urandom(s.hydrate_size) for name in names}
        for tool in [*self.data_tools, None]:
            start = time.perf_counter()
            bucket = self.limit_bucket if tool is None else tool.bucket
            if tool is None or tool.plain_objects:
                plain_upload(self.target, bucket, objects)
            elif not tool.broken:
                try:
                    with time_limit(TIMEOUT):
                        (tool.mountpoint / "hyd").mkdir(exist_ok=True)
                        for name, body in objects.items():
                            with open(tool.mountpoint / name, "wb") as f:
                                f.write(body)
                        tool.durable(tool.mountpoint / "hyd")
                except (Exception, Timeout) as exc:
                    tool.broken = f"could not write the hydrate files: {exc}"[:300]
                    print(f"  {tool.name}: {tool.broken}")
                    continue
            print(f"  {s.hydrate_files} files for hydrate in {bucket}: "
                  f"{time.perf_counter() - start:.1f}s", flush=True)  # fmt: skip

    # -- scenarios ----------------------------------------------------------------------------
    def order(self, tools: list[Tool], rep: int) -> list[Tool]:
        if not tools:
            return []
        rows = balanced_orders(len(tools))
        return [tools[i] for i in rows[rep % len(rows)]]

    def each(
        self,
        rep: int,
        keys: list[str],
        fn: Callable[[Tool], dict[str, float]],
        limit: Callable[[], dict[str, float]],
    ) -> None:
        """One data scenario: every data tool in this repetition's order, then the limit."""
        print(f"  [{rep}] {', '.join(keys)}", flush=True)
        for tool in self.order(self.data_tools, rep):
            self.attempt(tool, tool.name, rep, keys, partial(fn, tool))
        self.attempt(None, "limit", rep, keys, limit)

    def edit_turns(
        self,
        rep: int,
        edit: Callable[[Tool, int], float],
        edit_limit: Callable[[int], float],
    ) -> None:
        """The edit scenario: ``edit(tool, k)`` times a tool's k-th edit. A tool that
        stores plain objects rewrites the object at each edit (seconds, and MinIO busy
        for a while after): its edits run one after the other in a turn of its own, as
        in the other scenarios. The edits of the others and the limit take
        milliseconds, which the machine's noise moves from one second to the next by
        as much as they differ: those run in one turn, interleaved edit by edit (in
        another order from one edit to the next), so that each meets the same
        moments of the machine."""
        keys = ["edit_time", "edit_sent"]
        print(f"  [{rep}] {', '.join(keys)}", flush=True)
        order = self.order(self.data_tools, rep)
        # MiB received by MinIO, counted edit by edit.
        sent: dict[str, int] = {}

        def counted(name: str, tool: Tool | None, k: int) -> float:
            received = self.s3_received()
            time.sleep(EDIT_PAUSE)
            took = edit(tool, k) if tool is not None else edit_limit(k)
            if tool is not None and k == EDITS_PER_REP - 1:
                tool.check()
            sent[name] = sent.get(name, 0) + self.s3_received() - received
            return took

        def figures(name: str, times: list[float]) -> dict[str, float]:
            per_edit = sent[name] / len(times) / MiB
            return {"edit_time": statistics.median(times) * 1000, "edit_sent": per_edit}

        quick: list[Member] = [
            (tool.name, tool, partial(counted, tool.name, tool))
            for tool in order
            if not tool.plain_objects
        ]
        quick.append(("limit", None, partial(counted, "limit", None)))
        interleaved = False
        for tool in order:
            if tool.plain_objects:

                def alone(tool: Tool = tool) -> dict[str, float]:
                    received = self.s3_received()
                    times = [edit(tool, k) for k in range(PLAIN_EDITS)]
                    tool.check()
                    sent[tool.name] = self.s3_received() - received
                    return figures(tool.name, times)

                self.attempt(tool, tool.name, rep, keys, alone)
            elif not interleaved:
                # Where the first of them comes in this repetition's order.
                self.interleaved(rep, keys, quick, EDITS_PER_REP, figures)
                interleaved = True
        if not interleaved:
            self.interleaved(rep, keys, quick, EDITS_PER_REP, figures)

    def interleaved(
        self,
        rep: int,
        keys: list[str],
        members: list[Member],
        rounds: int,
        figures: Callable[[str, list[float]], dict[str, float]],
    ) -> None:
        """One turn of ``rounds`` runs of each member, interleaved: every member's k-th
        run before any member's next, in an order of ``round_orders`` each round (from
        the repetition's place on, so each starts elsewhere). A figure that
        takes milliseconds moves with what the machine does from one second to the
        next by as much as the tools differ: in turns of their own, each tool's runs
        would meet different moments of it. ``figures`` makes a member's figures of
        its runs' seconds. A member whose run fails is left out of the rest of the
        turn, and its tool mounted afresh."""
        self.settled += settle()
        times: dict[str, list[float]] = {name: [] for name, _, _ in members}
        failed: set[str] = set()
        for name, tool, _ in members:
            if tool is not None and tool.broken:
                self.fail(name, rep, keys, tool.broken)
                failed.add(name)
        orders = round_orders(len(members))
        for k in range(rounds):
            for place in orders[(rep + k) % len(orders)]:
                name, tool, run_k = members[place]
                if name in failed:
                    continue
                try:
                    with time_limit(TIMEOUT):
                        times[name].append(run_k(k))
                except (Exception, Timeout) as exc:
                    self.fail(name, rep, keys, f"{type(exc).__name__}: {exc}"[:300])
                    failed.add(name)
                    if tool is not None:
                        self.recover(tool)
        for name, took in times.items():
            self.samples.append({"metrics": keys, "tool": name, "rep": rep, "seconds": took})
            if name not in failed:
                self.record(name, rep, figures(name, took))

    def data_rep(self, rep: int, src: Path, parts: set[str]) -> None:
        # Every later data scenario reads the file the write scenario leaves.
        self.sequential_rep(rep, src, reads="read" in parts)
        if "random" in parts:
            self.random_rep(rep, src)
        if "edit" in parts:
            self.edit_hydrate_rep(rep)

    def sequential_rep(self, rep: int, src: Path, reads: bool = True) -> None:
        size = self.sizes.file
        transfer = self.transfer()
        each = partial(self.each, rep)

        def write(tool: Tool) -> dict[str, float]:
            path = tool.mountpoint / "big.bin"
            before = tool.object_state(path)
            if path.exists():
                path.unlink()
            drop_page_cache()
            start = time.perf_counter()
            copy_durable(src, path)
            tool.durable(path, before, fsynced=True)
            took = time.perf_counter() - start
            tool.check()
            return {"write": size / took / MB}

        def write_limit() -> dict[str, float]:
            drop_page_cache()
            start = time.perf_counter()
            self.target.s3.upload_file(str(src), self.limit_bucket, "big.bin", Config=transfer)
            return {"write": size / (time.perf_counter() - start) / MB}

        each(["write"], write, write_limit)
        if not reads:
            return

        def cold(tool: Tool) -> dict[str, float]:
            tool.remount_cold()
            pid = tool.pid()
            cpu = cpu_seconds(pid)
            start = time.perf_counter()
            n = read_all(tool.mountpoint / "big.bin")
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds(pid) - cpu
            if n != size:
                raise BenchError(f"read {n} bytes of {size}")
            return {"cold_read": size / elapsed / MB, "cold_cpu": cpu / (size / GiB)}

        def cold_limit() -> dict[str, float]:
            sink = cast("IO[bytes]", Sink())
            cpu = time.process_time()
            start = time.perf_counter()
            self.target.s3.download_fileobj(self.limit_bucket, "big.bin", sink, Config=transfer)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
            return {"cold_read": size / elapsed / MB, "cold_cpu": cpu / (size / GiB)}

        each(["cold_read", "cold_cpu"], cold, cold_limit)

        self.warm_reads(rep, src)

    def fill_page_cache(self, paths: list[Path]) -> dict[Path, str]:
        """Once the machine is quiet, drop the page cache and fill it with ``paths``
        side by side (see fill_side_by_side); returns those that could not be read."""
        self.settled += settle()
        drop_page_cache()
        unread: dict[Path, str] = {}
        fill_side_by_side(paths, unread)
        return unread

    def warm_reads(self, rep: int, src: Path) -> None:
        """Warm sequential reads: the page cache dropped and filled with every tool's
        file and the limit's side by side (see fill_side_by_side), then the files read
        in turn, WARM_READS times; each one's median is its figure."""
        size = self.sizes.file
        print(f"  [{rep}] warm_read", flush=True)
        readers: dict[str, tuple[Tool | None, Path]] = {}
        for tool in self.order(self.data_tools, rep):
            if tool.broken:
                self.fail(tool.name, rep, ["warm_read"], tool.broken)
            else:
                readers[tool.name] = (tool, tool.mountpoint / "big.bin")
        readers["limit"] = (None, src)
        unread = self.fill_page_cache([path for _, path in readers.values()])
        failed = {name: unread[path] for name, (_, path) in readers.items() if path in unread}
        times: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(WARM_READS):
            for name, (_, path) in readers.items():
                if name in failed:
                    continue
                try:
                    with time_limit(TIMEOUT):
                        start = time.perf_counter()
                        n = read_all(path)
                        elapsed = time.perf_counter() - start
                    if n != size:
                        raise BenchError(f"read {n} bytes of {size}")
                except (Exception, Timeout) as exc:
                    failed[name] = f"{type(exc).__name__}: {exc}"[:300]
                    continue
                times[name].append(elapsed)
        for name, (reader, _) in readers.items():
            if name in failed:
                self.fail(name, rep, ["warm_read"], failed[name])
                if reader is not None:
                    self.recover(reader)
            else:
                self.record(name, rep, {"warm_read": size / statistics.median(times[name]) / MB})

    def random_rep(self, rep: int, src: Path) -> None:
        s = self.sizes
        size = s.file
        each = partial(self.each, rep)

        def rand_cold(path: Path, tool: Tool | None) -> dict[str, float]:
            if tool is not None:
                tool.remount_cold()
            else:
                drop_page_cache()
            return {"rand_cold": fio_randread(path, size, s.fio_seconds)}

        each(
            ["rand_cold"],
            lambda t: rand_cold(t.mountpoint / "big.bin", t),
            lambda: rand_cold(src, None),
        )

        # Filled side by side, as for the warm sequential read: random reads out of the
        # page cache depend on where its pages are too. (A file that cannot be read
        # fails in fio.)
        self.fill_page_cache(
            [t.mountpoint / "big.bin" for t in self.data_tools if not t.broken] + [src]
        )

        def rand_warm(path: Path) -> dict[str, float]:
            return {"rand_warm": fio_randread(path, size, s.fio_seconds)}

        each(
            ["rand_warm"],
            lambda t: rand_warm(t.mountpoint / "big.bin"),
            lambda: rand_warm(src),
        )

        def ttfb(tool: Tool) -> dict[str, float]:
            tool.remount_cold()
            start = time.perf_counter()
            n = read_at(tool.mountpoint / "big.bin", s.ttfb_offset, MiB)
            elapsed = time.perf_counter() - start
            if n != MiB:
                raise BenchError(f"read {n} bytes of {MiB}")
            return {"ttfb": elapsed * 1000}

        def ttfb_limit() -> dict[str, float]:
            start = time.perf_counter()
            answer = self.target.s3.get_object(
                Bucket=self.limit_bucket,
                Key="big.bin",
                Range=f"bytes={s.ttfb_offset}-{s.ttfb_offset + MiB - 1}",
            )
            n = len(answer["Body"].read())
            elapsed = time.perf_counter() - start
            if n != MiB:
                raise BenchError(f"read {n} bytes of {MiB}")
            return {"ttfb": elapsed * 1000}

        each(["ttfb"], ttfb, ttfb_limit)

    def edit_hydrate_rep(self, rep: int) -> None:
        s = self.sizes
        size = s.file
        each = partial(self.each, rep)

        # An edit takes milliseconds, about what the machine's noise moves one by: each
        # repetition times several (the first after the TTFB step's cold remount) and
        # keeps their median.
        patches = [os.urandom(MiB) for _ in range(EDITS_PER_REP)]
        offsets = edit_offsets(size)

        def edit(tool: Tool, k: int) -> float:
            return timed_edit(tool, tool.mountpoint / "big.bin", patches[k], offsets[k])

        def edit_limit(k: int) -> float:
            start = time.perf_counter()
            self.target.s3.put_object(Bucket=self.limit_bucket, Key="patch.bin", Body=patches[k])
            return time.perf_counter() - start

        self.edit_turns(rep, edit, edit_limit)

        def hydrate(tool: Tool) -> dict[str, float]:
            tool.remount_cold()
            paths = [tool.mountpoint / f"hyd/h{i:04d}.bin" for i in range(s.hydrate_files)]
            start = time.perf_counter()
            tool.warm(paths)
            return {
                "hydrate": s.hydrate_files * s.hydrate_size / (time.perf_counter() - start) / MB
            }

        def hydrate_limit() -> dict[str, float]:
            client = self.target.s3

            def get(i: int) -> int:
                return len(
                    client.get_object(Bucket=self.limit_bucket, Key=f"hyd/h{i:04d}.bin")[
                        "Body"
                    ].read()
                )

            start = time.perf_counter()
            with ThreadPoolExecutor(BOTO_THREADS) as pool:
                total = sum(pool.map(get, range(s.hydrate_files)))
            return {"hydrate": total / (time.perf_counter() - start) / MB}

        each(["hydrate"], hydrate, hydrate_limit)

    def warm_up(self, src: Path) -> None:
        """Upload a new source file once, untimed, before a repetition's first turn:
        that turn would otherwise pay alone for its pages reaching the disk and for
        MinIO making its buffers anew after the scenarios before."""
        drop_page_cache()
        self.target.s3.upload_file(
            str(src), self.limit_bucket, "warm-up.bin", Config=self.transfer()
        )

    def transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=BOTO_THREADS
        )

    def dedup_rep(self, rep: int) -> None:
        s = self.sizes
        a, b = self.work / "dup-a.bin", self.work / "dup-b.bin"
        write_random(a, s.dup)
        with open(b, "wb") as out, open(a, "rb") as base:
            out.write(os.urandom(MiB))
            shutil.copyfileobj(base, out, 16 * MiB)
        print(f"  [{rep}] dedup", flush=True)

        def stored(tool: Tool) -> dict[str, float]:
            before = self.target.bucket_bytes(tool.bucket)
            for src, name in ((a, "a"), (b, "b")):
                path = tool.mountpoint / f"dup-{rep}-{name}.bin"
                state = tool.object_state(path)
                copy_durable(src, path)
                tool.durable(path, state)
            if isinstance(tool, JuiceFS):
                time.sleep(1)  # JuiceFS may finish a background upload just after close
            return {"dedup": (self.target.bucket_bytes(tool.bucket) - before) / MiB}

        for tool in self.order(self.dedup_tools, rep):
            self.attempt(tool, tool.name, rep, ["dedup"], partial(stored, tool))
        # The limit: only the bytes that differ are new.
        self.record("limit", rep, {"dedup": (s.dup + MiB) / MiB})

    def meta_rep(self, rep: int) -> None:
        s = self.sizes
        made: dict[str, list[Path]] = {}

        def create(name: str, base: Path) -> dict[str, float]:
            folder = base / f"many-{rep}"
            folder.mkdir()
            names = [folder / f"f{i:05d}" for i in range(s.files)]
            start = time.perf_counter()
            for path in names:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            took = time.perf_counter() - start
            made[name] = names
            return {"create": s.files / took}

        def delete(names: list[Path]) -> dict[str, float]:
            start = time.perf_counter()
            for path in names:
                path.unlink()
            took = time.perf_counter() - start
            with contextlib.suppress(OSError):
                names[0].parent.rmdir()
            return {"delete": s.files / took}

        print(f"  [{rep}] small files", flush=True)
        members: list[tuple[str, Tool | None, Path]] = [
            (tool.name, tool, tool.mountpoint) for tool in self.order(self.meta_tools, rep)
        ]
        members.append(("limit", None, self.local))
        for name, tool, base in members:
            self.attempt(tool, name, rep, ["create"], partial(create, name, base))
            if name not in made:
                self.fail(name, rep, ["stat", "ls_l", "delete"], "no files to work on")

        def stat(names: list[Path], k: int) -> float:
            drop_page_cache()
            time.sleep(DROP_SETTLE)
            start = time.perf_counter()
            stat_all(names)
            return time.perf_counter() - start

        files = {name: (tool, made[name]) for name, tool, _ in members if name in made}
        # A stat of 1,000 files takes about as long as a hiccup of the machine lasts:
        # every tool's runs interleaved, after every tool's creates.
        self.files_per_second(rep, "stat", files, stat, STAT_RUNS)

        def ls_l(names: list[Path], k: int) -> float:
            start = time.perf_counter()
            out = run(["ls", "-l", str(names[0].parent)], timeout=TIMEOUT)
            took = time.perf_counter() - start
            listed = out.count("\n") - 1
            if listed != s.files:
                raise BenchError(f"ls -l listed {listed} of {s.files} files")
            return took

        # The command's own start is much of an `ls -l`'s time at these sizes, and as
        # short-lived as the stat: interleaved the same way.
        self.files_per_second(rep, "ls_l", files, ls_l, LS_RUNS)
        for name, (tool, names) in files.items():
            self.attempt(tool, name, rep, ["delete"], partial(delete, names))
        self.tree_rep(rep)

    def files_per_second(
        self,
        rep: int,
        key: str,
        files: dict[str, tuple[Tool | None, list[Path]]],
        run_k: Callable[[list[Path], int], float],
        rounds: int,
    ) -> None:
        """Every member's ``run_k`` on its files, interleaved; the figure: files a
        second."""
        self.interleaved(
            rep,
            [key],
            [(name, tool, partial(run_k, names)) for name, (tool, names) in files.items()],
            rounds,
            lambda _, took: {key: self.sizes.files / statistics.median(took)},
        )

    def tree_rep(self, rep: int) -> None:
        s = self.sizes

        def ls_lr(tool: Tool | None) -> dict[str, float]:
            if tool is not None:
                tool.remount_cold()
                base = tool.mountpoint
            else:
                drop_page_cache()
                base = self.local
            start = time.perf_counter()
            out = run(["ls", "-lR", str(base / "tree")], timeout=TIMEOUT)
            elapsed = time.perf_counter() - start
            listed = sum(1 for line in out.splitlines() if line.startswith(("-", "d")))
            if listed < s.tree_entries:
                raise BenchError(f"ls -lR listed {listed} of {s.tree_entries} entries")
            return {"ls_lr": elapsed}

        print(f"  [{rep}] ls -lR", flush=True)
        for tool in self.order(self.meta_tools, rep):
            self.attempt(tool, tool.name, rep, ["ls_lr"], partial(ls_lr, tool))
        self.attempt(None, "limit", rep, ["ls_lr"], lambda: ls_lr(None))

    def stop(self) -> None:
        # A second Ctrl-C must not cut the cleanup short and leave mounts behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for tool in self.all_tools:
            try:
                with time_limit(120):
                    tool.stop()
            except (Exception, Timeout) as exc:
                print(f"  {tool.name}: could not stop cleanly: {exc}")


# -- the machine ----------------------------------------------------------------------------


def machine(work: Path) -> dict[str, Any]:
    mem = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    df = subprocess.run(
        ["df", "-h", "--output=source,fstype,size,avail", str(work)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem / (1 << 30), 1),
        "disk": df[-1] if df else "?",
        "kernel": platform.release(),
        "load_start": os.getloadavg(),
    }


def versions(tools: list[Tool], peers: Peers) -> dict[str, str]:
    found: dict[str, str] = {}
    for tool in tools:
        base = tool.name.split("-")[0]
        if base in found:
            continue
        try:
            found[base] = tool.version()
        except Exception as exc:
            found[base] = f"? ({exc})"
    from tests.servers import minio_binary, postgres_bin_dir

    with contextlib.suppress(Exception):
        commit = run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]).strip()
        found["mediadrive"] = f"{found.get('mediadrive', '?')} (commit {commit})"
    # MinIO built from a pseudo-version says DEVELOPMENT; its file name has the version.
    found["minio"] = minio_binary().resolve().name.removeprefix("minio-")

    for name, argv in {
        "fio": [peers.fio, "--version"],
        "postgresql": [str(postgres_bin_dir() / "postgres"), "--version"],
    }.items():
        try:
            found[name] = run(argv).splitlines()[0].strip()
        except Exception as exc:
            found[name] = f"? ({exc})"
    import boto3

    found["boto3"] = boto3.__version__
    return found


# -- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 13 minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it all run?")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (at least 3)")
    parser.add_argument("--only", help="comma-separated tools (mediadrive,juicefs,rclone,s3fs)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated scenario groups ({','.join(PARTS)}); write always runs with data",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where to write the outputs")
    parser.add_argument("--report-only", action="store_true", help="redo the report from JSON")
    args = parser.parse_args()
    if args.report_only:
        write_outputs(json.loads((args.out / "results.json").read_text()), args.out)
        return 0
    if os.geteuid() != 0:
        print("compare.py needs root (FUSE mounts, dropping the page cache)", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        print(f"--parts: unknown {', '.join(sorted(parts - set(PARTS)))}", file=sys.stderr)
        return 2

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    started = time.perf_counter()
    step = time.perf_counter()
    only = set(args.only.split(",")) if args.only else None
    peers = find_peers(only)
    print(f"peers ready in {time.perf_counter() - step:.1f}s", flush=True)
    workroot = Path("/var/tmp") if Path("/var/tmp").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="mediadrive-compare-", dir=workroot))
    # MinIO's request metrics (bytes received) without a token.
    os.environ["MINIO_PROMETHEUS_AUTH_TYPE"] = "public"
    info = machine(work)
    try:
        with contextlib.ExitStack() as stack:
            s3 = stack.enter_context(minio_server())
            pg = stack.enter_context(postgres_server())
            os.environ.update(
                AWS_ACCESS_KEY_ID=s3.access_key,
                AWS_SECRET_ACCESS_KEY=s3.secret_key,
                AWS_DEFAULT_REGION=s3.region,
            )
            target = S3Target(
                s3.endpoint_url,
                s3.access_key,
                s3.secret_key,
                s3.region,
                s3.client(max_pool_connections=32),
            )
            bench = Bench(sizes, max(args.reps, 3), work, target)
            # Unmount every tool before the servers stop (the stack unwinds in reverse).
            stack.callback(bench.stop)
            print(f"MinIO at {s3.endpoint_url}, PostgreSQL at {pg.host}:{pg.port}; work in {work}")
            step = time.perf_counter()
            bench.setup(peers, pg.url, only)
            bench.prepare_tree()
            bench.prepare_hydrate()
            setup_s = time.perf_counter() - step
            print(f"setup took {setup_s:.1f}s", flush=True)
            src = work / "src.bin"
            # The data scenarios run once per place at least, so every tool takes every
            # place once (a turn's figure depends on the one before; see balanced_orders).
            data = bool(parts & {"write", "read", "random", "edit"})
            data_reps = max(bench.reps, len(bench.data_tools)) if data else 0
            total = max(bench.reps, data_reps)
            for rep in range(total):
                step = time.perf_counter()
                print(f"repetition {rep + 1} of {total}", flush=True)
                if rep < data_reps:
                    write_random(src, sizes.file)
                    bench.warm_up(src)
                    bench.data_rep(rep, src, parts)
                if rep < bench.reps and "dedup" in parts:
                    bench.dedup_rep(rep)
                if rep < bench.reps and "meta" in parts:
                    bench.meta_rep(rep)
                print(f"repetition {rep + 1} took {time.perf_counter() - step:.1f}s", flush=True)
            info["load_end"] = os.getloadavg()
            tool_versions = versions(bench.all_tools, peers)
            bench.stop()
            results = {
                "settings": {
                    "quick": args.quick,
                    "reps": bench.reps,
                    "data_reps": data_reps,
                    **asdict(sizes),
                },
                "machine": info,
                "versions": tool_versions,
                "cache": {t.name: t.cache_note for t in bench.all_tools},
                "metrics": {k: asdict(m) for k, m in bench.metrics.items()},
                "runs": bench.runs,
                "samples": bench.samples,
                "timing": {
                    "setup_s": setup_s,
                    "total_s": time.perf_counter() - started,
                    "settle_s": bench.settled,
                },
            }
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
            write_outputs(results, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"done in {time.perf_counter() - started:.0f}s; see {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
