"""The enrichment lifecycle's runs: re-ask no-matches, upgrade search links, re-enrich a cohort.

Each run reads a page (no lock held), asks LML about each distinct key once (`look_up`, the
live path's own), and writes what LML positively said in one short transaction after the call,
with the page's cursor saved in it. No Dagster here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import psycopg

from wx_orchestration.clients.lml import LmlCallRecorder
from wx_orchestration.contracts.lml import MAX_LOOKUP_BULK_ITEMS
from wx_orchestration.core.enrichment import LookupKey, RetryPolicy, Verdict, finalize_plan
from wx_orchestration.core.lifecycle import CohortSpec, advanced, reask_action, upgraded_links
from wx_orchestration.db.lifecycle import (
    LifecycleRow,
    claim_cohort_page,
    due_no_matches,
    finalize_reask_matches,
    link_candidates,
    load_cursor,
    record_run,
    save_cursor,
    stamp_rechecked,
    write_link_upgrades,
)
from wx_orchestration.db.paced_writes import flowsheet_transaction
from wx_orchestration.flows.enrichment import (
    BulkLookup,
    EnrichmentOutcome,
    LmlCallHook,
    VerdictCache,
    direct_call,
    enrich_claimed,
    look_up,
)

log = logging.getLogger("wx_orchestration.lifecycle")

REASK = "no_match_reask"
LINK_UPGRADE = "link_upgrade"

Stopped = Literal["calls_spent", "pass_done", "lml_failure"]


@dataclass
class LifecycleOutcome:
    """Counts of one run; `read` = asked + blank (never sent) rows."""

    read: int = 0
    asked: int = 0
    matched: int = 0
    stamped: int = 0
    not_a_verdict: int = 0
    upgraded: int = 0
    raced: int = 0
    lml_calls: int = 0
    pages: int = 0
    passes_done: int = 0
    stopped: Stopped = "calls_spent"
    by_reason: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "read": self.read,
            "asked": self.asked,
            "matched": self.matched,
            "stamped": self.stamped,
            "not_a_verdict": self.not_a_verdict,
            "upgraded": self.upgraded,
            "raced": self.raced,
            "lml_calls": self.lml_calls,
        }


def _verdicts(
    lml: BulkLookup,
    rows: Sequence[LifecycleRow],
    hook: LmlCallHook | None,
    stats: LmlCallRecorder | None,
    outcome: LifecycleOutcome,
) -> tuple[dict[int, tuple[LookupKey, Verdict]], bool]:
    """Each askable row's key and verdict, and whether a whole LML call failed."""
    keys = {
        row.flowsheet_id: key
        for row in rows
        if (key := LookupKey.of(row.artist_name, row.album_title, row.track_title)) is not None
    }
    calls = EnrichmentOutcome()
    verdicts, failure = look_up(
        lml, list(dict.fromkeys(keys.values())), hook or direct_call, stats, calls
    )
    outcome.lml_calls += calls.lml_calls
    if failure is not None and failure.kind == "auth":
        # No later call can succeed either; nothing was written.
        raise failure
    outcome.read += len(rows)
    outcome.asked += len(keys)
    for key in keys.values():
        verdict = verdicts[key]
        if verdict.kind not in ("match", "no_match"):
            reason = verdict.reason or verdict.kind
            outcome.by_reason[reason] = outcome.by_reason.get(reason, 0) + 1
    return {i: (key, verdicts[key]) for i, key in keys.items()}, failure is not None


def _last(rows: Sequence[LifecycleRow]) -> tuple[datetime, int] | None:
    return (rows[-1].add_time, rows[-1].flowsheet_id) if rows else None


