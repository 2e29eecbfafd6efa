"""The CLI contract, driven through the installed ``mediadrive`` command.

These are the acceptance flows: real files, a real subprocess per command, and
both the embedded defaults and PostgreSQL with an S3 server on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import S3Server

MIB = 1 << 20
MEDIADRIVE = str(Path(sys.executable).with_name("mediadrive"))


class Cli:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = {**os.environ, **env, "MEDIADRIVE_HOME": str(home)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [MEDIADRIVE, *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"mediadrive {' '.join(args)} failed: {proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def fails(self, *args: str) -> str:
        """Run a command that must fail cleanly; returns its one-line message."""
        proc = self.run(*args, check=False)
        assert proc.returncode != 0, f"mediadrive {' '.join(args)} succeeded"
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        return lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home", {})


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("postgres+s3", marks=[pytest.mark.postgres, pytest.mark.s3, pytest.mark.moto]),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Cli, list[str]]]:
    """A CLI and the ``drive create`` options for one (metadata, chunk store) pair."""
    if request.param == "embedded":
        yield Cli(tmp_path / "home", {}), []
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    s3: S3Server = request.getfixturevalue("moto_s3")
    bucket = s3.new_bucket()
    cli = Cli(
        tmp_path / "home",
        {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
    )
    yield (
        cli,
        [
            "--meta",
            postgres_url,
            "--store",
            f"s3://{bucket}/drives?endpoint={s3.endpoint_url}",
        ],
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_fixed_chunks_upload_only_what_changed(
    backend: tuple[Cli, list[str]], tmp_path: Path
) -> None:
    cli, options = backend
    name = unique("fixed")
    cli.run("drive", "create", name, *options)
    media = tmp_path / "plate.mov"
    original = random_file(media, 256 * MIB)

    first = cli.json("cp", str(media), f"{name}:/shots/plate.mov")
    assert first["version"] == 1
    assert first["bytes_uploaded"] == 256 * MIB
    assert (first["chunks_total"], first["chunks_new"]) == (4, 4)
    assert first["size"] == 256 * MIB

    with open(media, "r+b") as f:
        f.seek(128 * MIB - MIB // 2)
        f.write(os.urandom(MIB))
    second = cli.json("cp", str(media), f"{name}:/shots/plate.mov", "-m", "grade pass")
    assert second["version"] == 2
    assert 0 < second["bytes_uploaded"] <= 128 * MIB  # the edit straddles two chunks
    assert second["chunks_new"] == 2

    media.write_bytes(original[: 128 * MIB] + os.urandom(MIB) + original[129 * MIB :])
    third = cli.json("cp", str(media), f"{name}:/shots/plate.mov")
    assert third["version"] == 3
    assert third["bytes_uploaded"] <= 64 * MIB

    restored = tmp_path / "v1.mov"
    cli.run("cp", f"{name}:/shots/plate.mov@1", str(restored))
    assert restored.read_bytes() == original

    media.write_bytes(original)
    again = cli.json("cp", str(media), f"{name}:/elsewhere.mov")
    assert again["bytes_uploaded"] == 0
    assert again["chunks_new"] == 0

    listed = cli.json("versions", f"{name}:/shots/plate.mov")
    assert [v["version"] for v in listed] == [1, 2, 3]
    assert listed[1]["message"] == "grade pass"
    assert {"version", "size", "created", "author", "message"} <= set(listed[0])


def test_cdc_insertion_at_start_uploads_little(
    backend: tuple[Cli, list[str]], tmp_path: Path
) -> None:
    cli, options = backend
    name = unique("cdc")
    cli.run("drive", "create", name, "--chunking", "cdc", *options)
    media = tmp_path / "edit.mov"
    original = random_file(media, 256 * MIB)
    first = cli.json("cp", str(media), f"{name}:/edit.mov")
    assert first["bytes_uploaded"] == 256 * MIB

    media.write_bytes(os.urandom(MIB) + original)
    second = cli.json("cp", str(media), f"{name}:/edit.mov")
    assert second["version"] == 2
    assert second["bytes_uploaded"] <= 16 * MIB
    out = tmp_path / "back.mov"
    cli.run("cp", f"{name}:/edit.mov@1", str(out))
    assert out.read_bytes() == original


def test_tree_commands_and_time_machine(cli: Cli, tmp_path: Path) -> None:
    cli.run("drive", "create", "show")
    assert [d["name"] for d in cli.json("drive", "list")] == ["show"]
    cli.run("mkdir", "-p", "show:/seq/010")
    src = tmp_path / "a.exr"
    v1 = random_file(src, 3 * MIB)
    cli.run("cp", str(src), "show:/seq/010/a.exr")
    src.write_bytes(b"second take")
    cli.run("cp", str(src), "show:/seq/010/a.exr")
    cli.run("mv", "show:/seq/010/a.exr", "show:/seq/010/b.exr")
    names = [e["name"] for e in cli.json("ls", "show:/seq/010")]
    assert names == ["b.exr"]

    restored = cli.json("restore", "show:/seq/010/b.exr", "--to", "1")
    assert restored["version"] == 3
    out = tmp_path / "out.exr"
    cli.run("cp", "show:/seq/010/b.exr", str(out))
    assert out.read_bytes() == v1

    cli.run("rm", "show:/seq/010/b.exr")
    assert cli.json("ls", "show:/seq/010") == []
    # A deleted file's history is still there for the time machine.
    assert len(cli.json("versions", "show:/seq/010/b.exr")) == 3
    cli.run("cp", "show:/seq/010/b.exr@2", str(out))
    assert out.read_bytes() == b"second take"

    kinds = [
        json.loads(line)["kind"] for line in cli.run("events", "show", "--json").stdout.splitlines()
    ]
    assert kinds == ["mkdir", "mkdir", "commit", "commit", "rename", "restore", "delete"]
    seqs = [
        json.loads(line)["seq"] for line in cli.run("events", "show", "--json").stdout.splitlines()
    ]
    assert seqs == list(range(1, 8))
    later = cli.run("events", "show", "--since", "5", "--json").stdout.splitlines()
    assert [json.loads(line)["seq"] for line in later] == [6, 7]


def test_history_of_a_removed_folder_stays_reachable(
    backend: tuple[Cli, list[str]], tmp_path: Path
) -> None:
    cli, options = backend
    name = unique("hist")
    cli.run("drive", "create", name, *options)
    src = tmp_path / "f.txt"
    v1 = random_file(src, 2 * MIB)
    cli.run("cp", str(src), f"{name}:/folder/sub/f.txt")
    src.write_bytes(b"second take")
    cli.run("cp", str(src), f"{name}:/folder/sub/f.txt")
    cli.run("rm", "-r", f"{name}:/folder")

    path = f"{name}:/folder/sub/f.txt"
    assert [v["version"] for v in cli.json("versions", path)] == [1, 2]
    # A new folder of the same name hides nothing.
    cli.run("mkdir", "-p", f"{name}:/folder")
    assert [v["version"] for v in cli.json("versions", path)] == [1, 2]
    assert "was removed at" in cli.run("versions", path).stdout
    (trashed,) = cli.json("ls", "--deleted", f"{name}:/folder")
    assert (trashed["path"], trashed["version"], trashed["kind"]) == (
        "/folder/sub/f.txt",
        2,
        "file",
    )
    out = tmp_path / "back.txt"
    cli.run("cp", f"{path}@1", str(out))
    assert out.read_bytes() == v1

    restored = cli.json("restore", path, "--version", "1")
    assert (restored["path"], restored["version"]) == ("/folder/sub/f.txt", 3)
    listed = cli.json("versions", path)
    assert [(v["version"], v["origin"]) for v in listed] == [
        (1, "commit"),
        (2, "commit"),
        (3, "restore"),
    ]
    assert {v["file_id"] for v in listed} == {trashed["id"]}
    assert [e["name"] for e in cli.json("ls", f"{name}:/folder/sub")] == ["f.txt"]
    cli.run("cp", path, str(out))
    assert out.read_bytes() == v1
    cli.run("cp", f"{path}@2", str(out))
    assert out.read_bytes() == b"second take"
    assert cli.json("ls", "--deleted", f"{name}:/folder") == []


def test_a_file_replaced_by_mv_keeps_its_history(cli: Cli, tmp_path: Path) -> None:
    cli.run("drive", "create", "show")
    src = tmp_path / "a.txt"
    src.write_bytes(b"a one")
    cli.run("cp", str(src), "show:/a.txt")
    src.write_bytes(b"a two")
    cli.run("cp", str(src), "show:/a.txt")
    src.write_bytes(b"b one")
    cli.run("cp", str(src), "show:/b.txt")
    cli.run("mv", "show:/b.txt", "show:/a.txt")

    live, replaced = cli.json("versions", "--all", "show:/a.txt")
    assert (live["deleted"], len(live["versions"])) == (None, 1)
    assert replaced["deleted"] is not None
    assert [v["version"] for v in replaced["versions"]] == [1, 2]
    (trashed,) = cli.json("ls", "--deleted", "show:/")
    assert (trashed["path"], trashed["id"]) == ("/a.txt", replaced["id"])
    old_id = str(replaced["id"])
    assert [v["version"] for v in cli.json("versions", "show:/a.txt", "--id", old_id)] == [1, 2]

    # The name is taken: the replaced file comes back elsewhere, with its history.
    message = cli.fails("restore", "show:/a.txt", "--id", old_id, "--version", "1")
    assert "show:/a.txt is another file now" in message
    cli.run("restore", "show:/a.txt", "--id", old_id, "--to", "1", "--as", "show:/old/a.txt")
    listed = cli.json("versions", "show:/old/a.txt")
    assert [(v["version"], v["file_id"]) for v in listed] == [
        (1, replaced["id"]),
        (2, replaced["id"]),
        (3, replaced["id"]),
    ]
    out = tmp_path / "out.txt"
    cli.run("cp", "show:/old/a.txt", str(out))
    assert out.read_bytes() == b"a one"
    cli.run("cp", "show:/a.txt", str(out))
    assert out.read_bytes() == b"b one"
    assert "never held a file with id 999" in cli.fails("versions", "show:/a.txt", "--id", "999")


def test_gc_collects_only_unreferenced_chunks(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", {})
    cli.run("drive", "create", "keep", "--chunk-size", "1MiB", "--keep-last", "1")
    src = tmp_path / "f"
    first = random_file(src, 4 * MIB)
    cli.run("cp", str(src), "keep:/f")
    src.write_bytes(first[: 2 * MIB] + os.urandom(2 * MIB))
    cli.run("cp", str(src), "keep:/f")
    store = tmp_path / "home" / "keep" / "store" / "chunks"
    assert len(list(store.glob("*/*"))) == 6

    report = cli.json("gc", "keep", "--grace", "0s")
    assert report == {
        "versions_pruned": 1,
        "chunks_deleted": 2,
        "bytes_freed": 2 * MIB,
        "chunks_held": 0,
        "debris_removed": 0,
    }
    assert len(list(store.glob("*/*"))) == 4
    out = tmp_path / "out"
    cli.run("cp", "keep:/f", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert "version 1" in cli.fails("cp", "keep:/f@1", str(out))


def test_events_follow_streams_new_commits(cli: Cli, tmp_path: Path) -> None:
    cli.run("drive", "create", "live")
    follower = subprocess.Popen(
        [MEDIADRIVE, "events", "live", "--follow", "--json"],
        env=cli.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        src = tmp_path / "x"
        src.write_bytes(b"hello")
        cli.run("cp", str(src), "live:/x")
        assert follower.stdout is not None
        event = json.loads(follower.stdout.readline())
        assert (event["kind"], event["path"], event["version"]) == ("commit", "/x", 1)
    finally:
        follower.terminate()
        follower.wait(10)


def test_bad_input_is_one_line_and_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    cli.run("drive", "create", "ok")
    src = tmp_path / "f"
    src.write_bytes(b"data")
    cli.run("cp", str(src), "ok:/f")
    before = cli.run("events", "ok", "--json").stdout

    assert "drive 'ghost' does not exist" in cli.fails("ls", "ghost:/")
    assert "escapes the drive" in cli.fails("cp", str(src), "ok:/../etc/passwd")
    assert "no version 7" in cli.fails("cp", "ok:/f@7", str(tmp_path / "o"))
    assert "does not exist" in cli.fails("cp", str(tmp_path / "missing"), "ok:/g")
    assert "store URL" in cli.fails("drive", "create", "bad1", "--store", "ftp://x/y")
    assert "metadata URL" in cli.fails("drive", "create", "bad2", "--meta", "mysql://h/db")
    assert "size" in cli.fails("drive", "create", "bad3", "--chunk-size", "lots")
    assert "chunking" in cli.fails("drive", "create", "bad4", "--chunking", "zip")
    assert "conflict" in cli.fails("drive", "create", "bad5", "--conflict", "maybe")
    assert "drive name" in cli.fails("drive", "create", "Bad Name")
    assert "already exists" in cli.fails("drive", "create", "ok")
    assert "duration" in cli.fails("gc", "ok", "--grace", "soon")
    unreachable = cli.fails(
        "drive", "create", "bad6", "--store", "s3://bucket/p?endpoint=http://127.0.0.1:9"
    )
    assert "unreachable" in unreachable or "refused" in unreachable
    dead_pg = cli.fails("drive", "create", "bad7", "--meta", "postgresql://u@127.0.0.1:9/db")
    assert "PostgreSQL" in dead_pg

    assert [d["name"] for d in cli.json("drive", "list")] == ["ok"]
    assert sorted(p.name for p in cli.home.iterdir()) == ["ok"]
    assert cli.run("events", "ok", "--json").stdout == before
    assert not (tmp_path / "o").exists()


def test_download_is_atomic_and_refuses_folders(cli: Cli, tmp_path: Path) -> None:
    cli.run("drive", "create", "dl")
    cli.run("mkdir", "dl:/dir")
    assert "folder" in cli.fails("cp", "dl:/dir", str(tmp_path / "x"))
    target = tmp_path / "keep.txt"
    target.write_bytes(b"precious")
    assert "does not exist" in cli.fails("cp", "dl:/nothing", str(target))
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_copy_within_a_drive_uploads_nothing(cli: Cli, tmp_path: Path) -> None:
    cli.run("drive", "create", "dup", "--chunk-size", "1MiB")
    src = tmp_path / "f"
    data = random_file(src, 5 * MIB)
    cli.run("cp", str(src), "dup:/a")
    copied = cli.json("cp", "dup:/a", "dup:/b")
    assert copied["bytes_uploaded"] == 0
    out = tmp_path / "o"
    cli.run("cp", "dup:/b", str(out))
    assert out.read_bytes() == data


def test_a_second_machine_attaches_a_shared_drive(
    postgres_url: str, moto_s3: S3Server, tmp_path: Path
) -> None:
    creds = {"AWS_ACCESS_KEY_ID": moto_s3.access_key, "AWS_SECRET_ACCESS_KEY": moto_s3.secret_key}
    first, second = Cli(tmp_path / "first", creds), Cli(tmp_path / "second", creds)
    shared = ["--meta", postgres_url, "--store"]
    store = f"s3://{moto_s3.new_bucket()}/drives?endpoint={moto_s3.endpoint_url}"
    name = unique("shared")
    first.run("drive", "create", name, "--conflict", "keep-both", *shared, store)
    src = tmp_path / "cut.mov"
    data = random_file(src, 2 * MIB)
    first.run("cp", str(src), f"{name}:/cut.mov")

    assert "does not exist" in second.fails("drive", "attach", "nope", *shared, store)
    second.run("drive", "attach", name, *shared, store)
    assert "already known" in second.fails("drive", "attach", name, *shared, store)
    out = tmp_path / "out.mov"
    second.run("cp", f"{name}:/cut.mov", str(out))
    assert out.read_bytes() == data
    assert second.json("drive", "info", name)["settings"]["conflict"] == "keep-both"
    assert [d["name"] for d in second.json("drive", "list")] == [name]
