"""Whether a mediadrive mount's heap fault-in slows other work on the machine.

A mount faults its heap in a second after it goes quiet (``node/heap.py``). This
times JuiceFS's edits of a 256 MiB file (the benchmark's sixteen, see ``compare.py``)
started just as a mediadrive mount remounted before them begins that fault-in, and
the same edits 3 s later, when it is over, alternating over the rounds. Printed: the
median edit of each round and the median over the rounds, for both.

    sudo .venv/bin/python bench/fault_in_noise.py [--rounds 10]

Needs root (FUSE mounts, dropping the page cache) and the JuiceFS binary from
``scripts/bench/peers.sh juicefs``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.compare import (  # noqa: E402
    copy_durable,
    edit_offsets,
    settle,
    timed_edits,
    write_random,
)
from bench.peers import JuiceFS, Mediadrive, cached_juicefs, side_by_side  # noqa: E402

MiB = 1 << 20
SIZE = 256 * MiB
# After a remount: when the mount's fault-in begins (agent.QUIET_SECONDS, a little
# before), and when it is long over.
DURING = 0.97
AFTER = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of both timings")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("fault_in_noise.py needs root (FUSE mounts)", file=sys.stderr)
        return 2
    binary = cached_juicefs()
    if binary is None:
        return 2

    medians: dict[str, list[float]] = {"during": [], "after": []}
    with side_by_side("mediadrive-fault-in-noise-") as (work, s3, target, tools):
        mount = Mediadrive(work / "a", target, s3.new_bucket("md"), 2048 * MiB)
        juicefs = JuiceFS(work / "c", target, s3.new_bucket("juicefs"), 2048 * MiB, binary)
        tools += [mount, juicefs]
        src = work / "src.bin"
        write_random(src, SIZE)
        juicefs.create()
        juicefs.mount()
        mount.create()
        mount.mount()
        copy_durable(src, juicefs.mountpoint / "big.bin")
        juicefs.durable(juicefs.mountpoint / "big.bin", fsynced=True)
        offsets = edit_offsets(SIZE)
        for rnd in range(args.rounds):
            for when in ("during", "after") if rnd % 2 == 0 else ("after", "during"):
                juicefs.remount_cold()
                settle()
                mount.remount_cold()
                remounted = time.monotonic()
                settle()
                wait = (DURING if when == "during" else AFTER) - (time.monotonic() - remounted)
                if wait > 0:
                    time.sleep(wait)
                patches = [os.urandom(MiB) for _ in offsets]
                took = timed_edits(juicefs, juicefs.mountpoint / "big.bin", patches, offsets)
                medians[when].append(statistics.median(took) * 1000)
                print(f"round {rnd + 1} {when:6} {medians[when][-1]:6.2f} ms", flush=True)
    print(f"\nJuiceFS's 1 MiB edit, medians of {args.rounds} rounds:")
    for when, each in medians.items():
        print(f"  {when} the mediadrive mount's fault-in: {statistics.median(each):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
