"""The ``mediadrive`` command.

Drive paths are written ``NAME:/path``; a read may pick a version with
``NAME:/path@N``. Every failure a person can cause ends in one line on stderr and
a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn, TypeVar

import typer

from mediadrive.core import paths
from mediadrive.core.errors import (
    ConfigError,
    InvalidPath,
    LocalFileError,
    MediadriveError,
    PathNotFound,
)

from . import heal_commands, tier_commands
from .output import JsonFlag, err, out, print_json
from .targets import MAX_VERSION, DriveTarget, parse_target

if TYPE_CHECKING:
    from mediadrive.core.config import DriveRef
    from mediadrive.core.drive import CommitResult, Drive, VersionReader
    from mediadrive.core.meta import Node

T = TypeVar("T")

app = typer.Typer(
    name="mediadrive",
    help="An open cloud drive for media work: chunked, versioned, deduplicated.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help and usage errors: quick to start, one line for a usage error.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
drive_app = typer.Typer(
    help="Create, list and set up drives.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(drive_app, name="drive")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"mediadrive {version('mediadrive-cli')}\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """An open cloud drive for media work: chunked, versioned, deduplicated."""


def fail(message: str, code: int = 1) -> NoReturn:
    from mediadrive.core.credentials import redact_url

    # Messages may quote a store URL or a driver's error naming one: mask passwords.
    sys.stderr.write(f"mediadrive: error: {redact_url(message)}\n")
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except MediadriveError as exc:
        fail(str(exc))


async def with_drive(name: str, body: Callable[[Drive], Awaitable[T]]) -> T:
    from .drive_registry import open_drive

    drive = await open_drive(name)
    try:
        return await body(drive)
    finally:
        await drive.close()


def drive_target(text: str, allow_version: bool = False, or_mount: bool = False) -> DriveTarget:
    target = parse_target(text)
    if target is None and or_mount:
        fail(f"{text!r} is neither a drive path (NAME:/path) nor inside a mediadrive mount")
    if target is None:
        fail(f"{text!r} is not a drive path; write it as NAME:/path")
    if target.version is not None and not allow_version:
        fail(f"{text!r}: a version (@N) can only be read, not written or changed")
    return target


MetaPasswordFile = Annotated[
    Path | None,
    typer.Option(
        help="A file whose first line is the metadata store's password (PostgreSQL); "
        "or set PGPASSWORD, or use ~/.pgpass.",
    ),
]


# -- drives ------------------------------------------------------------------------------


@drive_app.command("create")
def drive_create(
    name: str,
    meta: Annotated[
        str | None,
        typer.Option(help="Metadata store URL: sqlite:///PATH or postgresql://USER@HOST/DB."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Chunk store URL: file:///PATH or s3://BUCKET/PREFIX?endpoint=URL."),
    ] = None,
    chunking: Annotated[str, typer.Option(help="fixed or cdc (content-defined).")] = "fixed",
    chunk_size: Annotated[
        str | None,
        typer.Option(help="Chunk size (fixed) or average size (cdc), e.g. 64MiB or 2MiB."),
    ] = None,
    conflict: Annotated[
        str, typer.Option(help="last-writer-wins, keep-both or reject.")
    ] = "last-writer-wins",
    keep_last: Annotated[
        int | None, typer.Option(help="Retention: keep the last N versions of each file.")
    ] = None,
    keep_within: Annotated[
        str | None, typer.Option(help="Retention: keep versions newer than this, e.g. 30d.")
    ] = None,
    meta_password_file: MetaPasswordFile = None,
    create_bucket: Annotated[
        bool, typer.Option("--create-bucket", help="Make the s3:// bucket if it is missing.")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Create a drive (embedded defaults: SQLite and a local folder under MEDIADRIVE_HOME)."""
    from mediadrive.core.blob import check_store_url
    from mediadrive.core.config import (
        ConflictPolicy,
        DriveSettings,
        Retention,
        check_drive_name,
    )
    from mediadrive.core.meta import check_meta_url
    from mediadrive.core.units import format_size, parse_duration, parse_size

    from .drive_registry import create_drive

    try:
        check_drive_name(name)
        if meta is not None:
            check_meta_url(meta)
        if store is not None:
            check_store_url(store)
        if chunking not in ("fixed", "cdc"):
            raise ConfigError(f"--chunking {chunking!r} is not one of: fixed, cdc")
        policies = [p.value for p in ConflictPolicy]
        if conflict not in policies:
            raise ConfigError(f"--conflict {conflict!r} is not one of: {', '.join(policies)}")
        if keep_last is not None and keep_last < 1:
            raise ConfigError("--keep-last must be at least 1")
        sized = {"chunk_size": parse_size(chunk_size)} if chunk_size is not None else {}
        settings = DriveSettings(
            chunking=chunking,
            **sized,
            conflict=ConflictPolicy(conflict),
            retention=Retention(
                keep_last=keep_last,
                keep_within=parse_duration(keep_within) if keep_within else None,
            ),
        )
    except MediadriveError as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(_validation_message(exc))

    async def create() -> Drive:
        drive = await create_drive(
            name,
            settings,
            meta_url=meta,
            store_url=store,
            meta_password_file=meta_password_file,
            create_store=create_bucket,
        )
        await drive.close()
        return drive

    drive = run(create())
    ref = _shown(drive.ref)
    if json_out:
        print_json({**ref.model_dump(), "settings": drive.settings.model_dump(mode="json")})
    else:
        out.print(
            f"created drive [bold]{name}[/]: {settings.chunking} chunks of "
            f"{format_size(settings.chunk_size)}, conflicts {settings.conflict.value}"
        )
        out.print(f"  metadata {ref.meta_url}\n  chunks   {ref.store_url}")


