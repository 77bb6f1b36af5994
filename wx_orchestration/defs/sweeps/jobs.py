"""`stale_sweep_job` (every 20 minutes) and `requeue_parked_job` (by hand)."""

import dagster as dg
from pydantic import Field

from wx_orchestration.core.enrichment import RetryPolicy
from wx_orchestration.core.timing import (
    CLAIM_LEASE_S,
    FAST_PATH_GRACE_S,
    ClaimTimingError,
    check_lease,
)
from wx_orchestration.db.sweeps import (
    count_missed_pending,
    expire_stale_claims,
    parked_rows,
    requeue,
)
from wx_orchestration.defs.observability.sentry import with_sentry
from wx_orchestration.defs.resources import LmlResource, PostgresResource
from wx_orchestration.defs.tables import table

FLOWSHEET_ENRICHMENT = dg.AssetKey("flowsheet_enrichment")


class StaleSweepConfig(dg.Config):
    lease_s: float = Field(
        default=CLAIM_LEASE_S, gt=0, description="a claim older than this is presumed abandoned"
    )
    max_attempts: int = Field(default=5, ge=1, description="park a row after this many failures")
    backoff_base_s: float = Field(default=60.0, gt=0, description="first retry waits up to this")
    backoff_cap_s: float = Field(default=6 * 3600.0, gt=0, description="no retry waits longer")
    grace_period_s: float = Field(
        default=FAST_PATH_GRACE_S,
        ge=0,
        description="pending rows younger than this are the fast path's",
    )


@dg.op(
    description=(
        "Return claims older than the lease to pending (compare-and-set on the claim time), park "
        "rows at the attempt cap with their reason, and count pending rows the fast path missed."
    )
)
def sweep_stale_claims(
    context: dg.OpExecutionContext,
    config: StaleSweepConfig,
    postgres: PostgresResource,
    lml: LmlResource,
) -> None:
    try:
        check_lease(config.lease_s, lml.total_timeout_s)
    except ClaimTimingError as exc:
        raise dg.Failure(description=str(exc)) from None
    policy = RetryPolicy(
        base_s=config.backoff_base_s, cap_s=config.backoff_cap_s, max_attempts=config.max_attempts
    )
    with postgres.connection(autocommit=True) as conn:
        report = expire_stale_claims(conn, lease_s=config.lease_s, policy=policy)
        count_missed_pending(conn, report, grace_s=config.grace_period_s)
    context.log.info(f"stale sweep: {report.as_metadata()}")
    # On the asset, so the UI shows the sweep's findings next to the enrichment history.
    context.log_event(
        dg.AssetObservation(
            asset_key=FLOWSHEET_ENRICHMENT,
            metadata={
                "sweep_reset": report.reset,
                "sweep_parked": report.parked,
                "sweep_raced": report.raced,
                "missed_pending": report.missed,
                "missed_by_age": dg.MetadataValue.json(report.missed_by_age or {}),
                "oldest_missed_age_s": report.oldest_missed_age_s,
            },
        )
    )


@with_sentry
@dg.job(description="Expire stranded claims; count missed rows.")
def stale_sweep_job() -> None:
    sweep_stale_claims()


class RequeueConfig(dg.Config):
    ids: list[int] = Field(default_factory=list, description="flowsheet ids to requeue")
    reason: str = Field(
        default="", description="requeue every parked row whose reason contains this text"
    )
    dry_run: bool = Field(default=True, description="only show what would be requeued")


@dg.op(description="failed_no_retry → pending (attempts reset), by id list or by reason.")
def requeue_parked_rows(
    context: dg.OpExecutionContext, config: RequeueConfig, postgres: PostgresResource
) -> dg.Output[int]:
    if not config.ids and not config.reason:
        raise dg.Failure(description="give `ids` or `reason`: requeueing everything is refused")
    with postgres.connection(autocommit=True) as conn:
        parked = parked_rows(conn, ids=config.ids or None, reason=config.reason or None)
        touched = (
            [row.flowsheet_id for row in parked]
            if config.dry_run
            else requeue(conn, [row.flowsheet_id for row in parked])
        )
    verb = "would requeue" if config.dry_run else "requeued"
    context.log.info(f"{verb} {len(touched)} parked row(s)")
    return dg.Output(
        len(touched),
        metadata={
            "dry_run": config.dry_run,
            "rows": len(touched),
            "parked_rows": table(
                [
                    ("flowsheet_id", "int"),
                    ("parked_reason", "string"),
                    ("last_attempt_at", "string"),
                ],
                ((r.flowsheet_id, r.reason, str(r.last_attempt_at)) for r in parked[:100]),
            ),
        },
    )


@with_sentry
@dg.job(description="Operator: requeue parked rows (dry run first).")
def requeue_parked_job() -> None:
    requeue_parked_rows()
