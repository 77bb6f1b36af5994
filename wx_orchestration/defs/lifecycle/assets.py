"""What comes after a verdict (issue #18): `no_match_reask`, `link_upgrade`, `streaming_reask`,
`enrichment_report`.

The three passes run every two hours (one run for all) on the `lifecycle` lane of the shared
LML budget; each run may make only the calls its share buys over that interval
(`core.budget.lifecycle_calls`), so the backlog and live plays keep the rest.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from wx_orchestration.contracts.lml import (
    MAX_LOOKUP_BULK_ITEMS,
    NO_MATCH_RECHECK_LOOKUPS,
    STREAMING_UPGRADE_LOOKUPS,
)
from wx_orchestration.core.budget import LIFECYCLE_SHARE, lifecycle_calls
from wx_orchestration.core.lifecycle import PassCursor, pass_runs, rows_per_run
from wx_orchestration.core.report import (
    Report,
    chart_markdown,
    lifecycle_yield,
    match_rate_by_day,
    match_rate_by_show,
    match_rate_png,
    report_html,
    total,
)
from wx_orchestration.db.lifecycle import (
    load_cursor,
    no_match_backlog,
    report_rows,
    streaming_backlog,
)
from wx_orchestration.defs.policies import TRANSIENT_RETRY, NoRetryConfig, key_refusal_is_final
from wx_orchestration.defs.resources import LmlBudgetResource, LmlResource, PostgresResource
from wx_orchestration.defs.station.assets import FLOWSHEET_KEY, LIBRARY_KEY, LML_KEY
from wx_orchestration.flows.lifecycle import (
    LINK_UPGRADE,
    REASK,
    STREAMING_REASK,
    LifecycleOutcome,
    reask_no_matches,
    reask_streaming,
    upgrade_links,
)
from wx_orchestration.settings import ChecksSettings

DAY_S = 86400.0
# Every lifecycle TTL's default: a row is asked again after it, and the checks call a pass
# behind past it.
TTL_DAYS = 30.0
# The station's sweep asks an unresolved album again at most once an hour (its tick).
STREAMING_RETRY_AFTER_HOURS = 1.0
# The schedule launches both passes every two hours: 12 runs a day, so that housekeeping stays
# under 100 runs a day with the stale sweep's 72. A run's call allowance is its share of that.
PASS_INTERVAL_S = 2 * 3600.0
# Nothing is claimed while a lifecycle call waits for the budget, so it may wait long; past
# this the call counts as failed and the run stops with its cursor where it was.
LIFECYCLE_BUDGET_WAIT_S = 120.0
# Two missed runs in a row is a stalled pass.
PASS_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=6), warn_window=timedelta(hours=4, minutes=30)
)


class LaneConfig(NoRetryConfig):
    budget_share: float = Field(
        default=LIFECYCLE_SHARE,
        gt=0,
        le=1,
        description="fraction of the batch lanes' LML rate this pass may use over its interval",
    )
    max_calls: int | None = Field(
        default=None, ge=1, description="LML calls this run may make (default: the share's)"
    )


class PassConfig(LaneConfig):
    ttl_days: float = Field(
        default=TTL_DAYS, gt=0, description="a row answered definitively is not asked again sooner"
    )


class StreamingReaskConfig(LaneConfig):
    retry_after_hours: float = Field(
        default=STREAMING_RETRY_AFTER_HOURS,
        gt=0,
        description="an album answered (or written by anyone) is not asked again sooner",
    )


class ReaskConfig(PassConfig):
    min_age_s: float = Field(
        default=3600.0,
        ge=0,
        description="leave plays younger than this alone: their live verdict is minutes old",
    )


def _calls(config: LaneConfig, lml_budget: LmlBudgetResource) -> int:
    limits = lml_budget.get_budget().limits
    return config.max_calls or lifecycle_calls(limits, PASS_INTERVAL_S, config.budget_share)


def _progress(
    outcome: LifecycleOutcome,
    cursor: PassCursor,
    calls: int,
    cursor_keys: tuple[str, str] = ("add_time", "flowsheet_id"),
) -> dict[str, Any]:
    now = datetime.now(UTC)
    started = cursor.pass_started_at
    return {
        "outcomes": dg.MetadataValue.json(outcome.counts()),
        "not_a_verdict_reasons": dg.MetadataValue.json(outcome.by_reason),
        "stopped": outcome.stopped,
        "lml_calls": outcome.lml_calls,
        "lml_call_allowance": calls,
        "pass": cursor.pass_number,
        "pass_age_s": round((now - started).total_seconds(), 1) if started else 0.0,
        "passes_done": cursor.passes_done,
        "last_pass_s": cursor.last_pass_s,
        "cursor": dg.MetadataValue.json(
            {
                cursor_keys[0]: cursor.add_time.isoformat() if cursor.add_time else None,
                cursor_keys[1]: cursor.flowsheet_id,
            }
        ),
        "dagster/row_count": outcome.read,
    }


@dg.asset(
    deps=[FLOWSHEET_KEY, LML_KEY],
    # A retried run resumes from the saved cursor: nothing is asked or written twice.
    retry_policy=TRANSIENT_RETRY,
    freshness_policy=PASS_FRESHNESS,
    pool="lml",
    group_name="lifecycle",
    kinds={"postgres"},
    description=(
        "Every enriched_no_match track row re-asked within the TTL, newest play first, from a "
        "saved cursor that moves past every row read (no slice is re-read forever, none "
        "starves). A trusted match becomes enriched_match, fill-only, through the live path's "
        "finalize (listeners get an `update`); a no-match stamps "
        "no_match_recheck_attempted_at; a transient answer leaves the row due."
    ),
)
def no_match_reask(
    context: dg.AssetExecutionContext,
    config: ReaskConfig,
    lml: LmlResource,
    postgres: PostgresResource,
    lml_budget: LmlBudgetResource,
) -> dg.MaterializeResult:
    calls = _calls(config, lml_budget)
    client = lml_budget.budgeted(
        lml, "lifecycle", caller=NO_MATCH_RECHECK_LOOKUPS, wait_timeout_s=LIFECYCLE_BUDGET_WAIT_S
    )
    ttl_s = config.ttl_days * DAY_S
    with postgres.connection(autocommit=True) as conn:
        with key_refusal_is_final():
            outcome = reask_no_matches(
                conn,
                client,
                ttl_s=ttl_s,
                max_calls=calls,
                min_age_s=config.min_age_s,
                progress=context.log.info,
            )
        cursor = load_cursor(conn, REASK)
        backlog = no_match_backlog(conn, ttl_s=ttl_s)
    per_run = rows_per_run(calls, MAX_LOOKUP_BULK_ITEMS)
    return dg.MaterializeResult(
        metadata={
            **_progress(outcome, cursor, calls),
            "cohort": backlog.cohort,
            "due": backlog.due,
            "never_asked": backlog.never_asked,
            "past_ttl": backlog.past_ttl,
            # Runs one pass over what is due now takes at this run's allowance.
            "pass_runs_for_due": pass_runs(backlog.due, per_run),
        }
    )


@dg.asset(
    deps=[FLOWSHEET_KEY, LML_KEY],
    # A retried run resumes from the saved cursor: nothing is asked or written twice.
    retry_policy=TRANSIENT_RETRY,
    freshness_policy=PASS_FRESHNESS,
    pool="lml",
    group_name="lifecycle",
    kinds={"postgres"},
    description=(
        "Search-URL placeholders (open.spotify.com/search/…, bandcamp.com/search?q=…, and the "
        "YouTube Music and SoundCloud ones) on matched rows and their albums, re-asked on a TTL "
        "and replaced column by column by the verified link LML returns; a verified link is "
        "never touched."
    ),
)
def link_upgrade(
    context: dg.AssetExecutionContext,
    config: PassConfig,
    lml: LmlResource,
    postgres: PostgresResource,
    lml_budget: LmlBudgetResource,
) -> dg.MaterializeResult:
    calls = _calls(config, lml_budget)
    client = lml_budget.budgeted(
        lml, "lifecycle", caller=STREAMING_UPGRADE_LOOKUPS, wait_timeout_s=LIFECYCLE_BUDGET_WAIT_S
    )
    with postgres.connection(autocommit=True) as conn:
        with key_refusal_is_final():
            outcome = upgrade_links(
                conn,
                client,
                ttl_s=config.ttl_days * DAY_S,
                max_calls=calls,
                progress=context.log.info,
            )
        cursor = load_cursor(conn, LINK_UPGRADE)
    return dg.MaterializeResult(metadata=_progress(outcome, cursor, calls))


@dg.asset(
    deps=[LIBRARY_KEY, LML_KEY],
    # A retried run resumes from the saved cursor: nothing is asked or written twice.
    retry_policy=TRANSIENT_RETRY,
    freshness_policy=PASS_FRESHNESS,
    pool="lml",
    group_name="lifecycle",
    kinds={"postgres"},
    description=(
        "The station's streaming re-ask (streaming-reask.ts): matched albums whose Spotify, "
        "Apple Music or Bandcamp verdict is `unresolved` (or Bandcamp's frozen search link "
        "with no verdict), under the 3-attempt cap, re-asked by artist and title at most once "
        "per retry_after_hours. A definitive answer spends one attempt and writes, service by "
        "service, only what LML said: a verified link is never touched, `absent` yields only "
        "to `verified`. A shed, degraded or failed answer writes nothing and spends nothing."
    ),
)
def streaming_reask(
    context: dg.AssetExecutionContext,
    config: StreamingReaskConfig,
    lml: LmlResource,
    postgres: PostgresResource,
    lml_budget: LmlBudgetResource,
) -> dg.MaterializeResult:
    calls = _calls(config, lml_budget)
    client = lml_budget.budgeted(
        lml, "lifecycle", caller=STREAMING_UPGRADE_LOOKUPS, wait_timeout_s=LIFECYCLE_BUDGET_WAIT_S
    )
    retry_after_s = config.retry_after_hours * 3600.0
    with postgres.connection(autocommit=True) as conn:
        with key_refusal_is_final():
            outcome = reask_streaming(
                conn,
                client,
                retry_after_s=retry_after_s,
                max_calls=calls,
                progress=context.log.info,
            )
        cursor = load_cursor(conn, STREAMING_REASK)
        backlog = streaming_backlog(conn, retry_after_s=retry_after_s, ttl_s=TTL_DAYS * DAY_S)
    return dg.MaterializeResult(
        metadata={
            **_progress(outcome, cursor, calls, ("updated_at", "album_id")),
            "written": dg.MetadataValue.json(outcome.changes),
            "eligible": backlog.eligible,
            "due": backlog.due,
            "past_ttl": backlog.past_ttl,
            "at_cap": backlog.at_cap,
        }
    )


# --- the report ------------------------------------------------------------------------------

STATION_TZ = "America/New_York"


class ReportConfig(NoRetryConfig):
    days: int = Field(default=14, ge=1, le=366, description="how many days back the report covers")
    top_artists: int = Field(default=25, ge=1, le=500, description="unmatched artists listed")
    ttl_days: float = Field(default=TTL_DAYS, gt=0, description="the re-ask's TTL, for its states")
    output_dir: str = Field(
        default_factory=lambda: ChecksSettings.from_env().report_dir,
        description="where the HTML report and its chart are written (env WX_REPORT_DIR)",
    )


def _frame(rows: list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def _table(frame: pd.DataFrame) -> dg.TableMetadataValue:
    """A frame as Dagster table metadata (ints, floats and text; NaN as null)."""

    def kind(dtype: Any) -> str:
        if pd.api.types.is_integer_dtype(dtype):
            return "int"
        return "float" if pd.api.types.is_float_dtype(dtype) else "string"

    columns = [dg.TableColumn(str(name), kind(frame[name].dtype)) for name in frame.columns]
    records = [
        dg.TableRecord(
            {
                str(name): (
                    None if pd.isna(value) else value.item() if hasattr(value, "item") else value
                )
                for name, value in row.items()
            }
        )
        for row in frame.to_dict("records")
    ]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


@dg.asset(
    deps=[FLOWSHEET_KEY, no_match_reask, link_upgrade, streaming_reask],
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=timedelta(days=2), warn_window=timedelta(hours=26)
    ),
    group_name="lifecycle",
    kinds={"pandas", "postgres"},
    description=(
        "Daily: match rate by day and by show, no-match rows by re-ask state and parked rows by "
        "reason, the lifecycle's yield and LML calls per enriched row, and the top unmatched "
        "artists for a librarian (the station's no-match digest). Tables and a PNG chart in the "
        "UI; the same as an HTML page with the PNG beside it in WX_REPORT_DIR."
    ),
)
def enrichment_report(
    context: dg.AssetExecutionContext, config: ReportConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    with postgres.connection() as conn:
        rows = report_rows(
            conn,
            days=config.days,
            tz=STATION_TZ,
            top=config.top_artists,
            ttl_s=config.ttl_days * DAY_S,
        )
    plays = _frame(rows["plays"], ["day", "show_id", "status", "rows"])
    report = Report(
        by_day=match_rate_by_day(plays),
        by_show=match_rate_by_show(plays),
        no_match_reasons=_frame(rows["no_match_states"], ["state", "rows"]),
        parked_reasons=_frame(rows["parked"], ["reason", "rows"]),
        lifecycle=lifecycle_yield(
            _frame(
                rows["runs"],
                ["kind", "asked", "matched", "stamped", "not_a_verdict", "upgraded", "lml_calls"],
            )
        ),
        top_unmatched=_frame(rows["top_unmatched"], ["artist", "plays", "last_played"]),
    )
    png = match_rate_png(report.by_day)
    today = datetime.now(UTC).date().isoformat()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart_file = out / f"enrichment_report_{today}.png"
    chart_file.write_bytes(png)
    page = out / f"enrichment_report_{today}.html"
    page.write_text(report_html(report, f"WXYC enrichment report {today}", chart_file.name))
    context.log.info(f"enrichment report written to {page}")
    by_day = report.by_day
    matched = total(by_day, "enriched_match")
    decided = matched + total(by_day, "enriched_no_match")
    return dg.MaterializeResult(
        metadata={
            "match_rate_by_day": _table(report.by_day),
            "match_rate_by_show": _table(report.by_show),
            "no_match_by_reask_state": _table(report.no_match_reasons),
            "parked_by_reason": _table(report.parked_reasons),
            "lifecycle_yield": _table(report.lifecycle),
            "top_unmatched_artists": _table(report.top_unmatched),
            "chart": dg.MetadataValue.md(chart_markdown(png)),
            "match_rate": round(matched / decided, 3) if decided else None,
            "report_file": dg.MetadataValue.path(str(page.resolve())),
            "chart_file": dg.MetadataValue.path(str(chart_file.resolve())),
            "dagster/row_count": total(by_day, "tracks"),
        }
    )