def _shown(ref: DriveRef) -> DriveRef:
    """A drive's URLs as they may be shown: passwords masked."""
    from mediadrive.core.credentials import redact_url

    return ref.model_copy(
        update={"meta_url": redact_url(ref.meta_url), "store_url": redact_url(ref.store_url)}
    )


def _validation_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first["msg"]).removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return str(exc)


@drive_app.command("attach")
def drive_attach(
    name: str,
    meta: Annotated[str, typer.Option(help="The drive's metadata store URL.")],
    store: Annotated[str, typer.Option(help="The drive's chunk store URL.")],
    meta_password_file: MetaPasswordFile = None,
) -> None:
    """Use a drive created on another machine: same name, same metadata and chunk stores."""
    from mediadrive.core.meta import check_meta_url

    from .drive_registry import attach_drive

    async def attach() -> Drive:
        drive = await attach_drive(
            name, check_meta_url(meta), store, meta_password_file=meta_password_file
        )
        await drive.close()
        return drive

    drive = run(attach())
    out.print(
        f"attached drive [bold]{name}[/]: {drive.settings.chunking} chunks, "
        f"conflicts {drive.settings.conflict.value}"
    )


@drive_app.command("list")
def drive_list(json_out: JsonFlag = False) -> None:
    """List the drives known on this machine."""
    from rich.table import Table

    from .drive_registry import list_refs

    refs = [_shown(r) for r in list_refs()]
    if json_out:
        print_json([r.model_dump() for r in refs])
        return
    table = Table("name", "metadata", "chunks")
    for ref in refs:
        table.add_row(ref.name, ref.meta_url, ref.store_url)
    out.print(table)


@drive_app.command("info")
def drive_info(name: str, json_out: JsonFlag = False) -> None:
    """Settings and dedup figures of a drive."""
    from mediadrive.core.units import format_size

    async def body(drive: Drive) -> dict[str, Any]:
        stats = await drive.stats()
        return {
            "name": drive.name,
            "settings": drive.settings.model_dump(mode="json"),
            "files_bytes": stats.files_bytes,
            "stored_bytes": stats.stored_bytes,
            "stored_chunks": stats.stored_chunks,
            "dedup_ratio": round(stats.dedup_ratio, 3),
        }

    info = run(with_drive(name, body))
    if json_out:
        print_json(info)
        return
    out.print(
        f"[bold]{name}[/]: every version of every file totals {format_size(info['files_bytes'])}; "
        f"{info['stored_chunks']} chunks store {format_size(info['stored_bytes'])} "
        f"(dedup ratio {info['dedup_ratio']:.2f}x)"
    )


# -- copying -------------------------------------------------------------------------------


STDIO = "-"


