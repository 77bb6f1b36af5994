"""The enrichment lifecycle's runs: re-ask no-matches, upgrade search links, re-ask unresolved
streaming verdicts, re-enrich a cohort.

Each run reads a page (no lock held), asks LML about each distinct key once (`look_up`, the
live path's own), and writes what LML positively said in one short transaction after the call,
with the page's cursor saved in it. No Dagster here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import psycopg

from wx_orchestration.clients.lml import LmlCallRecorder
from wx_orchestration.contracts.lml import MAX_LOOKUP_BULK_ITEMS
from wx_orchestration.core.enrichment import LookupKey, RetryPolicy, Verdict, finalize_plan
from wx_orchestration.core.lifecycle import (
    COHORT_CURSOR_PREFIX,
    CohortSpec,
    PassCursor,
    advanced,
    reask_action,
    streaming_changes,
    streaming_reask_key,
    upgraded_links,
)
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
    streaming_candidates,
    write_link_upgrades,
    write_streaming_answers,
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
STREAMING_REASK = "streaming_reask"

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
    # What the streaming re-ask wrote, by column and value (`spotify_status=verified`: n).
    changes: dict[str, int] = field(default_factory=dict)

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


def _row_keys(rows: Sequence[LifecycleRow]) -> dict[int, LookupKey]:
    return {
        row.flowsheet_id: key
        for row in rows
        if (key := LookupKey.of(row.artist_name, row.album_title, row.track_title)) is not None
    }


def _verdicts(
    lml: BulkLookup,
    keys: Mapping[int, LookupKey],
    read: int,
    hook: LmlCallHook | None,
    stats: LmlCallRecorder | None,
    outcome: LifecycleOutcome,
) -> tuple[dict[int, tuple[LookupKey, Verdict]], bool]:
    """Each askable row's key and verdict (`read` rows were read, `keys` are the askable ones),
    and whether a whole LML call failed."""
    calls = EnrichmentOutcome()
    verdicts, failure = look_up(
        lml, list(dict.fromkeys(keys.values())), hook or direct_call, stats, calls
    )
    outcome.lml_calls += calls.lml_calls
    if failure is not None and failure.kind == "auth":
        # No later call can succeed either; nothing was written.
        raise failure
    outcome.read += read
    outcome.asked += len(keys)
    for key in keys.values():
        verdict = verdicts[key]
        if verdict.kind not in ("match", "no_match"):
            reason = verdict.reason or verdict.kind
            outcome.by_reason[reason] = outcome.by_reason.get(reason, 0) + 1
    return {i: (key, verdicts[key]) for i, key in keys.items()}, failure is not None


@dataclass(frozen=True)
class _Page:
    """One page of a pass, asked: what it read, where it ended, whether a whole call failed,
    and its writes (run in the transaction that saves the cursor; `statements` of them write
    `flowsheet`)."""

    read: int
    last: tuple[datetime, int] | None
    failed: bool
    write: Callable[[], None]
    statements: int


def _walk(
    conn: psycopg.Connection,
    name: str,
    page: Callable[[PassCursor, int], _Page],
    outcome: LifecycleOutcome,
    *,
    max_calls: int,
    progress: Callable[[str], None],
    now: Callable[[], datetime],
) -> LifecycleOutcome:
    """A pass's run: pages below the saved cursor, at most `max_calls` LML calls, at most one
    wrap of the pass. The cursor moves past the whole page whatever the answers (progress is
    provable), except after a whole call failed: then the page is read again next run, since
    nothing was learnt about its rows."""
    if not conn.autocommit:
        raise ValueError(f"{name} needs an autocommit connection")
    cursor = load_cursor(conn, name)
    while outcome.lml_calls < max_calls:
        limit = (max_calls - outcome.lml_calls) * MAX_LOOKUP_BULK_ITEMS
        step = page(cursor, limit)
        outcome.pages += 1
        next_cursor = (
            cursor
            if step.failed
            else advanced(cursor, step.last, page_full=step.read == limit, now=now())
        )
        with flowsheet_transaction(conn, statements=step.statements):
            step.write()
            save_cursor(conn, name, next_cursor)
        progress(f"{name} page {outcome.pages}: {step.read} rows {outcome.counts()}")
        if step.failed:
            outcome.stopped = "lml_failure"
            break
        if next_cursor.pass_number != cursor.pass_number:
            outcome.passes_done += 1
            outcome.stopped = "pass_done"
            break
        cursor = next_cursor
    record_run(conn, name, outcome.counts())
    return outcome


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
    """One run of the re-ask: pages of due no-match rows below the saved cursor, newest play
    first. A trusted match becomes `enriched_match` through the live path's finalize,
    fill-only; a no-match stamps `no_match_recheck_attempted_at`; anything else leaves the row
    due."""
    outcome = LifecycleOutcome()

    def page(cursor: PassCursor, limit: int) -> _Page:
        rows = due_no_matches(conn, cursor, ttl_s=ttl_s, min_age_s=min_age_s, limit=limit)
        answers, failed = _verdicts(lml, _row_keys(rows), len(rows), around_call, stats, outcome)
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

        def write() -> None:
            matched = finalize_reask_matches(conn, rows, plans)
            stamped = stamp_rechecked(conn, stamps)
            outcome.matched += len(matched)
            outcome.stamped += len(stamped)
            outcome.raced += len(plans) + len(stamps) - len(matched) - len(stamped)

        statements = bool(plans) + bool(stamps)
        return _Page(len(rows), _last(rows), failed, write, statements)

    return _walk(conn, REASK, page, outcome, max_calls=max_calls, progress=progress, now=now)


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
    outcome = LifecycleOutcome()

    def page(cursor: PassCursor, limit: int) -> _Page:
        rows = link_candidates(conn, cursor, ttl_s=ttl_s, limit=limit)
        answers, failed = _verdicts(lml, _row_keys(rows), len(rows), around_call, stats, outcome)
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

        def write() -> None:
            outcome.upgraded += write_link_upgrades(conn, rows, upgrades, asked)

        unlinked = any(by_id[i].album_id is None for i in upgrades)
        return _Page(len(rows), _last(rows), failed, write, int(unlinked))

    return _walk(conn, LINK_UPGRADE, page, outcome, max_calls=max_calls, progress=progress, now=now)


def reask_streaming(
    conn: psycopg.Connection,
    lml: BulkLookup,
    *,
    retry_after_s: float,
    max_calls: int,
    around_call: LmlCallHook | None = None,
    stats: LmlCallRecorder | None = None,
    progress: Callable[[str], None] = log.info,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> LifecycleOutcome:
    """One run of the streaming re-ask (the station's `streaming-reask.ts`): matched albums
    with an `unresolved` streaming verdict under the attempt cap, not written within
    `retry_after_s`, newest write first below the saved cursor, asked by artist and title.

    A definitive answer spends the album's attempt and writes, service by service, only what
    LML positively said (`core.lifecycle.streaming_changes`); a verified link is never touched.
    Anything else writes nothing and spends nothing: the album stays due. `matched` and
    `stamped` count attempts spent on a match and on a no-match, `upgraded` albums that gained
    a verified link.
    Only `album_metadata` is written: the live feed carries flowsheet changes, so listeners see
    the new links with the album's next play or snapshot."""
    outcome = LifecycleOutcome()

    def page(cursor: PassCursor, limit: int) -> _Page:
        albums = streaming_candidates(conn, cursor, retry_after_s=retry_after_s, limit=limit)
        keys = {
            album.album_id: key
            for album in albums
            if (key := streaming_reask_key(album.artist_name, album.album_title)) is not None
        }
        answers, failed = _verdicts(lml, keys, len(albums), around_call, stats, outcome)
        by_id = {album.album_id: album for album in albums}
        changes: dict[int, dict[str, str]] = {}
        matched: set[int] = set()
        for album_id, (key, verdict) in answers.items():
            found = streaming_changes(by_id[album_id].streaming, verdict, key)
            if found is None:
                outcome.not_a_verdict += 1
                continue
            changes[album_id] = found
            if verdict.kind == "match":
                matched.add(album_id)

        def write() -> None:
            written = write_streaming_answers(conn, albums, changes)
            outcome.matched += len(written & matched)
            outcome.stamped += len(written - matched)
            outcome.raced += len(changes) - len(written)
            for album_id in written:
                columns = changes[album_id]
                outcome.upgraded += "verified" in columns.values()
                for column, value in columns.items():
                    label = f"{column}={value}" if column.endswith("_status") else column
                    outcome.changes[label] = outcome.changes.get(label, 0) + 1

        last = (albums[-1].updated_at, albums[-1].album_id) if albums else None
        return _Page(len(albums), last, failed, write, 0)

    return _walk(
        conn, STREAMING_REASK, page, outcome, max_calls=max_calls, progress=progress, now=now
    )


# --- cohorts ---------------------------------------------------------------------------------


def cohort_cursor_name(name: str) -> str:
    return f"{COHORT_CURSOR_PREFIX}{name}"


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
