"""The `flowsheet_enrichment` asset: drain a day's (or a backfilled range's) pending rows."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
import sentry_sdk
from pydantic import Field

from wx_orchestration.clients.lml_budget import wait_until_lml_ready
from wx_orchestration.contracts.lml import MAX_LOOKUP_BULK_ITEMS
from wx_orchestration.core.timing import BACKLOG_BUDGET_WAIT_S, FAST_PATH_GRACE_S
from wx_orchestration.core.watermark_lead import MAX_BACKLOG_BATCH_CALLS, backlog_batch_rows
from wx_orchestration.defs.enrichment.partitions import FLOWSHEET_DAYS
from wx_orchestration.defs.observability.assets import WX_CDC_STREAM_KEY
from wx_orchestration.defs.partition_keys import require_known_partition
from wx_orchestration.defs.policies import TRANSIENT_RETRY, NoRetryConfig, key_refusal_is_final
from wx_orchestration.defs.resources import LmlBudgetResource, LmlResource, PostgresResource
from wx_orchestration.defs.station.assets import LML_KEY
from wx_orchestration.defs.tables import outcome_table
from wx_orchestration.flows.enrichment import drain_backlog


class FlowsheetEnrichmentConfig(NoRetryConfig):
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BACKLOG_BATCH_CALLS * MAX_LOOKUP_BULK_ITEMS,
        description="rows claimed at a time (default: what the backlog's share of "
        "LML_RATE_PER_SECOND looks up in the three seconds a claim and a finalize cost the "
        "station's Last-Modified, 100 to 5,000); LML calls stop 4 s after the claim",
    )
    time_budget_s: float = Field(
        default=3000.0, gt=0, description="stop cleanly between batches after this many seconds"
    )
    grace_period_s: float = Field(
        default=FAST_PATH_GRACE_S,
        ge=0,
        description="leave rows younger than this to the sidecar's fast path",
    )
    breaker_wait_s: float = Field(
        default=120.0,
        ge=0,
        description="how long to wait while LML reports its Discogs breaker open, then stop",
    )


def _batch_rows(lml_budget: LmlBudgetResource) -> int:
    limits = lml_budget.get_budget().limits
    return backlog_batch_rows(
        limits.rate_per_second * (1 - limits.live_reserve),
        items_per_call=MAX_LOOKUP_BULK_ITEMS,
        max_calls=MAX_BACKLOG_BATCH_CALLS,
    )


@dg.asset(
    partitions_def=FLOWSHEET_DAYS,
    deps=[WX_CDC_STREAM_KEY, LML_KEY],
    # Materialized only when the window is drained: a run that stops (time budget, breaker,
    # budget wait, lost connection) records its progress as an observation and leaves the
    # partitions unmaterialized, so partition status is the truth about coverage.
    output_required=False,
    retry_policy=TRANSIENT_RETRY,
    # A UI range backfill is one run over the whole window, not one run per day.
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="lml",
    group_name="enrichment",
    kinds={"postgres"},
    description=(
        "Flowsheet track rows enriched by LML (artwork, links, bio, composer). Partition = "
        "broadcast day by add_time (America/New_York); a run claims that day's pending rows "
        "newest first, looks each distinct (artist, album, track) up once and finalizes "
        "set-based. The sidecar handles live plays first; this path guarantees completeness."
    ),
)
def flowsheet_enrichment(
    context: dg.AssetExecutionContext,
    config: FlowsheetEnrichmentConfig,
    lml: LmlResource,
    postgres: PostgresResource,
    lml_budget: LmlBudgetResource,
) -> Iterator[dg.MaterializeResult]:
    require_known_partition(context)
    window = context.partition_time_window
    label = f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}"
    client = lml_budget.budgeted(lml, "backlog", wait_timeout_s=BACKLOG_BUDGET_WAIT_S)
    stopped = wait_until_lml_ready(
        client, max_wait_s=config.breaker_wait_s, progress=context.log.warning
    )
    if stopped:
        context.log.warning(f"{label} not drained: {stopped}")
        _observe_stop(context, {"stopped": stopped})
        return
    with (
        sentry_sdk.start_span(op="flowsheet_enrichment.drain", name=label) as span,
        postgres.connection(autocommit=True) as conn,
    ):
        with key_refusal_is_final():
            result = drain_backlog(
                conn,
                client,
                start=window.start,
                end=window.end,
                grace_s=config.grace_period_s,
                batch_size=config.batch_size or _batch_rows(lml_budget),
                time_budget_s=config.time_budget_s,
                progress=context.log.info,
                reconnect=lambda: postgres.connection(autocommit=True),
            )
        for name, count in result.outcome.outcome_counts().items():
            span.set_data(f"outcome.{name}", count)

    outcome = result.outcome
    context.log.info(f"{label}: {outcome.outcome_counts()} ({result.stopped})")
    metadata = {
        "outcomes": dg.MetadataValue.json(outcome.outcome_counts()),
        "outcome_table": outcome_table(outcome.outcome_counts().items(), outcome.rows),
        "rows_per_s": round(result.rows_per_s(), 1),
        "lml_calls_per_row": round(result.lml_calls_per_row(), 4),
        "lml_calls": outcome.lml_calls,
        "lookups": outcome.lookups,
        "cache_hits": outcome.cache_hits,
        "parked": outcome.parked,
        "batches": result.batches,
        "stopped": result.stopped,
        "seconds": dg.MetadataValue.json(
            {
                "total": round(result.elapsed_s, 3),
                "claim": round(result.claim_s, 3),
                "lml": round(outcome.lml_s, 3),
                "write": round(outcome.write_s, 3),
            }
        ),
        "dagster/row_count": outcome.rows,
        "lml_budget": dg.MetadataValue.json(
            {
                "lanes": lml_budget.get_budget().stats_summary(),
                "shared": lml_budget.get_budget().state("lookup"),
            }
        ),
    }
    if result.stopped != "drained":
        context.log.warning(f"{label} not drained ({result.stopped}): left unmaterialized")
        _observe_stop(context, metadata)
        return
    yield dg.MaterializeResult(metadata=metadata)


def _observe_stop(context: dg.AssetExecutionContext, metadata: dict[str, Any]) -> None:
    """A stopped run's progress, on the asset but not as a materialization of its partitions."""
    window = context.partition_time_window
    context.log_event(
        dg.AssetObservation(
            asset_key=context.asset_key,
            metadata={**metadata, "window": f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}"},
        )
    )
