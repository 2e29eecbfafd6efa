"""Commands that check and keep a drive: ``fsck``, ``drive dump`` and ``drive load``."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from mediadrive.core.errors import ConfigError, MediadriveError

from .output import JsonFlag, err, failure, out, print_json, run_async

if TYPE_CHECKING:
    from mediadrive.core.drive import Drive
    from mediadrive.core.fsck import FsckReport


T = TypeVar("T")


async def _with_drive(name: str, body: Callable[[Drive], Awaitable[T]]) -> T:
    from .drive_registry import open_drive

    drive = await open_drive(name)
    try:
        return await body(drive)
    finally:
        await drive.close()


def fsck(
    name: Annotated[str, typer.Argument(help="The drive to check.")],
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Mark damaged or missing chunks so the next upload of their bytes stores "
            "them again, remove debris of failed writes from the store, and record stray "
            "objects (stored, recorded nowhere) so that gc deletes them.",
        ),
    ] = False,
    sample: Annotated[
        str | None,
        typer.Option(help="Check only N chunks, or P% of them, picked at random (e.g. 10%)."),
    ] = None,
    jobs: Annotated[int, typer.Option(help="Chunks checked at once.", min=1)] = 4,
    json_out: JsonFlag = False,
) -> None:
    """Check that every chunk a version names is stored and hashes right; exit 1 on damage."""
    from mediadrive.core.fsck import Fsck, parse_sample

    from .progress import transfer_progress

    try:
        share = parse_sample(sample) if sample is not None else None
    except ConfigError as exc:
        raise failure(str(exc)) from None

    async def body(drive: Drive) -> FsckReport:
        checker = Fsck(drive.meta, drive.blobs, concurrency=jobs)
        records, total = await checker.chunks(share)
        size = sum(r.size for r in records)
        with transfer_progress(err.console, size, f"checking {name}") as tick:
            # Listing the whole store is for whole checks only.
            return await checker.check(
                records, repair=repair, progress=tick, total=total, strays=share is None
            )

    report = run_async(_with_drive(name, body))
    if json_out:
        print_json(_report_json(report))
    else:
        _print_report(name, report, repair)
    if report.damaged:
        raise typer.Exit(1)


def _report_json(report: FsckReport) -> dict[str, Any]:
    return {
        "chunks_total": report.chunks_total,
        "chunks_checked": report.chunks_checked,
        "bytes_checked": report.bytes_checked,
        "problems": [asdict(p) for p in report.problems],
        "affected": [asdict(u) for u in report.affected],
        "debris": report.debris,
        "strays": report.strays,
        "marked": report.marked,
        "debris_removed": report.debris_removed,
        "strays_recorded": report.strays_recorded,
    }


def _print_report(name: str, report: FsckReport, repair: bool) -> None:
    from mediadrive.core.units import format_size

    for problem in report.problems:
        out.print(f"chunk {problem.chunk_id}: {problem.problem} ({problem.detail})", markup=False)
        for use in report.affected:
            if use.chunk_id == problem.chunk_id:
                role = "head" if use.head else "deleted file" if use.deleted else "history"
                out.print(f"  {name}:{use.path} version {use.version} ({role})", markup=False)
    for path in report.debris:
        out.print(f"debris: {path}", markup=False)
    for cid in report.strays:
        out.print(f"stray: chunk {cid} is in the store, recorded nowhere", markup=False)
    checked = (
        f"checked {report.chunks_checked} of {report.chunks_total} chunks "
        f"({format_size(report.bytes_checked)})"
    )
    files = {(u.file_id, u.version) for u in report.affected}
    verdict = (
        f"{len(report.problems)} damaged or missing, in {len(files)} versions"
        if report.damaged
        else "no damage"
    )
    repaired = ""
    if repair:
        repaired = (
            f"; marked {report.marked} for upload again (copy the originals back in), "
            f"removed {report.debris_removed} debris, recorded {report.strays_recorded} "
            "strays for gc"
        )
    elif report.damaged or report.debris or report.strays:
        repaired = "; run with --repair to mark the damage, remove debris and record strays"
    out.print(f"{name}: {checked}: {verdict}{repaired}", markup=False)


def drive_dump(name: Annotated[str, typer.Argument(help="The drive to dump.")]) -> None:
    """Write the drive's whole metadata to stdout (gzip'd JSON lines; see docs/dump-format.md)."""
    from mediadrive.core.dump import dump_drive

    if sys.stdout.isatty():
        raise failure(
            "the dump is binary; redirect it to a file: mediadrive drive dump NAME > FILE"
        )
    sink = sys.stdout.buffer
    summary = run_async(_with_drive(name, lambda d: dump_drive(d.meta, sink)))
    sink.flush()
    counts = ", ".join(f"{n} {kind}s" for kind, n in summary.counts.items())
    err.print(f"dumped drive {name}: {counts}", markup=False)


def drive_load(
    name: Annotated[str, typer.Argument(help="The name of the drive to make.")],
    meta: Annotated[str, typer.Option(help="An empty metadata store URL for the drive.")],
    store: Annotated[str, typer.Option(help="The blob store URL holding the drive's chunks.")],
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Point this machine's entry for NAME at the loaded drive."),
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Make a drive from a dump on stdin, in a new metadata store, and register it."""
    from mediadrive.core.blob import check_store_url
    from mediadrive.core.config import DriveRef, check_drive_name
    from mediadrive.core.drive import Drive
    from mediadrive.core.dump import DumpSummary, load_drive
    from mediadrive.core.meta import check_meta_url, connect

    from . import drive_registry
    from .settings import cli_settings

    if sys.stdin.isatty():
        raise failure("give the dump on stdin: mediadrive drive load NAME ... < FILE")
    cli = cli_settings()
    try:
        check_drive_name(name)
        check_meta_url(meta)
        check_store_url(store)
        known = name in {r.name for r in drive_registry.list_refs(cli)}
        if known and not replace:
            raise ConfigError(
                f"drive {name!r} is already known on this machine; load it under another "
                "name, or give --replace"
            )
    except MediadriveError as exc:
        raise failure(str(exc)) from None

    async def body() -> DumpSummary:
        target = connect(meta, name)
        try:
            summary = await load_drive(target, sys.stdin.buffer)
        finally:
            await target.close()
        # Opening it checks the loaded drive and its blob store work together.
        drive = await Drive.open(name, meta, store, identity=cli.identity())
        await drive.close()
        drive_registry.save_ref(DriveRef(name=name, meta_url=meta, store_url=store), cli)
        return summary

    summary = run_async(body())
    if json_out:
        print_json(asdict(summary))
        return
    counts = ", ".join(f"{n} {kind}s" for kind, n in summary.counts.items())
    # Not the URL: it may carry a password.
    out.print(f"loaded drive {name}: {counts}", markup=False)


def register(app: typer.Typer, drive_app: typer.Typer) -> None:
    app.command("fsck")(fsck)
    drive_app.command("dump")(drive_dump)
    drive_app.command("load")(drive_load)
