"""The benchmark's 1 MiB edit until durable, side by side and repeated: the default
(commit on close) drive, a ``--commit-on fsync`` drive and JuiceFS, each in a bucket
of its own on one MinIO. Each round remounts every tool with its cache emptied and the
page cache dropped, as ``compare.py`` does before its edits, then times the same
sixteen edits in each (open, write 1 MiB at the benchmark's offsets, fsync, close, until
durable; back to back, or ``--pause`` seconds apart as the benchmark's are), the tools
in every order over the rounds. Printed: each tool's median edit, its ratio to
JuiceFS's, the CPU an edit took in the tool's process and in MinIO, and what each of
an edit's calls took (open, write, fsync, close, the tool's own check).

    sudo .venv/bin/python bench/edit_ab.py [--rounds 6] [--size-mib 1024] [--pause 0.05]
        [--interleave] [--no-juicefs]

``--interleave`` has the tools take turns edit by edit, each edit in another order,
as the benchmark times them: the machine's moments then fall on every tool alike.

Needs root (FUSE mounts, dropping the page cache) and, for JuiceFS, the binary from
``scripts/bench/peers.sh juicefs``. ``TMPDIR=/dev/shm`` puts MinIO's data on tmpfs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.compare import (  # noqa: E402
    EDIT_CALLS,
    EDIT_PAUSE,
    EDITS_PER_REP,
    copy_durable,
    edit_offsets,
    round_orders,
    settle,
    timed_edit,
    timed_edits,
    write_random,
)
from bench.peers import (  # noqa: E402
    JuiceFS,
    Mediadrive,
    Tool,
    cached_juicefs,
    cpu_seconds,
    side_by_side,
)
from mediadrive.node.options import CommitOn  # noqa: E402

MiB = 1 << 20


def server_pid(endpoint: str) -> int:
    """The MinIO process serving ``endpoint``."""
    port = endpoint.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"minio") and any(port.encode() in a for a in argv):
                return int(entry.name)
    raise RuntimeError(f"no MinIO process serving {endpoint}")


def edits(
    tool: Tool, size: int, server_pid: int, calls: dict[str, list[float]], pause: float = 0.0
) -> tuple[list[float], float, float]:
    """The benchmark's edits of ``big.bin``, ``pause`` seconds apart: each one's
    seconds, and the CPU seconds an edit took in the tool's process and in MinIO; what
    each call took goes to ``calls``."""
    offsets = edit_offsets(size)
    patches = [os.urandom(MiB) for _ in offsets]
    pid = tool.pid()
    cpu, server_cpu = cpu_seconds(pid), cpu_seconds(server_pid)
    times = timed_edits(tool, tool.mountpoint / "big.bin", patches, offsets, calls, pause)
    n = len(offsets)
    return times, (cpu_seconds(pid) - cpu) / n, (cpu_seconds(server_pid) - server_cpu) / n


def interleaved_round(
    tools: list[Tool],
    size: int,
    server_pid: int,
    calls: dict[str, dict[str, list[float]]],
    pause: float,
    rnd: int,
) -> dict[str, tuple[list[float], float, float]]:
    """One round of the benchmark's edits with the tools taking turns edit by edit (as
    ``compare.py`` times them), ``pause`` seconds apart, in another order of
    ``round_orders`` for each edit: by tool, as :func:`edits` returns them."""
    offsets = edit_offsets(size)
    orders = round_orders(len(tools))
    pids = {tool.name: tool.pid() for tool in tools}
    start = {name: cpu_seconds(pid) for name, pid in pids.items()}
    times: dict[str, list[float]] = {tool.name: [] for tool in tools}
    server = dict.fromkeys(times, 0.0)
    for k, offset in enumerate(offsets):
        for place in orders[(rnd + k) % len(orders)]:
            tool = tools[place]
            time.sleep(pause)
            before = cpu_seconds(server_pid)
            path = tool.mountpoint / "big.bin"
            times[tool.name].append(
                timed_edit(tool, path, os.urandom(MiB), offset, calls[tool.name])
            )
            server[tool.name] += cpu_seconds(server_pid) - before
    n = len(offsets)
    out = {}
    for tool in tools:
        tool.check()
        own = (cpu_seconds(pids[tool.name]) - start[tool.name]) / n
        out[tool.name] = (times[tool.name], own, server[tool.name] / n)
    return out


def print_summary(
    rounds: int,
    size_mib: int,
    times: dict[str, list[float]],
    cpu: dict[str, list[float]],
    server_cpu: dict[str, list[float]],
    calls: dict[str, dict[str, list[float]]],
) -> None:
    """Each tool's median edit and its ratio to JuiceFS's, CPU an edit took, and what
    each of an edit's calls took."""
    best = times.get("juicefs")
    print(f"\n{rounds} rounds of {EDITS_PER_REP} edits of a {size_mib} MiB file:")
    print(f"{'':17} {'median ms':>10} {'vs JuiceFS':>10} {'CPU ms':>7} {'MinIO CPU ms':>12}")
    for name, took in times.items():
        median = statistics.median(took)
        ratio = f"{statistics.median(best) / median:.2f}x" if best else "-"
        print(
            f"{name:17} {median * 1000:10.2f} {ratio:>10}"
            f" {statistics.median(cpu[name]) * 1000:7.2f}"
            f" {statistics.median(server_cpu[name]) * 1000:12.2f}"
        )
    print("\nmedian ms of each call of an edit:")
    print(f"{'':17}" + "".join(f" {call:>8}" for call in EDIT_CALLS))
    for name, by_call in calls.items():
        print(
            f"{name:17}"
            + "".join(f" {statistics.median(by_call[c]) * 1000:8.2f}" for c in EDIT_CALLS)
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=6, help=f"rounds of {EDITS_PER_REP} edits per tool"
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help=f"seconds between two edits (the benchmark's: {EDIT_PAUSE})",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="the tools take turns edit by edit, as in the benchmark (default: a turn each)",
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="the edited file's size")
    parser.add_argument("--no-juicefs", action="store_true", help="the mediadrive drives only")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("edit_ab.py needs root (FUSE mounts, dropping the page cache)", file=sys.stderr)
        return 2
    juicefs = None
    if not args.no_juicefs:
        juicefs = cached_juicefs()
        if juicefs is None:
            return 2
    size = args.size_mib * MiB

    with side_by_side("mediadrive-edit-ab-") as (work, s3, target, tools):
        budget = 2048 * MiB
        tools += [
            Mediadrive(work / "a", target, s3.new_bucket("close"), budget),
            Mediadrive(
                work / "b",
                target,
                s3.new_bucket("fsync"),
                budget,
                label="mediadrive-fsync",
                commit_on=CommitOn.FSYNC,
            ),
        ]
        if juicefs is not None:
            tools.append(JuiceFS(work / "c", target, s3.new_bucket("juicefs"), budget, juicefs))
        minio = server_pid(s3.endpoint_url)
        src = work / "src.bin"
        write_random(src, size)
        for tool in tools:
            tool.create()
            tool.mount()
            copy_durable(src, tool.mountpoint / "big.bin")
            tool.durable(tool.mountpoint / "big.bin", fsynced=True)
        src.unlink()
        # Every order of three tools over six rounds; more tools, a shuffled order each.
        orders = (
            list(itertools.permutations(tools))
            if len(tools) <= 3
            else [random.Random(r).sample(tools, len(tools)) for r in range(args.rounds)]
        )
        times: dict[str, list[float]] = {tool.name: [] for tool in tools}
        cpu: dict[str, list[float]] = {tool.name: [] for tool in tools}
        server_cpu: dict[str, list[float]] = {tool.name: [] for tool in tools}
        calls: dict[str, dict[str, list[float]]] = {tool.name: {} for tool in tools}
        for rnd in range(args.rounds):
            if args.interleave:
                for tool in orders[rnd % len(orders)]:
                    tool.remount_cold()
                settle()
                results = interleaved_round(tools, size, minio, calls, args.pause, rnd)
            else:
                results = {}
                for tool in orders[rnd % len(orders)]:
                    tool.remount_cold()
                    settle()
                    results[tool.name] = edits(tool, size, minio, calls[tool.name], args.pause)
            for name, (took, own, server) in results.items():
                times[name] += took
                cpu[name].append(own)
                server_cpu[name].append(server)
                each = " ".join(f"{t * 1000:.1f}" for t in took)
                print(
                    f"round {rnd + 1} {name:17}"
                    f" median {statistics.median(took) * 1000:6.2f} ms  ({each})",
                    flush=True,
                )
        print_summary(args.rounds, args.size_mib, times, cpu, server_cpu, calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
