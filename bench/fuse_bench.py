"""FUSE mount benchmarks against MinIO, every figure beside its baseline from the same run.

    python bench/fuse_bench.py [--size 1GiB] [--ttfb-size 4GiB] [--files 10000]

- warm sequential read through the mount vs the same bytes from the local disk, on a
  read-write mount (the kernel's FUSE page cache) and on a read-only one (FUSE
  passthrough where supported: the kernel reads a local view of the cached file);
- cold sequential read through the mount (fresh cache, page cache dropped) vs a direct
  parallel boto3 download of the same chunks from the same MinIO;
- time to first byte at an offset in a cold large file;
- editing 1 MiB in the middle of that cold file and saving: time, bytes fetched and
  uploaded (nothing fetched, the bytes written uploaded);
- create / stat / readdir of many small files per second.

Needs root (FUSE, dropping the page cache) and the MinIO binary of
``scripts/build-test-binaries.sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, cast

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from mediadrive.core.config import DriveSettings  # noqa: E402
from mediadrive.core.drive import Drive  # noqa: E402
from mediadrive.core.units import format_size, parse_size  # noqa: E402
from mediadrive.node import client  # noqa: E402
from mediadrive.node.options import MountOptions  # noqa: E402
from mediadrive.node.registry import MountRegistry  # noqa: E402
from tests.servers import minio_server  # noqa: E402

MiB = 1 << 20
READ_BUFFER = 4 * MiB


def drop_page_cache() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        print(f"  (could not drop the page cache: {exc}; cold figures are warmer)")


WARM_REPEATS = 5


def read_all(path: Path, offset: int = 0) -> tuple[int, float]:
    start = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        buf = bytearray(READ_BUFFER)
        view = memoryview(buf)
        while n := f.readinto(view):
            total += n
    return total, time.perf_counter() - start


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(os.urandom(n))
            left -= n


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / MiB:8.1f} MiB/s"


def timed(label: str, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    print(f"  {label}: {elapsed:.2f}s")
    return elapsed


def small_file_rates(folder: Path, count: int) -> list[tuple[str, str]]:
    """Create, stat and list ``count`` empty files in a folder of the mount."""
    names = [f"f{i:05d}" for i in range(count)]
    start = time.perf_counter()
    for name in names:
        os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o644))
    create = time.perf_counter() - start
    drop_page_cache()
    start = time.perf_counter()
    for name in names:
        os.stat(folder / name)
    stat_time = time.perf_counter() - start
    start = time.perf_counter()
    listed = len(os.listdir(folder))
    readdir = time.perf_counter() - start
    assert listed == count
    return [
        (f"create {count} files", f"{count / create:8.0f} /s"),
        (f"stat {count} files", f"{count / stat_time:8.0f} /s"),
        (f"readdir of {count} entries", f"{count / readdir:8.0f} /s"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB", help="file size for sequential reads")
    parser.add_argument("--ttfb-size", default="4GiB", help="size of the time-to-first-byte file")
    parser.add_argument("--files", type=int, default=10_000, help="small files to create")
    args = parser.parse_args()
    size = parse_size(args.size)
    ttfb_size = parse_size(args.ttfb_size)
    if os.geteuid() != 0:
        print("fuse_bench needs root (FUSE mounts, dropping the page cache)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="mediadrive-fuse-bench-"))
    registry = MountRegistry(work / "run")
    meta_url = f"sqlite:///{work}/meta.db"
    results: list[tuple[str, str]] = []
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    try:
        with minio_server() as s3:
            os.environ.update(
                AWS_ACCESS_KEY_ID=s3.access_key,
                AWS_SECRET_ACCESS_KEY=s3.secret_key,
                AWS_DEFAULT_REGION=s3.region,
            )
            bucket = s3.new_bucket("fuse-bench")
            store = f"s3://{bucket}/drive?endpoint={s3.endpoint_url}"
            print(f"MinIO at {s3.endpoint_url}; files of {format_size(size)}")

            local = work / "local.bin"
            big = work / "big.bin"
            print("preparing data")
            timed(f"random {format_size(size)} on local disk", lambda: write_random(local, size))
            timed(f"random {format_size(ttfb_size)}", lambda: write_random(big, ttfb_size))

            async def prepare() -> list[str]:
                drive = await Drive.create("bench", meta_url, store, DriveSettings())
                try:
                    with open(local, "rb") as f:
                        await drive.write_file("/seq.bin", f)
                    with open(big, "rb") as f:
                        await drive.write_file("/big.bin", f)
                    await drive.mkdir("/many")
                    reader = await drive.reader("/seq.bin")
                    return [e.chunk_id for e in reader.extents]
                finally:
                    await drive.close()

            chunk_ids = []
            elapsed = timed(
                "upload both through the engine", lambda: chunk_ids.extend(asyncio.run(prepare()))
            )
            results.append(("engine upload", rate(size + ttfb_size, elapsed)))
            big.unlink()

            def mount(cache: str, read_only: bool = False) -> None:
                client.mount(
                    MountOptions(
                        drive="bench",
                        meta_url=meta_url,
                        store_url=store,
                        run_dir=registry.run_dir,
                        mountpoint=mountpoint,
                        cache_dir=work / cache,
                        cache_size=size * 4 + ttfb_size,
                        checkpoint_interval="off",
                        read_only=read_only,
                    )
                )

            def warm_against_disk(label: str) -> None:
                # Page-cache reads swing widely on a shared machine: alternate the two
                # and compare medians of five.
                read_all(mountpoint / "seq.bin")
                read_all(local)
                warm_runs, disk_runs = [], []
                for _ in range(WARM_REPEATS):
                    warm_runs.append(read_all(mountpoint / "seq.bin")[1])
                    disk_runs.append(read_all(local)[1])
                warm, disk = statistics.median(warm_runs), statistics.median(disk_runs)
                results.append((f"warm sequential read, {label}", rate(size, warm)))
                results.append(("warm sequential read, local disk", rate(size, disk)))
                results.append(("  ratio mount / disk", f"{disk / warm:8.2f}x"))

            # -- cold sequential read vs boto3 ------------------------------------------------
            mount("cache-cold")
            drop_page_cache()
            n, cold = read_all(mountpoint / "seq.bin")
            assert n == size
            figures = client.MountClient.for_mountpoint(mountpoint, registry).status()
            results.append(("cold sequential read, mount", rate(size, cold)))

            s3_client = s3.client(max_pool_connections=32)
            from boto3.s3.transfer import TransferConfig

            transfer = TransferConfig(
                multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=16
            )

            class Sink(io.RawIOBase):
                def writable(self) -> bool:
                    return True

                def write(self, b: object) -> int:
                    return len(memoryview(cast(bytes, b)))

            def located(chunk: str) -> str:
                key = f"drive/chunks/{chunk[:2]}/{chunk}"
                # A chunk streamed while it was written is in the object its key names.
                head = s3_client.head_object(Bucket=bucket, Key=key)
                return head.get("Metadata", {}).get("mediadrive-stream", key)

            def download(key: str) -> None:
                s3_client.download_fileobj(bucket, key, cast("IO[bytes]", Sink()), Config=transfer)

            keys = [located(chunk) for chunk in chunk_ids]
            start = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(download, keys))
            direct = time.perf_counter() - start
            results.append(("cold sequential read, boto3 parallel", rate(size, direct)))
            results.append(("  ratio mount / boto3", f"{direct / cold:8.2f}x"))
            results.append(("  bytes fetched by the mount", format_size(figures["bytes_fetched"])))

            # -- warm sequential read vs local disk ---------------------------------------------
            warm_against_disk("read-write mount (page cache)")
            # A read-only mount lets the kernel read cached files itself (passthrough).
            client.umount(mountpoint, registry)
            mount("cache-cold", read_only=True)
            warm_against_disk("read-only mount")
            status = client.MountClient.for_mountpoint(mountpoint, registry).status()
            passthrough = "on" if status["passthrough"] else "off (not supported here)"
            results.append(("  passthrough", f"{passthrough:>8}"))

            # -- time to first byte at an offset in a cold large file ---------------------------
            client.umount(mountpoint, registry)
            mount("cache-ttfb")
            drop_page_cache()
            offset = (ttfb_size * 3 // 4) // 4096 * 4096 + 12345
            start = time.perf_counter()
            with open(mountpoint / "big.bin", "rb", buffering=0) as f:
                f.seek(offset)
                first = f.read(4096)
            ttfb = time.perf_counter() - start
            assert len(first) == 4096
            fetched = client.MountClient.for_mountpoint(mountpoint, registry).status()[
                "bytes_fetched"
            ]
            results.append(
                (
                    f"time to first byte at {format_size(offset)} of {format_size(ttfb_size)}",
                    f"{ttfb * 1000:8.1f} ms ({format_size(fetched)} fetched)",
                )
            )

            # -- editing 1 MiB in the middle of the cold large file -------------------------------
            mount_client = client.MountClient.for_mountpoint(mountpoint, registry)
            fetched_before = mount_client.status()["bytes_fetched"]
            start = time.perf_counter()
            with open(mountpoint / "big.bin", "r+b", buffering=0) as f:
                f.seek(ttfb_size // 2 + 4321)
                f.write(os.urandom(MiB))
            (report,) = mount_client.save("/big.bin", "bench edit")
            edit = time.perf_counter() - start
            fetched = mount_client.status()["bytes_fetched"] - fetched_before
            results.append(
                (
                    f"edit 1 MiB of the cold {format_size(ttfb_size)} file, save",
                    f"{edit:8.2f} s ({format_size(fetched)} fetched, "
                    f"{format_size(report['bytes_uploaded'])} uploaded)",
                )
            )

            results.extend(small_file_rates(mountpoint / "many", args.files))
            client.umount(mountpoint, registry)
    finally:
        with open("/proc/self/mountinfo") as mounts:
            if any(line.split()[4] == str(mountpoint) for line in mounts):
                os.system(f"fusermount3 -u -z {mountpoint}")
        shutil.rmtree(work, ignore_errors=True)

    print()
    width = max(len(label) for label, _ in results)
    for label, value in results:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
