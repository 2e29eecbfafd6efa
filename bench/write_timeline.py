"""Where a large write's time goes: a file copied into mediadrive and JuiceFS until
durable, each copy's timeline printed (when the application had written each 64 MiB,
its fsync and close, durable) beside every PUT MinIO received, from a capture of its
loopback port (when the request's first packet came and how long until its answer).

    sudo .venv/bin/python bench/write_timeline.py --rounds 4 [--size-mib 256] [--fresh-mount]

Needs root (FUSE mounts, dropping the page cache, the capture), ``tcpdump`` and the
JuiceFS binary from ``scripts/bench/peers.sh juicefs``. The tools alternate round by
round; each write is of new random bytes, the page cache dropped before it, as in
``compare.py``'s write scenario (``--fresh-mount``: a fresh mount before each, as
that scenario's write comes after the other scenarios' cold remounts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
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

MiB = 1 << 20
MB = 1_000_000
MARK_EVERY = 64 * MiB


@dataclass
class Request:
    start: float
    line: str
    answered: float | None = None


def requests_in(pcap: Path, port: int) -> list[Request]:
    """Requests sent to ``port`` and when their answers began, from a capture with
    Ethernet framing (loopback), matched per client connection."""
    data = pcap.read_bytes()
    out: list[Request] = []
    waiting: dict[int, Request] = {}
    pos = 24  # the file's header
    while pos + 16 <= len(data):
        seconds, micros, length, _ = struct.unpack_from("<IIII", data, pos)
        packet = data[pos + 16 : pos + 16 + length]
        pos += 16 + length
        ip = packet[14:]
        if len(ip) < 20:
            continue
        tcp = ip[(ip[0] & 15) * 4 :]
        source, destination = struct.unpack_from(">HH", tcp, 0)
        body = tcp[(tcp[12] >> 4) * 4 :]
        at = seconds + micros / 1e6
        if destination == port and body[:4] in (b"PUT ", b"POST", b"GET "):
            line = body.split(b"\r\n", 1)[0].decode("latin-1")
            waiting[source] = Request(at, line)
            out.append(waiting[source])
        elif source == port and body[:9] == b"HTTP/1.1 " and destination in waiting:
            waiting.pop(destination).answered = at
    return out


def write_once(tool: Tool, path: Path, size: int, port: int, work: Path) -> None:
    src = work / "src.bin"
    write_random(src, size)
    settle()
    pcap = work / "capture.pcap"
    capture = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-s", "200", "-U", "-w", str(pcap), f"tcp port {port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # the capture is listening
    drop_page_cache()
    cpu = cpu_seconds(tool.pid())
    marks: list[tuple[float, str]] = []
    buffer = memoryview(bytearray(4 * MiB))
    start = time.time()
    with open(src, "rb", buffering=0) as fin, open(path, "wb", buffering=0) as fout:
        done = 0
        while n := fin.readinto(buffer):
            fout.write(buffer[:n])
            done += n
            if done % MARK_EVERY == 0:
                marks.append((time.time(), f"application has written {done // MiB} MiB"))
        os.fsync(fout.fileno())
        marks.append((time.time(), "fsync returned"))
    marks.append((time.time(), "close returned"))
    tool.durable(path, fsynced=True)
    end = time.time()
    marks.append((end, "durable"))
    cpu = cpu_seconds(tool.pid()) - cpu
    # tcpdump reads the kernel's buffer behind the traffic: let it catch up.
    time.sleep(1.0)
    capture.send_signal(signal.SIGINT)
    capture.wait()
    puts = [r for r in requests_in(pcap, port) if r.start >= start and r.line.startswith("PUT ")]
    print(
        f"== {tool.name}: {size / (end - start) / MB:.0f} MB/s, {end - start:.3f} s, "
        f"{cpu:.2f} CPU s, {len(puts)} PUTs"
    )
    rows = [(at, text) for at, text in marks]
    shown = puts if len(puts) <= 8 else [puts[0], *puts[-3:]]
    for request in shown:
        took = (
            "no answer seen"
            if request.answered is None
            else f"{request.answered - request.start:.3f} s"
        )
        key = request.line.split(" ")[1].rsplit("/", 1)[-1][:16]
        rows.append((request.start, f"PUT {key}... took {took}"))
    if len(puts) > 8:
        rows.append((puts[1].start, f"({len(puts) - 4} more PUTs)"))
    for at, text in sorted(rows):
        print(f"  {at - start:7.3f} s  {text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--fresh-mount", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("write_timeline.py needs root (FUSE mounts, the capture)", file=sys.stderr)
        return 2
    if shutil.which("tcpdump") is None:
        print("write_timeline.py needs tcpdump (apt-get install tcpdump)", file=sys.stderr)
        return 2
    juicefs = cached_juicefs()
    if juicefs is None:
        return 2
    with side_by_side("mediadrive-timeline-") as (work, s3, target, tools):
        port = int(s3.endpoint_url.rsplit(":", 1)[1])
        budget = 2048 * MiB
        tools += [
            Mediadrive(work, target, s3.new_bucket("mediadrive"), budget),
            JuiceFS(work, target, s3.new_bucket("juicefs"), budget, juicefs),
        ]
        for tool in tools:
            tool.create()
            tool.mount()
        for rnd in range(args.rounds):
            for tool in tools if rnd % 2 == 0 else tools[::-1]:
                if args.fresh_mount:
                    tool.unmount()
                    tool.mount()
                path = tool.mountpoint / f"w{rnd}.bin"
                write_once(tool, path, args.size_mib * MiB, port, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
