"""The pod's Prometheus metrics, in a registry of its own (one per server)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class PodMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bytes_held = Gauge("mediadrive_pod_bytes_held", "Bytes of held chunks.", registry=r)
        self.bytes_cached = Gauge(
            "mediadrive_pod_bytes_cached", "Bytes of cached chunks.", registry=r
        )
        self.capacity = Gauge("mediadrive_pod_capacity_bytes", "Capacity in bytes.", registry=r)
        self.hits = Counter("mediadrive_pod_hits", "Chunk reads answered locally.", registry=r)
        self.misses = Counter(
            "mediadrive_pod_misses", "Chunk reads this pod did not have.", registry=r
        )
        self.evictions = Counter(
            "mediadrive_pod_evictions", "Cached chunks evicted for room.", registry=r
        )
        self.evicted_bytes = Counter(
            "mediadrive_pod_evicted_bytes", "Bytes of cached chunks evicted.", registry=r
        )
        self.upstream_transfers = Counter(
            "mediadrive_pod_upstream_transfers", "Chunks read from the upstream store.", registry=r
        )
        self.upstream_bytes = Counter(
            "mediadrive_pod_upstream_bytes", "Bytes read from the upstream store.", registry=r
        )
        self.peer_transfers = Counter(
            "mediadrive_pod_peer_transfers", "Chunk reads answered by another member.", registry=r
        )
        self.expired = Counter(
            "mediadrive_pod_expired", "Held chunks removed when their TTL ended.", registry=r
        )
        self.members_alive = Gauge(
            "mediadrive_pod_members_alive", "Members that answer probes.", registry=r
        )
        self.latency = Histogram(
            "mediadrive_pod_request_seconds",
            "Request latency.",
            ["method", "route", "status"],
            registry=r,
        )

    def evicted(self, size: int) -> None:
        self.evictions.inc()
        self.evicted_bytes.inc(size)

    def render(self, held: Callable[[], int], cached: Callable[[], int], capacity: int) -> bytes:
        self.bytes_held.set(held())
        self.bytes_cached.set(cached())
        self.capacity.set(capacity)
        return generate_latest(self.registry)
