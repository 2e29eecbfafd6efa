"""The CLI for storage pods and tier policies: ``drive set``, ``drive show``, ``publish``
and the tier column of ``versions``, through the installed command.

The pods are the test-only ``memhold://`` stand-in kept in a folder, which each CLI
subprocess loads through ``plugins/sitecustomize.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.test_cli import Cli

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    path = os.pathsep.join([str(PLUGINS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    made = Cli(tmp_path / "home", {"PYTHONPATH": path.rstrip(os.pathsep)})
    made.run("drive", "create", "show", "--chunking", "fixed", "--chunk-size", "64KiB")
    return made


def pod_url(tmp_path: Path) -> str:
    return f"memhold://{tmp_path.name}?region=la&dir={tmp_path}/pod"


def test_drive_set_with_a_bad_policy_names_the_field_and_changes_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    before = cli.json("drive", "show", "show")
    bad = tmp_path / "policy.yaml"
    bad.write_text("writeTarget: disk\npublish: on-save\n")
    line = cli.fails("drive", "set", "show", "--policy", str(bad), "--pod", pod_url(tmp_path))
    assert line == (f"mediadrive: error: {bad}: writeTarget: Input should be 'pod' or 'cloud'")
    bad.write_text("temporary:\n  globs: ['*.tmp']\n  ttl: soon\n")
    assert "temporary.ttl" in cli.fails("drive", "set", "show", "--policy", str(bad))
    bad.write_text("publish: [1, 2\n")
    assert "not valid YAML" in cli.fails("drive", "set", "show", "--policy", str(bad))
    bad.write_text("chunking:\n  kind: cdc\n  size: 64MiB\n")
    assert "chunk size 64MiB is out of range" in cli.fails(
        "drive", "set", "show", "--policy", str(bad)
    )
    # Nothing changed: neither the pods of this machine nor the drive's policy.
    assert cli.json("drive", "show", "show") == before
    assert before["pod_url"] is None and before["policy"]["publish"] == "manual"


def test_drive_set_show_publish_and_versions(cli: Cli, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: mediadrive.io/v1\nkind: TierPolicy\nspec:\n"
        "  writeTarget: pod\n  temporary:\n    globs: ['*.tmp']\n"
        "  retention:\n    keepLast: 5\n"
    )
    url = pod_url(tmp_path)
    cli.run("drive", "set", "show", "--pod", url, "--policy", str(policy))
    shown = cli.json("drive", "show", "show")
    assert (shown["pod_url"], shown["region"], shown["write_target"]) == (url, None, "pod")
    assert shown["policy"]["writeTarget"] == "pod"
    assert shown["policy"]["temporary"]["globs"] == ["*.tmp"]
    assert shown["policy"]["retention"]["keepLast"] == 5
    assert "writeTarget: pod" in cli.run("drive", "show", "show").stdout

    data = os.urandom(200_000)
    (tmp_path / "a.exr").write_bytes(data)
    (tmp_path / "b.tmp").write_bytes(b"scratch")
    cli.run("mkdir", "show:/shots")
    cli.run("cp", str(tmp_path / "a.exr"), "show:/shots/a.exr")
    cli.run("cp", str(tmp_path / "b.tmp"), "show:/shots/b.tmp")
    assert [v["tier"] for v in cli.json("versions", "show:/shots/a.exr")] == ["pod:la"]
    assert "pod:la" in cli.run("versions", "show:/shots/a.exr").stdout

    report = cli.json("publish", "show:/shots", "-m", "for review")
    assert report["path"] == "show:/shots"
    assert (report["files"], report["chunks_sent"], report["bytes_sent"]) == (1, 4, len(data))
    assert (report["chunks_present"], report["temporary_skipped"]) == (0, 1)
    assert [v["tier"] for v in cli.json("versions", "show:/shots/a.exr")] == ["cloud"]
    assert [v["tier"] for v in cli.json("versions", "show:/shots/b.tmp")] == ["pod:la"]
    lines = cli.run("events", "show", "--json").stdout.splitlines()
    events = [e for e in map(json.loads, lines) if e["kind"] == "publish"]
    assert [(e["path"], e["detail"]["message"]) for e in events] == [("/shots/a.exr", "for review")]
    text = cli.run("publish", "show:/shots").stdout
    assert "published 0 file(s)" in text and "1 temporary file(s) stay in the pods" in text

    # Without the pods, the temporary file (never published) is out of reach here.
    cli.run("drive", "set", "show", "--pod", "off")
    assert cli.json("drive", "show", "show")["pod_url"] is None
    line = cli.fails("cp", "show:/shots/b.tmp", str(tmp_path / "out"))
    assert "is held in the storage pods of region la; publish it there" in line
    cli.run("cp", "show:/shots/a.exr", str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == data


def test_drive_show_redacts_secrets(cli: Cli, tmp_path: Path) -> None:
    url = f"memhold://{tmp_path.name}?region=la&dir={tmp_path}/pod&password=hunter2"
    cli.run("drive", "set", "show", "--pod", url, "--region", "la")
    shown = cli.run("drive", "show", "show", "--json").stdout
    assert "hunter2" not in shown
