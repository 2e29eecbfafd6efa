"""What an image installs from the workspace's wheels.

``wheels.py plan WHEEL_DIR OUT_DIR DIST... [--without DIST]`` follows the
Requires-Dist of the named workspace distributions through the wheels in
WHEEL_DIR and writes two files to OUT_DIR: ``workspace.txt`` (the wheel files to
install as they are, without their dependencies) and ``requirements.txt`` (every
requirement on something outside the workspace, to resolve from PyPI). A
distribution named with ``--without`` is left out with what only it needs, e.g. the
FUSE node agent (``mediadrive-node``, which needs pyfuse3 built against libfuse) in
an image that never mounts.

``wheels.py hash WHEEL...`` prints one digest of the wheels' contents (file names
and bytes inside each archive, not the zip's timestamps).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _metadata(wheel: Path) -> tuple[str, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = HeaderParser().parsestr(archive.read(member).decode())
    requires = [r for r in message.get_all("Requires-Dist") or [] if "extra ==" not in r]
    return normalize(message["Name"]), requires


def _requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot read a name in requirement {requirement!r}")
    return normalize(match.group(1))


def plan(wheel_dir: Path, wanted: list[str], without: set[str]) -> tuple[list[Path], list[str]]:
    """The workspace wheels ``wanted`` needs, and its requirements outside the workspace."""
    wheels = {}
    requires: dict[str, list[str]] = {}
    for wheel in sorted(wheel_dir.glob("*.whl")):
        name, reqs = _metadata(wheel)
        wheels[name] = wheel
        requires[name] = reqs
    picked: list[Path] = []
    external: list[str] = []
    seen: set[str] = set()
    queue = [normalize(name) for name in wanted]
    while queue:
        name = queue.pop(0)
        if name in seen or name in without:
            continue
        seen.add(name)
        if name not in wheels:
            raise SystemExit(f"wheels.py: no wheel for {name} in {wheel_dir}")
        picked.append(wheels[name])
        for requirement in requires[name]:
            dependency = _requirement_name(requirement)
            if dependency in wheels:
                queue.append(dependency)
            elif requirement not in external:
                external.append(requirement)
    return picked, external


def content_hash(wheels: list[Path]) -> str:
    digest = hashlib.sha256()
    for wheel in sorted(wheels, key=lambda p: p.name):
        digest.update(wheel.name.encode() + b"\0")
        with zipfile.ZipFile(wheel) as archive:
            for member in sorted(archive.namelist()):
                digest.update(member.encode() + b"\0")
                digest.update(hashlib.sha256(archive.read(member)).digest())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plan an image's install from workspace wheels.")
    commands = parser.add_subparsers(dest="command", required=True)
    plan_parser = commands.add_parser("plan")
    plan_parser.add_argument("wheel_dir", type=Path)
    plan_parser.add_argument("out_dir", type=Path)
    plan_parser.add_argument("dists", nargs="+")
    plan_parser.add_argument("--without", action="append", default=[])
    hash_parser = commands.add_parser("hash")
    hash_parser.add_argument("wheels", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "hash":
        print(content_hash(args.wheels))
        return 0
    picked, external = plan(args.wheel_dir, args.dists, {normalize(n) for n in args.without})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "workspace.txt").write_text("".join(f"{p.resolve()}\n" for p in picked))
    (args.out_dir / "requirements.txt").write_text("".join(f"{r}\n" for r in external))
    return 0


if __name__ == "__main__":
    sys.exit(main())
