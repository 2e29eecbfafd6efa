"""Fixtures shared by the integration suites."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import create_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def meta_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A metadata store URL on each SQL engine: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/meta.db"
    return create_database(request.getfixturevalue("postgres_url"), "meta")
