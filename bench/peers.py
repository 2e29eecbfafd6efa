"""The file systems bench/compare.py runs side by side: mediadrive and its peers.

Every tool mounts a folder backed by its own bucket of one MinIO on loopback and
answers the same few questions: mount, unmount, mount again with empty caches,
make a written file durable in S3, warm a list of files. The peers run in the
foreground as child processes of the benchmark, so stopping the benchmark stops
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from mediadrive.core.config import DriveSettings
from mediadrive.core.drive import Drive
from mediadrive.node import client
from mediadrive.node.options import CommitOn, MountOptions
from mediadrive.node.registry import MountRegistry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from tests.servers import S3Server

MiB = 1 << 20
MOUNT_TIMEOUT = 60.0


class BenchError(RuntimeError):
    """A tool could not do what a scenario asked; the message says why."""


def run(argv: Sequence[str], timeout: float = 120.0, env: dict[str, str] | None = None) -> str:
    """Run a command; its output, or a BenchError with the output's tail."""
    try:
        result = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{Path(argv[0]).name} timed out after {timeout:.0f}s") from exc
    out = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode != 0:
        tail = " | ".join(out.strip().splitlines()[-3:])
        raise BenchError(f"{Path(argv[0]).name} {argv[1]} exited {result.returncode}: {tail}")
    return out


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == str(path) for line in mounts)


