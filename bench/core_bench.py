"""Core engine benchmarks, each figure beside a plain reference measured in the same run.

    .venv/bin/python bench/core_bench.py [--size 1GiB] [--repeat 3] [--workdir DIR]

Measures, on one disk and one pseudo-random input file:

- chunk + hash throughput of fixed 64 MiB chunking and of FastCDC (default average),
  beside a plain Python read of the file and a plain ``cp`` of it;
- commit throughput of ``Drive.write_file`` into a drive on embedded defaults (SQLite +
  local folder store) and into one on PostgreSQL + MinIO, beside ``cp`` to the same disk
  and a plain parallel boto3 ``upload_file`` of the file to the same MinIO;
- dedup: re-committing after a 1 MiB overwrite in the middle (fixed chunks), and after
  a 1 MiB insertion at the start (FastCDC).

PostgreSQL and MinIO are started by the script (``tests/servers.py``) with their data
in the work directory, so every byte written lands on the same filesystem. Inputs are
read through just before each timing, so they are warm in the page cache; the page
cache is never dropped. Results go to stdout as tables and to
``bench/results/core-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blake3 import blake3
from boto3.s3.transfer import TransferConfig
from rich.console import Console
from rich.table import Table

from mediadrive.core.chunking import DEFAULT_CDC_AVERAGE, DEFAULT_FIXED_SIZE, make_chunker
from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import CommitResult, Drive
from mediadrive.core.hashing import chunk_id
from mediadrive.core.units import format_size, parse_size

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.servers import (  # noqa: E402 - the repo root is on sys.path only from here
    PostgresServer,
    S3Server,
    minio_binary,
    minio_server,
    postgres_bin_dir,
    postgres_server,
)

MB = 1_000_000
MiB = 1 << 20
BLOCK = 64 * MiB
EDIT = 1 * MiB
FILE_PATH = "/bench.bin"
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "core-latest.json"
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}
# Input file, cp copy, three drive stores, MinIO's copy, the reference upload, the
# inserted-at-start file, edits: about seven times the input, plus headroom.
SPACE_FACTOR = 8
PAGE_CACHE_NOTE = (
    "inputs are warm in the page cache (read through just before each timing; "
    "the page cache is never dropped)"
)

out = Console()
if not out.is_terminal:
    out.width = 120
log = Console(stderr=True)


# --- measurements -----------------------------------------------------------------------


@dataclass
class Timing:
    """One measured operation: the median of ``runs`` seconds over ``nbytes`` bytes."""

    label: str
    nbytes: int
    runs: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / MB if self.seconds > 0 else float("inf")

    def ratio(self, reference: Timing) -> float:
        return self.mb_per_s / reference.mb_per_s

    def as_json(self, **references: Timing) -> dict[str, Any]:
        data: dict[str, Any] = {
            "label": self.label,
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 4),
            "runs": [round(r, 4) for r in self.runs],
            "mb_per_s": round(self.mb_per_s, 1),
        }
        for name, reference in references.items():
            data[f"ratio_to_{name}"] = round(self.ratio(reference), 3)
        data.update(self.extra)
        return data


async def embedded_drive(name: str, base: Path, settings: DriveSettings) -> Drive:
    """A drive on the embedded defaults: SQLite and a local folder."""
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    return await Drive.create(
        name, f"sqlite:///{folder}/meta.db", f"file://{folder}/store", settings
    )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeated(repeat: int, prepare: Callable[[], None], run: Callable[[], float]) -> list[float]:
    runs = []
    for _ in range(repeat):
        prepare()
        runs.append(run())
    return runs


# --- files and disks --------------------------------------------------------------------


@dataclass(frozen=True)
class Filesystem:
    device: str
    fstype: str
    mount: str


def filesystem_of(path: Path) -> Filesystem:
    """The mounted filesystem holding ``path`` (the longest matching mount point)."""
    resolved = str(path.resolve())
    best = Filesystem("?", "?", "")
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            device, mount, fstype = line.split()[:3]
            mount = mount.replace("\\040", " ")
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best.mount):
                best = Filesystem(device, fstype, mount)
    return best


def pick_workdir_base(requested: Path | None) -> Path:
    default = [Path("/var/tmp"), REPO_ROOT / ".cache"]
    candidates = [requested] if requested is not None else default
    for base in candidates:
        base.mkdir(parents=True, exist_ok=True)
        if filesystem_of(base).fstype not in MEMORY_FILESYSTEMS:
            return base
    names = ", ".join(str(c) for c in candidates)
    raise SystemExit(f"error: no disk-backed work directory ({names} are in memory)")


def write_pseudorandom(path: Path, size: int, seed: str) -> None:
    """``size`` incompressible bytes from a BLAKE3 output stream: the same seed, same bytes."""
    stream = blake3(f"mediadrive-bench:{seed}".encode())
    with path.open("wb") as f:
        for offset in range(0, size, BLOCK):
            f.write(stream.digest(length=min(BLOCK, size - offset), seek=offset))


def pseudorandom(length: int, seed: str) -> bytes:
    data: bytes = blake3(f"mediadrive-bench:{seed}".encode()).digest(length=length)
    return data


def read_through(path: Path) -> int:
    """Read the whole file into one reused buffer; returns the byte count."""
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    total = 0
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


def warm(path: Path) -> None:
    """Flush dirty pages left by the previous step, then pull ``path`` into the page cache."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)
    read_through(path)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.sync()


