"""Errors a person can act on: each carries a one-line message that names the problem."""

from __future__ import annotations


class MediadriveError(Exception):
    """Base class; ``str(err)`` is a complete sentence fit for a terminal."""


class ConfigError(MediadriveError):
    """A URL, size, duration or setting that cannot be used."""


class NotFound(MediadriveError):
    pass


class DriveNotFound(NotFound):
    pass


class PathNotFound(NotFound):
    pass


class VersionNotFound(NotFound):
    pass


class AlreadyExists(MediadriveError):
    pass


class InvalidPath(MediadriveError):
    pass


class LocalFileError(MediadriveError):
    """A local file or folder that cannot be read or written (permissions, a full disk)."""


class NotADirectory(MediadriveError):
    pass


class IsADirectory(MediadriveError):
    pass


class DirectoryNotEmpty(MediadriveError):
    pass


class ConflictError(MediadriveError):
    """A commit whose base is no longer the head, under the ``reject`` policy."""


class StoreUnavailable(MediadriveError):
    """The metadata or blob store cannot be reached or refused the request."""


class StoreFull(StoreUnavailable):
    """The blob store has no room left for a chunk (it may have later: retried)."""


class LandingFailed(MediadriveError):
    """A commit that was to record chunks still on their way did not: a put failed or
    took too long, or GC was at one of them. Nothing was recorded; commit again once
    the puts are over."""


class ChunkMissing(MediadriveError):
    """A chunk a commit relied on was collected before the commit landed."""


class CorruptChunk(MediadriveError):
    """Chunk bytes whose hash does not match their id, or a chunk the store lost."""

    def __init__(self, message: str, chunk: str = "") -> None:
        super().__init__(message)
        # The damaged chunk, for log lines that name it beside a file and an offset.
        self.chunk = chunk
        # Where in a file the damaged bytes sit, once a reader of that file knows it.
        self.offset: int | None = None


class SchemaError(MediadriveError):
    """The metadata store's schema is missing, older or newer than this program."""


class NotPublished(NotFound):
    """A version held in the storage pods of another region (or of a pod this machine
    cannot reach), not published to the cloud yet."""