@app.command("cp")
def cp(
    src: str,
    dst: str,
    message: Annotated[str, typer.Option("-m", "--message", help="Version message.")] = "",
    json_out: JsonFlag = False,
) -> None:
    """Copy a file into a drive (a new version), out of one (any version), or within one.

    A destination ending in / is a folder (made if missing). - is standard input
    as the source and standard output as the destination.
    """
    source, target = parse_target(src), parse_target(dst)
    if source is None and target is None:
        fail("one side of cp must be a drive path NAME:/path")
    if target is not None and target.version is not None:
        fail(f"{dst!r}: a version (@N) can only be read, not written")
    if source is None:
        assert target is not None
        result = run(_upload(src, target, message))
        _report_upload(result, target.drive, json_out)
    elif target is None and dst == STDIO:
        if json_out:
            fail("--json cannot be used when the destination is - (standard output)")
        run(_download_to_stdout(source))
    elif target is None:
        written, info_version, size = run(_download(source, dst))
        if json_out:
            print_json({"path": str(written), "version": info_version, "size": size})
        else:
            out.print(f"copied {source} (version {info_version}) to {written}")
    else:
        result = run(_copy_within(source, target, message))
        _report_upload(result, target.drive, json_out)


def _report_upload(result: CommitResult, drive: str, json_out: bool) -> None:
    from mediadrive.core.units import format_size

    if json_out:
        print_json({"drive": drive, **asdict(result)})
        return
    note = " [yellow](conflict: see mediadrive events)[/]" if result.conflict else ""
    out.print(
        f"{drive}:{result.path} version {result.version}: {format_size(result.size)}, "
        f"uploaded {format_size(result.bytes_uploaded)} "
        f"({result.chunks_new} new of {result.chunks_total} chunks){note}"
    )


async def _destination(drive: Drive, target: DriveTarget, name: str) -> str:
    """Copying onto a folder, or onto a path written with a trailing /, means into it."""
    from mediadrive.core.errors import NotADirectory

    try:
        node: Node | None = await drive.stat(target.path)
    except PathNotFound:
        node = None
    if target.folder and node is not None and not node.is_dir:
        raise NotADirectory(f"{target} names a folder, but {target.drive}:{target.path} is a file")
    if target.folder or (node is not None and node.is_dir):
        return paths.normalize(f"{target.path}/{name}")
    return target.path


async def _upload(src: str, target: DriveTarget, message: str) -> CommitResult:
    if src == STDIO:
        if target.folder:
            raise InvalidPath(f"{target}: name the file standard input is copied to")
        return await _write(target, paths.split(target.path)[1], sys.stdin.buffer, message)
    local = Path(src)
    if not local.exists():
        raise PathNotFound(f"local file {src!r} does not exist")
    if local.is_dir():
        raise InvalidPath(f"{src!r} is a folder; cp copies one file")
    try:
        source = open(local, "rb")  # noqa: SIM115 - closed below, after the upload
    except OSError as exc:
        raise LocalFileError(f"cannot read {src!r}: {exc.strerror}") from None
    with source:
        return await _write(target, local.name, source, message, os.fstat(source.fileno()))


async def _write(
    target: DriveTarget,
    name: str,
    source: BinaryIO,
    message: str,
    stat: os.stat_result | None = None,
) -> CommitResult:
    from .drive_registry import open_drive
    from .progress import transfer_progress

    drive = await open_drive(target.drive)
    try:
        path = await _destination(drive, target, name)
        parent = paths.split(path)[0]
        if parent != "/":
            # Like object stores and rclone: copying into a new folder makes it.
            await drive.mkdir(parent, parents=True)
        with transfer_progress(err.console, stat.st_size if stat else 0, name) as tick:
            return await drive.write_file(
                path,
                source,
                message=message,
                mode=stat.st_mode if stat else 0o644,
                mtime_ns=stat.st_mtime_ns if stat else None,
                progress=tick,
            )
    finally:
        await drive.close()


async def _source_reader(drive: Drive, source: DriveTarget) -> VersionReader:
    from mediadrive.core.errors import NotADirectory

    node = await drive.stat(source.path) if source.version is None else None
    if node is not None and node.is_dir:
        raise InvalidPath(f"{source} is a folder; cp copies one file")
    reader = await drive.reader(source.path, source.version)
    if source.folder:
        raise NotADirectory(f"{source} names a folder, but {source.drive}:{source.path} is a file")
    return reader


