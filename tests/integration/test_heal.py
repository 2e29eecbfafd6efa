"""Damage is found, reported and healed; a drive survives as a dump of its metadata.

Damaged chunks through the drive engine on each SQL engine; ``fsck``, ``gc`` of
store debris and ``drive dump``/``drive load`` through the installed command.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import subprocess
import time
from pathlib import Path

import pytest

from mediadrive.core.drive import Drive, VersionReader
from mediadrive.core.errors import CorruptChunk
from mediadrive.core.identity import Identity

from .test_cli import MEDIADRIVE, MIB, Cli, random_file

ME = Identity(author="ana@render-01", host="render-01")


def chunk_files(store: Path) -> list[Path]:
    return sorted(p for p in store.glob("chunks/*/*") if not p.name.startswith("."))


def make_debris(store: Path, age: float) -> Path:
    """A half-written chunk as a put that died leaves it, last touched ``age`` ago."""
    folder = store / "chunks" / "ab"
    folder.mkdir(parents=True, exist_ok=True)
    debris = folder / f".ab{'0' * 62}.{os.getpid()}.{int(age)}.tmp"
    debris.write_bytes(b"half a chunk")
    then = time.time() - age
    os.utime(debris, (then, then))
    return debris


# -- the drive engine -----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "delete", "flip"])
async def test_a_damaged_chunk_is_refused_then_healed_by_uploading_its_bytes(
    meta_url: str, tmp_path: Path, damage: str
) -> None:
    store = tmp_path / "store"
    data = os.urandom(3 * MIB + 11)
    async with await Drive.create("heal", meta_url, f"file://{store}", identity=ME) as drive:
        await drive.write_file("/f.bin", io.BytesIO(data))
        (chunk,) = chunk_files(store)
        if damage == "empty":
            chunk.write_bytes(b"")
        elif damage == "delete":
            chunk.unlink()
        else:
            raw = bytearray(chunk.read_bytes())
            raw[2 * MIB] ^= 1
            chunk.write_bytes(bytes(raw))
        with pytest.raises(CorruptChunk):
            await drive.read_to("/f.bin", io.BytesIO())
        again = await drive.write_file("/f.bin", io.BytesIO(data))
        assert again.bytes_uploaded == len(data)
        out = io.BytesIO()
        await drive.read_to("/f.bin", out)
        assert out.getvalue() == data
        # Stored again and unmarked: the next copy of the same bytes uploads nothing.
        assert (await drive.write_file("/g.bin", io.BytesIO(data))).bytes_uploaded == 0


async def test_a_block_read_of_an_empty_chunk_marks_it_damaged(
    meta_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    data = os.urandom(2 * MIB)
    async with await Drive.create("heal", meta_url, f"file://{store}", identity=ME) as drive:
        await drive.write_file("/f.bin", io.BytesIO(data))
        (chunk,) = chunk_files(store)
        chunk.write_bytes(b"")
        with pytest.raises(CorruptChunk):
            await drive.read_blocks(chunk.name, 0, 2)
        with pytest.raises(CorruptChunk):
            await drive.read_block(chunk.name, 1)
        (claim,) = await drive.meta.claim_chunks([(chunk.name, len(data), None)])
        assert claim.state == "pending"


async def test_gc_removes_old_debris_only(tmp_path: Path) -> None:
    store = tmp_path / "store"
    url = f"sqlite:///{tmp_path}/meta.db"
    async with await Drive.create("gc", url, f"file://{store}", identity=ME) as drive:
        await drive.write_file("/f", io.BytesIO(b"kept"))
        old, fresh = make_debris(store, 2 * 3600), make_debris(store, 10)
        report = await drive.gc(grace=3600)
        assert report.debris_removed == 1
        assert (old.exists(), fresh.exists()) == (False, True)
        assert len(chunk_files(store)) == 1


# -- fsck -------------------------------------------------------------------------------------


def test_fsck_finds_reports_and_repairs_damage(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", {})
    cli.run("drive", "create", "show", "--chunk-size", "1MiB")
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a_data = random_file(a, 2 * MIB)
    cli.run("cp", str(a), "show:/cut/a.bin")
    random_file(b, MIB)
    cli.run("cp", str(b), "show:/b.bin")
    b_data = random_file(b, MIB)
    cli.run("cp", str(b), "show:/b.bin")
    clean = cli.json("fsck", "show")
    assert (clean["chunks_checked"], clean["problems"]) == (4, [])

    store = tmp_path / "home" / "show" / "store"
    by_name = {p.name: p for p in chunk_files(store)}
    from mediadrive.core.hashing import chunk_id

    emptied = by_name[chunk_id(a_data[MIB:])]
    emptied.write_bytes(b"")
    deleted = by_name[chunk_id(b_data)]
    deleted.unlink()
    debris = make_debris(store, 2 * 3600)

    proc = cli.run("fsck", "show", "--json", check=False)
    assert proc.returncode == 1, proc.stderr
    import json

    report = json.loads(proc.stdout)
    assert sorted((p["chunk_id"], p["problem"]) for p in report["problems"]) == sorted(
        [(emptied.name, "truncated"), (deleted.name, "missing")]
    )
    assert sorted((u["path"], u["version"], u["head"]) for u in report["affected"]) == [
        ("/b.bin", 2, True),
        ("/cut/a.bin", 1, True),
    ]
    assert report["debris"] == [str(debris)] and debris.exists()
    # The text report names the files, and the way to repair.
    text = cli.run("fsck", "show", check=False).stdout
    assert "show:/cut/a.bin version 1 (head)" in text and "--repair" in text

    sampled = cli.run("fsck", "show", "--sample", "1", "--json", check=False)
    assert json.loads(sampled.stdout)["chunks_checked"] == 1
    assert "--sample" in cli.fails("fsck", "show", "--sample", "lots")

    repaired = cli.run("fsck", "show", "--repair", "--json", check=False)
    assert repaired.returncode == 1
    assert (json.loads(repaired.stdout)["marked"], debris.exists()) == (2, False)
    # Copying the originals back in stores the damaged chunks again.
    (tmp_path / "a2.bin").write_bytes(a_data)
    assert cli.json("cp", str(tmp_path / "a2.bin"), "show:/cut/a.bin")["bytes_uploaded"] == MIB
    b.write_bytes(b_data)
    assert cli.json("cp", str(b), "show:/b.bin")["bytes_uploaded"] == MIB
    assert cli.json("fsck", "show")["problems"] == []
    out = tmp_path / "out"
    cli.run("cp", "show:/cut/a.bin@1", str(out))
    assert out.read_bytes() == a_data


def test_fsck_records_strays_for_gc(tmp_path: Path) -> None:
    """Objects in the store that no record names (a put whose record never happened)
    are listed by a whole check, recorded by --repair, and collected by gc."""
    import json

    from mediadrive.core.hashing import chunk_id

    cli = Cli(tmp_path / "home", {})
    cli.run("drive", "create", "strays", "--chunk-size", "1MiB")
    kept = tmp_path / "kept.bin"
    kept_data = random_file(kept, 2 * MIB)
    cli.run("cp", str(kept), "strays:/kept.bin")
    store = tmp_path / "home" / "strays" / "store"
    recorded = chunk_files(store)
    sound_data = os.urandom(MIB)
    sound = chunk_id(sound_data)
    bad = chunk_id(b"the bytes this object should hold")
    for cid, data in ((sound, sound_data), (bad, b"something else")):
        (store / "chunks" / cid[:2]).mkdir(parents=True, exist_ok=True)
        (store / "chunks" / cid[:2] / cid).write_bytes(data)

    found = cli.json("fsck", "strays")
    assert (found["problems"], found["strays"]) == ([], sorted([sound, bad]))
    text = cli.run("fsck", "strays").stdout
    assert f"stray: chunk {sound}" in text and "--repair" in text
    # A sampled check does not list the whole store.
    assert json.loads(cli.run("fsck", "strays", "--sample", "1", "--json").stdout)["strays"] == []

    repaired = cli.json("fsck", "strays", "--repair")
    assert repaired["strays_recorded"] == 2
    assert cli.json("fsck", "strays")["strays"] == []
    # The sound one is bytes the drive has now: a copy of them sends nothing.
    again = tmp_path / "again.bin"
    again.write_bytes(sound_data)
    assert cli.json("cp", str(again), "strays:/again.bin")["bytes_uploaded"] == 0
    # The damaged one, which nothing names, goes with gc.
    cli.json("gc", "strays", "--grace", "0s")
    assert sorted(p.name for p in chunk_files(store)) == sorted(
        [*(p.name for p in recorded), sound]
    )
    out = tmp_path / "out.bin"
    cli.run("cp", "strays:/kept.bin", str(out))
    assert out.read_bytes() == kept_data


# -- dump and load ----------------------------------------------------------------------------


async def all_versions(name: str, meta_url: str, store_url: str) -> dict[tuple[int, int], bytes]:
    """Every version of every file still in history (live or deleted), by (file, version)."""
    async with await Drive.open(name, meta_url, store_url, identity=ME) as drive:
        dump = await drive.meta.export_drive()
        found = {}
        for info in dump.versions:
            info, extents = await drive.meta.version(info.file_id, info.version)
            reader = VersionReader(drive.blobs, drive.read_block, info, extents)
            found[(info.file_id, info.version)] = await reader.read(0, info.size)
        return found


def pipe(cli: Cli, args: list[str], stdin: Path | None, stdout: Path | None) -> str:
    """Run a command with a file as stdin or stdout; returns stderr (it must succeed)."""
    with (
        open(stdin, "rb") if stdin else open(os.devnull, "rb") as source,
        open(stdout, "wb") if stdout else open(os.devnull, "wb") as sink,
    ):
        proc = subprocess.run(
            [MEDIADRIVE, *args], env=cli.env, stdin=source, stdout=sink, stderr=subprocess.PIPE
        )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stderr.decode()


@pytest.mark.postgres
@pytest.mark.parametrize("direction", ["sqlite-to-postgres", "postgres-to-sqlite"])
def test_dump_and_load_move_a_drive_between_engines(
    tmp_path: Path, postgres_url: str, direction: str
) -> None:
    from tests.servers import create_database

    cli = Cli(tmp_path / "home", {})
    sqlite_url = f"sqlite:///{tmp_path}/meta.db"
    pg_url = create_database(postgres_url, "dump")
    source_url, target_url = (
        (sqlite_url, pg_url) if direction == "sqlite-to-postgres" else (pg_url, sqlite_url)
    )
    store_url = f"file://{tmp_path}/store"

    async def build() -> None:
        async with await Drive.create("src", source_url, store_url, identity=ME) as drive:
            await drive.mkdir("/d")
            for path, size in [("/a.bin", 3 * MIB), ("/d/b.bin", MIB + 3), ("/c.txt", 10)]:
                await drive.write_file(path, io.BytesIO(os.urandom(size)))
            await drive.write_file("/a.bin", io.BytesIO(os.urandom(2 * MIB)))
            await drive.move("/d/b.bin", "/d/renamed.bin")
            await drive.remove("/c.txt")
            await drive.mkdir("/empty")

    asyncio.run(build())
    cli.run("drive", "attach", "src", "--meta", source_url, "--store", store_url)
    dump = tmp_path / "drive.json.gz"
    note = pipe(cli, ["drive", "dump", "src"], None, dump)
    assert "dumped drive src" in note
    with gzip.open(dump, "rt") as lines:
        assert '"format":"mediadrive-dump","version":1' in lines.readline()
    pipe(cli, ["drive", "load", "dst", "--meta", target_url, "--store", store_url], dump, None)

    before = asyncio.run(all_versions("src", source_url, store_url))
    after = asyncio.run(all_versions("dst", target_url, store_url))
    assert len(before) == 4 and after == before

    async def use_it() -> None:
        # A working drive: the tree, history and deleted files came along; it takes writes.
        async with await Drive.open("dst", target_url, store_url, identity=ME) as drive:
            assert [n.name for n in await drive.listdir("/")] == ["a.bin", "d", "empty"]
            assert [v.version for v in await drive.versions("/a.bin")] == [1, 2]
            await drive.restore("/c.txt", 1)
            await drive.write_file("/new.bin", io.BytesIO(b"new"))

    asyncio.run(use_it())
    # A non-empty target is refused, and so is a damaged dump.
    assert "already" in _load_fails(cli, ["dst", "--meta", target_url, "--store", store_url], dump)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(dump.read_bytes())[:-40]))
    message = _load_fails(
        cli, ["other", "--meta", f"sqlite:///{tmp_path}/o.db", "--store", store_url], cut
    )
    assert "damaged" in message


def _load_fails(cli: Cli, args: list[str], dump: Path) -> str:
    with open(dump, "rb") as source:
        proc = subprocess.run(
            [MEDIADRIVE, "drive", "load", *args],
            env=cli.env,
            stdin=source,
            capture_output=True,
            text=True,
        )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]
