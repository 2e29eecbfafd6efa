"""Write container image archives without a Docker engine.

``oci.py layer ROOTFS OUT.tar`` packs a folder into an uncompressed layer tar whose
bytes depend only on the folder's contents (sorted names, owner 0, fixed times), so
an unchanged folder gives the same layer digest.

``oci.py archive --tag mediadrive/pod:dev --layer base.tar --layer app.tar
--entrypoint /usr/local/bin/mediadrive --env PYTHONPATH=/opt/mediadrive OUT.tar``
writes a docker-archive (``manifest.json``, an image config and the layers), the
format both ``ctr images import`` and ``kind load image-archive`` read.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
# Layers are content: a fixed time keeps their digests stable between builds.
_MTIME = 0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = _MTIME
    return info


def write_layer(rootfs: Path, out: Path) -> str:
    """Pack ``rootfs`` into ``out``; return the layer's sha256 (its diff id)."""
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            base = Path(dirpath)
            for name in sorted([*dirnames, *filenames]):
                path = base / name
                arcname = path.relative_to(rootfs).as_posix()
                tar.add(path, arcname=arcname, recursive=False, filter=_normalized)
    tmp.replace(out)
    return sha256_file(out)


def _config(diff_ids: list[str], entrypoint: list[str], cmd: list[str], env: list[str]) -> bytes:
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *env],
            "Entrypoint": entrypoint or None,
            "Cmd": cmd or None,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created": "1970-01-01T00:00:00Z"} for _ in diff_ids],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _normalized(tarfile.TarInfo(name))
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_archive(
    out: Path, tag: str, layers: list[Path], entrypoint: list[str], cmd: list[str], env: list[str]
) -> str:
    """Write a docker-archive holding ``layers`` (uncompressed tars); return the image id."""
    diff_ids = [sha256_file(layer) for layer in layers]
    config = _config(diff_ids, entrypoint, cmd, env)
    config_id = hashlib.sha256(config).hexdigest()
    layer_names = [f"{d}/layer.tar" for d in diff_ids]
    manifest = [{"Config": f"{config_id}.json", "RepoTags": [tag], "Layers": layer_names}]
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for layer, name in zip(layers, layer_names, strict=True):
            info = _normalized(tar.gettarinfo(str(layer), arcname=name))
            info.mode = 0o644
            with layer.open("rb") as stream:
                tar.addfile(info, stream)
        _add_bytes(tar, f"{config_id}.json", config)
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        _add_bytes(tar, "repositories", b"{}")
    tmp.replace(out)
    return config_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    layer = commands.add_parser("layer", help="pack a folder into a layer tar")
    layer.add_argument("rootfs", type=Path)
    layer.add_argument("out", type=Path)
    archive = commands.add_parser("archive", help="write a docker-archive")
    archive.add_argument("--tag", required=True)
    archive.add_argument("--layer", type=Path, action="append", default=[], dest="layers")
    archive.add_argument("--entrypoint", action="append", default=[])
    archive.add_argument("--cmd", action="append", default=[])
    archive.add_argument("--env", action="append", default=[])
    archive.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "layer":
        print(write_layer(args.rootfs, args.out))
        return 0
    if not args.layers:
        parser.error("archive needs at least one --layer")
    image_id = write_archive(args.out, args.tag, args.layers, args.entrypoint, args.cmd, args.env)
    print(f"sha256:{image_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
