"""The operator's Prometheus figures."""

from __future__ import annotations

from prometheus_client import Counter

RECONCILES = Counter(
    "mediadrive_operator_reconciles_total",
    "Reconciliations of a custom resource, by kind and result",
    ["kind", "result"],
)