def wait_mounted(path: Path, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not is_mounted(path):
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"mount exited {proc.returncode}: {tail_of(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"not mounted after {MOUNT_TIMEOUT:.0f}s: {tail_of(log)}")
        time.sleep(0.05)


def tail_of(log: Path, lines: int = 3) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def force_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def cached_juicefs() -> Path | None:
    """The JuiceFS binary ``scripts/bench/peers.sh juicefs`` installed, if it did (if
    not, says so on stderr)."""
    cache = Path(os.environ.get("MEDIADRIVE_CACHE", Path.home() / ".cache/mediadrive"))
    found = next(iter(sorted(cache.glob("bench/juicefs-*/juicefs"))), None)
    if found is None:
        print("no JuiceFS binary: run scripts/bench/peers.sh juicefs first", file=sys.stderr)
    return found


@contextlib.contextmanager
def side_by_side(prefix: str) -> Iterator[tuple[Path, S3Server, S3Target, list[Tool]]]:
    """For a script that runs tools side by side on one MinIO: a work folder under
    /var/tmp, the server, the tools' target, and a list for the tools, each of which
    is stopped (before the server) and the folder removed, whatever happens (a
    SIGTERM included)."""
    from tests.servers import minio_server

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Stopped from outside (kill, timeout): the tools still unmount on the way out.
    signal.signal(signal.SIGTERM, interrupt)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    tools: list[Tool] = []
    try:
        with minio_server() as s3:
            try:
                yield work, s3, S3Target.of(s3), tools
            finally:
                for tool in tools:
                    tool.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class S3Target:
    """Where every tool stores: one MinIO, one bucket per tool."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    s3: S3Client

    @classmethod
    def of(cls, s3: S3Server) -> S3Target:
        """``s3`` as the tools' target, its credentials in the environment (where
        mediadrive's agents and JuiceFS read them)."""
        os.environ.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
        return cls(s3.endpoint_url, s3.access_key, s3.secret_key, s3.region, s3.client())

    def bucket_bytes(self, bucket: str) -> int:
        total = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            total += sum(obj.get("Size", 0) for obj in page.get("Contents", []))
        return total

    def etag(self, bucket: str, key: str) -> tuple[str, int] | None:
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except self.s3.exceptions.ClientError:
            return None
        return head["ETag"], head["ContentLength"]


class Tool:
    """One mounted file system under test."""

    name = "tool"
    #: a peer stores files as plain objects under their path (rclone, s3fs)
    plain_objects = False
    cache_note = ""

    def __init__(self, work: Path, target: S3Target, bucket: str, cache_budget: int) -> None:
        self.work = work / self.name
        self.mountpoint = self.work / "mnt"
        self.cache_dir = self.work / "cache"
        self.log = self.work / "mount.log"
        self.target = target
        self.bucket = bucket
        self.cache_budget = cache_budget
        self.proc: subprocess.Popen[bytes] | None = None
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.broken: str | None = None

    # -- to implement ----------------------------------------------------------------------
    def create(self) -> None:
        """Make the file system (format, create the drive) once."""

    def mount(self) -> None:
        raise NotImplementedError

    def unmount(self) -> None:
        proc = self.proc
        if is_mounted(self.mountpoint):
            run(["fusermount3", "-u", str(self.mountpoint)], timeout=300)
        if proc is not None:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        self.proc = None

    def version(self) -> str:
        raise NotImplementedError

    def durable(
        self, path: Path, before: tuple[str, int] | None = None, fsynced: bool = False
    ) -> None:
        """Return once ``path`` (written and closed; ``fsynced``: and fsync'd before its
        close) is stored in S3."""
        if not self.plain_objects:
            return
        key = str(path.relative_to(self.mountpoint))
        size = path.stat().st_size
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            now = self.target.etag(self.bucket, key)
            if now is not None and now != before and now[1] == size:
                return
            time.sleep(0.02)
        raise BenchError(f"{key} not in S3 after 600s")

    def check(self) -> None:
        """Raise BenchError if the tool reports that something timed as durable is not
        (called after the timing)."""

    def object_state(self, path: Path) -> tuple[str, int] | None:
        if not self.plain_objects:
            return None
        return self.target.etag(self.bucket, str(path.relative_to(self.mountpoint)))

    def warm(self, paths: list[Path]) -> None:
        """Bring ``paths`` into the local cache (peers without a command: read them)."""
        read_files(paths)

    def pid(self) -> int | None:
        """The process serving the mount (its CPU time is the tool's)."""
        return self.proc.pid if self.proc is not None else None

    # -- shared ------------------------------------------------------------------------------
    def remount_cold(self) -> None:
        """Unmount, empty the tool's cache and the page cache, mount again."""
        self.unmount()
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        drop_page_cache()
        self.mount()

    def stop(self) -> None:
        """Unmount (uploading what is pending); whatever happens, leave no mount or process."""
        try:
            self.unmount()
        except Exception:
            pass
        finally:
            force_unmount(self.mountpoint)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=10)

    def _start(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_mounted(self.mountpoint, self.proc, self.log)


def _stat_fields(pid: int) -> list[str]:
    # After the command name: state is field 3 of proc(5), so index i is field i + 3.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int | None) -> float:
    """User and system CPU time of a process and of every process under it (JuiceFS
    serves its mount from a child of the process it starts)."""
    if pid is None:
        raise BenchError("no process to measure")
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
    family = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in family and child not in family:
                family.add(child)
                grew = True
    ticks = 0
    for member in family:
        with contextlib.suppress(OSError, IndexError, ValueError):
            # utime, stime, cutime, cstime: fields 14 to 17.
            ticks += sum(int(x) for x in _stat_fields(member)[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def read_files(paths: list[Path], threads: int = 8) -> int:
    def one(path: Path) -> int:
        total = 0
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(4 * MiB):
                total += len(chunk)
        return total

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, paths))


class Mediadrive(Tool):
    name = "mediadrive"
    cache_note = "block cache bound (--cache-size)"

    def __init__(
        self,
        work: Path,
        target: S3Target,
        bucket: str,
        cache_budget: int,
        meta_url: str | None = None,
        chunking: str = "fixed",
        label: str | None = None,
        commit_on: CommitOn = CommitOn.CLOSE,
        stream_chunks: bool = True,
    ) -> None:
        if label is not None:
            self.name = label
        super().__init__(work, target, bucket, cache_budget)
        self.meta_url = meta_url or f"sqlite:///{self.work}/meta.db"
        self.store_url = f"s3://{bucket}/drive?endpoint={target.endpoint}"
        self.chunking = chunking
        self.commit_on = commit_on
        self.stream_chunks = stream_chunks
        self.registry = MountRegistry(self.work / "run")
        self.drive = "bench"
        self._client: client.MountClient | None = None

    def create(self) -> None:
        settings = DriveSettings(chunking="cdc") if self.chunking == "cdc" else DriveSettings()

        async def make() -> None:
            drive = await Drive.create(self.drive, self.meta_url, self.store_url, settings)
            await drive.close()

        asyncio.run(make())

    def mount(self) -> None:
        self._client = None
        client.mount(
            MountOptions(
                drive=self.drive,
                meta_url=self.meta_url,
                store_url=self.store_url,
                run_dir=self.registry.run_dir,
                mountpoint=self.mountpoint,
                cache_dir=self.cache_dir,
                cache_size=self.cache_budget,
                checkpoint_interval=None,
                commit_on=self.commit_on,
                stream_chunks=self.stream_chunks,
            ),
            timeout=MOUNT_TIMEOUT,
        )

    def unmount(self) -> None:
        self._client = None
        if self.registry.entry_for(self.mountpoint) is not None or is_mounted(self.mountpoint):
            client.umount(self.mountpoint, self.registry, timeout=600)

    def pid(self) -> int | None:
        entry = self.registry.entry_for(self.mountpoint)
        return entry.pid if entry is not None else None

    def mount_client(self) -> client.MountClient:
        # Kept while mounted, as a program using the API keeps its client (not looked
        # up in the mount registry again inside each timed save).
        if self._client is None:
            self._client = client.MountClient.for_mountpoint(self.mountpoint, self.registry)
        return self._client

    def inner(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.mountpoint))

    def durable(
        self, path: Path, before: tuple[str, int] | None = None, fsynced: bool = False
    ) -> None:
        if fsynced and self.commit_on.on_fsync:
            # Its fsync returned once the version was recorded and its chunks stored
            # (as JuiceFS's returns once its slices are), unless it could not commit and
            # flushed the copy here instead: checked after the timing (see check).
            return
        # No message: naming a version a close already committed is one more metadata
        # write, and durability is what is measured.
        self.mount_client().save(self.inner(path))

    def status(self) -> dict[str, Any]:
        return self.mount_client().status()

    def check(self) -> None:
        status = self.status()
        if status["errors"]:
            raise BenchError(f"{self.name}: {status['errors'][-1]}")

    def warm(self, paths: list[Path]) -> None:
        manifest = {"version": 1, "include": [{"path": self.inner(p)} for p in paths]}
        self.mount_client().hydrate([], manifest=manifest, pin=False)

    def version(self) -> str:
        from importlib.metadata import version

        return version("mediadrive-node")


