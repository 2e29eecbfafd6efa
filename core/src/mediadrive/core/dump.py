"""Dumping a drive's metadata to a file, and loading it into a new metadata store.

The blob store alone cannot be turned back into files: the metadata store is the
drive. A dump holds all of it (the tree with deleted nodes, versions, extents,
chunks with their block digests, events, settings), read in one transaction, as
gzip'd JSON lines; ``docs/dump-format.md`` describes the format. Loading a dump
into an empty metadata store next to the same blob store gives a working drive;
it is also how a drive moves from SQLite to PostgreSQL and back.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from .config import DriveSettings
from .errors import ConfigError
from .meta import (
    ChunkRecord,
    DriveDump,
    Event,
    Extent,
    MetaStore,
    Node,
    NodeKind,
    StoredExtent,
    VersionInfo,
)
from .meta.schema import LATEST

FORMAT = "mediadrive-dump"
# Bump when a reader of the previous version would misread a dump.
VERSION = 1
KINDS = ("node", "version", "extent", "chunk", "event")


@dataclass(frozen=True)
class DumpSummary:
    drive: str
    counts: dict[str, int]


def _records(dump: DriveDump) -> Iterator[dict[str, Any]]:
    yield {
        "format": FORMAT,
        "version": VERSION,
        "schema": LATEST,
        "drive": dump.name,
        "dumped": time.time(),
        "created": dump.created,
        "next_node": dump.next_node,
        "event_seq": dump.event_seq,
        "settings": json.loads(dump.settings),
    }
    for node in dump.nodes:
        yield {"t": "node", **dataclasses.asdict(node), "kind": node.kind.value}
    for info in dump.versions:
        yield {"t": "version", **dataclasses.asdict(info)}
    for stored in dump.extents:
        e = stored.extent
        yield {
            "t": "extent",
            "file_id": stored.file_id,
            "version": stored.version,
            "offset": e.offset,
            "length": e.length,
            "chunk": e.chunk_id,
            "chunk_offset": e.chunk_offset,
        }
    for chunk in dump.chunks:
        yield {
            "t": "chunk",
            "id": chunk.chunk_id,
            "size": chunk.size,
            "state": chunk.state,
            "held_until": chunk.held_until,
            "blocks": base64.b64encode(chunk.blocks).decode() if chunk.blocks else None,
        }
    for event in dump.events:
        yield {"t": "event", **dataclasses.asdict(event)}
    yield {
        "t": "end",
        "counts": {
            "node": len(dump.nodes),
            "version": len(dump.versions),
            "extent": len(dump.extents),
            "chunk": len(dump.chunks),
            "event": len(dump.events),
        },
    }


def write_dump(dump: DriveDump, sink: IO[bytes]) -> DumpSummary:
    """Write ``dump`` to ``sink`` as gzip'd JSON lines."""
    counts: Counter[str] = Counter()
    with gzip.GzipFile(fileobj=sink, mode="wb", mtime=0) as zipped:
        for record in _records(dump):
            counts[record.get("t", "header")] += 1
            zipped.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    return DumpSummary(dump.name, {k: counts[k] for k in KINDS})


def read_dump(source: IO[bytes]) -> DriveDump:
    """A dump read back; ConfigError naming the problem if it is not a whole dump."""
    try:
        with gzip.GzipFile(fileobj=source, mode="rb") as zipped:
            return _parse(zipped)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a mediadrive dump, or a damaged one: {exc}") from None


def _parse(lines: gzip.GzipFile) -> DriveDump:
    header = json.loads(lines.readline() or b"null")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError("it does not start with a mediadrive dump header")
    if header["version"] != VERSION:
        raise ValueError(f"it is format version {header['version']}; this program reads {VERSION}")
    dump = DriveDump(
        name=header["drive"],
        settings=DriveSettings.model_validate(header["settings"]).model_dump_json(),
        created=float(header["created"]),
        next_node=int(header["next_node"]),
        event_seq=int(header["event_seq"]),
    )
    end: dict[str, Any] | None = None
    for line in lines:
        record = json.loads(line)
        kind = record.pop("t")
        if kind == "node":
            dump.nodes.append(Node(**{**record, "kind": NodeKind(record["kind"])}))
        elif kind == "version":
            dump.versions.append(VersionInfo(**record))
        elif kind == "extent":
            # Dumps written before slices existed name whole chunks only.
            extent = Extent(
                record["offset"], record["length"], record["chunk"], record.get("chunk_offset", 0)
            )
            dump.extents.append(StoredExtent(record["file_id"], record["version"], extent))
        elif kind == "chunk":
            blocks = base64.b64decode(record["blocks"]) if record["blocks"] else None
            dump.chunks.append(
                ChunkRecord(
                    record["id"], record["size"], record["state"], blocks, record["held_until"]
                )
            )
        elif kind == "event":
            dump.events.append(Event(**record))
        elif kind == "end":
            end = record
            break
        else:
            raise ValueError(f"unknown record type {kind!r}")
    if end is None:
        raise ValueError("it ends before its end record (cut short?)")
    found = {
        "node": len(dump.nodes),
        "version": len(dump.versions),
        "extent": len(dump.extents),
        "chunk": len(dump.chunks),
        "event": len(dump.events),
    }
    if end["counts"] != found:
        raise ValueError(f"its end record counts {end['counts']}, the dump holds {found}")
    return dump


async def dump_drive(meta: MetaStore, sink: IO[bytes]) -> DumpSummary:
    """Write the drive's whole metadata, one consistent snapshot, to ``sink``."""
    dump = await meta.export_drive()
    return await asyncio.to_thread(write_dump, dump, sink)


async def load_drive(meta: MetaStore, source: IO[bytes]) -> DumpSummary:
    """Make ``meta``'s drive from a dump (AlreadyExists if the drive is there)."""
    dump = await asyncio.to_thread(read_dump, source)
    await meta.import_drive(dump)
    return DumpSummary(
        meta.drive,
        {
            "node": len(dump.nodes),
            "version": len(dump.versions),
            "extent": len(dump.extents),
            "chunk": len(dump.chunks),
            "event": len(dump.events),
        },
    )
