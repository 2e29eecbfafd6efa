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
from urllib.parse import urlsplit

from pydantic import ValidationError

from mediadrive.core import private
from mediadrive.core.config import DriveRef, DriveSettings, check_drive_name
from mediadrive.core.credentials import (
    PGPASS_FILE,
    redact_url,
    split_password,
    with_passfile,
    write_pgpass,
)
from mediadrive.core.drive import Drive
from mediadrive.core.errors import AlreadyExists, ConfigError, DriveNotFound, LocalFileError

from .settings import CliSettings, cli_settings

REF_FILE = "drive.json"
# Metadata engines that take a password (libpq reads it from a passfile).
PASSWORD_SCHEMES = ("postgresql", "postgres", "cockroachdb")


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
        # The drive's folder holds its metadata and chunks (embedded defaults): owner only.
        private.make_dir(folder, tighten=True)
        private.write_file(tmp, ref.model_dump_json(indent=2) + "\n")
        tmp.replace(folder / REF_FILE)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _unwritable(folder, err) from None


def _unwritable(folder: Path, err: OSError) -> LocalFileError:
    return LocalFileError(
        f"cannot write {folder}: {err.strerror} (MEDIADRIVE_HOME must be a writable folder)"
    )


def read_password_file(path: Path) -> str:
    """The password on the first line of ``path``."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read --meta-password-file {path}: {exc.strerror}") from None
    if not lines or not lines[0]:
        raise ConfigError(f"--meta-password-file {path} is empty")
    return lines[0]


def keep_password_out(
    folder: Path, meta_url: str, password_file: Path | None = None
) -> tuple[str, Path | None]:
    """The metadata URL to remember, without a password: one given in the URL or in
    ``password_file`` goes to ``folder/pgpass`` (0600), which the URL then names.
    Returns the URL and the file written, if any."""
    url, password = split_password(meta_url)
    if password_file is not None:
        if password is not None:
            raise ConfigError("give the password in --meta or in --meta-password-file, not both")
        password = read_password_file(password_file)
    if password is None:
        return meta_url, None
    if urlsplit(url).scheme not in PASSWORD_SCHEMES:
        raise ConfigError(f"metadata URL {redact_url(url)!r} does not take a password")
    written = write_pgpass(private.make_dir(folder) / PGPASS_FILE, password)
    return with_passfile(url, written), written


def load_ref(name: str, settings: CliSettings | None = None) -> DriveRef:
    check_drive_name(name)
    path = _home(settings) / name / REF_FILE
    try:
        ref = DriveRef.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise DriveNotFound(f"drive {name!r} does not exist (no {path})") from None
    except ValidationError as err:
        raise ConfigError(f"drive file {path} is damaged: {err.errors()[0]['msg']}") from None
    if split_password(ref.meta_url)[1] is not None:
        # A drive file written before passwords were kept out of it: move it out now.
        meta_url, _ = keep_password_out(path.parent, ref.meta_url)
        ref = ref.model_copy(update={"meta_url": meta_url})
        save_ref(ref, settings)
    return ref


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
    meta_password_file: Path | None = None,
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
    passfile: Path | None = None
    try:
        try:
            private.make_dir(folder, tighten=True)
        except OSError as err:
            raise _unwritable(folder, err) from None
        meta, passfile = keep_password_out(folder, meta_url or default.meta_url, meta_password_file)
        drive = await Drive.create(
            name,
            meta,
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
        elif passfile is not None:
            passfile.unlink(missing_ok=True)
        raise
    return drive


async def open_drive(name: str, cli: CliSettings | None = None) -> Drive:
    cli = cli or cli_settings()
    return await Drive.open_ref(load_ref(name, cli), identity=cli.identity())


async def attach_drive(
    name: str,
    meta_url: str,
    store_url: str,
    cli: CliSettings | None = None,
    meta_password_file: Path | None = None,
) -> Drive:
    """Use on this machine a drive that was created elsewhere (shared stores)."""
    cli = cli or cli_settings()
    check_drive_name(name)
    folder = _home(cli) / name
    if (folder / REF_FILE).exists():
        raise AlreadyExists(f"drive {name!r} is already known in {_home(cli)}")
    meta, passfile = keep_password_out(folder, meta_url, meta_password_file)
    try:
        drive = await Drive.open(name, meta, store_url, identity=cli.identity())
        try:
            # A wrong prefix or bucket would otherwise only show at the first read.
            await drive.check_stores()
            save_ref(drive.ref, cli)
        except BaseException:
            await drive.close()
            raise
    except BaseException:
        if passfile is not None:
            with contextlib.suppress(OSError):
                passfile.unlink()
        raise
    return drive
