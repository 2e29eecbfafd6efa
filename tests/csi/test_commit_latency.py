"""Commit latency: the agent's histogram and how the plugin's /metrics shows it."""

from __future__ import annotations

from mediadrive.node.csi.server import _commit_histogram
from mediadrive.node.writeback import WritebackFigures


def test_the_agent_counts_commits_by_upper_bound() -> None:
    figures = WritebackFigures()
    for seconds in (0.01, 0.05, 0.3, 2.0, 1000.0):
        figures.observe_commit(seconds)
    buckets = figures.commit_histogram()
    assert list(buckets)[:3] == ["0.05", "0.1", "0.25"] and list(buckets)[-1] == "+Inf"
    assert (buckets["0.05"], buckets["0.25"], buckets["0.5"], buckets["2.5"]) == (2, 2, 3, 4)
    assert (buckets["300"], buckets["+Inf"]) == (4, 5)
    assert abs(figures.commit_seconds_sum - 1002.36) < 1e-9


def test_the_plugin_renders_it_as_a_prometheus_histogram() -> None:
    labels = 'volume="v",drive="d"'
    status = {"commit_seconds_buckets": {"0.05": 1, "+Inf": 3}, "commit_seconds_sum": 4.5}
    assert _commit_histogram(labels, status) == [
        'mediadrive_csi_commit_seconds_bucket{volume="v",drive="d",le="0.05"} 1',
        'mediadrive_csi_commit_seconds_bucket{volume="v",drive="d",le="+Inf"} 3',
        'mediadrive_csi_commit_seconds_sum{volume="v",drive="d"} 4.5',
        'mediadrive_csi_commit_seconds_count{volume="v",drive="d"} 3',
    ]
    # An agent that does not report it yet: no rows rather than wrong ones.
    assert _commit_histogram(labels, {"commits": 2}) == []