def reask_no_matches(
    conn: psycopg.Connection,
    lml: BulkLookup,
    *,
    ttl_s: float,
    max_calls: int,
    min_age_s: float = 3600.0,
    around_call: LmlCallHook | None = None,
    stats: LmlCallRecorder | None = None,
    progress: Callable[[str], None] = log.info,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> LifecycleOutcome:
    """One run of the re-ask: pages of due no-match rows below the saved cursor, at most
    `max_calls` LML calls, at most one wrap of the pass.

    A trusted match becomes `enriched_match` through the live path's finalize, fill-only; a
    no-match stamps `no_match_recheck_attempted_at`; anything else leaves the row due. The cursor
    moves past the whole page whatever the answers (progress is provable), except after a whole
    call failed: then the page is read again next run, since nothing was learnt about its rows.
    """
    if not conn.autocommit:
        raise ValueError("reask_no_matches needs an autocommit connection")
    outcome = LifecycleOutcome()
    cursor = load_cursor(conn, REASK)
    while outcome.lml_calls < max_calls:
        limit = (max_calls - outcome.lml_calls) * MAX_LOOKUP_BULK_ITEMS
        rows = due_no_matches(conn, cursor, ttl_s=ttl_s, min_age_s=min_age_s, limit=limit)
        outcome.pages += 1
        answers, failed = _verdicts(lml, rows, around_call, stats, outcome)
        plans, stamps = [], []
        by_id = {row.flowsheet_id: row for row in rows}
        for flowsheet_id, (key, verdict) in answers.items():
            action = reask_action(verdict)
            row = by_id[flowsheet_id]
            if action == "match":
                plan = finalize_plan(row.as_claimed(row.updated_at), key, verdict)
                plans.append(dataclasses.replace(plan, fill_only=True))
            elif action == "stamp":
                stamps.append(row)
            else:
                outcome.not_a_verdict += 1
        next_cursor = (
            cursor
            if failed
            else advanced(cursor, _last(rows), page_full=len(rows) == limit, now=now())
        )
        with flowsheet_transaction(conn, statements=bool(plans) + bool(stamps)):
            matched = finalize_reask_matches(conn, rows, plans)
            stamped = stamp_rechecked(conn, stamps)
            save_cursor(conn, REASK, next_cursor)
        outcome.matched += len(matched)
        outcome.stamped += len(stamped)
        outcome.raced += len(plans) + len(stamps) - len(matched) - len(stamped)
        progress(f"re-ask page {outcome.pages}: {len(rows)} rows {outcome.counts()}")
        if failed:
            outcome.stopped = "lml_failure"
            break
        if next_cursor.pass_number != cursor.pass_number:
            outcome.passes_done += 1
            outcome.stopped = "pass_done"
            break
        cursor = next_cursor
    record_run(conn, REASK, outcome.counts())
    return outcome


def upgrade_links(
    conn: psycopg.Connection,
    lml: BulkLookup,
    *,
    ttl_s: float,
    max_calls: int,
    around_call: LmlCallHook | None = None,
    stats: LmlCallRecorder | None = None,
    progress: Callable[[str], None] = log.info,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> LifecycleOutcome:
    """One run of the link upgrade: matched rows whose links (or whose album's) hold a search
    placeholder, newest play first below the saved cursor. Each placeholder LML now gives a
    verified link for is replaced, column by column; a definitive answer marks the row asked
    (due again after `ttl_s`), a transient one leaves it due."""
    if not conn.autocommit:
        raise ValueError("upgrade_links needs an autocommit connection")
    outcome = LifecycleOutcome()
    cursor = load_cursor(conn, LINK_UPGRADE)
    while outcome.lml_calls < max_calls:
        limit = (max_calls - outcome.lml_calls) * MAX_LOOKUP_BULK_ITEMS
        rows = link_candidates(conn, cursor, ttl_s=ttl_s, limit=limit)
        outcome.pages += 1
        answers, failed = _verdicts(lml, rows, around_call, stats, outcome)
        by_id = {row.flowsheet_id: row for row in rows}
        upgrades: dict[int, dict[str, str]] = {}
        asked: list[int] = []
        for flowsheet_id, (_key, verdict) in answers.items():
            if reask_action(verdict) == "leave":
                outcome.not_a_verdict += 1
                continue
            asked.append(flowsheet_id)
            links = upgraded_links(by_id[flowsheet_id].links or {}, verdict)
            if links:
                upgrades[flowsheet_id] = links
        next_cursor = (
            cursor
            if failed
            else advanced(cursor, _last(rows), page_full=len(rows) == limit, now=now())
        )
        unlinked = any(by_id[i].album_id is None for i in upgrades)
        with flowsheet_transaction(conn, statements=int(unlinked)):
            outcome.upgraded += write_link_upgrades(conn, rows, upgrades, asked)
            save_cursor(conn, LINK_UPGRADE, next_cursor)
        progress(f"link upgrade page {outcome.pages}: {len(rows)} rows {outcome.counts()}")
        if failed:
            outcome.stopped = "lml_failure"
            break
        if next_cursor.pass_number != cursor.pass_number:
            outcome.passes_done += 1
            outcome.stopped = "pass_done"
            break
        cursor = next_cursor
    record_run(conn, LINK_UPGRADE, outcome.counts())
    return outcome


# --- cohorts ---------------------------------------------------------------------------------


def cohort_cursor_name(name: str) -> str:
    return f"cohort:{name}"


@dataclass
class CohortResult:
    outcome: EnrichmentOutcome = field(default_factory=EnrichmentOutcome)
    pages: int = 0
    skipped_locked: int = 0
    done: bool = False


def reenrich_cohort(
    conn: psycopg.Connection,
    lml: BulkLookup,
    spec: CohortSpec,
    *,
    name: str,
    page_rows: int,
    max_calls: int,
    around_call: LmlCallHook | None = None,
    policy: RetryPolicy | None = None,
    stats: LmlCallRecorder | None = None,
    progress: Callable[[str], None] = log.info,
) -> CohortResult:
    """Re-enrich `spec`'s rows newest play first from where the cohort `name` stopped: claim a
    page, enrich it exactly as the live path does (a verdict is finalized, a shed or degraded
    answer goes back to `pending` for the backlog), save the position with the page's counts.
    Stops after `max_calls` LML calls; a cohort whose walk reached its end is done and a later
    run of it does nothing."""
    key = cohort_cursor_name(name)
    result = CohortResult()
    cursor = load_cursor(conn, key)
    if cursor.passes_done:
        result.done = True
        return result
    cache = VerdictCache()
    while result.outcome.lml_calls < max_calls:
        with flowsheet_transaction(conn, statements=1):
            claimed, last, page = claim_cohort_page(conn, spec, cursor, limit=page_rows)
        result.pages += 1
        batch = EnrichmentOutcome()
        if claimed:
            batch = enrich_claimed(
                conn, lml, claimed, around_call=around_call, policy=policy, cache=cache,
                stats=stats,
            )  # fmt: skip
        result.outcome.add(batch)
        result.skipped_locked += page - len(claimed)
        cursor = advanced(cursor, last, page_full=page == page_rows, now=datetime.now(UTC))
        save_cursor(
            conn,
            key,
            cursor,
            {
                **batch.outcome_counts(),
                "rows": batch.rows,
                "lml_calls": batch.lml_calls,
                "skipped_locked": page - len(claimed),
            },
        )
        progress(f"cohort {name} page {result.pages}: {page} rows {batch.outcome_counts()}")
        if cursor.passes_done:
            result.done = True
            break
        if batch.lml_failed:
            break
    record_run(
        conn,
        cohort_cursor_name(name),
        {
            "asked": result.outcome.rows,
            "matched": result.outcome.match,
            "stamped": result.outcome.no_match,
            "not_a_verdict": result.outcome.not_a_verdict,
            "lml_calls": result.outcome.lml_calls,
        },
    )
    return result
