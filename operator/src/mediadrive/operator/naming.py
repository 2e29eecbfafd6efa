"""Names and labels of the objects the operator makes."""

from __future__ import annotations

import hashlib

MAX_NAME = 63
LABEL_PREFIX = "mediadrive.io"
MANAGED_BY = "mediadrive-operator"


def qualified(name: str, suffix: str) -> str:
    """``NAME-SUFFIX``, shortened with a hash when it would pass 63 characters."""
    full = f"{name}-{suffix}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.blake2b(full.encode(), digest_size=4).hexdigest()
    keep = MAX_NAME - len(suffix) - len(digest) - 2
    return f"{name[:keep].rstrip('-')}-{digest}-{suffix}"


def child_labels(component: str, owner: str) -> dict[str, str]:
    """Labels of every child of one custom resource; also their selector."""
    return {
        "app.kubernetes.io/name": "mediadrive",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": owner[:MAX_NAME],
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
