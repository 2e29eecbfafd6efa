"""Who makes a change: the author and host recorded with every version and event."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    author: str
    host: str

    @classmethod
    def local(cls, author: str | None = None) -> Identity:
        """``author`` on this host; by default the login user, as ``user@host``."""
        host = os.uname().nodename
        if not author:
            try:
                user = getpass.getuser()
            except (KeyError, OSError):
                user = "unknown"
            author = f"{user}@{host}"
        return cls(author, host)
