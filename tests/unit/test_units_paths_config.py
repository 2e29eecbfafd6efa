"""Sizes, durations, drive paths, store and metadata URLs, drive settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mediadrive.cli.drive_registry import default_ref, load_ref, save_ref
from mediadrive.cli.settings import CliSettings
from mediadrive.core import paths
from mediadrive.core.blob import check_store_url
from mediadrive.core.blob.local import local_root
from mediadrive.core.config import (
    ConflictPolicy,
    DriveSettings,
    Retention,
    check_drive_name,
)
from mediadrive.core.errors import ConfigError, DriveNotFound, InvalidPath
from mediadrive.core.meta import check_meta_url
from mediadrive.core.units import (
    DURATION_PATTERN,
    SIZE_PATTERN,
    duration_text,
    format_size,
    parse_duration,
    parse_size,
    size_text,
)

# -- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        ("0", 0),
        ("1b", 1),
        ("64MiB", 64 << 20),
        ("64mib", 64 << 20),
        ("64 MiB", 64 << 20),
        (" 1GiB ", 1 << 30),
        ("1.5KiB", 1536),
        ("16k", 16_000),
        ("2MB", 2_000_000),
        ("1TiB", 1 << 40),
        (12345, 12345),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-1", "12XB", "1.2.3MiB", "1 Mi B", "ten", -5])
def test_parse_size_refuses(text: str | int) -> None:
    with pytest.raises(ConfigError, match="size"):
        parse_size(text)


@given(st.integers(0, 1 << 50))
def test_parse_size_of_plain_digits_is_bytes(n: int) -> None:
    assert parse_size(str(n)) == n


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(64 << 20) == "64.0 MiB"
    assert format_size(3 << 40) == "3.0 TiB"


# -- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1d 12h", 129600.0),
        ("1.5h", 5400.0),
        ("90", 90.0),
        ("0s", 0.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "s", "7y", "-5s", "5 seconds", "1h-30m", "d7", -1, -0.5])
def test_parse_duration_refuses(text: str | float) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)


# -- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("a", "/a"),
        ("/a//b/./c/", "/a/b/c"),
        ("/a/b/../c", "/a/c"),
        ("a/..", "/"),
        ("/a/./../b/../../a", None),
        ("/shots/010/plate.exr", "/shots/010/plate.exr"),
        ("/名前/файл", "/名前/файл"),
    ],
)
def test_normalize(raw: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(InvalidPath, match="escapes"):
            paths.normalize(raw)
    else:
        assert paths.normalize(raw) == expected


@pytest.mark.parametrize("raw", ["..", "/..", "/../etc/passwd", "a/../../b", "/a/b/../../.."])
def test_normalize_refuses_escape(raw: str) -> None:
    with pytest.raises(InvalidPath, match="escapes the drive"):
        paths.normalize(raw)


def test_normalize_refuses_nul_and_long_names() -> None:
    with pytest.raises(InvalidPath, match="NUL"):
        paths.normalize("/a\0b")
    with pytest.raises(InvalidPath, match="255 bytes"):
        paths.normalize("/" + "x" * 256)
    assert paths.normalize("/" + "x" * 255) == "/" + "x" * 255
    # The limit is in bytes, not characters.
    with pytest.raises(InvalidPath):
        paths.normalize("/" + "é" * 128)


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "ü"]), max_size=12))
def test_normalize_is_idempotent_and_rooted(parts: list[str]) -> None:
    raw = "/".join(parts)
    try:
        once = paths.normalize(raw)
    except InvalidPath:
        return
    assert once.startswith("/")
    assert paths.normalize(once) == once
    assert "/../" not in once + "/" and "//" not in once


def test_split() -> None:
    assert paths.split("/a/b") == ("/a", "b")
    assert paths.split("/a") == ("/", "a")
    with pytest.raises(InvalidPath, match="root"):
        paths.split("/")


# -- drive names, refs and settings -----------------------------------------------------


@pytest.mark.parametrize("name", ["show", "show-01", "a", "x.y_z", "0" * 63])
def test_drive_names_accepted(name: str) -> None:
    assert check_drive_name(name) == name


@pytest.mark.parametrize("name", ["", "Show", "-show", ".hidden", "a/b", "a b", "0" * 64, ".."])
def test_drive_names_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="drive name"):
        check_drive_name(name)


def test_drive_ref_round_trip_and_missing(tmp_path: Path) -> None:
    home = CliSettings(home=tmp_path)
    ref = default_ref("show", home)
    assert ref.meta_url == f"sqlite:///{tmp_path}/show/meta.db"
    assert ref.store_url == f"file://{tmp_path}/show/store"
    check_meta_url(ref.meta_url)
    assert local_root(check_store_url(ref.store_url)) == f"{tmp_path}/show/store"
    save_ref(ref, home)
    assert load_ref("show", home) == ref
    with pytest.raises(DriveNotFound):
        load_ref("other", home)
    (tmp_path / "show" / "drive.json").write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        load_ref("show", home)


def test_drive_settings_defaults_and_units() -> None:
    assert DriveSettings().chunk_size == 64 << 20
    assert DriveSettings(chunking="cdc").chunk_size == 2 << 20
    settings = DriveSettings.model_validate(
        {
            "chunking": "cdc",
            "chunk_size": "16KiB",
            "conflict": "keep-both",
            "retention": {"keep_last": 3, "keep_within": "7d"},
        }
    )
    assert settings.chunk_size == 16384
    assert settings.conflict is ConflictPolicy.KEEP_BOTH
    assert settings.retention == Retention(keep_last=3, keep_within=604800.0)
    assert DriveSettings.model_validate_json(settings.model_dump_json()) == settings


@pytest.mark.parametrize(
    ("chunking", "size", "bound"),
    [
        ("fixed", 0, "between 4KiB and 256MiB"),
        ("fixed", "1TiB", "between 4KiB and 256MiB"),
        ("fixed", "257MiB", "between 4KiB and 256MiB"),
        ("fixed", 4095, "between 4KiB and 256MiB"),
        ("cdc", 0, "between 1KiB and 4MiB"),
        ("cdc", "5MiB", "between 1KiB and 4MiB"),
    ],
)
def test_chunk_sizes_out_of_bounds_are_refused(chunking: str, size: int | str, bound: str) -> None:
    with pytest.raises(ValidationError, match=bound):
        DriveSettings.model_validate({"chunking": chunking, "chunk_size": size})


def test_chunk_size_bounds_are_inclusive() -> None:
    assert DriveSettings(chunk_size="4KiB").chunk_size == 4096
    assert DriveSettings(chunk_size="256MiB").chunk_size == 256 << 20
    assert DriveSettings(chunking="cdc", chunk_size="1KiB").chunk_size == 1024
    assert DriveSettings(chunking="cdc", chunk_size="4MiB").chunk_size == 4 << 20


@pytest.mark.parametrize(
    "fields",
    [
        {"chunking": "cdc", "chunk_size": "512"},
        {"chunking": "cdc", "chunk_size": "8MiB"},
        {"chunking": "fixed", "chunk_size": "1KiB"},
        {"chunking": "rabin"},
        {"conflict": "first-writer-wins"},
        {"retention": {"keep_last": 0}},
        {"retention": {"keep_within": "soon"}},
        {"compression": "zstd"},
        {"chunk_size": "64 MiBs"},
    ],
)
def test_drive_settings_refuse(fields: dict[str, object]) -> None:
    with pytest.raises((ValidationError, ConfigError)):
        DriveSettings.model_validate(fields)


# -- sizes and durations as strings in JSON and JSON schema ------------------------------------


@given(st.integers(min_value=0, max_value=1 << 50))
def test_size_text_round_trips(n: int) -> None:
    text = size_text(n)
    assert parse_size(text) == n
    assert re.match(SIZE_PATTERN, text)


@given(st.integers(min_value=0, max_value=10**8))
def test_duration_text_round_trips(seconds: int) -> None:
    text = duration_text(seconds)
    assert parse_duration(text) == seconds
    assert re.match(DURATION_PATTERN, text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (5400, "1h30m"), (604800, "1w"), (90061, "1d1h1m1s")]
)
def test_duration_text_uses_whole_units(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_settings_emit_and_accept_unit_strings() -> None:
    settings = DriveSettings(chunk_size="4MiB", retention=Retention(keep_within="1h30m"))
    dumped = json.loads(settings.model_dump_json())
    assert dumped["chunk_size"] == "4MiB"
    assert dumped["retention"]["keep_within"] == "1h30m"
    assert DriveSettings.model_validate(dumped) == settings
    # Plain numbers (settings stored before strings were emitted) still read.
    assert DriveSettings.model_validate({"chunk_size": 4 << 20}).chunk_size == 4 << 20
    schema = DriveSettings.model_json_schema()
    size = schema["properties"]["chunk_size"]
    assert size["type"] == "string" and size["pattern"] == SIZE_PATTERN
    within = schema["$defs"]["Retention"]["properties"]["keep_within"]["anyOf"][0]
    assert within == {**within, "type": "string", "pattern": DURATION_PATTERN}
    assert "ge" not in within
