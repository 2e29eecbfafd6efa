"""``PodSettings``: one model, rendered to JSON and read back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from mediadrive.pod.settings import PodSettings


def test_settings_round_trip_through_json_with_units_as_text(tmp_path: Path) -> None:
    settings = PodSettings(
        data=tmp_path,
        listen="127.0.0.1:8600",
        capacity="500GiB",
        upstream="s3://bucket/show?endpoint=http://127.0.0.1:9000",
        region="eu-west",
        peers=["http://pod-0:8600", "http://pod-1:8600/"],
        replication=3,
        token_file=tmp_path / "tokens",
        relay={"show": "postgresql://meta@db/show"},
        probe_interval="2s",
    )
    rendered = json.loads(settings.model_dump_json())
    assert rendered["capacity"] == "500GiB"
    assert rendered["probe_interval"] == "2s"
    assert rendered["peers"] == ["http://pod-0:8600", "http://pod-1:8600"]
    assert rendered["relay"] == {"show": "postgresql://meta@db/show"}
    assert PodSettings.model_validate_json(settings.model_dump_json()) == settings
    schema = PodSettings.model_json_schema()
    assert schema["properties"]["capacity"]["type"] == "string"
    assert schema["required"] == ["data"]


def test_environment_fills_what_no_flag_gave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIADRIVE_POD_DATA", str(tmp_path))
    monkeypatch.setenv("MEDIADRIVE_POD_REGION", "us-east")
    settings = PodSettings(region="eu-west")
    assert settings.data == tmp_path
    assert settings.region == "eu-west"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("capacity", "0"),
        ("listen", "8600"),
        ("replication", 0),
        ("peers", ["pod-0:8600"]),
        ("advertise", "http://pod-0:8600/path"),
        ("relay", {"Not A Drive": "sqlite:///x"}),
    ],
)
def test_bad_values_name_their_field(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        PodSettings(data=tmp_path, **{field: value})  # type: ignore[arg-type]
    assert refused.value.errors()[0]["loc"][0] == field
