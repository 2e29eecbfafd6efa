"""A PostgreSQL password given to the CLI is never printed and never written to
``drive.json``: it is kept in a 0600 ``pgpass`` file the stored URL names."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import psycopg
import pytest

from mediadrive.cli import drive_registry
from mediadrive.cli.settings import CliSettings
from mediadrive.core.config import DriveRef
from mediadrive.core.credentials import redact_url, split_password
from mediadrive.core.meta.postgres import PostgresMetaStore
from tests.integration.test_cli import Cli
from tests.servers import create_database

SECRET = "s3cr:et\\pw"


def with_password(url: str, password: str = "s3cr%3Aet%5Cpw") -> str:
    # postgresql://postgres@host:port/db -> postgresql://postgres:PASSWORD@host:port/db
    return url.replace("postgres@", f"postgres:{password}@", 1)


def test_redact_url_masks_every_password() -> None:
    assert redact_url("postgresql://u:secret@host:5432/db") == "postgresql://u:***@host:5432/db"
    assert redact_url("cannot open 'cockroachdb://u:p%40ss@h/db?sslmode=require'") == (
        "cannot open 'cockroachdb://u:***@h/db?sslmode=require'"
    )
    assert redact_url("postgresql://h/db?password=secret&sslmode=off") == (
        "postgresql://h/db?password=***&sslmode=off"
    )
    assert redact_url("host=h password=secret dbname=d") == "host=h password=*** dbname=d"
    assert redact_url("file:///srv/a:b@c") == "file:///srv/a:b@c"
    assert redact_url("http://host:9000/bucket") == "http://host:9000/bucket"
    assert split_password("postgresql://u:a%3Ab@h/db") == ("postgresql://u@h/db", "a:b")
    assert split_password("postgresql://u@h/db") == ("postgresql://u@h/db", None)


@pytest.mark.postgres
def test_a_password_in_meta_is_kept_out_of_drive_json_and_output(
    postgres_url: str, tmp_path: Path
) -> None:
    cli = Cli(tmp_path / "home", {})
    meta = with_password(create_database(postgres_url, "cred"))
    store = f"file://{tmp_path / 'store'}"
    outputs = [
        cli.run("drive", "create", "show", "--meta", meta, "--store", store),
        cli.run("drive", "list"),
        cli.run("drive", "list", "--json"),
    ]
    for proc in outputs:
        assert "s3cr" not in proc.stdout + proc.stderr
    folder = tmp_path / "home" / "show"
    assert "s3cr" not in (folder / "drive.json").read_text()
    listed = json.loads(outputs[2].stdout)
    assert listed[0]["meta_url"].startswith("postgresql://postgres@")
    assert "passfile=" in listed[0]["meta_url"]
    assert stat.S_IMODE(os.stat(folder / "pgpass").st_mode) == 0o600

    # The drive still opens, and libpq reads the password from the file.
    (tmp_path / "a.txt").write_text("hello")
    cli.run("cp", str(tmp_path / "a.txt"), "show:/a.txt")
    assert "a.txt" in cli.run("ls", "show:/").stdout
    stored = DriveRef.model_validate_json((folder / "drive.json").read_text()).meta_url
    with psycopg.connect(stored) as conn:
        assert conn.info.password == SECRET


@pytest.mark.postgres
def test_a_password_file_and_errors_never_show_the_password(
    postgres_url: str, tmp_path: Path
) -> None:
    cli = Cli(tmp_path / "home", {})
    password_file = tmp_path / "pw"
    password_file.write_text(SECRET + "\n")
    meta = create_database(postgres_url, "cred")
    cli.run(
        "drive",
        "create",
        "show",
        "--meta",
        meta,
        "--meta-password-file",
        str(password_file),
        "--store",
        f"file://{tmp_path / 'store'}",
    )
    stored = DriveRef.model_validate_json((tmp_path / "home/show/drive.json").read_text())
    with psycopg.connect(stored.meta_url) as conn:
        assert conn.info.password == SECRET
    # A server that cannot be reached, and a URL no engine takes: one line, no password.
    message = cli.fails("drive", "create", "other", "--meta", "postgresql://u:s3cr@127.0.0.1:1/d")
    assert "s3cr" not in message and "127.0.0.1" in message
    message = cli.fails("drive", "create", "other", "--meta", "mysql://u:s3cr@h/d")
    assert "s3cr" not in message and "mysql://u:***@h/d" in message


def test_a_drive_file_with_a_password_is_cleaned_when_read(tmp_path: Path) -> None:
    settings = CliSettings(home=tmp_path / "home")
    folder = tmp_path / "home" / "old"
    folder.mkdir(parents=True)
    ref = DriveRef(name="old", meta_url="postgresql://u:s3cr@db/x", store_url="file:///s")
    (folder / "drive.json").write_text(ref.model_dump_json())
    loaded = drive_registry.load_ref("old", settings)
    assert "s3cr" not in (folder / "drive.json").read_text()
    assert loaded.meta_url == f"postgresql://u@db/x?passfile={folder / 'pgpass'}"
    assert (folder / "pgpass").read_text() == "*:*:*:*:s3cr\n"
    assert stat.S_IMODE(os.stat(folder / "pgpass").st_mode) == 0o600


def test_postgres_errors_are_redacted(tmp_path: Path) -> None:
    store = PostgresMetaStore("postgresql://u:s3cr@127.0.0.1:1/db?password=s3cr", "show")

    async def settings() -> None:
        try:
            await store.open_drive()
        finally:
            await store.close()

    with pytest.raises(Exception) as excinfo:
        asyncio.run(settings())
    assert "s3cr" not in str(excinfo.value) and "127.0.0.1" in str(excinfo.value)
