"""Checks that fail when a lifecycle piece falls behind. README's runbook says what to do."""

from datetime import UTC, datetime

import dagster as dg

from wx_orchestration.core.lifecycle import PassCursor
from wx_orchestration.db.lifecycle import (
    link_backlog,
    load_cursor,
    no_match_backlog,
    streaming_backlog,
    unfinished_cohorts,
)
from wx_orchestration.defs.lifecycle.assets import (
    DAY_S,
    STREAMING_RETRY_AFTER_HOURS,
    TTL_DAYS,
    link_upgrade,
    no_match_reask,
    streaming_reask,
)
from wx_orchestration.defs.resources import PostgresResource
from wx_orchestration.defs.station.assets import FLOWSHEET_KEY
from wx_orchestration.flows.lifecycle import LINK_UPGRADE, REASK, STREAMING_REASK

# A cohort run saves its position every page: one not moved for a day was left unfinished.
COHORT_IDLE_S = DAY_S


def _within_ttl(
    cursor: PassCursor, past_ttl: int, ttl_s: float, **counts: int
) -> dg.AssetCheckResult:
    """A recurring pass is behind when its current pass outlived the TTL, or rows went a whole
    TTL past being due."""
    started = cursor.pass_started_at
    age = (datetime.now(UTC) - started).total_seconds() if started else 0.0
    return dg.AssetCheckResult(
        passed=age <= ttl_s and past_ttl == 0,
        metadata={
            "pass": cursor.pass_number,
            "pass_age_days": round(age / DAY_S, 2),
            **counts,
        },
    )


@dg.asset_check(
    asset=no_match_reask,
    description=(
        "Fails when the re-ask falls behind: its current pass is older than the 30-day TTL "
        "(the cohort outgrew the budget share), or a no-match row was last asked more than two "
        "TTLs ago (due for a whole TTL and still not read)."
    ),
)
def no_match_reask_within_ttl(postgres: PostgresResource) -> dg.AssetCheckResult:
    ttl_s = TTL_DAYS * DAY_S
    with postgres.connection() as conn:
        cursor = load_cursor(conn, REASK)
        backlog = no_match_backlog(conn, ttl_s=ttl_s)
    return _within_ttl(
        cursor,
        backlog.past_ttl,
        ttl_s,
        rows_past_ttl=backlog.past_ttl,
        due=backlog.due,
        never_asked=backlog.never_asked,
    )


@dg.asset_check(
    asset=link_upgrade,
    description=(
        "Fails when the link upgrade falls behind: its current pass is older than the 30-day "
        "TTL, or a row still holding a search placeholder was last asked more than two TTLs ago."
    ),
)
def link_upgrade_within_ttl(postgres: PostgresResource) -> dg.AssetCheckResult:
    ttl_s = TTL_DAYS * DAY_S
    with postgres.connection() as conn:
        cursor = load_cursor(conn, LINK_UPGRADE)
        backlog = link_backlog(conn, ttl_s=ttl_s)
    return _within_ttl(
        cursor,
        backlog.past_ttl,
        ttl_s,
        rows_with_placeholders=backlog.rows,
        rows_past_ttl=backlog.past_ttl,
        never_asked=backlog.never_asked,
    )


@dg.asset_check(
    asset=streaming_reask,
    description=(
        "Fails when the streaming re-ask falls behind: its current pass is older than the 30-day "
        "TTL, or an album with an unresolved verdict under the attempt cap has gone unanswered "
        "for a whole TTL past its hourly spacing (a pass that never reaches it, or an LML that "
        "never answers it)."
    ),
)
def streaming_reask_within_ttl(postgres: PostgresResource) -> dg.AssetCheckResult:
    ttl_s = TTL_DAYS * DAY_S
    with postgres.connection() as conn:
        cursor = load_cursor(conn, STREAMING_REASK)
        backlog = streaming_backlog(
            conn, retry_after_s=STREAMING_RETRY_AFTER_HOURS * 3600.0, ttl_s=ttl_s
        )
    return _within_ttl(
        cursor,
        backlog.past_ttl,
        ttl_s,
        albums_past_ttl=backlog.past_ttl,
        eligible=backlog.eligible,
        due=backlog.due,
        at_cap=backlog.at_cap,
    )


@dg.asset_check(
    asset=FLOWSHEET_KEY,
    description=(
        "Fails when a cohort re-enrichment was started (a real run saved its position) and "
        "left unfinished: no run of it has moved for a day. Run it again by name to resume, or "
        "with `restart: true` to start over."
    ),
)
def cohort_reenrichment_finished(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connection() as conn:
        cohorts = unfinished_cohorts(conn)
    stalled = [cohort for cohort in cohorts if cohort.idle_s > COHORT_IDLE_S]
    return dg.AssetCheckResult(
        passed=not stalled,
        metadata={
            "unfinished": len(cohorts),
            "stalled": dg.MetadataValue.json(
                {
                    cohort.name: {
                        "idle_days": round(cohort.idle_s / DAY_S, 2),
                        "rows_so_far": cohort.counters.get("rows", 0),
                    }
                    for cohort in stalled
                }
            ),
        },
    )


LIFECYCLE_CHECKS = [
    no_match_reask_within_ttl,
    link_upgrade_within_ttl,
    streaming_reask_within_ttl,
    cohort_reenrichment_finished,
]