def tool_version(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "?"


# --- chunk + hash -----------------------------------------------------------------------


def chunk_pass(path: Path, kind: str, with_hash: bool) -> tuple[float, int]:
    """One pass of the engine's chunker (and BLAKE3 ids) over the file: seconds, chunks."""
    chunker = make_chunker("fixed" if kind == "fixed" else "cdc")
    count = 0
    start = time.perf_counter()
    with path.open("rb") as f:
        for piece in chunker.split(f):
            if with_hash:
                chunk_id(piece.data)
            count += 1
    return time.perf_counter() - start, count


def bench_chunking(source: Path, size: int, repeat: int) -> dict[str, Timing]:
    results: dict[str, Timing] = {}

    def measure(key: str, label: str, kind: str, with_hash: bool) -> None:
        log.print(f"  {label}")
        counts: list[int] = []

        def run() -> float:
            seconds, count = chunk_pass(source, kind, with_hash)
            counts.append(count)
            return seconds

        runs = repeated(repeat, lambda: warm(source), run)
        results[key] = Timing(label, size, runs, {"chunks": counts[-1]})

    fixed = f"fixed {format_size(DEFAULT_FIXED_SIZE)}"
    cdc = f"FastCDC avg {format_size(DEFAULT_CDC_AVERAGE)}"
    measure("fixed_chunk_hash", f"{fixed}: chunk + hash", "fixed", True)
    measure("cdc_chunk_hash", f"{cdc}: chunk + hash", "cdc", True)
    measure("fixed_chunk_only", f"{fixed}: chunk only", "fixed", False)
    measure("cdc_chunk_only", f"{cdc}: chunk only", "cdc", False)

    log.print("  plain read")
    runs = repeated(repeat, lambda: warm(source), lambda: timed(lambda: read_through(source)))
    results["plain_read"] = Timing("plain read (Python, 64 MiB readinto)", size, runs)
    return results


def bench_cp(source: Path, size: int, repeat: int) -> tuple[Timing, Timing]:
    """``cp`` to the same disk: to the page cache, and then made durable with ``sync FILE``."""
    log.print("  cp")
    target = source.with_name("cp-copy.bin")
    cp_runs: list[float] = []
    synced_runs: list[float] = []
    for _ in range(repeat):
        remove(target)
        warm(source)
        copy = timed(lambda: subprocess.run(["cp", "--", str(source), str(target)], check=True))
        flush = timed(lambda: subprocess.run(["sync", "--", str(target)], check=True))
        cp_runs.append(copy)
        synced_runs.append(copy + flush)
    remove(target)
    return (
        Timing("cp (same disk, into page cache)", size, cp_runs),
        Timing("cp + sync FILE (same disk, durable)", size, synced_runs),
    )


# --- commits ------------------------------------------------------------------------------


def commit(runner: asyncio.Runner, drive: Drive, source: Path, label: str) -> Timing:
    warm(source)
    with source.open("rb") as f:
        start = time.perf_counter()
        result: CommitResult = runner.run(drive.write_file(FILE_PATH, f, message=label))
        seconds = time.perf_counter() - start
    return Timing(
        label,
        result.size,
        [seconds],
        {
            "version": result.version,
            "bytes_uploaded": result.bytes_uploaded,
            "chunks_total": result.chunks_total,
            "chunks_new": result.chunks_new,
        },
    )


def boto3_upload(s3: S3Server, bucket: str, source: Path, size: int) -> Timing:
    """A plain parallel ``upload_file`` with boto3's default transfer settings."""
    transfer = TransferConfig()
    client = s3.client(max_pool_connections=transfer.max_request_concurrency)
    try:
        warm(source)
        seconds = timed(
            lambda: client.upload_file(str(source), bucket, "reference/bench.bin", Config=transfer)
        )
        head = client.head_object(Bucket=bucket, Key="reference/bench.bin")
        if head["ContentLength"] != size:
            raise RuntimeError(f"reference upload stored {head['ContentLength']} bytes")
    finally:
        client.close()
    threads, part = transfer.max_request_concurrency, format_size(transfer.multipart_chunksize)
    return Timing(f"boto3 upload_file (defaults: {threads} threads, {part} parts)", size, [seconds])


def overwrite_middle(path: Path, size: int) -> int:
    """Overwrite 1 MiB starting at the middle of the file; returns the offset."""
    offset = size // 2
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(pseudorandom(EDIT, "overwrite"))
    return offset


def insert_at_start(source: Path, target: Path) -> None:
    with target.open("wb") as dst, source.open("rb") as src:
        dst.write(pseudorandom(EDIT, "insert"))
        shutil.copyfileobj(src, dst, BLOCK)


@contextlib.contextmanager
def servers_under(workdir: Path) -> Iterator[tuple[PostgresServer, S3Server]]:
    """PostgreSQL and MinIO with their data inside ``workdir`` (the benchmark's disk)."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(workdir)
    try:
        with postgres_server() as pg, minio_server() as s3:
            yield pg, s3
    finally:
        tempfile.tempdir = saved


# --- report -------------------------------------------------------------------------------


def ratio_text(value: float) -> str:
    return f"{value:.2f}x"


def row(t: Timing, *references: Timing) -> list[str]:
    return [
        t.label,
        f"{t.seconds:.2f}",
        f"{t.mb_per_s:,.0f}",
        *(ratio_text(t.ratio(r)) for r in references),
    ]


def render(report: dict[str, Any], timings: dict[str, Timing]) -> None:
    env = report["environment"]
    out.print(
        f"[bold]mediadrive core benchmark[/]  {format_size(report['size_bytes'])} pseudo-random "
        f"file, {env['cpus']} CPUs, Python {env['python']}"
    )
    fs = report["filesystem"]
    out.print(
        f"disk: {fs['device']} ({fs['fstype']}) at {fs['mount']}; work dir "
        f"{report['workdir']}; cp, drive stores, PostgreSQL and MinIO all write here"
    )
    out.print(
        f"{PAGE_CACHE_NOTE}; MB = 10^6 bytes; chunking rows are the median of "
        f"{report['repeat']} runs, commits one run each"
    )

    cp, cp_sync, read = timings["cp"], timings["cp_sync"], timings["plain_read"]
    table = Table(title="chunk + hash (the engine's chunkers, BLAKE3-256 ids)")
    for name in ("what", "chunks", "s", "MB/s", "vs cp", "vs plain read"):
        table.add_column(name, justify="left" if name == "what" else "right")
    for key in ("fixed_chunk_hash", "cdc_chunk_hash", "fixed_chunk_only", "cdc_chunk_only"):
        t = timings[key]
        cells = row(t, cp, read)
        cells.insert(1, str(t.extra["chunks"]))
        table.add_row(*cells)
    table.add_section()
    for t in (read, cp, cp_sync):
        cells = row(t, cp, read)
        cells.insert(1, "")
        table.add_row(*cells)
    out.print(table)

    upload = timings["boto3_upload"]
    table = Table(title="commit: Drive.write_file of the whole file (first version)")
    for name in ("what", "s", "MB/s", "uploaded", "vs cp", "vs cp + sync", "vs boto3"):
        table.add_column(name, justify="left" if name == "what" else "right")
    for key in ("commit_embedded", "commit_pg_minio", "commit_cdc_embedded"):
        t = timings[key]
        cells = row(t, cp, cp_sync, upload)
        cells.insert(3, format_size(t.extra["bytes_uploaded"]))
        table.add_row(*cells)
    table.add_section()
    for t in (cp, cp_sync, upload):
        cells = row(t, cp, cp_sync, upload)
        cells.insert(3, "")
        table.add_row(*cells)
    out.print(table)

    table = Table(title="dedup: commit after an edit (whole file re-chunked and re-hashed)")
    for name in ("what", "uploaded", "new / total chunks", "s", "MB/s", "version"):
        table.add_column(name, justify="left" if name == "what" else "right")
    for key in ("recommit_embedded", "recommit_pg_minio", "recommit_cdc_insert"):
        t = timings[key]
        table.add_row(
            t.label,
            format_size(t.extra["bytes_uploaded"]),
            f"{t.extra['chunks_new']} / {t.extra['chunks_total']}",
            f"{t.seconds:.2f}",
            f"{t.mb_per_s:,.0f}",
            str(t.extra["version"]),
        )
    out.print(table)


def build_report(
    args: argparse.Namespace,
    workdir: Path,
    size: int,
    timings: dict[str, Timing],
    versions: dict[str, str],
    started: datetime,
    elapsed: float,
) -> dict[str, Any]:
    fs = filesystem_of(workdir)
    cp, cp_sync, read = timings["cp"], timings["cp_sync"], timings["plain_read"]
    upload = timings["boto3_upload"]
    chunking = {
        key: timings[key].as_json(cp=cp, plain_read=read)
        for key in ("fixed_chunk_hash", "cdc_chunk_hash", "fixed_chunk_only", "cdc_chunk_only")
    }
    commits = {
        key: timings[key].as_json(cp=cp, cp_sync=cp_sync, boto3_upload=upload)
        for key in ("commit_embedded", "commit_pg_minio", "commit_cdc_embedded")
    }
    return {
        "benchmark": "core",
        "started": started.isoformat(timespec="seconds"),
        "elapsed_seconds": round(elapsed, 1),
        "size_bytes": size,
        "repeat": args.repeat,
        "mb": MB,
        "page_cache": PAGE_CACHE_NOTE,
        "workdir": str(workdir),
        "filesystem": {"device": fs.device, "fstype": fs.fstype, "mount": fs.mount},
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            **versions,
        },
        "chunking": {
            "fixed_chunk_size": DEFAULT_FIXED_SIZE,
            "cdc_average_size": DEFAULT_CDC_AVERAGE,
            **chunking,
        },
        "references": {
            "plain_read": read.as_json(cp=cp),
            "cp": cp.as_json(),
            "cp_sync": cp_sync.as_json(cp=cp),
            "boto3_upload": upload.as_json(cp=cp),
        },
        "commit": commits,
        "dedup": {
            "edit_bytes": EDIT,
            "overwrite_offset": size // 2,
            "recommit_embedded": timings["recommit_embedded"].as_json(),
            "recommit_pg_minio": timings["recommit_pg_minio"].as_json(),
            "recommit_cdc_insert": timings["recommit_cdc_insert"].as_json(),
        },
    }


# --- main ---------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path, size: int) -> dict[str, Timing]:
    timings: dict[str, Timing] = {}
    source = workdir / "input.bin"
    log.print(f"writing the {format_size(size)} input file")
    write_pseudorandom(source, size, "input")

    log.print("chunk + hash")
    timings.update(bench_chunking(source, size, args.repeat))
    timings["cp"], timings["cp_sync"] = bench_cp(source, size, args.repeat)

    drives = workdir / "drives"
    log.print("starting PostgreSQL and MinIO")
    with servers_under(workdir) as (pg, s3), asyncio.Runner() as runner:
        os.environ["AWS_ACCESS_KEY_ID"] = s3.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = s3.secret_key
        os.environ.setdefault("AWS_DEFAULT_REGION", s3.region)
        no_proxy = os.environ.get("NO_PROXY", "")
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(
            filter(None, [no_proxy, "127.0.0.1", "localhost"])
        )
        bucket = s3.new_bucket("bench")
        embedded = runner.run(embedded_drive("bench-embedded", drives, DriveSettings()))
        remote = runner.run(
            Drive.create(
                "bench-pg-minio",
                pg.new_database("bench"),
                f"s3://{bucket}/drive?endpoint={s3.endpoint_url}",
                DriveSettings(),
            )
        )
        cdc = runner.run(embedded_drive("bench-cdc", drives, DriveSettings(chunking="cdc")))
        try:
            log.print("commit: embedded defaults (SQLite + local folder)")
            timings["commit_embedded"] = commit(
                runner, embedded, source, "SQLite + local folder, fixed 64 MiB"
            )
            log.print("reference: boto3 upload_file to MinIO")
            timings["boto3_upload"] = boto3_upload(s3, bucket, source, size)
            log.print("commit: PostgreSQL + MinIO")
            timings["commit_pg_minio"] = commit(
                runner, remote, source, "PostgreSQL + MinIO, fixed 64 MiB"
            )
            log.print("commit: embedded defaults, FastCDC")
            timings["commit_cdc_embedded"] = commit(
                runner, cdc, source, "SQLite + local folder, FastCDC"
            )

            log.print("dedup: 1 MiB inserted at the start (FastCDC)")
            inserted = workdir / "inserted.bin"
            insert_at_start(source, inserted)
            timings["recommit_cdc_insert"] = commit(
                runner, cdc, inserted, "FastCDC, SQLite + local: 1 MiB inserted at start"
            )
            remove(inserted)

            log.print("dedup: 1 MiB overwritten in the middle (fixed chunks)")
            overwrite_middle(source, size)
            timings["recommit_embedded"] = commit(
                runner, embedded, source, "fixed, SQLite + local: 1 MiB overwritten mid-file"
            )
            timings["recommit_pg_minio"] = commit(
                runner, remote, source, "fixed, PostgreSQL + MinIO: 1 MiB overwritten mid-file"
            )
        finally:
            for drive in (embedded, remote, cdc):
                runner.run(drive.close())
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB", help="input file size (default 1GiB)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each chunking and cp figure (median)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="parent of the work directory (default /var/tmp, else the repo's .cache/)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    if size < 2 * EDIT:
        parser.error(f"--size must be at least {format_size(2 * EDIT)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    base = pick_workdir_base(args.workdir)
    free = shutil.disk_usage(base).free
    if free < SPACE_FACTOR * size:
        raise SystemExit(
            f"error: {base} has {format_size(free)} free; "
            f"--size {args.size} needs about {format_size(SPACE_FACTOR * size)}"
        )
    started = datetime.now(UTC)
    clock = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mediadrive-bench-", dir=base))
    # The PostgreSQL server runs as an unprivileged user and must reach its data dir.
    workdir.chmod(0o755)
    try:
        timings = run(args, workdir, size)
        versions = {
            "cp": tool_version(["cp", "--version"]),
            "minio": tool_version([str(minio_binary()), "--version"]),
            "postgres": tool_version([str(postgres_bin_dir() / "postgres"), "--version"]),
        }
        report = build_report(
            args, workdir, size, timings, versions, started, time.monotonic() - clock
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    render(report, timings)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    out.print(f"results: {args.output} ({report['elapsed_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
