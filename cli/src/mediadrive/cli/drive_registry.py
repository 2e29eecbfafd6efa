"""The drives this machine knows: one ``drive.json`` per drive under ``MEDIADRIVE_HOME``.

A convenience of the CLI, so people can say ``mediadrive cp x show:/a`` rather
than giving store URLs every time. The engine never reads it: a drive opens from
its URLs (:meth:`Drive.open`), which is what the operator and the CSI service do.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from pydantic import ValidationError

from mediadrive.core.config import DriveRef, DriveSettings, check_drive_name
from mediadrive.core.drive import Drive
from mediadrive.core.errors import AlreadyExists, ConfigError, DriveNotFound, LocalFileError

from .settings import CliSettings, cli_settings

REF_FILE = "drive.json"


def _home(settings: CliSettings | None) -> Path:
    return (settings or cli_settings()).home.expanduser()


def default_ref(name: str, settings: CliSettings | None = None) -> DriveRef:
    """The embedded defaults: SQLite and a local folder under the drive's folder."""
    root = _home(settings) / name
    return DriveRef(
        name=name, meta_url=f"sqlite:///{root / 'meta.db'}", store_url=f"file://{root / 'store'}"
    )


def save_ref(ref: DriveRef, settings: CliSettings | None = None) -> None:
    folder = _home(settings) / ref.name
    tmp = folder / (REF_FILE + ".tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_text(ref.model_dump_json(indent=2) + "\n")
        tmp.replace(folder / REF_FILE)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _unwritable(folder, err) from None


def _unwritable(folder: Path, err: OSError) -> LocalFileError:
    return LocalFileError(
        f"cannot write {folder}: {err.strerror} (MEDIADRIVE_HOME must be a writable folder)"
    )


def load_ref(name: str, settings: CliSettings | None = None) -> DriveRef:
    check_drive_name(name)
    path = _home(settings) / name / REF_FILE
    try:
        return DriveRef.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise DriveNotFound(f"drive {name!r} does not exist (no {path})") from None
    except ValidationError as err:
        raise ConfigError(f"drive file {path} is damaged: {err.errors()[0]['msg']}") from None


def list_refs(settings: CliSettings | None = None) -> list[DriveRef]:
    refs = []
    for path in sorted(_home(settings).glob(f"*/{REF_FILE}")):
        try:
            refs.append(DriveRef.model_validate(json.loads(path.read_text())))
        except (ValueError, ValidationError):
            continue
    return refs


async def create_drive(
    name: str,
    settings: DriveSettings | None = None,
    meta_url: str | None = None,
    store_url: str | None = None,
    cli: CliSettings | None = None,
    create_store: bool = False,
) -> Drive:
    """Make a new drive and remember it; on any failure nothing is left on this machine.

    ``create_store`` makes a missing bucket (see :meth:`Drive.create`).
    """
    cli = cli or cli_settings()
    check_drive_name(name)
    folder = _home(cli) / name
    if (folder / REF_FILE).exists():
        raise AlreadyExists(f"drive {name!r} already exists in {_home(cli)}")
    default = default_ref(name, cli)
    made_folder = not folder.exists()
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _unwritable(folder, err) from None
        drive = await Drive.create(
            name,
            meta_url or default.meta_url,
            store_url or default.store_url,
            settings,
            identity=cli.identity(),
            create_store=create_store,
        )
        try:
            save_ref(drive.ref, cli)
        except BaseException:
            await drive.close()
            raise
    except BaseException:
        if made_folder:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return drive


async def open_drive(name: str, cli: CliSettings | None = None) -> Drive:
    cli = cli or cli_settings()
    return await Drive.open_ref(load_ref(name, cli), identity=cli.identity())


async def attach_drive(
    name: str, meta_url: str, store_url: str, cli: CliSettings | None = None
) -> Drive:
    """Use on this machine a drive that was created elsewhere (shared stores)."""
    cli = cli or cli_settings()
    check_drive_name(name)
    if (_home(cli) / name / REF_FILE).exists():
        raise AlreadyExists(f"drive {name!r} is already known in {_home(cli)}")
    drive = await Drive.open(name, meta_url, store_url, identity=cli.identity())
    try:
        await drive.check_stores()
        save_ref(drive.ref, cli)
    except BaseException:
        await drive.close()
        raise
    return drive
