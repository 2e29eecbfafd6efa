"""When a written file becomes a new version: a plain enum, cheap to import (the CLI
declares its options with it before anything else loads)."""

from __future__ import annotations

from enum import StrEnum


class CommitOn(StrEnum):
    """When a written file becomes a new version (besides checkpoints and explicit saves)."""

    # At each fsync and at its last close; at each fsync only; at explicit saves only.
    CLOSE = "close"
    FSYNC = "fsync"
    SAVE = "save"

    @property
    def on_fsync(self) -> bool:
        """Whether an fsync commits (it returns once the version is in the stores) rather
        than making the file durable on this machine: not where versions come from
        explicit saves only."""
        return self is not CommitOn.SAVE
