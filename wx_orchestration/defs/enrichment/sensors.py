"""`enrichment_backlog_sensor` and `enrichment_coverage_sensor`.

`enrichment_backlog_sensor`: launch a backlog run for each day that still has pending rows.

Each tick runs one aggregate over the pending partial index (bounded by a statement timeout, so a
tick never blocks), takes the newest days whose claimable rows are older than the grace period,
and requests at most a few runs. The JSON cursor remembers, per recently requested day, the
highest pending id seen and when: a day is requested again only when newer rows appeared or
after a cooldown (its run may have stopped on its time budget, or rows came out of backoff).
Run keys are `day + tick generation`, so re-evaluating a tick whose cursor was not saved
requests nothing twice.

`enrichment_coverage_sensor` records the days the sidecar finished (see `core/coverage.py`).
"""

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Self
from zoneinfo import ZoneInfo

import dagster as dg

from wx_orchestration.core.coverage import CoverageCursor, days_to_record, pass_window
from wx_orchestration.core.timing import FAST_PATH_GRACE_S
from wx_orchestration.db.coverage import DayCoverage, day_coverage
from wx_orchestration.db.enrichment import pending_days
from wx_orchestration.defs.enrichment.jobs import enrichment_backlog_job
from wx_orchestration.defs.enrichment.partitions import FLOWSHEET_DAYS, STATION_TIMEZONE
from wx_orchestration.defs.resources import PostgresResource

FLOWSHEET_ENRICHMENT_KEY = dg.AssetKey("flowsheet_enrichment")

MAX_RUNS_PER_TICK = 3
REQUEST_COOLDOWN_S = 15 * 60.0
# Days looked at per tick: enough to find MAX_RUNS_PER_TICK not cooling down.
DAYS_SCANNED = 20


@dataclass
class BacklogCursor:
    generation: int = 0
    # day → (highest pending id when requested, epoch seconds of the request)
    requested: dict[str, tuple[int, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> Self:
        try:
            data = json.loads(raw or "{}")
            return cls(
                int(data.get("g", 0)),
                {day: (int(v[0]), float(v[1])) for day, v in data.get("days", {}).items()},
            )
        except (ValueError, TypeError, AttributeError, IndexError):
            # An unreadable cursor costs at most one round of repeated requests.
            return cls()

    def dump(self, now: float) -> str:
        recent = {day: v for day, v in self.requested.items() if now - v[1] < REQUEST_COOLDOWN_S}
        return json.dumps({"g": self.generation, "days": recent}, separators=(",", ":"))

    def due(self, day: str, max_id: int, now: float) -> bool:
        seen = self.requested.get(day)
        return seen is None or max_id > seen[0] or now - seen[1] >= REQUEST_COOLDOWN_S


@dg.sensor(
    job=enrichment_backlog_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Requests enrichment_backlog_job for the newest days with pending track rows older "
        f"than {FAST_PATH_GRACE_S:.0f} s (the fast path goes first), at most "
        f"{MAX_RUNS_PER_TICK} per tick."
    ),
)
def enrichment_backlog_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource
) -> dg.SensorResult | dg.SkipReason:
    cursor = BacklogCursor.parse(context.cursor)
    now = time.time()
    first_day = FLOWSHEET_DAYS.start.date()
    with postgres.connection() as conn:
        # Never let a tick hang on a huge backlog or a lock: the next tick tries again.
        conn.execute("SET LOCAL statement_timeout = '10s'")
        days = pending_days(
            conn, tz=STATION_TIMEZONE, grace_s=FAST_PATH_GRACE_S, limit=DAYS_SCANNED
        )
    if not days:
        return dg.SkipReason(f"no pending track rows older than {FAST_PATH_GRACE_S:.0f} s")

    requests: list[dg.RunRequest] = []
    for pending in days:
        day = pending.day.isoformat()
        if pending.day < first_day:
            context.log.warning(f"{pending.rows} pending rows on {day}, before the first partition")
            continue
        if not cursor.due(day, pending.max_id, now):
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"enrichment-{day}-g{cursor.generation}",
                partition_key=day,
                tags={"wx/pending_rows": str(pending.rows)},
            )
        )
        cursor.requested[day] = (pending.max_id, now)
        if len(requests) == MAX_RUNS_PER_TICK:
            break
    if not requests:
        return dg.SkipReason(f"{len(days)} day(s) with pending rows, all requested recently")
    cursor.generation += 1
    return dg.SensorResult(run_requests=requests, cursor=cursor.dump(now))


@dg.sensor(
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Records flowsheet_enrichment as materialized for each finished station day whose track "
        "rows all have a verdict (most enriched live by the sidecar, never by a run), so the "
        "partitions show enrichment coverage. Hourly; the first pass covers the whole history."
    ),
)
def enrichment_coverage_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource
) -> dg.SensorResult:
    cursor = CoverageCursor.parse(context.cursor)
    yesterday = datetime.now(ZoneInfo(STATION_TIMEZONE)).date() - timedelta(1)
    start, end = pass_window(cursor, first_day=FLOWSHEET_DAYS.start.date(), yesterday=yesterday)
    with postgres.connection() as conn:
        conn.execute("SET LOCAL statement_timeout = '60s'")
        coverage = {
            c.day: c for c in day_coverage(conn, tz=STATION_TIMEZONE, first=start, last=end)
        }
    days = days_to_record(cursor, start, end, {d: c.unfinished for d, c in coverage.items()})
    events = [
        dg.AssetMaterialization(
            asset_key=FLOWSHEET_ENRICHMENT_KEY,
            partition=day.isoformat(),
            metadata=_coverage_metadata(coverage.get(day)),
        )
        for day in days
    ]
    unfinished = sorted(d.isoformat() for d, c in coverage.items() if c.unfinished)
    context.log.info(
        f"{start}..{end}: {len(days)} day(s) recorded; unfinished: {unfinished[-5:] or 'none'}"
    )
    return dg.SensorResult(
        asset_events=events,
        cursor=cursor.dump(),
        skip_reason=f"recorded {len(days)} finished day(s) of {start}..{end} (no run to launch)",
    )


def _coverage_metadata(day: DayCoverage | None) -> dict[str, int | str]:
    if day is None:
        return {"dagster/row_count": 0, "recorded_by": "enrichment_coverage_sensor"}
    return {
        "dagster/row_count": day.track_rows,
        "matched": day.matched,
        "no_match": day.no_match,
        "parked": day.parked,
        "recorded_by": "enrichment_coverage_sensor",
    }
