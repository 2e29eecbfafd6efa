"""The committed protobuf modules are what scripts/gen-csi-proto.sh makes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "csi-node/src/mediadrive/node/csi/proto"


def test_generated_modules_are_current(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts/gen-csi-proto.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in PACKAGE.glob("*_pb2.py*"))
    for name in made:
        assert (tmp_path / name).read_text() == (PACKAGE / name).read_text(), (
            f"{name} is stale: run scripts/gen-csi-proto.sh and commit the result"
        )


def test_proto_copies_keep_their_licence() -> None:
    for proto in ("csi/v1/csi.proto", "pluginregistration/v1/api.proto"):
        path = ROOT / "csi-node/proto" / proto
        assert "Apache License, Version 2.0" in path.read_text()[:600]
        assert (path.parent / "LICENSE").is_file()
