"""Commands for mounted drives: mount, umount, save, pin, unpin, status, hydrate.

They talk to the node agent of the mount through its live-filesystem API; a path
inside a mount is enough to find it. ``local_versions`` and ``local_restore`` let
``mediadrive versions`` and ``restore`` answer for such paths too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer

from mediadrive.core.errors import ConfigError, MediadriveError
from mediadrive.core.triggers import CommitOn

from .output import JsonFlag, err, out, print_json

if TYPE_CHECKING:
    from mediadrive.node.options import MountOptions
    from mediadrive.node.registry import MountRegistry

P = ParamSpec("P")
R = TypeVar("R")


def _options(**values: Any) -> MountOptions:
    from pydantic import ValidationError

    from mediadrive.node.options import MountOptions

    try:
        return MountOptions.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]).replace("_", "-")
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"--{field}: {message}") from None


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _mounts() -> MountRegistry:
    """The mounts of this machine, where the CLI's settings say they register."""
    from mediadrive.node.registry import MountRegistry

    from .settings import cli_settings

    return MountRegistry(cli_settings().mounts_dir)


def mount(
    name: Annotated[str, typer.Argument(help="The drive to mount.")],
    mountpoint: Annotated[Path, typer.Argument(help="An existing, empty folder (see --nonempty).")],
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Local cache and staging folder [default: $MEDIADRIVE_HOME/cache/NAME]."),
    ] = None,
    cache_size: Annotated[
        str | None,
        typer.Option(
            help="Bound of the block cache, e.g. 50GiB [default: the drive policy's "
            "localCacheSize, else 10GiB]."
        ),
    ] = None,
    checkpoint_interval: Annotated[
        str | None,
        typer.Option(
            help="Commit dirty files this often in the background, or 'off' [default: "
            "the drive policy's checkpointInterval, else 30s]."
        ),
    ] = None,
    commit_on: Annotated[
        CommitOn | None,
        typer.Option(
            help="Commit a written file on fsync and close, on fsync only, or only on "
            "save (an fsync returns once its version is stored, except under save, "
            "where it makes the file durable on this machine) "
            "[default: the drive policy's commitOn, else close]."
        ),
    ] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Mount read-only.")] = False,
    passthrough: Annotated[
        bool,
        typer.Option(
            help="On a read-only mount, let the kernel read cached files directly "
            "(FUSE passthrough, where the kernel and pyfuse3 support it)."
        ),
    ] = True,
    subdir: Annotated[str, typer.Option(help="Mount this folder of the drive.")] = "/",
    stream_chunks: Annotated[
        bool,
        typer.Option(
            help="Send a large chunk in two parts, the first while the second is "
            "written (a multipart upload per chunk): a shorter wait after a large write, "
            "for three more requests a chunk."
        ),
    ] = True,
    allow_other: Annotated[
        bool,
        typer.Option(
            "--allow-other",
            help="Let other users of this machine reach the mount (FUSE allow_other; "
            "needs user_allow_other in /etc/fuse.conf unless root).",
        ),
    ] = False,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Serve in this process until unmounted.")
    ] = False,
    nonempty: Annotated[
        bool, typer.Option("--nonempty", help="Mount over a folder that has files in it.")
    ] = False,
) -> None:
    """Mount a drive as a folder; returns once the mount is live."""
    from mediadrive.core.units import parse_duration, parse_size
    from mediadrive.node import client as node_client

    from .drive_registry import load_ref
    from .settings import cli_settings

    if checkpoint_interval is not None and checkpoint_interval.strip().lower() != "off":
        parse_duration(checkpoint_interval)
    settings = cli_settings()
    ref = load_ref(name, settings)
    options = _options(
        drive=name,
        meta_url=ref.meta_url,
        store_url=ref.store_url,
        pod_url=ref.pod_url,
        region=ref.region,
        author=settings.author,
        run_dir=settings.mounts_dir,
        log_level=settings.log_level,
        mountpoint=mountpoint,
        cache_dir=cache_dir or settings.cache_dir_for(name),
        # Left out unless given: the agent takes the drive policy's, else the defaults.
        **_given(
            cache_size=parse_size(cache_size) if cache_size is not None else None,
            checkpoint_interval=checkpoint_interval,
            commit_on=commit_on,
        ),
        read_only=read_only,
        passthrough=passthrough,
        stream_chunks=stream_chunks,
        subdir=subdir,
        allow_other=allow_other,
        nonempty=nonempty,
    )
    _writable_folder(options.cache_dir, "cache folder (--cache-dir)")
    _writable_folder(options.run_dir, "mounts folder (under MEDIADRIVE_HOME)")
    if foreground:
        from mediadrive.node.agent import run_agent

        problems: list[str] = []

        def ready(problem: str | None) -> None:
            if problem is not None:
                problems.append(problem)
            else:
                err.print(f"mounted {name}{'' if subdir == '/' else subdir} at {mountpoint}")

        code = asyncio.run(run_agent(options, ready))
        if problems:
            raise node_client.MountError(problems[0])
        raise typer.Exit(code)
    entry = node_client.mount(options)
    out.print(f"mounted {name}{'' if subdir == '/' else subdir} at {entry.mountpoint}")