def _local_destination(dst: str, name: str) -> Path:
    """The local file a download writes: into ``dst`` if it is (or ends in /) a folder."""
    local = Path(dst)
    if dst.endswith(("/", os.sep)):
        if local.exists() and not local.is_dir():
            raise LocalFileError(f"{dst!r} names a folder, but it is a file")
        try:
            local.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalFileError(f"cannot create folder {dst!r}: {exc.strerror}") from None
        return local / name
    if local.is_dir():
        return local / name
    if not local.parent.is_dir():
        raise PathNotFound(f"local folder {str(local.parent)!r} does not exist")
    return local


async def _download(source: DriveTarget, dst: str) -> tuple[Path, int, int]:
    from .drive_registry import open_drive

    drive = await open_drive(source.drive)
    try:
        reader = await _source_reader(drive, source)
        local = _local_destination(dst, Path(source.path).name)
        await _write_local(reader, local)
        return local, reader.info.version, reader.size
    finally:
        await drive.close()


async def _write_local(reader: VersionReader, local: Path) -> None:
    """Write beside the target and rename: an interrupted copy leaves no half file."""
    from .progress import transfer_progress

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{local.name}.", dir=local.parent)
    except OSError as exc:
        raise LocalFileError(f"cannot write in {str(local.parent)!r}: {exc.strerror}") from None
    try:
        with (
            os.fdopen(fd, "wb") as dest,
            transfer_progress(err.console, reader.size, local.name) as tick,
        ):
            async for data in reader.chunks():
                await asyncio.to_thread(dest.write, data)
                tick(len(data))
            dest.flush()
            os.fsync(dest.fileno())
        os.chmod(tmp_name, reader.info.mode & 0o7777 or 0o644)
        mtime = reader.info.mtime_ns
        os.utime(tmp_name, ns=(mtime, mtime))
        os.replace(tmp_name, local)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise LocalFileError(f"cannot write {str(local)!r}: {exc.strerror}") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


async def _download_to_stdout(source: DriveTarget) -> None:
    from .drive_registry import open_drive

    drive = await open_drive(source.drive)
    try:
        reader = await _source_reader(drive, source)
        stdout = sys.stdout.buffer
        async for data in reader.chunks():
            await asyncio.to_thread(stdout.write, data)
        stdout.flush()
    finally:
        await drive.close()


async def _copy_within(source: DriveTarget, target: DriveTarget, message: str) -> CommitResult:
    from .drive_registry import open_drive

    if source.drive != target.drive:
        with tempfile.TemporaryDirectory(prefix="mediadrive-cp-") as spool:
            name = Path(source.path).name
            local, _, _ = await _download(source, f"{spool}/")
            with open(local, "rb") as data:
                return await _write(target, name, data, message, os.fstat(data.fileno()))
    drive = await open_drive(source.drive)
    try:
        reader = await _source_reader(drive, source)
        path = await _destination(drive, target, Path(source.path).name)
        parent = paths.split(path)[0]
        if parent != "/":
            await drive.mkdir(parent, parents=True)
        return await drive.copy_version(reader, path, message)
    finally:
        await drive.close()


# -- the tree --------------------------------------------------------------------------------


def _node_json(node: Node, parent: str) -> dict[str, Any]:
    return {
        "name": node.name,
        "path": paths.normalize(f"{parent}/{node.name}"),
        "kind": node.kind.value,
        "size": node.size,
        "mode": oct(node.mode),
        "mtime": node.mtime_ns / 1e9,
        "version": node.head_version,
        "target": node.target,
    }


