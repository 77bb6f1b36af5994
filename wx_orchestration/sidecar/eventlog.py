"""Event-log role: consumer group `eventlog` on `wx:cdc` → `wx_orchestration.flowsheet_events`.

End-to-end freshness (INSERT → terminal status) is measured from this log, so it records every
row version once: the same version arriving live, by catch-up or by redelivery is one row.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from psycopg_pool import ConnectionPool

from wx_orchestration.contracts.cdc import CDC_STREAM, EVENTLOG_GROUP
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry
from wx_orchestration.db.events import insert_flowsheet_events
from wx_orchestration.sidecar.consumer import StreamConsumer
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.roles import SidecarContext

log = logging.getLogger("wx_orchestration.sidecar.eventlog")


def log_flowsheet_events(
    pool: ConnectionPool, metrics: SidecarMetrics, events: Sequence[FlowsheetEvent]
) -> list[str]:
    """The sink: which entries may be acknowledged.

    All of them once the batch's insert has committed — a duplicate is already logged, so it is
    done too; none if the insert fails (the exception leaves the batch pending for redelivery).
    """
    with pool.connection() as conn:
        new = insert_flowsheet_events(conn, events)
    metrics.eventlog_written.inc(new)
    metrics.eventlog_duplicates.inc(len(events) - new)
    return [event.entry_id for event in events]


class EventLogRole:
    name = "eventlog"

    def __init__(self, ctx: SidecarContext, consumer_name: str | None = None) -> None:
        pool = ctx.pool()
        metrics = ctx.metrics
        self.consumer: StreamConsumer[FlowsheetEvent] = StreamConsumer(
            client=ctx.redis(),
            pool=pool,
            stream=CDC_STREAM,
            group=EVENTLOG_GROUP,
            consumer=consumer_name or ctx.instance,
            decode=decode_stream_entry,
            sink=lambda events: log_flowsheet_events(pool, metrics, events),
            metrics=metrics,
            config=ctx.config,
        )

    def run(self, stop: threading.Event) -> None:
        self.consumer.run(stop)

    def readiness(self) -> tuple[bool, str]:
        error = self.consumer.last_error
        return (error is None, error or "consuming")


def build(ctx: SidecarContext) -> EventLogRole:
    return EventLogRole(ctx)
