"""The live feed's Prometheus metrics, on the sidecar's registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from wx_orchestration.sidecar.metrics import SidecarMetrics


class LiveMetrics:
    def __init__(self, metrics: SidecarMetrics) -> None:
        r = metrics.registry
        self.published = Counter(
            "wx_live_events_published", "Frames appended to wx:live", ["type"], registry=r
        )
        self.duplicates = Counter(
            "wx_live_duplicates_skipped", "Frames already published (redeliveries)", registry=r
        )
        self.connections = Gauge("wx_live_connections", "Open SSE connections", registry=r)
        self.rejected = Counter(
            "wx_live_connections_rejected", "SSE connections refused at the cap", registry=r
        )
        self.writes_waited = Counter(
            "wx_live_writes_waited",
            "Writes that waited for a client to read (its frames queued meanwhile)",
            registry=r,
        )
        self.slow_closed = Counter(
            "wx_live_slow_clients_closed",
            "Connections closed when their queue overflowed",
            registry=r,
        )
        self.replayed = Counter(
            "wx_live_replayed_entries", "Entries sent on reconnect from Last-Event-ID", registry=r
        )
        self.refetches = Counter(
            "wx_live_refetches", "Reconnects answered with refetch", ["reason"], registry=r
        )
