"""Bad input and failing resources: one line naming the problem, a non-zero exit, no change.

Driven through the installed ``mediadrive`` command, as people and scripts use it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_cli import Cli, random_file


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
    assert says in cli.fails("drive", "create", "show", *args)
    assert not (cli.home / "show").exists()
