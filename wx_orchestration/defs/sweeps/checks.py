"""Asset checks: nothing stuck silently. README's runbook says what to do for each.

Every check here only reads, so `sidecar_health_sensor` evaluates them all each tick as check
evaluations (no run, no process launch); `health_checks_job` evaluates them on demand.
"""

from typing import Any

import dagster as dg

from wx_orchestration.clients.redis_client import stream_groups
from wx_orchestration.contracts.cdc import CDC_STREAM
from wx_orchestration.core.timing import SWEEP_INTERVAL_S
from wx_orchestration.core.watermark_lead import MAX_LEAD_S
from wx_orchestration.db.enrichment import CLAIMABLE
from wx_orchestration.db.paced_writes import watermark_leads
from wx_orchestration.db.sweeps import stranded_claims as count_stranded_claims
from wx_orchestration.defs.observability.assets import WX_CDC_STREAM_KEY
from wx_orchestration.defs.observability.sentry import with_sentry
from wx_orchestration.defs.resources import PostgresResource, RedisResource
from wx_orchestration.defs.sweeps.jobs import FLOWSHEET_ENRICHMENT, StaleSweepConfig
from wx_orchestration.settings import ChecksSettings, DatabaseSettings

PENDING_WARN_S = 600
PENDING_ERROR_S = 3600
STREAM_LAG_WARN = 1000
DEAD_LETTER_CURSOR_KEY = "wx:checks:dead_letters:last_id"

# Rows waiting out a retry backoff, or with a blank artist, are not late: the same predicate
# as the claims decides what counts.
_OLDEST_PENDING_TODAY = f"""
SELECT count(*), extract(epoch FROM now() - min(f.add_time))
FROM flowsheet AS f
WHERE {CLAIMABLE}
  AND f.add_time > now() - interval '1 day'
"""

# A play still waiting counts with its age so far: a play the fast path missed (enriched later
# by a backlog run, or not yet) is the slowest of all, not absent from the percentiles.
_FRESHNESS = """
WITH inserted AS (
    SELECT flowsheet_id, min(coalesce(cdc_timestamp, bridged_at)) AS at
    FROM wx_orchestration.flowsheet_events
    WHERE action IN ('INSERT', 'CATCHUP') AND metadata_status = 'pending'
      AND logged_at > now() - interval '1 hour'
    GROUP BY flowsheet_id
), finished AS (
    SELECT e.flowsheet_id, min(coalesce(e.cdc_timestamp, e.bridged_at)) AS at
    FROM wx_orchestration.flowsheet_events AS e
    JOIN inserted USING (flowsheet_id)
    WHERE e.metadata_status IN ('enriched_match', 'enriched_no_match', 'failed_no_retry')
    GROUP BY e.flowsheet_id
), waited AS (
    SELECT f.at IS NULL AS waiting, extract(epoch FROM coalesce(f.at, now()) - i.at) AS s
    FROM inserted AS i LEFT JOIN finished AS f USING (flowsheet_id)
)
SELECT count(*), count(*) FILTER (WHERE waiting),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY s),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY s)
FROM waited
"""

_NEW_DEAD_LETTERS = """
SELECT coalesce(max(id), %(after)s), count(*),
       coalesce(jsonb_agg(DISTINCT left(reason, 120)) FILTER (WHERE reason IS NOT NULL), '[]')
FROM wx_orchestration.dead_letters WHERE id > %(after)s
"""


@dg.asset_check(
    asset=FLOWSHEET_ENRICHMENT,
    description="Oldest pending track row from the last day: warn > 10 min, error > 1 h.",
)
def oldest_pending_age(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connection() as conn:
        row = conn.execute(_OLDEST_PENDING_TODAY).fetchone()
    pending, age = (int(row[0]), float(row[1] or 0)) if row else (0, 0.0)
    severity = dg.AssetCheckSeverity.ERROR if age > PENDING_ERROR_S else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        passed=age <= PENDING_WARN_S,
        severity=severity,
        metadata={"pending_rows_last_day": pending, "oldest_pending_age_s": round(age, 1)},
    )


@dg.asset_check(
    asset=FLOWSHEET_ENRICHMENT,
    description="Claims older than the sweep's lease plus its interval: 0 while "
    "stale_sweep_schedule runs, else it is off or failing.",
)
def stranded_claims(postgres: PostgresResource) -> dg.AssetCheckResult:
    lease_s = StaleSweepConfig().lease_s
    older_than_s = lease_s + SWEEP_INTERVAL_S
    with postgres.connection() as conn:
        stranded = count_stranded_claims(conn, lease_s=older_than_s)
    return dg.AssetCheckResult(
        passed=stranded == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"stranded_claims": stranded, "older_than_s": older_than_s},
    )