@app.command("ls")
def ls(
    target: Annotated[str, typer.Argument(help="NAME:/path (NAME: for the root).")],
    deleted: Annotated[
        bool,
        typer.Option(
            "--deleted",
            help="List the files removed under this folder, also inside removed folders.",
        ),
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """List a folder of a drive (metadata only; no chunk is read)."""
    from rich.table import Table

    from mediadrive.core.meta import NodeKind
    from mediadrive.core.units import format_size

    where = drive_target(target)
    if deleted:
        _ls_deleted(where, json_out)
        return

    async def body(drive: Drive) -> tuple[list[Node], str]:
        node = await drive.stat(where.path)
        if node.is_dir:
            return await drive.meta.list_dir(node.id), where.path
        return [node], paths.split(where.path)[0]

    nodes, parent = run(with_drive(where.drive, body))
    if json_out:
        print_json([_node_json(n, parent) for n in nodes])
        return
    table = Table("kind", "size", "version", "modified", "name", box=None)
    for node in nodes:
        name = f"{node.name}/" if node.is_dir else node.name
        if node.kind is NodeKind.SYMLINK:
            name = f"{node.name} -> {node.target}"
        table.add_row(
            node.kind.value,
            "" if node.is_dir else format_size(node.size),
            "" if node.head_version is None else str(node.head_version),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(node.mtime_ns / 1e9)),
            name,
        )
    out.print(table)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _ls_deleted(where: DriveTarget, json_out: bool) -> None:
    """The trash view: every removed file under a folder, most recently removed first."""
    from rich.table import Table

    from mediadrive.core.units import format_size

    entries = run(with_drive(where.drive, lambda d: d.deleted(where.path)))
    if json_out:
        print_json(
            [
                {
                    "path": e.path,
                    "id": e.node.id,
                    "kind": e.node.kind.value,
                    "size": e.node.size,
                    "version": e.node.head_version,
                    "deleted": (e.node.deleted_ns or 0) / 1e9,
                }
                for e in entries
            ]
        )
        return
    table = Table("deleted", "size", "version", "id", "path", box=None)
    for e in entries:
        table.add_row(
            _when((e.node.deleted_ns or 0) / 1e9),
            format_size(e.node.size),
            "" if e.node.head_version is None else str(e.node.head_version),
            str(e.node.id),
            e.path,
        )
    out.print(table)


@app.command("mkdir")
def mkdir(
    target: str,
    parents: Annotated[bool, typer.Option("-p", "--parents", help="Make parents too.")] = False,
) -> None:
    """Make a folder in a drive."""
    where = drive_target(target)
    run(with_drive(where.drive, lambda d: d.mkdir(where.path, parents=parents)))


@app.command("mv")
def mv(src: str, dst: str) -> None:
    """Move or rename within a drive (atomic)."""
    source, target = drive_target(src), drive_target(dst)
    if source.drive != target.drive:
        fail("mv works within one drive; use cp between drives")
    run(with_drive(source.drive, lambda d: d.move(source.path, target.path)))


@app.command("rm")
def rm(
    target: str,
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", help="Remove a folder and its content.")
    ] = False,
) -> None:
    """Remove a file or folder; its versions stay in history until retention says otherwise."""
    where = drive_target(target)
    run(with_drive(where.drive, lambda d: d.remove(where.path, recursive=recursive)))


# -- the time machine ----------------------------------------------------------------------------


FileIdOption = Annotated[
    int | None,
    typer.Option(
        "--id",
        help="Which of the files that lived at this path (ids from ls --deleted or "
        "versions --all); default: the live one, else the one removed last.",
    ),
]


def _drive_only(target: str, what: str) -> DriveTarget:
    where = parse_target(target)
    if where is None:
        fail(f"{what} works on drive paths (NAME:/path), not on {target!r}")
    return where


