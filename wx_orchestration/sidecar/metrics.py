"""Prometheus metrics of one sidecar process, on a registry of its own (not the global one).

A role that needs more registers them on `SidecarMetrics.registry`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_SIZES = (1, 5, 10, 25, 50, 100, 250, 500, 1000)
_BATCH_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_bridged = Counter(
            "wx_cdc_events_bridged", "Flowsheet events written to wx:cdc", ["action"], registry=r
        )
        self.catchup_rows = Counter(
            "wx_cdc_catchup_rows", "Rows bridged by catch-up scans", registry=r
        )
        self.notifications_ignored = Counter(
            "wx_cdc_notifications_ignored",
            "Notifications for tables other than flowsheet",
            registry=r,
        )
        self.reconnects = Counter(
            "wx_cdc_reconnects", "LISTEN (re)connections after the first", ["cause"], registry=r
        )
        self.bridge_leader = Gauge(
            "wx_cdc_bridge_leader", "1 while this process is the active bridge", registry=r
        )
        self.listen_alive = Gauge(
            "wx_cdc_listen_alive", "1 while the LISTEN connection echoes pings", registry=r
        )
        self.dead_letters = Counter(
            "wx_dead_letters", "Dead letters written", ["source"], registry=r
        )
        self.group_lag = Gauge(
            "wx_stream_group_lag",
            "Entries not yet delivered to the group (XINFO GROUPS lag)",
            ["stream", "group"],
            registry=r,
        )
        self.group_pending = Gauge(
            "wx_stream_group_pending",
            "Entries delivered but not acknowledged",
            ["stream", "group"],
            registry=r,
        )
        self.batch_size = Histogram(
            "wx_consumer_batch_size",
            "Entries per batch",
            ["group"],
            buckets=_BATCH_SIZES,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "wx_consumer_batch_seconds",
            "Time to decode, sink and acknowledge a batch",
            ["group"],
            buckets=_BATCH_SECONDS,
            registry=r,
        )
        self.acked = Counter("wx_consumer_acked", "Entries acknowledged", ["group"], registry=r)
        self.reclaimed = Counter(
            "wx_consumer_reclaimed",
            "Entries reclaimed from idle consumers",
            ["group"],
            registry=r,
        )
        self.consumer_errors = Counter(
            "wx_consumer_errors",
            "Batches left unacknowledged by an error",
            ["group"],
            registry=r,
        )
        self.eventlog_written = Counter(
            "wx_eventlog_events_written", "New rows in flowsheet_events", registry=r
        )
        self.eventlog_duplicates = Counter(
            "wx_eventlog_duplicates", "Events already in flowsheet_events", registry=r
        )
        self.eventlog_mark_errors = Counter(
            "wx_eventlog_mark_errors",
            "Batches logged whose mark (cdc_consumer_marks) could not be moved",
            registry=r,
        )
        self.oldest_mark_age = Gauge(
            "wx_cdc_oldest_mark_age_seconds",
            "Age of the oldest row change a consumer mark has not passed (0: none behind);"
            " set by the active bridge",
            registry=r,
        )
        self.watermark_lead = Gauge(
            "wx_flowsheet_watermark_lead_seconds",
            "How far the station's Last-Modified (flowsheet_watermark) stands ahead of the clock"
            " (negative: behind); `source` station is the watermark, ours our statements' share;"
            " set by the active bridge",
            ["source"],
            registry=r,
        )

    def dead_letter_count(self) -> int:
        return int(
            sum(
                sample.value
                for family in self.dead_letters.collect()
                for sample in family.samples
                if sample.name.endswith("_total")
            )
        )
