"""Checks that fail when a lifecycle pass falls behind its TTL. README's runbook says what to do."""

from datetime import UTC, datetime

import dagster as dg

from wx_orchestration.db.lifecycle import load_cursor, no_match_backlog
from wx_orchestration.defs.lifecycle.assets import DAY_S, link_upgrade, no_match_reask
from wx_orchestration.defs.resources import PostgresResource
from wx_orchestration.flows.lifecycle import LINK_UPGRADE, REASK

TTL_DAYS = 30.0


def _pass_age_s(started: datetime | None) -> float:
    return (datetime.now(UTC) - started).total_seconds() if started else 0.0


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
    age = _pass_age_s(cursor.pass_started_at)
    return dg.AssetCheckResult(
        passed=age <= ttl_s and backlog.past_ttl == 0,
        metadata={
            "pass": cursor.pass_number,
            "pass_age_days": round(age / DAY_S, 2),
            "rows_past_ttl": backlog.past_ttl,
            "due": backlog.due,
            "never_asked": backlog.never_asked,
        },
    )


@dg.asset_check(
    asset=link_upgrade,
    description="Fails when the link upgrade's current pass is older than its 30-day TTL.",
)
def link_upgrade_within_ttl(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connection() as conn:
        cursor = load_cursor(conn, LINK_UPGRADE)
    age = _pass_age_s(cursor.pass_started_at)
    return dg.AssetCheckResult(
        passed=age <= TTL_DAYS * DAY_S,
        metadata={"pass": cursor.pass_number, "pass_age_days": round(age / DAY_S, 2)},
    )


LIFECYCLE_CHECKS = [no_match_reask_within_ttl, link_upgrade_within_ttl]