@app.command("versions")
def versions(
    target: Annotated[str, typer.Argument(help="NAME:/path, or a path inside a mount.")],
    file_id: FileIdOption = None,
    every: Annotated[
        bool,
        typer.Option("--all", help="Every file that lived at this path, with when it was removed."),
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """List every version of a file, also of a deleted one."""
    if every:
        _versions_of_all(_drive_only(target, "--all"), json_out)
        return
    listed = None if file_id is not None else _local("local_versions", target)
    deleted_ns: int | None = None
    if listed is None:
        where = (
            drive_target(target, or_mount=True) if file_id is None else _drive_only(target, "--id")
        )

        async def body(drive: Drive) -> tuple[int | None, list[dict[str, Any]]]:
            node = await drive.find_file(where.path, file_id)
            return node.deleted_ns, [asdict(v) for v in await drive.meta.versions(node.id)]

        deleted_ns, listed = run(with_drive(where.drive, body))
    if json_out:
        print_json(listed)
        return
    if deleted_ns is not None:
        out.print(f"{target} was removed at {_when(deleted_ns / 1e9)}")
    _print_versions(listed)


def _print_versions(listed: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from mediadrive.core.units import format_size

    table = Table("version", "size", "created", "author", "origin", "tier", "message", box=None)
    for v in listed:
        table.add_row(
            str(v["version"]),
            format_size(v["size"]),
            _when(v["created"]),
            v["author"],
            v.get("origin", ""),
            v.get("tier", ""),
            v["message"],
        )
    out.print(table)


def _versions_of_all(where: DriveTarget, json_out: bool) -> None:
    async def body(drive: Drive) -> list[dict[str, Any]]:
        found = []
        for node in await drive.history(where.path):
            if node.is_dir:
                continue
            history = [asdict(v) for v in await drive.meta.versions(node.id)]
            gone = None if node.deleted_ns is None else node.deleted_ns / 1e9
            found.append({"id": node.id, "deleted": gone, "versions": history})
        if not found:
            raise PathNotFound(f"{where} never held a file")
        return found

    found = run(with_drive(where.drive, body))
    if json_out:
        print_json(found)
        return
    for item in found:
        state = "live" if item["deleted"] is None else f"removed {_when(item['deleted'])}"
        out.print(f"file id {item['id']} ({state}):")
        _print_versions(item["versions"])


@app.command("restore")
def restore(
    target: Annotated[str, typer.Argument(help="NAME:/path, or a path inside a mount.")],
    to: Annotated[
        int | None,
        typer.Option("--to", "-v", help="The version to bring back.", min=1, max=MAX_VERSION),
    ] = None,
    message: Annotated[str, typer.Option("-m", "--message")] = "",
    file_id: FileIdOption = None,
    as_path: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="Bring a deleted file back at this NAME:/path (when another file took its name).",
        ),
    ] = None,
    json_out: JsonFlag = False,
    # The old spelling; `--version` alone prints mediadrive's version.
    version_alias: Annotated[
        int | None, typer.Option("--version", hidden=True, min=1, max=MAX_VERSION)
    ] = None,
) -> None:
    """Make an old version the head again, as a new version (history is kept).

    A deleted file comes back with all its versions, its folders made again.
    """
    version = to if to is not None else version_alias
    if version is None:
        fail("give the version to bring back: restore PATH --to N", 2)
    plain = file_id is None and as_path is None
    restored = _local("local_restore", target, version) if plain else None
    if restored is None:
        where = drive_target(target, or_mount=True) if plain else _drive_only(target, "--id/--as")
        dest = drive_target(as_path) if as_path is not None else None
        if dest is not None and dest.drive != where.drive:
            fail("--as must be in the same drive")
        outcome = run(
            with_drive(
                where.drive,
                lambda d: d.restore(
                    where.path,
                    version,
                    message,
                    file_id=file_id,
                    to=None if dest is None else dest.path,
                ),
            )
        )
        restored = {"path": outcome.path, "version": outcome.version, "restored": version}
    if json_out:
        print_json(restored)
    else:
        out.print(f"{as_path or target}: version {restored['version']} now holds version {version}")


def _local(name: str, *args: Any) -> Any:
    """Delegate to the mount's live API when the path is inside a mount."""
    if parse_target(str(args[0])) is not None:
        return None
    mount_commands = _mount_commands()
    handler = getattr(mount_commands, name, None)
    if handler is None:
        return None
    try:
        return handler(*args)
    except MediadriveError as exc:
        fail(str(exc))


# -- housekeeping --------------------------------------------------------------------------------


@app.command("gc")
def gc(
    name: str,
    grace: Annotated[
        str, typer.Option(help="Keep unreferenced chunks younger than this, e.g. 1h or 0s.")
    ] = "1h",
    json_out: JsonFlag = False,
) -> None:
    """Apply retention, then delete chunks no version references.

    Chunks an upload holds are kept whatever the grace: uploads running now, or
    interrupted (killed) less than 15 minutes ago. Finished uploads hold nothing.
    """
    from mediadrive.core.meta import CHUNK_HOLD
    from mediadrive.core.units import format_size, parse_duration

    try:
        seconds = parse_duration(grace)
    except MediadriveError as exc:
        fail(str(exc))
    report = run(with_drive(name, lambda d: d.gc(seconds)))
    if json_out:
        print_json(asdict(report))
    else:
        out.print(
            f"pruned {report.versions_pruned} versions, deleted {report.chunks_deleted} chunks, "
            f"freed {format_size(report.bytes_freed)}, removed {report.debris_removed} debris"
        )
        if report.chunks_held:
            minutes = round(CHUNK_HOLD / 60)
            out.print(
                f"kept {report.chunks_held} unreferenced chunks that uploads hold, whatever "
                f"--grace says: uploads still running, or interrupted less than {minutes} "
                "minutes ago"
            )


@app.command("events")
def events(
    name: str,
    since: Annotated[
        int, typer.Option(help="Only events after this sequence number.", min=0, max=MAX_VERSION)
    ] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Print the drive's change events (commit, rename, delete, conflict, restore, ...)."""

    async def body(drive: Drive) -> None:
        async for event in drive.events(since, follow=follow):
            if json_out:
                sys.stdout.write(json.dumps(asdict(event)) + "\n")
            else:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.created))
                version = f" v{event.version}" if event.version else ""
                extra = " ".join(f"{k}={v}" for k, v in event.detail.items() if v not in ("", None))
                sys.stdout.write(
                    f"{event.seq:>6} {when} {event.kind:<8} {event.path}{version} "
                    f"{event.actor} {extra}\n"
                )
            sys.stdout.flush()

    try:
        run(with_drive(name, body))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _mount_commands() -> ModuleType | None:
    # The mount commands need the node agent's distribution; without it the rest works.
    try:
        return importlib.import_module("mediadrive.cli.mount_commands")
    except ImportError:
        return None


