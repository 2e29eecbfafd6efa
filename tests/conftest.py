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


# The server each fixture starts, as markers: a test is selected out by `-m "not X"`
# whether or not its author remembered to mark it.
_FIXTURE_MARKS = {
    "postgres_url": ("postgres",),
    "moto_s3": ("moto", "s3"),
    "minio_s3": ("minio", "s3"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        for fixture, marks in _FIXTURE_MARKS.items():
            if fixture in fixtures:
                for mark in marks:
                    item.add_marker(mark)
        if "tests/node/" in item.nodeid:
            item.add_marker("fuse")


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
) -> None:
    """A server started for a test that does not carry its marker is a bug in the test:
    `-m "not postgres"` would then start PostgreSQL after all."""
    marks = _FIXTURE_MARKS.get(fixturedef.argname)
    item = getattr(request, "_pyfuncitem", None)
    if marks is None or item is None:
        return
    missing = [m for m in marks if item.get_closest_marker(m) is None]
    if missing:
        pytest.fail(
            f"{item.nodeid} starts {fixturedef.argname} but is not marked {', '.join(missing)}",
            pytrace=False,
        )
