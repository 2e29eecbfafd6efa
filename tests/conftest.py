"""Session-wide fixtures: real servers on loopback, started once per run.

A server that cannot start fails the tests that need it (never a skip), so
a CI run cannot pass while silently testing less.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.servers import (  # noqa: E402
    S3Server,
    ServerStartError,
    minio_server,
    moto_server,
    postgres_server,
)

T = TypeVar("T")


def _enter(stack: ExitStack, name: str, manager: AbstractContextManager[T]) -> T:
    """Start a server within ``stack``; fail (never skip) when it cannot start."""
    try:
        return stack.enter_context(manager)
    except ServerStartError as exc:
        reason = str(exc)
    pytest.fail(f"could not start {name}: {reason}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL server (superuser ``postgres``, database ``postgres``)."""
    with ExitStack() as stack:
        yield _enter(stack, "PostgreSQL", postgres_server()).url


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Server]:
    """moto's standalone S3 server; ``moto_s3.new_bucket()`` makes a fresh bucket."""
    with ExitStack() as stack:
        yield _enter(stack, "moto_server", moto_server())


@pytest.fixture(scope="session")
def minio_s3() -> Iterator[S3Server]:
    """A MinIO server; ``minio_s3.new_bucket()`` makes a fresh bucket."""
    with ExitStack() as stack:
        yield _enter(stack, "MinIO", minio_server())
