"""Plain HTTP to pods and looks at their data, for assertions that bypass the client."""

from __future__ import annotations

import random
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

from mediadrive.core.hashing import chunk_id
from tests.servers import PodServer

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
FORWARDED = "X-Mediadrive-Forwarded"


def payload(size: int, seed: int) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return chunk_id(data), data


def http(
    method: str,
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _HTTP.open(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def chunk_url(pod: PodServer, drive: str, cid: str) -> str:
    return f"{pod.url}/v1/drives/{drive}/chunks/{cid}"


def local_holding(pod: PodServer, drive: str, cid: str, token: str | None = None) -> str | None:
    """How this one pod keeps a chunk itself ('held', 'cached'), asking no other member."""
    headers = {FORWARDED: "1"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, got, _ = http("HEAD", chunk_url(pod, drive, cid), headers=headers)
    return got.get("X-Mediadrive-Holding") if status == 200 else None


def files_on_disk(data_dir: Path, drive: str) -> list[str]:
    """Chunk files (finished or not) the pod keeps for a drive."""
    chunks = data_dir / "drives" / drive / "chunks"
    return sorted(p.name for p in chunks.rglob("*") if p.is_file()) if chunks.exists() else []


def index_rows(data_dir: Path) -> dict[tuple[str, str], bool]:
    """(drive, id) -> held, as the pod's index records it."""
    with sqlite3.connect(data_dir / "index.sqlite") as db:
        return {(d, i): bool(h) for d, i, h in db.execute("SELECT drive, id, held FROM chunks")}


def metric(pod: PodServer, name: str) -> float:
    """A metric's value from the pod's /metrics page (0 when absent)."""
    _, _, body = http("GET", f"{pod.url}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    return 0.0
