"""A large write until durable, side by side: mediadrive with chunks streamed while
they are written (the default), mediadrive with ``--no-stream-chunks`` (``--fsync``: a
``--commit-on fsync`` drive instead), and JuiceFS,
each in a bucket of its own on one MinIO. Every round writes new random bytes on a
fresh mount of each tool, the page cache dropped first, the tools in every order over
each six rounds; printed: each phase's median (the application's writes, its fsync,
the wait after the close until durable, the whole) and the file system process's CPU.

    sudo .venv/bin/python bench/write_ab.py [--rounds 12] [--size-mib 256] [--no-juicefs] [--fsync]

Needs root (FUSE mounts, dropping the page cache) and, for JuiceFS, the binary from
``scripts/bench/peers.sh juicefs``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.compare import settle, write_random  # noqa: E402
from bench.peers import (  # noqa: E402
    JuiceFS,
    Mediadrive,
    Tool,
    cached_juicefs,
    cpu_seconds,
    drop_page_cache,
    side_by_side,
)
from mediadrive.node.options import CommitOn  # noqa: E402

MiB = 1 << 20
PHASES = ("writes", "fsync", "after close", "until durable", "CPU")


def write_once(tool: Tool, src: Path, name: str) -> tuple[float, ...]:
    """Copy ``src`` in as ``name`` until durable: each phase's seconds, and CPU seconds."""
    pid = tool.pid()
    cpu = cpu_seconds(pid)
    path = tool.mountpoint / name
    view = memoryview(bytearray(4 * MiB))
    start = time.perf_counter()
    with open(src, "rb", buffering=0) as fin, open(path, "wb", buffering=0) as fout:
        while n := fin.readinto(view):
            fout.write(view[:n])
        written = time.perf_counter()
        os.fsync(fout.fileno())
        synced = time.perf_counter()
    tool.durable(path, fsynced=True)
    done = time.perf_counter()
    return written - start, synced - written, done - synced, done - start, cpu_seconds(pid) - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="writes per tool")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--no-juicefs", action="store_true", help="mediadrive both ways only")
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="the second mount is a --commit-on fsync drive (streamed), not --no-stream-chunks",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("write_ab.py needs root (FUSE mounts, dropping the page cache)", file=sys.stderr)
        return 2
    juicefs = None
    if not args.no_juicefs:
        juicefs = cached_juicefs()
        if juicefs is None:
            return 2
    with side_by_side("mediadrive-write-ab-") as (work, s3, target, tools):
        budget = 2048 * MiB
        tools += [
            Mediadrive(work / "a", target, s3.new_bucket("streamed"), budget, label="streamed"),
            Mediadrive(
                work / "b",
                target,
                s3.new_bucket("fsync"),
                budget,
                label="commit on fsync",
                commit_on=CommitOn.FSYNC,
            )
            if args.fsync
            else Mediadrive(
                work / "b",
                target,
                s3.new_bucket("whole"),
                budget,
                label="one put a chunk",
                stream_chunks=False,
            ),
        ]
        if juicefs is not None:
            tools.append(JuiceFS(work / "c", target, s3.new_bucket("juicefs"), budget, juicefs))
        for tool in tools:
            tool.create()
        orders = list(itertools.permutations(tools))
        results: dict[str, list[tuple[float, ...]]] = {tool.name: [] for tool in tools}
        src = work / "src.bin"
        for rnd in range(args.rounds):
            for tool in orders[rnd % len(orders)]:
                write_random(src, args.size_mib * MiB)
                tool.mount()
                settle()
                drop_page_cache()
                figures = write_once(tool, src, f"w{rnd}.bin")
                results[tool.name].append(figures)
                tool.unmount()
                print(
                    f"round {rnd + 1} {tool.name:16}",
                    "  ".join(f"{p} {f:.3f}" for p, f in zip(PHASES, figures, strict=True)),
                    flush=True,
                )
        print(f"\nmedians of {args.rounds} writes of {args.size_mib} MiB (seconds):")
        print(f"{'':16}", "  ".join(f"{p:>13}" for p in PHASES))
        for name, rows in results.items():
            medians = [statistics.median(column) for column in zip(*rows, strict=True)]
            print(f"{name:16}", "  ".join(f"{m:13.3f}" for m in medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