@dg.asset_check(
    asset=FLOWSHEET_ENRICHMENT,
    description=(
        "p50/p95 of INSERT → terminal status over the last hour, from the event log; a play "
        "still waiting counts with its age so far."
    ),
)
def enrichment_freshness(postgres: PostgresResource) -> dg.AssetCheckResult:
    target = ChecksSettings.from_env().freshness_target_s
    with postgres.connection() as conn:
        row = conn.execute(_FRESHNESS).fetchone()
    rows, waiting, p50, p95 = (
        (int(row[0]), int(row[1]), row[2], row[3]) if row else (0, 0, None, None)
    )
    return dg.AssetCheckResult(
        passed=p95 is None or float(p95) <= target,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "rows_last_hour": rows,
            "still_waiting": waiting,
            "p50_s": round(float(p50), 3) if p50 is not None else None,
            "p95_s": round(float(p95), 3) if p95 is not None else None,
            "target_p95_s": target,
        },
    )


@dg.asset_check(
    asset=WX_CDC_STREAM_KEY,
    description="Dead letters written since this check last ran (warn on any).",
)
def dead_letters(postgres: PostgresResource, redis: RedisResource) -> dg.AssetCheckResult:
    client = redis.get_client()
    after = int(client.get(DEAD_LETTER_CURSOR_KEY) or 0)  # type: ignore[arg-type]
    with postgres.connection() as conn:
        row = conn.execute(_NEW_DEAD_LETTERS, {"after": after}).fetchone()
    assert row is not None
    last_id, new, reasons = int(row[0]), int(row[1]), row[2]
    client.set(DEAD_LETTER_CURSOR_KEY, last_id)
    return dg.AssetCheckResult(
        passed=new == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"new_dead_letters": new, "reasons": dg.MetadataValue.json(reasons)},
    )


@dg.asset_check(
    asset=WX_CDC_STREAM_KEY,
    description=f"Entries each consumer group of {CDC_STREAM} has yet to read (warn above 1000).",
)
def stream_lag(redis: RedisResource) -> dg.AssetCheckResult:
    length, groups = stream_groups(redis.get_client(), CDC_STREAM)
    lags = {g.name: g.lag for g in groups}
    behind = [name for name, lag in lags.items() if lag is None or lag > STREAM_LAG_WARN]
    return dg.AssetCheckResult(
        passed=length is not None and bool(groups) and not behind,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "stream_exists": length is not None,
            "lag": dg.MetadataValue.json(lags),
            "pending": dg.MetadataValue.json({g.name: g.pending for g in groups}),
        },
    )


@dg.asset_check(
    asset=FLOWSHEET_ENRICHMENT,
    description="How far the station's Last-Modified (flowsheet_watermark) stands ahead of the "
    "clock, and our own statements' share of it: fails when ours passes the bound "
    "(WX_FLOWSHEET_MAX_LEAD_S), warns when the station's does.",
)
def watermark_lead(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connection() as conn:
        station, ours = watermark_leads(conn, postgres.schema)
    bound = DatabaseSettings.from_env().max_lead_s or MAX_LEAD_S
    ours_ok = ours <= bound
    return dg.AssetCheckResult(
        passed=ours_ok and station <= bound,
        severity=dg.AssetCheckSeverity.WARN if ours_ok else dg.AssetCheckSeverity.ERROR,
        metadata={
            "station_lead_s": round(station, 2),
            "our_lead_s": round(ours, 2),
            "bound_s": bound,
        },
    )


HEALTH_CHECKS = [
    oldest_pending_age,
    watermark_lead,
    stranded_claims,
    enrichment_freshness,
    dead_letters,
    stream_lag,
]

health_checks_job = with_sentry(
    dg.define_asset_job(
        "health_checks_job",
        selection=dg.AssetSelection.checks(*HEALTH_CHECKS),
        description="Evaluate the health checks now (sidecar_health_sensor does every minute).",
    )
)


def evaluate_health_checks(resources: dict[str, Any]) -> list[dg.AssetCheckEvaluation]:
    """Each check's result as the evaluation a sensor records; `resources` by resource key."""
    evaluations = []
    for check in HEALTH_CHECKS:
        result = check(**{k: v for k, v in resources.items() if k in check.required_resource_keys})
        assert isinstance(result, dg.AssetCheckResult)
        (check_key,) = check.check_keys
        evaluations.append(
            dg.AssetCheckEvaluation(
                asset_key=check_key.asset_key,
                check_name=check_key.name,
                passed=result.passed,
                severity=result.severity,
                metadata=result.metadata,
            )
        )
    return evaluations