class JuiceFS(Tool):
    name = "juicefs"
    cache_note = "--cache-size"

    def __init__(
        self,
        work: Path,
        target: S3Target,
        bucket: str,
        cache_budget: int,
        binary: Path,
        meta_url: str | None = None,
        label: str | None = None,
    ) -> None:
        if label is not None:
            self.name = label
        super().__init__(work, target, bucket, cache_budget)
        self.binary = binary
        self.meta_url = meta_url or f"sqlite3://{self.work}/meta.db"

    def create(self) -> None:
        run(
            [
                str(self.binary),
                "format",
                "--storage",
                "minio",
                "--bucket",
                f"{self.target.endpoint}/{self.bucket}",
                "--access-key",
                self.target.access_key,
                "--secret-key",
                self.target.secret_key,
                "--trash-days",
                "0",
                self.meta_url,
                "bench",
            ],
            timeout=120,
        )

    def mount(self) -> None:
        self._start(
            [
                str(self.binary),
                "mount",
                "--no-usage-report",
                "--cache-dir",
                str(self.cache_dir),
                "--cache-size",
                str(self.cache_budget // MiB),
                self.meta_url,
                str(self.mountpoint),
            ]
        )

    def unmount(self) -> None:
        if is_mounted(self.mountpoint):
            run([str(self.binary), "umount", "--flush", str(self.mountpoint)], timeout=300)
        super().unmount()

    def warm(self, paths: list[Path]) -> None:
        listing = self.work / "warmup.txt"
        listing.write_text("".join(f"{p}\n" for p in paths))
        run([str(self.binary), "warmup", "-f", str(listing)], timeout=1200)

    def version(self) -> str:
        return run([str(self.binary), "version"]).split("version")[-1].strip()


class Rclone(Tool):
    name = "rclone"
    plain_objects = True
    cache_note = "--vfs-cache-max-size"

    def __init__(
        self, work: Path, target: S3Target, bucket: str, cache_budget: int, binary: Path
    ) -> None:
        super().__init__(work, target, bucket, cache_budget)
        self.binary = binary

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RCLONE_CONFIG_BENCH_TYPE="s3",
            RCLONE_CONFIG_BENCH_PROVIDER="Minio",
            RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=self.target.access_key,
            RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=self.target.secret_key,
            RCLONE_CONFIG_BENCH_ENDPOINT=self.target.endpoint,
            RCLONE_CONFIG_BENCH_REGION=self.target.region,
        )
        return env

    def mount(self) -> None:
        self._start(
            [
                str(self.binary),
                "mount",
                f"bench:{self.bucket}",
                str(self.mountpoint),
                "--vfs-cache-mode",
                "full",
                "--cache-dir",
                str(self.cache_dir),
                "--vfs-cache-max-size",
                f"{self.cache_budget // MiB}M",
                # Upload as soon as a file is closed (the default waits 5s).
                "--vfs-write-back",
                "0s",
                "--log-level",
                "NOTICE",
            ],
            env=self.env(),
        )

    def version(self) -> str:
        return run([str(self.binary), "version"]).splitlines()[0].split()[-1]


