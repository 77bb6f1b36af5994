"""`enrichment_lifecycle_job` (scheduled), `enrichment_report_job` (daily) and
`cohort_reenrichment_job` (by hand: dry run first)."""

from datetime import datetime
from typing import Any, cast, get_args

import dagster as dg
import pandas as pd
from pydantic import Field

from wx_orchestration.contracts.lml import REENRICHMENT_LOOKUPS
from wx_orchestration.core.budget import lifecycle_calls
from wx_orchestration.core.lifecycle import COHORT_STATUSES, CohortSpec, Linked, PassCursor
from wx_orchestration.db.lifecycle import (
    cursor_counters,
    forget_cursor,
    load_cursor,
    preview_cohort,
)
from wx_orchestration.defs.lifecycle.assets import (
    LIFECYCLE_BUDGET_WAIT_S,
    enrichment_report,
    link_upgrade,
    no_match_reask,
    streaming_reask,
)
from wx_orchestration.defs.lifecycle.checks import cohort_reenrichment_finished
from wx_orchestration.defs.observability.sentry import with_sentry
from wx_orchestration.defs.policies import key_refusal_is_final
from wx_orchestration.defs.resources import LmlBudgetResource, LmlResource, PostgresResource
from wx_orchestration.flows.lifecycle import cohort_cursor_name, reenrich_cohort

enrichment_lifecycle_job = with_sentry(
    dg.define_asset_job(
        "enrichment_lifecycle_job",
        # The cohort check rides along: a cohort is run by hand, so nothing else would notice
        # one left half done.
        selection=dg.AssetSelection.assets(no_match_reask, link_upgrade, streaming_reask)
        | dg.AssetSelection.checks(cohort_reenrichment_finished),
        description=(
            "One run of each recurring pass (no-match re-ask, link upgrade, streaming re-ask), "
            "and the check for cohorts left unfinished."
        ),
    )
)

enrichment_report_job = with_sentry(
    dg.define_asset_job(
        "enrichment_report_job",
        selection=dg.AssetSelection.assets(enrichment_report),
        description="The daily enrichment report (tables, chart, and an HTML file).",
    )
)


class CohortConfig(dg.Config):
    name: str = Field(
        description="the cohort's name: a run resumes where the last run of this name stopped"
    )
    statuses: list[str] = Field(
        default_factory=lambda: ["enriched_no_match"],
        description=f"metadata_status values taken, among {', '.join(COHORT_STATUSES)}",
    )
    linked: str = Field(default="any", description="any, linked (album_id set) or unlinked")
    added_from: str | None = Field(
        default=None, description="add_time >= this (ISO 8601 with an offset)"
    )
    added_to: str | None = Field(default=None, description="add_time < this")
    updated_from: str | None = Field(default=None, description="updated_at >= this")
    updated_to: str | None = Field(default=None, description="updated_at < this")
    missing_artwork: bool = Field(default=False, description="only rows without artwork")
    ids: list[int] = Field(default_factory=list, description="only these flowsheet ids")
    dry_run: bool = Field(default=True, description="preview the scope (counts, a sample) only")
    page_rows: int = Field(default=500, ge=1, le=5000, description="rows claimed at a time")
    max_calls: int | None = Field(
        default=None,
        ge=1,
        description="LML calls this run may make (default: the lifecycle share of an hour); "
        "run again with the same name to go on",
    )
    restart: bool = Field(
        default=False, description="forget where this cohort's earlier runs stopped"
    )


def _moment(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: the station's clock is not UTC")
    return moment


def _spec(config: CohortConfig) -> CohortSpec:
    try:
        if config.linked not in get_args(Linked):
            raise ValueError(f"linked must be one of {', '.join(get_args(Linked))}")
        return CohortSpec(
            statuses=tuple(config.statuses),
            linked=cast(Linked, config.linked),
            added_from=_moment(config.added_from),
            added_to=_moment(config.added_to),
            updated_from=_moment(config.updated_from),
            updated_to=_moment(config.updated_to),
            missing_artwork=config.missing_artwork,
            ids=tuple(config.ids),
        )
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


@dg.op(
    description=(
        "Re-enrich a named cohort of track rows as the live path would, newest play first, "
        "resuming where this cohort's last run stopped. Dry run (the default) previews counts "
        "and a sample and writes nothing."
    )
)
def reenrich_cohort_rows(
    context: dg.OpExecutionContext,
    config: CohortConfig,
    lml: LmlResource,
    postgres: PostgresResource,
    lml_budget: LmlBudgetResource,
) -> dg.Output[int]:
    spec = _spec(config)
    key = cohort_cursor_name(config.name)
    with postgres.connection(autocommit=True) as conn:
        if config.restart and not config.dry_run:
            forget_cursor(conn, key)
        cursor = PassCursor() if config.restart else load_cursor(conn, key)
        if cursor.passes_done:
            context.log.info(f"cohort {config.name} is done; `restart: true` runs it again")
            return dg.Output(0, metadata={"dry_run": config.dry_run, "done": True})
        preview = preview_cohort(conn, spec, cursor)
        metadata: dict[str, Any] = {
            "dry_run": config.dry_run,
            "cohort": dg.MetadataValue.json(spec.describe()),
            "scope_rows": preview.rows,
            "scope_by_status": dg.MetadataValue.json(preview.by_status),
            "scope_linked": preview.linked,
            "sample": dg.MetadataValue.md(
                pd.DataFrame(
                    preview.sample,
                    columns=["flowsheet_id", "status", "artist", "album", "add_time"],
                ).to_markdown(index=False)
                if preview.sample
                else "_none_"
            ),
        }
        if config.dry_run or preview.rows == 0:
            context.log.info(f"cohort {config.name}: {preview.rows} row(s) in scope")
            return dg.Output(preview.rows, metadata={**metadata, "done": preview.rows == 0})
        limits = lml_budget.get_budget().limits
        client = lml_budget.budgeted(
            lml, "lifecycle", caller=REENRICHMENT_LOOKUPS, wait_timeout_s=LIFECYCLE_BUDGET_WAIT_S
        )
        with key_refusal_is_final():
            result = reenrich_cohort(
                conn,
                client,
                spec,
                name=config.name,
                page_rows=config.page_rows,
                max_calls=config.max_calls or lifecycle_calls(limits, 3600.0),
                progress=context.log.info,
            )
        totals = cursor_counters(conn, key)
    outcome = result.outcome
    shed = outcome.not_a_verdict + outcome.error
    return dg.Output(
        outcome.rows,
        metadata={
            **metadata,
            "done": result.done,
            "rows": outcome.rows,
            "outcomes": dg.MetadataValue.json(outcome.outcome_counts()),
            # A verdict was written; a shed row went back to pending for the backlog.
            "verdicts": outcome.match + outcome.no_match,
            "shed": shed,
            "skipped_locked": result.skipped_locked,
            "lml_calls": outcome.lml_calls,
            "cohort_totals": dg.MetadataValue.json(totals),
        },
    )


@with_sentry
@dg.job(description="Operator: re-enrich a named cohort (dry run first; resumable by name).")
def cohort_reenrichment_job() -> None:
    reenrich_cohort_rows()
