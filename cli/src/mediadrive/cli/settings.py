"""The CLI's settings: read from the environment once, at the edge, then passed on.

``MEDIADRIVE_HOME`` holds the drives this machine knows (see :mod:`.drive_registry`),
their default embedded stores and mount caches; nothing below the CLI reads the
environment.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from mediadrive.core.identity import Identity

ENV_PREFIX = "MEDIADRIVE_"


class CliSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    home: Path = Path.home() / ".local" / "share" / "mediadrive"
    # Recorded with every version and event; default: user@host.
    author: str | None = None
    # Where running mounts register (entries and control sockets); default: HOME/mounts.
    run_dir: Path | None = None
    log_level: str = "INFO"

    def identity(self) -> Identity:
        return Identity.local(self.author)

    @property
    def mounts_dir(self) -> Path:
        return (self.run_dir or self.home / "mounts").expanduser()

    def cache_dir_for(self, drive: str) -> Path:
        return self.home.expanduser() / "cache" / drive


@functools.cache
def _settings_class() -> type[CliSettings]:
    # pydantic-settings is imported only when a command needs its settings, so that
    # `mediadrive --help` stays quick.
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class FromEnvironment(CliSettings, BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    return FromEnvironment


def cli_settings() -> CliSettings:
    """The settings in force now (read again on every call: tests change the environment)."""
    # The environment-reading subclass is a CliSettings already: no copy needed.
    return _settings_class()()
