"""Mount options from a volume's context and secrets, and where the secrets go."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mediadrive.core.errors import ConfigError
from mediadrive.node.csi.state import StateStore, VolumeRecord, workspace_path
from mediadrive.node.options import MountOptions

CONTEXT = {
    "drive": "media",
    "storeUrl": "s3://bucket/media?endpoint=http://minio:9000",
    "pod.eu": "pod://pods-eu:8080",
    "pod.us": "pod://pods-us:8080",
    "workspace.comp": "/shots/comp",
}
SECRETS = {
    "metaUrl": "postgresql://drive:s3cret@db/media",
    "awsAccessKeyId": "AKIA",
    "awsSecretAccessKey": "shh",
    "podToken": "tok123",
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_options_env_and_token_file(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state")
    built = state.build(
        "ns.media", tmp_path / "staging", CONTEXT, SECRETS, author="csi@n1", region="eu"
    )
    assert built is not None
    values, env = built
    options = MountOptions.model_validate(values)
    assert options.meta_url == SECRETS["metaUrl"]
    assert options.allow_other
    assert env == {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "shh"}
    assert options.pod_url is not None
    assert options.pod_url.startswith("pod://pods-eu:8080?token_file=")
    assert "tok123" not in options.pod_url
    token_file = Path(options.pod_url.split("token_file=")[1])
    assert token_file.read_text().strip() == "tok123"
    assert mode(token_file) == 0o600
    assert mode(state.root) == 0o700

    state.save(VolumeRecord(volume_id="ns.media", mountpoint="/x", options=values, env=env))
    (record_file,) = state.volumes_dir.glob("*.json")
    assert mode(record_file) == 0o600
    assert state.load("ns.media") is not None
    state.remove("ns.media")
    assert state.load("ns.media") is None
    assert not token_file.exists()


def test_missing_and_bad_values(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state")
    mp = tmp_path / "mp"
    # Without metaUrl the mount waits for the publish's secrets.
    assert state.build("v", mp, CONTEXT, {}, author="a", region=None) is None
    with pytest.raises(ConfigError, match="storeUrl"):
        state.build("v", mp, {"drive": "media"}, SECRETS, author="a", region=None)
    with pytest.raises(ConfigError, match="drive"):
        state.build("v", mp, {**CONTEXT, "drive": "no/slash"}, SECRETS, author="a", region=None)
    # Two regions and none chosen: no pods rather than the wrong ones.
    built = state.build("v", mp, CONTEXT, SECRETS, author="a", region=None)
    assert built is not None and "pod_url" not in built[0]


def test_workspace_path() -> None:
    assert workspace_path({**CONTEXT, "workspace": "comp"}) == "/shots/comp"
    assert workspace_path(CONTEXT) is None
    with pytest.raises(ConfigError, match="comp"):
        workspace_path({**CONTEXT, "workspace": "grade"})
