"""``make demo``: the main job on embedded defaults, narrated command by command.

Creates a drive under ``MEDIADRIVE_HOME``, copies sample media in, edits it,
shows the version history and the dedup figures, and mounts the drive when the
node agent is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from .settings import cli_settings

MIB = 1 << 20
console = Console()
MEDIADRIVE = str(Path(sys.executable).with_name("mediadrive"))


def step(*args: str, show: bool = True) -> str:
    console.print(f"\n[bold cyan]$ mediadrive {' '.join(args)}[/]")
    proc = subprocess.run([MEDIADRIVE, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        console.print(proc.stderr.strip(), markup=False)
        raise SystemExit(proc.returncode)
    if show:
        console.print(proc.stdout.rstrip(), markup=False, highlight=False)
    return proc.stdout


def upload(local: Path, target: str, message: str = "") -> dict[str, Any]:
    args = ["cp", str(local), target, "--json"] + (["-m", message] if message else [])
    result: dict[str, Any] = json.loads(step(*args, show=False))
    console.print(
        f"  version {result['version']}: {result['size'] / MIB:.0f} MiB, uploaded "
        f"{result['bytes_uploaded'] / MIB:.1f} MiB ({result['chunks_new']} new of "
        f"{result['chunks_total']} chunks)"
    )
    return result


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def free_name(base: Path) -> str:
    name, n = "demo", 1
    while (base / name).exists():
        n += 1
        name = f"demo-{n}"
    return name


def make_media(folder: Path) -> tuple[Path, list[Path]]:
    """A 192 MiB plate and a short frame sequence where a held frame repeats."""
    plate = folder / "plate.mov"
    with open(plate, "wb") as f:
        for _ in range(192):
            f.write(os.urandom(MIB))
    frames = []
    held = os.urandom(2 * MIB)
    for i in range(1, 9):
        frame = folder / f"shot010.{i:04d}.exr"
        frame.write_bytes(held if 3 <= i <= 6 else os.urandom(2 * MIB))
        frames.append(frame)
    return plate, frames


def main() -> None:
    base = cli_settings().home
    base.mkdir(parents=True, exist_ok=True)
    name = free_name(base)
    console.print(f"[bold]mediadrive demo[/]: drive [bold]{name}[/] under {base}")
    with tempfile.TemporaryDirectory(prefix="mediadrive-demo-", dir=base) as scratch:
        work = Path(scratch)
        plate, frames = make_media(work)

        step("drive", "create", name)
        upload(plate, f"{name}:/shots/010/plate.mov", "scan from the lab")
        console.print("\n[bold]A frame sequence with a held frame: repeats are stored once[/]")
        for frame in frames:
            upload(frame, f"{name}:/shots/010/comp/{frame.name}")

        console.print("\n[bold]An artist changes 1 MiB in the middle of the plate[/]")
        original = sha256(plate)
        with open(plate, "r+b") as f:
            f.seek(96 * MIB)
            f.write(os.urandom(MIB))
        upload(plate, f"{name}:/shots/010/plate.mov", "paint fix")

        console.print("\n[bold]Publishing a copy uploads nothing[/]")
        upload(plate, f"{name}:/publish/plate.mov", "final")

        step("versions", f"{name}:/shots/010/plate.mov")
        step("ls", f"{name}:/shots/010")
        back = work / "plate-v1.mov"
        step("cp", f"{name}:/shots/010/plate.mov@1", str(back))
        same = sha256(back) == original
        console.print(f"  version 1 read back {'identical' if same else '[red]DIFFERENT[/]'}")
        step("drive", "info", name)
        step("events", name)
        mount(name, work)
    console.print(f"\nThe drive stays in {base / name}; try: mediadrive ls {name}:/shots/010")


def mount(name: str, work: Path) -> None:
    probe = subprocess.run([MEDIADRIVE, "mount", "--help"], capture_output=True)
    if (
        probe.returncode != 0
        or not Path("/dev/fuse").exists()
        or shutil.which("fusermount3") is None
    ):
        console.print("\n(mounting needs the node agent and /dev/fuse; skipped)")
        return
    point = work / "mnt"
    point.mkdir()
    step("mount", name, str(point))
    try:
        console.print(f"\n[bold cyan]$ ls -l {point}/shots/010[/]")
        for entry in sorted((point / "shots" / "010").iterdir()):
            console.print(f"  {entry.stat().st_size:>12}  {entry.name}")
        plate = point / "shots" / "010" / "plate.mov"
        with open(plate, "rb") as f:
            f.seek(100 * MIB)
            f.read(MIB)
        console.print(f"\n[bold]Read 1 MiB at offset 100 MiB of {plate.name} through the mount[/]")
        status = json.loads(step("status", str(point), "--json", show=False))
        console.print(
            f"  fetched {status['bytes_fetched'] / MIB:.1f} MiB of a "
            f"{plate.stat().st_size / MIB:.0f} MiB file"
        )
    finally:
        step("umount", str(point))


if __name__ == "__main__":
    main()
