"""What the operator does to a drive's stores: make it ready, or remove it."""

from __future__ import annotations

import logging

from mediadrive.core.blob import BlobStore, open_store
from mediadrive.core.blob.s3 import S3BlobStore, S3Location
from mediadrive.core.config import DriveSettings
from mediadrive.core.errors import DriveNotFound
from mediadrive.core.meta import connect

log = logging.getLogger(__name__)


async def ensure_drive(name: str, meta_url: str, settings: DriveSettings | None = None) -> bool:
    """Bring the metadata schema up to date and make the drive if it is missing;
    True if it was made."""
    meta = connect(meta_url, name)
    try:
        version = await meta.migrate()
        log.info("metadata schema of drive %s is at version %d", name, version)
        try:
            await meta.open_drive()
        except DriveNotFound:
            await meta.create_drive(settings or DriveSettings())
            log.info("drive %s created", name)
            return True
        return False
    finally:
        await meta.close()


def _store(url: str, credentials: tuple[str, str] | None) -> BlobStore:
    if url.startswith("s3:"):
        return S3BlobStore(url, S3Location.parse(url), credentials=credentials)
    return open_store(url)


async def destroy_drive(
    name: str, meta_url: str, store_url: str, credentials: tuple[str, str] | None
) -> int:
    """Delete every chunk of the drive's store, then its metadata; returns chunks deleted."""
    store = _store(store_url, credentials)
    deleted = 0
    try:
        async for chunk in store.list():
            await store.delete(chunk)
            deleted += 1
    finally:
        await store.close()
    meta = connect(meta_url, name)
    try:
        await meta.destroy_drive()
    finally:
        await meta.close()
    log.info("drive %s deleted: %d chunks removed", name, deleted)
    return deleted