def _writable_folder(folder: Path, what: str) -> None:
    """Make ``folder`` if missing; a LocalFileError naming it if it cannot be written."""
    import os

    from mediadrive.core.errors import LocalFileError

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalFileError(f"cannot create {what} {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LocalFileError(f"{what} {folder} is not writable")


def umount(
    mountpoint: Annotated[Path, typer.Argument(help="A mount point of mediadrive.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Unmount even while files are open for writing (after saving them)."
        ),
    ] = False,
) -> None:
    """Upload what is pending, then unmount."""
    from mediadrive.node import client as node_client

    result = node_client.umount(mountpoint, _mounts(), force=force)
    out.print(f"unmounted {result['unmounted']}")


def save(
    path: Annotated[Path, typer.Argument(help="A file or folder inside a mount.")],
    message: Annotated[str, typer.Option("-m", "--message", help="Say what changed.")] = "",
    json_out: JsonFlag = False,
) -> None:
    """Commit a file (or everything changed under a folder) now, as a new version."""
    from mediadrive.core.units import format_size
    from mediadrive.node import client as node_client

    mount_client, inner = node_client.client_for(path, _mounts())
    reports = mount_client.save(inner, message)
    if json_out:
        print_json(reports[0] if len(reports) == 1 and not path.is_dir() else reports)
        return
    if not reports:
        out.print(f"{path}: nothing to save")
    for report in reports:
        what = "saved" if report["committed"] else "unchanged"
        extra = (
            f" (conflict: kept as {report['landed']})" if report["landed"] != report["path"] else ""
        )
        out.print(
            f"{report['path']}: {what}, version {report['version']}, "
            f"{format_size(report['bytes_uploaded'])} uploaded{extra}"
        )


def pin(path: Annotated[Path, typer.Argument(help="A file or folder inside a mount.")]) -> None:
    """Keep a file or folder on this machine: fetch it now and never evict it."""
    from mediadrive.core.units import format_size
    from mediadrive.node import client as node_client

    mount_client, inner = node_client.client_for(path, _mounts())
    result = mount_client.pin(inner)
    out.print(
        f"pinned {path}: {result['files']} files, {format_size(result['bytes'])}, "
        f"{format_size(result['bytes_fetched'])} fetched"
    )


def unpin(path: Annotated[Path, typer.Argument(help="A pinned path inside a mount.")]) -> None:
    """Let a pinned file or folder be evicted from the cache again."""
    from mediadrive.node import client as node_client

    mount_client, inner = node_client.client_for(path, _mounts())
    result = mount_client.unpin(inner)
    if not result["unpinned"]:
        raise ConfigError(f"{path} is not pinned")
    out.print(f"unpinned {path}")


def _size(n: int) -> str:
    from mediadrive.core.units import format_size

    return format_size(n)


_STATUS_ROWS = (
    ("drive", "drive", str),
    ("subdir", "subdir", str),
    ("cache", "cache_bytes", _size),
    ("cache size", "cache_size", _size),
    ("pinned", "pinned_bytes", _size),
    ("pending upload", "pending_upload_bytes", _size),
    ("fetched", "bytes_fetched", _size),
    ("uploaded", "bytes_uploaded", _size),
    ("chunks sent while written", "chunks_streamed", str),
    ("open files", "open_files", str),
    ("dirty files", "dirty_files", str),
    ("commits", "commits", str),
    ("conflicts", "conflicts", str),
    ("commit on", "commit_on", str),
    ("passthrough", "passthrough", lambda on: "on" if on else "off"),
    ("damaged blocks refetched", "cache_corrupt", str),
    ("lookups answered from memory", "entry_hits", str),
    ("listings answered from memory", "listings_cached", str),
    ("storage pods", "pods", lambda url: url or "none"),
    ("writes go to", "write_target", str),
    ("publish", "publish", str),
)


def status(
    mountpoint: Annotated[Path, typer.Argument(help="A mount point (or any path in it).")],
    json_out: JsonFlag = False,
) -> None:
    """Cache, transfer and write-back figures of a mount."""
    from rich.table import Table

    from mediadrive.node import client as node_client

    mount_client, _ = node_client.client_for(mountpoint, _mounts())
    figures = mount_client.status()
    if json_out:
        print_json(figures)
        return
    table = Table(show_header=False, box=None)
    table.add_row("mount", figures["mountpoint"])
    for label, key, render in _STATUS_ROWS:
        table.add_row(label, render(figures[key]))
    for problem in figures.get("errors", []):
        table.add_row("error", problem)
    out.print(table)


def _load_manifest(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"manifest {path} is not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"manifest {path} must be a mapping with an 'include' list")
    return data


def hydrate(
    mountpoint: Annotated[Path, typer.Argument(help="A mount point.")],
    globs: Annotated[
        list[str] | None,
        typer.Argument(help="Paths or globs inside the mount (** crosses folders)."),
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="A YAML or JSON manifest (docs/hydrate-manifest.md).")
    ] = None,
    no_pin: Annotated[bool, typer.Option("--no-pin", help="Fetch without pinning.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Fetch the files a workflow needs onto this machine, in parallel, and pin them."""
    from mediadrive.core.units import format_size
    from mediadrive.node import client as node_client

    from .progress import transfer_bar

    if not globs and manifest is None:
        raise ConfigError("give at least one glob or --manifest FILE")
    mount_client, _ = node_client.client_for(mountpoint, _mounts())
    document = _load_manifest(manifest) if manifest is not None else None
    pin_files = False if no_pin else None
    if json_out or not err.is_terminal:
        result = mount_client.hydrate(list(globs or []), document, pin_files)
    else:
        with transfer_bar(err.console) as bar:
            task = bar.add_task("hydrate", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = mount_client.hydrate(list(globs or []), document, pin_files, progress)
    if json_out:
        print_json(result)
        return
    out.print(
        f"hydrated {result['files']} files ({format_size(result['bytes'])}), "
        f"fetched {format_size(result['bytes_fetched'])}" + (", pinned" if result["pinned"] else "")
    )


def local_versions(path: str) -> list[dict[str, Any]] | None:
    """Versions of a file inside a mount, or None when ``path`` is not in one."""
    from mediadrive.node import client as node_client

    found = node_client.find_mount(path, _mounts())
    if found is None:
        return None
    mount_client, inner = found
    return mount_client.versions(inner)


def local_restore(path: str, version: int) -> dict[str, Any] | None:
    """Restore a file inside a mount through its agent, or None when not in a mount."""
    from mediadrive.node import client as node_client

    found = node_client.find_mount(path, _mounts())
    if found is None:
        return None
    mount_client, inner = found
    return mount_client.restore(inner, version)


def local_publish(path: str, message: str) -> dict[str, Any] | None:
    """Save then publish a file or folder inside a mount through its agent, or None when
    ``path`` is not in one."""
    from mediadrive.node import client as node_client

    found = node_client.find_mount(path, _mounts())
    if found is None:
        return None
    mount_client, inner = found
    return mount_client.publish(inner, message)


def register(app: typer.Typer) -> None:
    app.command("mount")(_guard(mount))
    app.command("umount")(_guard(umount))
    app.command("save")(_guard(save))
    app.command("pin")(_guard(pin))
    app.command("unpin")(_guard(unpin))
    app.command("status")(_guard(status))
    app.command("hydrate")(_guard(hydrate))


def _guard(command: Callable[P, R]) -> Callable[P, R]:
    """One line and a non-zero exit for anything a person can cause; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except MediadriveError as exc:
            from mediadrive.core.credentials import redact_url

            sys.stderr.write(f"mediadrive: error: {redact_url(str(exc))}\n")
            raise typer.Exit(1) from None

    return wrapper
