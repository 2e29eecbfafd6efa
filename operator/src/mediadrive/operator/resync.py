"""How often the operator looks at every resource again (drift repair, status).

``MEDIADRIVE_OPERATOR_RESYNC`` (seconds) overrides the handlers' defaults, e.g.
for tests that delete a child and wait for it to come back. It is read when the
handlers are registered (``mediadrive operator run``), so set it before starting.
"""

from __future__ import annotations

import os

ENV = "MEDIADRIVE_OPERATOR_RESYNC"


def resync_seconds(default: float) -> float:
    """The resync interval: the environment's when set to a positive number."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected seconds, e.g. 5") from None
    if value <= 0:
        raise ValueError(f"{ENV}={raw!r}: must be more than 0")
    return value
