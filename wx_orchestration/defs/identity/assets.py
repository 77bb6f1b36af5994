"""The `library_identity` asset: one library shard per partition, verdicts from LML."""

from datetime import timedelta

import dagster as dg
import sentry_sdk
from pydantic import Field

from wx_orchestration.clients.lml_budget import wait_until_lml_ready
from wx_orchestration.contracts.lml import BULK_RESOLVE_PATH
from wx_orchestration.core.identity import IdentityDiff, IdentityTotals
from wx_orchestration.db.identity import Selection
from wx_orchestration.defs.identity.partitions import LIBRARY_SHARDS
from wx_orchestration.defs.partition_keys import require_known_partition
from wx_orchestration.defs.policies import TRANSIENT_RETRY, NoRetryConfig
from wx_orchestration.defs.resources import LmlBudgetResource, LmlResource, PostgresResource
from wx_orchestration.defs.station.assets import LIBRARY_KEY, LML_KEY
from wx_orchestration.defs.tables import outcome_table, table
from wx_orchestration.flows.identity import (
    BulkResolveMissing,
    LmlAuthError,
    RefreshOptions,
    RefreshResult,
    refresh_shard,
)

LML_ERROR_RATE_WARN = 0.05
DIFF_TABLE_ROWS = 50


class LibraryIdentityConfig(NoRetryConfig):
    batch_size: int = Field(
        default=500, ge=1, le=1000, description="library rows per bulk-resolve call (LML caps 1000)"
    )
    stale_threshold_days: int = Field(
        default=7, gt=0, description="re-verify identities older than this"
    )
    unresolved_retry_days: int = Field(
        default=30,
        ge=0,
        description="wait this long before asking again about an unresolved row or a compilation",
    )
    include_null_canonical: bool = Field(
        default=False, description="also send rows without a canonical_entity_id"
    )
    dry_run: bool = Field(
        default=False, description="call LML but write nothing; report a diff instead"
    )
    breaker_wait_s: float = Field(
        default=120.0,
        ge=0,
        description="how long to wait while LML reports its Discogs breaker open, then stop",
    )


def _outcome_table(totals: IdentityTotals) -> dg.TableMetadataValue:
    return outcome_table(
        [
            ("resolved", totals.rows_resolved),
            ("resolved (compilation)", totals.rows_resolved_compilation),
            ("unresolved", totals.rows_unresolved),
            *((f"skipped: {reason}", count) for reason, count in totals.rows_skipped.items()),
        ],
        totals.scanned,
    )


def _diff_metadata(diff: IdentityDiff) -> dict[str, dg.MetadataValue]:
    return {
        "diff": dg.MetadataValue.json(diff.counts),
        "diff_changes": table(
            [("library_id", "int"), ("row", "string"), ("action", "string"), ("fields", "string")],
            (
                (c.library_id, c.target, c.action, ", ".join(c.fields))
                for c in diff.changes[:DIFF_TABLE_ROWS]
            ),
        ),
    }


def _checks(totals: IdentityTotals) -> list[dg.AssetCheckResult]:
    rate = totals.lml_error_rate()
    return [
        dg.AssetCheckResult(
            check_name="totals_balance",
            passed=totals.balanced(),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"scanned": totals.scanned, "outcome_sum": totals.outcome_sum()},
        ),
        dg.AssetCheckResult(
            check_name="lml_error_rate",
            passed=rate <= LML_ERROR_RATE_WARN,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"lml_error_rate": round(rate, 4), "threshold": LML_ERROR_RATE_WARN},
        ),
    ]


@dg.asset(
    partitions_def=LIBRARY_SHARDS,
    deps=[LIBRARY_KEY, LML_KEY],
    retry_policy=TRANSIENT_RETRY,
    # The weekly schedule refreshes every shard; a shard not refreshed in 8 days is stale.
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=timedelta(days=8), warn_window=timedelta(days=7, hours=6)
    ),
    pool="lml",
    group_name="identity",
    kinds={"postgres"},
    check_specs=[
        dg.AssetCheckSpec(
            "totals_balance",
            asset="library_identity",
            description="scanned equals the sum of the outcome buckets",
        ),
        dg.AssetCheckSpec(
            "lml_error_rate",
            asset="library_identity",
            description="share of rows whose LML batch failed (warn above 5%)",
        ),
    ],
    description=(
        "Cross-catalog identity of each library row, resolved by LML's bulk-resolve endpoint. "
        "Partition = library shard (library.id % 16); backfilling every shard is a full refresh."
    ),
)
def library_identity(
    context: dg.AssetExecutionContext,
    config: LibraryIdentityConfig,
    lml: LmlResource,
    postgres: PostgresResource,
    lml_budget: LmlBudgetResource,
) -> dg.MaterializeResult:
    require_known_partition(context)
    shard = int(context.partition_key)
    options = RefreshOptions(
        selection=Selection(
            shard=shard,
            stale_threshold_days=config.stale_threshold_days,
            unresolved_retry_days=config.unresolved_retry_days,
            include_null_canonical=config.include_null_canonical,
        ),
        batch_size=config.batch_size,
        dry_run=config.dry_run,
    )
    client = lml_budget.budgeted(lml, "identity")
    stopped = wait_until_lml_ready(
        client, max_wait_s=config.breaker_wait_s, progress=context.log.warning
    )
    with (
        sentry_sdk.start_span(op="library_identity.refresh", name=f"shard {shard:02d}") as span,
        postgres.connection(autocommit=True) as conn,
    ):
        if stopped:
            context.log.warning(f"shard {shard:02d} not refreshed: {stopped}")
            result = RefreshResult()
        else:
            try:
                result = refresh_shard(conn, client, options, progress=context.log.info)
            except LmlAuthError as exc:
                raise dg.Failure(description=str(exc), allow_retries=False) from None
            except BulkResolveMissing as exc:
                endpoint = f"{lml.get_client().base_url}{BULK_RESOLVE_PATH}"
                raise dg.Failure(
                    description=f"POST {endpoint}: {exc}", allow_retries=False
                ) from None
        totals = result.totals
        for key, value in totals.as_dict().items():
            span.set_data(f"totals.{key}", value)

    latency = totals.latency_percentiles()
    context.log.info(f"shard {shard:02d} done: {totals.as_dict()}")
    metadata: dict[str, dg.RawMetadataValue] = {
        "totals": dg.MetadataValue.json(totals.as_dict()),
        "outcomes": _outcome_table(totals),
        "lml_latency_p50_ms": latency["p50"],
        "lml_latency_p95_ms": latency["p95"],
        "batches": result.batches,
        "dry_run": config.dry_run,
        "dagster/row_count": totals.scanned,
        "lml_budget": dg.MetadataValue.json(
            {
                "lanes": lml_budget.get_budget().stats_summary(),
                "shared": lml_budget.get_budget().state("identity"),
            }
        ),
    }
    if stopped:
        metadata["stopped_reason"] = stopped
    if result.diff is not None:
        metadata.update(_diff_metadata(result.diff))
    return dg.MaterializeResult(metadata=metadata, check_results=_checks(totals))
