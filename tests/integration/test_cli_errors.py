"""Bad input and failing resources: one line naming the problem, a non-zero exit, no change.

Driven through the installed ``mediadrive`` command, as people and scripts use it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_cli import MEDIADRIVE, MIB, Cli, random_file
from tests.servers import S3Server, create_database


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home", {})


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["cp"], "Missing argument 'src' (see 'mediadrive cp --help')"),
        (["ls", "a:/", "b:/"], "unexpected extra argument"),
        (["nosuch"], "No such command 'nosuch'"),
        (["gc", "show", "--bogus"], "No such option: --bogus"),
        (["events", "show", "--since", "abc"], "Invalid value for '--since'"),
        (["drive", "create"], "Missing argument 'name'"),
        (["restore", "show:/a"], "restore PATH --to N"),
    ],
)
def test_usage_errors_are_one_line(cli: Cli, args: list[str], says: str) -> None:
    line = cli.fails(*args)
    assert line.startswith("mediadrive: error: ")
    assert says in line


def test_version_and_short_help(cli: Cli) -> None:
    assert cli.run("--version").stdout.startswith("mediadrive ")
    assert "Usage: mediadrive cp" in cli.run("cp", "-h").stdout
    assert "--to" in cli.run("restore", "--help").stdout


def test_restore_takes_to_and_the_old_version_spelling(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    cli.run("drive", "create", "show")
    for _ in range(3):
        random_file(src, 5000)
        cli.run("cp", str(src), "show:/a.bin")
    assert cli.json("restore", "show:/a.bin", "--to", "1")["version"] == 4
    assert cli.json("restore", "show:/a.bin", "-v", "2")["version"] == 5
    assert cli.json("restore", "show:/a.bin", "--version", "3")["version"] == 6


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--chunk-size", "1TiB"], "between 4KiB and 256MiB"),
        (["--chunk-size", "0"], "between 4KiB and 256MiB"),
        (["--chunking", "cdc", "--chunk-size", "0"], "between 1KiB and 4MiB"),
    ],
)
def test_chunk_sizes_are_bounded(cli: Cli, args: list[str], says: str) -> None:
    line = cli.fails("drive", "create", "show", *args)
    assert line.startswith("mediadrive: error: chunk size ") and says in line
    assert not (cli.home / "show").exists()


@pytest.fixture
def show(cli: Cli, tmp_path: Path) -> Path:
    """A drive ``show`` holding ``/shots/010/plate.mov``; returns the local original."""
    cli.run("drive", "create", "show")
    plate = tmp_path / "plate.mov"
    random_file(plate, 20000)
    cli.run("cp", str(plate), "show:/shots/010/plate.mov")
    return plate


def test_a_trailing_slash_names_a_folder(cli: Cli, show: Path, tmp_path: Path) -> None:
    # The README's own example: into a new folder, not onto a file named /publish.
    cli.run("cp", "show:/shots/010/plate.mov", "show:/publish/")
    assert [n["path"] for n in cli.json("ls", "show:/publish")] == ["/publish/plate.mov"]
    cli.run("cp", str(show), "show:/upload/")
    assert [n["kind"] for n in cli.json("ls", "show:/upload")] == ["file"]
    assert cli.json("ls", "show:/upload/plate.mov")[0]["version"] == 1
    # Onto a file written as a folder: refused, and the file gets no new version.
    line = cli.fails("cp", str(show), "show:/shots/010/plate.mov/")
    assert "show:/shots/010/plate.mov is a file" in line
    assert len(cli.json("versions", "show:/shots/010/plate.mov")) == 1
    assert "is a file" in cli.fails("cp", "show:/shots/010/plate.mov/", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    # Local destinations of a download too.
    cli.run("cp", "show:/shots/010/plate.mov", f"{tmp_path}/out/")
    assert (tmp_path / "out" / "plate.mov").read_bytes() == show.read_bytes()
    assert "is a file" in cli.fails("cp", "show:/shots/010/plate.mov", f"{show}/")
    assert show.is_file()


def test_dash_is_standard_input_and_output(cli: Cli, show: Path) -> None:
    data = os.urandom(100_000)
    proc = subprocess.run(
        [MEDIADRIVE, "cp", "-", "show:/piped.bin"], input=data, env=cli.env, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [MEDIADRIVE, "cp", "show:/piped.bin", "-"], env=cli.env, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data
    assert not (Path.cwd() / "-").exists()
    proc = subprocess.run(
        [MEDIADRIVE, "cp", "show:/shots/010/plate.mov", "-"], env=cli.env, capture_output=True
    )
    assert proc.stdout == show.read_bytes()
    assert "standard input" in cli.fails("cp", "-", "show:/folder/")


def test_names_and_versions_that_cannot_be(cli: Cli, show: Path) -> None:
    bad = os.fsdecode(b"show:/bad\xff.mov")
    assert "is not valid UTF-8" in cli.fails("cp", str(show), bad)
    line = cli.fails("cp", "show:/shots/010/plate.mov@99999999999999999999", "x")
    assert "larger than any version" in line
    assert "--to" in cli.fails("restore", "show:/shots/010/plate.mov", "--to", "9" * 20)
    assert "--since" in cli.fails("events", "show", "--since", "9" * 20)


def test_a_full_disk_during_cp_is_one_line(cli: Cli, show: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    random_file(big, 3 * MIB)
    # The chunk store's writes fail as on a full disk (a tiny tmpfs does the same).
    full_disk = (
        "import errno, os\n"
        "def full(fd):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "os.fsync = full\n"
        "from mediadrive.cli.main import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", full_disk, "cp", str(big), "show:/big.bin"],
        env=cli.env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        f"mediadrive: error: the store {cli.home}/show/store is full (No space left on device)"
    )
    assert "big.bin" not in [n["name"] for n in cli.json("ls", "show:/")]
    assert not list((cli.home / "show" / "store").rglob("*.tmp"))


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write in (root ignores permissions: a read-only tmpfs)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_unwritable_places_are_one_line(cli: Cli, show: Path, read_only_dir: Path) -> None:
    line = cli.fails("cp", "show:/shots/010/plate.mov", str(read_only_dir))
    assert f"cannot write in '{read_only_dir}'" in line
    line = cli.fails("cp", "show:/shots/010/plate.mov", f"{read_only_dir}/sub/")
    assert f"cannot create folder '{read_only_dir}/sub/'" in line
    homeless = Cli(read_only_dir / "home", {})
    line = homeless.fails("drive", "create", "show")
    assert "MEDIADRIVE_HOME must be a writable folder" in line
    assert not list(read_only_dir.iterdir())


def test_mount_needs_a_writable_cache_folder(cli: Cli, show: Path, read_only_dir: Path) -> None:
    mnt = read_only_dir.parent / "mnt"
    mnt.mkdir()
    line = cli.fails("mount", "show", str(mnt), "--cache-dir", f"{read_only_dir}/cache")
    assert f"cannot create cache folder (--cache-dir) {read_only_dir}/cache" in line


def _s3_cli(tmp_path: Path, s3: S3Server, home: str) -> Cli:
    keys = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    return Cli(tmp_path / home, keys)


def _buckets(s3: S3Server) -> set[str]:
    return {b["Name"] for b in s3.client().list_buckets().get("Buckets", [])}


def test_a_missing_bucket_is_made_only_when_asked(tmp_path: Path, moto_s3: S3Server) -> None:
    cli = _s3_cli(tmp_path, moto_s3, "home")
    bucket = f"typo-{uuid.uuid4().hex[:12]}"
    store = f"s3://{bucket}/show?endpoint={moto_s3.endpoint_url}"
    line = cli.fails("drive", "create", "show", "--store", store)
    assert f"bucket {bucket!r} does not exist" in line and "--create-bucket" in line
    assert bucket not in _buckets(moto_s3)
    assert not (cli.home / "show").exists()
    cli.run("drive", "create", "show", "--store", store, "--create-bucket")
    assert bucket in _buckets(moto_s3)


def test_attach_checks_the_stores_hold_the_drive(
    tmp_path: Path, moto_s3: S3Server, postgres_url: str
) -> None:
    first, second = _s3_cli(tmp_path, moto_s3, "first"), _s3_cli(tmp_path, moto_s3, "second")
    bucket = moto_s3.new_bucket()
    meta = ["--meta", create_database(postgres_url, "attach")]
    store = f"s3://{bucket}/drives?endpoint={moto_s3.endpoint_url}"
    wrong = f"s3://{bucket}/drivez?endpoint={moto_s3.endpoint_url}"
    first.run("drive", "create", "show", *meta, "--store", store)
    src = tmp_path / "cut.mov"
    random_file(src, 100_000)
    first.run("cp", str(src), "show:/cuts/cut.mov")
    line = second.fails("drive", "attach", "show", *meta, "--store", wrong)
    assert "does not hold drive 'show'" in line and "wrong bucket or prefix" in line
    assert not (second.home / "show").exists()
    second.run("drive", "attach", "show", *meta, "--store", store)


def test_attach_takes_a_drive_whose_versions_are_held_in_storage_pods(
    tmp_path: Path, moto_s3: S3Server, postgres_url: str
) -> None:
    """A version held in a region's storage pods is not in the cloud yet: attaching
    from another machine must not take its missing chunk for a wrong bucket."""
    from mediadrive.core.meta import connect

    first, second = _s3_cli(tmp_path, moto_s3, "first"), _s3_cli(tmp_path, moto_s3, "second")
    meta_url = create_database(postgres_url, "held")
    store = f"s3://{moto_s3.new_bucket()}/drives?endpoint={moto_s3.endpoint_url}"
    first.run("drive", "create", "show", "--meta", meta_url, "--store", store)
    src = tmp_path / "take.mov"
    random_file(src, 100_000)
    first.run("cp", str(src), "show:/take.mov")
    # Another store holds none of its chunks, as the cloud holds none of a pod's.
    elsewhere = f"s3://{moto_s3.new_bucket()}/drives?endpoint={moto_s3.endpoint_url}"
    assert "wrong bucket or prefix" in second.fails(
        "drive", "attach", "show", "--meta", meta_url, "--store", elsewhere
    )

    async def hold_in_pod() -> None:
        meta = connect(meta_url, "show")
        try:
            await meta.open_drive()
            node = await meta.resolve("/take.mov")
            assert node is not None and node.head_version is not None
            await meta.set_version_tier(node.id, node.head_version, "pod:la", "/take.mov", "t")
        finally:
            await meta.close()

    asyncio.run(hold_in_pod())
    second.run("drive", "attach", "show", "--meta", meta_url, "--store", elsewhere)
    assert "take.mov" in second.run("ls", "show:/").stdout


def test_a_missing_s3_object_is_named(moto_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from mediadrive.core.blob import open_store
    from mediadrive.core.errors import NotFound

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret_key)
    store = open_store(f"s3://{moto_s3.new_bucket()}/p?endpoint={moto_s3.endpoint_url}")
    chunk = "ab" * 32

    async def read() -> None:
        try:
            for call in (store.get(chunk), store.get_range(chunk, 0, 10)):
                with pytest.raises(NotFound) as caught:
                    await call
                assert str(caught.value).startswith(f"chunk {chunk} is not in s3://")
        finally:
            await store.close()

    asyncio.run(read())


def test_a_deleted_metadata_file_is_named_and_not_recreated(cli: Cli, show: Path) -> None:
    meta_db = cli.home / "show" / "meta.db"
    for leftover in meta_db.parent.glob("meta.db*"):
        leftover.unlink()
    for args in (["ls", "show:/"], ["cp", str(show), "show:/again.mov"], ["gc", "show"]):
        line = cli.fails(*args)
        assert f"metadata file {meta_db} is missing" in line
        assert not list(meta_db.parent.glob("meta.db*"))
    meta_db.touch()
    assert "holds no mediadrive metadata" in cli.fails("ls", "show:/")