if (_mounts := _mount_commands()) is not None:
    _mounts.register(app)

if importlib.util.find_spec("mediadrive.operator") is not None:
    importlib.import_module("mediadrive.cli.operator_commands").register(app)

heal_commands.register(app, drive_app)
tier_commands.register(app, drive_app)
app.add_typer(importlib.import_module("mediadrive.cli.pod_commands").app, name="storage-pod")
app.add_typer(importlib.import_module("mediadrive.cli.csi_commands").app, name="csi-node")


def _click_error(exc: Exception) -> NoReturn:
    """A usage error in one line: what is wrong, and where the help is."""
    from typer._click import exceptions as click_errors

    if isinstance(exc, click_errors.NoArgsIsHelpError):
        exc.show()  # the help, as `mediadrive` alone always printed it
        sys.exit(exc.exit_code)
    if isinstance(exc, typer.Abort):
        sys.stderr.write("mediadrive: interrupted\n")
        sys.exit(130)
    assert isinstance(exc, click_errors.ClickException)
    message = " ".join(exc.format_message().split()).rstrip(".").replace("Value error, ", "")
    if isinstance(exc, click_errors.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "mediadrive"
        message = f"{message} (see '{where} --help')"
    sys.stderr.write(f"mediadrive: error: {message}\n")
    sys.exit(exc.exit_code)


def main() -> None:
    """Entry point; turns anything unexpected into one line too."""
    try:
        # Not standalone: click would print a usage error as four lines.
        code = typer.main.get_command(app).main(prog_name="mediadrive", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except (typer.TyperException, typer.Abort) as exc:
        _click_error(exc)
    except KeyboardInterrupt:
        sys.stderr.write("mediadrive: interrupted\n")
        sys.exit(130)
    except MediadriveError as exc:
        from mediadrive.core.credentials import redact_url

        sys.stderr.write(f"mediadrive: error: {redact_url(str(exc))}\n")
        sys.exit(1)
    except OSError as exc:  # a local file or folder: no permission, disk full, ...
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"mediadrive: error: cannot use{where}: {exc.strerror or exc}\n")
        sys.exit(1)
    except Exception as exc:  # a bug, not bad input; the detail is for bug reports
        if os.environ.get("MEDIADRIVE_DEBUG"):
            raise
        from mediadrive.core.credentials import redact_url

        sys.stderr.write(
            f"mediadrive: internal error: {type(exc).__name__}: {redact_url(str(exc))} "
            "(set MEDIADRIVE_DEBUG=1 for details)\n"
        )
        sys.exit(70)