class S3fs(Tool):
    name = "s3fs"
    plain_objects = True
    cache_note = "use_cache (s3fs has no size bound; it only keeps the disk from filling)"

    def mount(self) -> None:
        passwd = self.work / "passwd"
        passwd.write_text(f"{self.target.access_key}:{self.target.secret_key}\n")
        passwd.chmod(0o600)
        self._start(
            [
                "s3fs",
                self.bucket,
                str(self.mountpoint),
                "-f",
                "-o",
                f"passwd_file={passwd}",
                "-o",
                f"url={self.target.endpoint}",
                "-o",
                "use_path_request_style",
                "-o",
                f"endpoint={self.target.region}",
                "-o",
                f"use_cache={self.cache_dir}",
                "-o",
                "dbglevel=warn",
            ]
        )

    def version(self) -> str:
        first = run(["s3fs", "--version"]).splitlines()[0]
        return first.split(" V")[-1].split()[0] if " V" in first else first


def plain_upload(target: S3Target, bucket: str, objects: dict[str, bytes]) -> None:
    """Put objects straight into a bucket (the tree rclone and s3fs list), in parallel."""

    def put(item: tuple[str, bytes]) -> None:
        target.s3.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, objects.items()))


def fio_randread(path: Path, size: int, runtime: float, fio: str = "fio") -> float:
    """4 KiB random reads with psync for ``runtime`` seconds: IOPS."""
    out = run(
        [
            fio,
            "--name=randread",
            f"--filename={path}",
            "--rw=randread",
            "--bs=4k",
            "--ioengine=psync",
            f"--size={size}",
            f"--runtime={runtime}",
            "--time_based",
            "--invalidate=0",
            "--readonly",
            "--output-format=json",
        ],
        timeout=runtime + 120,
    )
    job = json.loads(out[out.index("{") :])["jobs"][0]
    return float(job["read"]["iops"])


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
