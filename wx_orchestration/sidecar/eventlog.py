"""Event-log role: consumer group `eventlog` on `wx:cdc` → `wx_orchestration.flowsheet_events`.

End-to-end freshness (INSERT → terminal status) is measured from this log, so it records every
row version once: the same version arriving live, by catch-up or by redelivery is one row.

After each batch the sink also moves the group's mark (`wx_orchestration.cdc_consumer_marks`)
over the rows whose current version is now logged. Entries read but not yet written, and those
not read yet, exist only in the stream; if Redis loses it, the bridge replays from this mark
(`sidecar/bridge.py`), so the log still gets each of those rows as it is now. The mark is
advisory: it moves in a transaction of its own once the batch has committed, and a failure to
move it is logged and counted (`wx_eventlog_mark_errors`) but never holds the batch back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import ConnectionPool

from wx_orchestration.contracts.cdc import CDC_STREAM, EVENTLOG_GROUP
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry
from wx_orchestration.db.events import (
    Watermark,
    cdc_source,
    insert_flowsheet_events,
    lock_consumer_mark,
    logged_through,
    save_consumer_mark,
)
from wx_orchestration.sidecar.consumer import StreamConsumer
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.roles import SidecarContext

log = logging.getLogger("wx_orchestration.sidecar.eventlog")

# Enough for a few sidecars' sinks, each with a full batch, to be passed by one advance.
_PAGES_PER_ADVANCE = 4


@dataclass(frozen=True)
class CompletenessMark:
    """The event log's mark: every flowsheet row before it has its current version logged."""

    schema: str
    # Where a mark starts: the bridge's first start bridged nothing older.
    lookback: timedelta
    # Rows looked at per batch; as many as a batch can log keeps the mark up with the log.
    page: int

    def advance(self, conn: psycopg.Connection) -> None:
        """Move the mark over the rows logged since; skip if another sink is moving it."""
        source = cdc_source(self.schema)
        start = Watermark(datetime.now(UTC) - self.lookback, 0)
        held = lock_consumer_mark(conn, source, EVENTLOG_GROUP, start)
        if held is None:
            return
        mark = held
        # Sinks that found the mark held skipped it, leaving their batches for the next holder
        # to pass: a page per batch alone would fall behind for as long as sinks collide.
        for _ in range(_PAGES_PER_ADVANCE):
            through = logged_through(conn, self.schema, mark, self.page)
            if through is None or through <= mark:
                break
            mark = through
        if mark > held:
            save_consumer_mark(conn, source, EVENTLOG_GROUP, mark)


def log_flowsheet_events(
    pool: ConnectionPool,
    metrics: SidecarMetrics,
    events: Sequence[FlowsheetEvent],
    mark: CompletenessMark | None = None,
) -> list[str]:
    """The sink: which entries may be acknowledged.

    All of them once the batch's insert has committed — a duplicate is already logged, so it is
    done too; none if the insert fails (the exception leaves the batch pending for redelivery).
    The mark (None: left alone, as the benchmark of the insert does) moves afterwards, so it
    never claims a row the log does not hold, and whether it moves changes nothing here.
    """
    with pool.connection() as conn:
        new = insert_flowsheet_events(conn, events)
    metrics.eventlog_written.inc(new)
    metrics.eventlog_duplicates.inc(len(events) - new)
    if mark is not None:
        try:
            with pool.connection() as conn:
                # The acknowledgement waits for the mark: a slow one gives up rather than slow
                # the group, and the next batch tries again.
                conn.execute("SET LOCAL statement_timeout = '2s'")
                mark.advance(conn)
        except psycopg.Error as err:
            metrics.eventlog_mark_errors.inc()
            log.warning("event-log mark not moved (%s: %s)", type(err).__name__, err)
    return [event.entry_id for event in events]


class EventLogRole:
    name = "eventlog"

    def __init__(self, ctx: SidecarContext, consumer_name: str | None = None) -> None:
        pool = ctx.pool()
        metrics = ctx.metrics
        mark = CompletenessMark(
            ctx.settings.database.station_schema,
            timedelta(hours=ctx.config.first_start_lookback_h),
            ctx.config.read_count,
        )
        self.consumer: StreamConsumer[FlowsheetEvent] = StreamConsumer(
            client=ctx.redis(),
            pool=pool,
            stream=CDC_STREAM,
            group=EVENTLOG_GROUP,
            consumer=consumer_name or ctx.instance,
            decode=decode_stream_entry,
            sink=lambda events: log_flowsheet_events(pool, metrics, events, mark),
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
