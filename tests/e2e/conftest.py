"""End-to-end fixtures: a real Kubernetes cluster, with the mediadrive images in it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.e2e.cluster import Cluster, ClusterError, cluster_session


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The cluster (started for this run unless it is up); fails, never skips, without one."""
    with ExitStack() as stack:
        try:
            found = stack.enter_context(cluster_session())
        except ClusterError as exc:
            pytest.fail(f"could not start the cluster: {exc}", pytrace=False)
        yield found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `-m "not cluster"` leaves out every test that would start one.
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker("cluster")
