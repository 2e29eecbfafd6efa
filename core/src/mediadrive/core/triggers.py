"""When a written file becomes a new version: a plain enum, cheap to import (the CLI
declares its options with it before anything else loads)."""

from __future__ import annotations

from enum import StrEnum


class CommitOn(StrEnum):
    """When a written file becomes a new version (besides checkpoints and explicit saves)."""

    CLOSE = "close"
    FSYNC = "fsync"
    SAVE = "save"
