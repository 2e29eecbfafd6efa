"""URL scheme -> engine registries, shared by the metadata and blob stores.

An engine registers its scheme(s) from its own module. The engines that ship with
mediadrive are listed by module name and imported the first time a URL needs
them, so importing a store package loads no database driver or S3 client.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from .credentials import redact_url
from .errors import ConfigError

E = TypeVar("E")


class SchemeRegistry(Generic[E]):
    """Engines of one kind by URL scheme; ``what`` names the URL in error messages."""

    def __init__(self, what: str, builtin: Mapping[str, str]) -> None:
        self._what = what
        # scheme -> module that registers it when imported
        self._builtin = dict(builtin)
        self._engines: dict[str, E] = {}

    def register(self, scheme: str, engine: E) -> None:
        """Make ``scheme://`` URLs use ``engine``; a later registration replaces it."""
        self._engines[scheme] = engine

    def schemes(self) -> list[str]:
        """Every known scheme, built-in ones first, whether loaded yet or not."""
        return list(dict.fromkeys([*self._builtin, *self._engines]))

    def engine_for(self, url: str) -> E:
        """The engine for ``url``'s scheme; :class:`ConfigError` for an unknown one."""
        scheme = urlsplit(url).scheme
        if scheme not in self._engines and scheme in self._builtin:
            importlib.import_module(self._builtin[scheme])
        engine = self._engines.get(scheme)
        if engine is None:
            raise ConfigError(f"{self._what} {redact_url(url)!r} must start with {self._listing()}")
        return engine

    def _listing(self) -> str:
        names = [f"{scheme}://" for scheme in self.schemes()]
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
