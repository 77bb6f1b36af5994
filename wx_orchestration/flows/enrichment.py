"""Enrichment of claimed rows: look up → verdict → finalize, shared by both paths.

The sidecar's fast path claims the rows of INSERT events (`db.enrichment.claim_rows_by_ids`) and
the Dagster backlog claims batches per day (`drain_backlog`); both hand the claimed rows to
`enrich_claimed`. No Dagster here: the sidecar imports this module.

Transactions: the claim is committed before LML is called, and the verdicts are written in one
new short transaction afterwards, so no transaction that wrote `flowsheet` is ever open across an
LML call (DESIGN.md §2). Hence `conn` must be in autocommit mode.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

import psycopg

from wx_orchestration.clients.lml import LmlCallRecorder, LmlError
from wx_orchestration.contracts.lml import (
    LOOKUP_BULK_PATH,
    MAX_LOOKUP_BULK_ITEMS,
    BulkLookupResponse,
    BulkLookupResult,
    HealthResponse,
    LookupItem,
    LookupResponse,
)
from wx_orchestration.core.enrichment import (
    ClaimedRow,
    FinalizePlan,
    LookupKey,
    RetryPolicy,
    Verdict,
    discogs_unavailable,
    finalize_plan,
    lookup_item,
    predates_degraded,
    results_by_index,
    verdict_for,
)
from wx_orchestration.core.timing import BACKLOG_ASK_WINDOW_S
from wx_orchestration.core.watermark_lead import grown_batch
from wx_orchestration.db.enrichment import Release, claim_backlog_batch, finalize_rows, release_rows
from wx_orchestration.db.paced_writes import flowsheet_transaction

log = logging.getLogger("wx_orchestration.enrichment")

NOT_ASKED = "not asked: the batch's time to ask LML was up"


BLANK_ARTIST = "blank artist: never sent to LML"


class BulkLookup(Protocol):
    """`LmlClient`, or `BudgetedLml` drawing on the shared budget."""

    def lookup_bulk(
        self,
        items: Sequence[LookupItem | Mapping[str, Any]],
        *,
        stats: LmlCallRecorder | None = None,
    ) -> BulkLookupResponse: ...

    def lookup(
        self, item: LookupItem | Mapping[str, Any], *, stats: LmlCallRecorder | None = None
    ) -> LookupResponse: ...

    def health(self) -> HealthResponse: ...

    def lacks(self, path: str) -> bool: ...


Answer = TypeVar("Answer")


class LmlCallHook(Protocol):
    """Wraps every lookup call: `hook(call, items)` must call `call()` once (or raise) and
    return its answer. The shared LML budget plugs in here."""

    def __call__(self, call: Callable[[], Answer], items: int, /) -> Answer: ...


def direct_call(call: Callable[[], Answer], _items: int) -> Answer:
    return call()


@dataclass
class EnrichmentOutcome:
    """Counts for claimed rows; `rows` always equals the sum of the five outcome buckets."""

    rows: int = 0
    match: int = 0
    no_match: int = 0
    not_a_verdict: int = 0
    error: int = 0
    raced: int = 0
    parked: int = 0  # of `error`: rows moved to failed_no_retry
    lookups: int = 0  # distinct (artist, album, track) items sent to LML
    cache_hits: int = 0
    lml_calls: int = 0
    lml_failed: bool = False  # a whole lookup_bulk call failed
    lml_s: float = 0.0
    write_s: float = 0.0

    def add(self, other: EnrichmentOutcome) -> None:
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lml_failed = self.lml_failed or other.lml_failed

    def outcome_counts(self) -> dict[str, int]:
        return {
            "match": self.match,
            "no_match": self.no_match,
            "not_a_verdict": self.not_a_verdict,
            "error": self.error,
            "raced": self.raced,
        }

    def balanced(self) -> bool:
        return self.rows == sum(self.outcome_counts().values())


_SUMMED = (
    "rows",
    "match",
    "no_match",
    "not_a_verdict",
    "error",
    "raced",
    "parked",
    "lookups",
    "cache_hits",
    "lml_calls",
    "lml_s",
    "write_s",
)


class VerdictCache:
    """Terminal verdicts by lookup key, so a run asks LML about each (artist, album, track)
    once. Bounded: a multi-year backfill must not grow it without limit."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._verdicts: dict[LookupKey, Verdict] = {}

    def get(self, key: LookupKey) -> Verdict | None:
        return self._verdicts.get(key)

    def put(self, key: LookupKey, verdict: Verdict) -> None:
        if verdict.kind not in ("match", "no_match"):
            return
        if len(self._verdicts) >= self.max_entries:
            # Oldest first: dicts keep insertion order.
            del self._verdicts[next(iter(self._verdicts))]
        self._verdicts[key] = verdict


def look_up(
    lml: BulkLookup,
    keys: Sequence[LookupKey],
    hook: LmlCallHook,
    stats: LmlCallRecorder | None,
    outcome: EnrichmentOutcome,
    ask_until: float | None = None,
) -> tuple[dict[LookupKey, Verdict], LmlError | None]:
    """Verdicts for `keys`, up to 100 per call. After a failed call the remaining keys are not
    sent (LML is unwell; the client already retried) and get that call's error too. Past
    `ask_until` (monotonic) no further call starts: the rest are not asked, which says nothing
    about them (their claims must not outlast the lease)."""
    verdicts: dict[LookupKey, Verdict] = {}
    failure: LmlError | None = None
    for first in range(0, len(keys), MAX_LOOKUP_BULK_ITEMS):
        chunk = keys[first : first + MAX_LOOKUP_BULK_ITEMS]
        if failure is None and ask_until is not None and time.monotonic() >= ask_until:
            verdicts.update((key, Verdict("not_a_verdict", reason=NOT_ASKED)) for key in chunk)
            continue
        if failure is None:
            items = [lookup_item(key) for key in chunk]
            started = time.perf_counter()
            try:
                response = _ask(lml, items, hook, stats, ask_until)
                down = predates_degraded(response) and _discogs_down(lml)
            except LmlError as exc:
                failure = exc
                outcome.lml_failed = True
            else:
                outcome.lookups += len(chunk)
                answers = results_by_index(response, len(chunk))
                for key, result in zip(chunk, answers, strict=True):
                    verdicts[key] = verdict_for(result, key, discogs_unavailable=down)
            finally:
                outcome.lml_calls += 1
                outcome.lml_s += time.perf_counter() - started
        if failure is not None:
            # Kind and status only: the message can quote whatever the server sent.
            reason = f"lml call failed ({failure.kind}, status {failure.status})"
            verdicts.update((key, Verdict("error", reason=reason)) for key in chunk)
    return verdicts, failure


def _ask(
    lml: BulkLookup,
    items: Sequence[LookupItem],
    hook: LmlCallHook,
    stats: LmlCallRecorder | None,
    ask_until: float | None,
) -> BulkLookupResponse:
    """LML's answers to `items`: one `/lookup/bulk` call, or, from an LML without it (older
    versions answer 404; the client says so once), one `/lookup` per item through the same hook
    and so the same budget. Items past `ask_until` are not asked: they go unanswered."""
    if not lml.lacks(LOOKUP_BULK_PATH):
        try:
            return hook(lambda: lml.lookup_bulk(items, stats=stats), len(items))
        except LmlError as err:
            if err.kind != "endpoint_missing":
                raise
    results: list[BulkLookupResult] = []
    for index, item in enumerate(items):
        if results and ask_until is not None and time.monotonic() >= ask_until:
            break
        try:
            answer = hook(lambda item=item: lml.lookup(item, stats=stats), 1)
        except LmlError as err:
            # With nothing answered this is the call failing, as a failed bulk call would; after
            # some answers, the rest simply go unanswered (no verdict, no fault).
            if err.kind == "auth" or not results:
                raise
            break
        status = "match" if answer.results else "no_match"
        results.append(BulkLookupResult(index=index, status=status, lookup=answer))
    return BulkLookupResponse(results=results)


def _discogs_down(lml: BulkLookup) -> bool:
    """Whether an LML too old to flag degraded answers says Discogs is unavailable. When its
    health cannot be read its answers cannot be trusted either: then it counts as down."""
    try:
        return discogs_unavailable(lml.health())
    except LmlError as err:
        log.warning(
            "LML /health failed (%s, status %s): its answers are no verdicts", err.kind, err.status
        )
        return True


def enrich_claimed(
    conn: psycopg.Connection,
    lml: BulkLookup,
    claimed: Sequence[ClaimedRow],
    *,
    around_call: LmlCallHook | None = None,
    policy: RetryPolicy | None = None,
    cache: VerdictCache | None = None,
    stats: LmlCallRecorder | None = None,
    rng: Callable[[], float] = random.random,
    ask_until: float | None = None,
) -> EnrichmentOutcome:
    """Look up claimed rows (each distinct key once), then finalize or release every one of
    them in one short transaction. Raises `LmlError` of kind `auth` after releasing the rows,
    since no later call can succeed either. No LML call starts after `ask_until`."""
    if not conn.autocommit:
        raise ValueError("enrich_claimed needs an autocommit connection")
    policy = policy or RetryPolicy()
    outcome = EnrichmentOutcome(rows=len(claimed))
    keys = {row.flowsheet_id: row.key for row in claimed}
    verdicts: dict[LookupKey, Verdict] = {}
    wanted: list[LookupKey] = []
    for key in dict.fromkeys(key for key in keys.values() if key is not None):
        known = cache.get(key) if cache is not None else None
        if known is None:
            wanted.append(key)
        else:
            verdicts[key] = known
            outcome.cache_hits += 1
    failure = None
    if wanted:
        looked_up, failure = look_up(
            lml, wanted, around_call or direct_call, stats, outcome, ask_until
        )
        verdicts.update(looked_up)
        if cache is not None:
            for key, verdict in looked_up.items():
                cache.put(key, verdict)

    plans: list[FinalizePlan] = []
    releases: list[tuple[Release, Verdict]] = []
    for row in claimed:
        key = keys[row.flowsheet_id]
        # Our claims never take a blank artist; a claim made elsewhere might.
        verdict = verdicts[key] if key is not None else Verdict("error", reason=BLANK_ARTIST)
        if key is not None and verdict.kind in ("match", "no_match"):
            plans.append(finalize_plan(row, key, verdict))
            continue
        release = Release(
            flowsheet_id=row.flowsheet_id,
            enriching_since=row.enriching_since,
            error=verdict.reason or verdict.kind,
            delay_s=policy.delay_s(row.attempts + 1, rng),
            park=policy.parks(row.faults + 1, verdict.row_fault),
            fault=verdict.row_fault,
        )
        releases.append((release, verdict))

    started = time.perf_counter()
    try:
        # Each of the two statements moves the station's Last-Modified only if it runs.
        with flowsheet_transaction(conn, statements=bool(plans) + bool(releases)):
            written = finalize_rows(conn, plans)
            released = release_rows(conn, [release for release, _ in releases])
    except psycopg.Error as exc:
        if conn.broken:
            # The connection is gone, not the values: no row's fault, and row by row would
            # fail the same. The caller may finalize again on a new connection.
            raise
        # One row's values rejected by the database must not strand the whole batch
        # `enriching`: redo row by row, and give back whichever still fails, as its own fault.
        log.warning("set-based finalize failed (%s); redoing row by row", exc.sqlstate)
        plans, written, released = _write_one_by_one(conn, claimed, plans, releases, policy, rng)
    outcome.write_s += time.perf_counter() - started
    _count(outcome, plans, written, releases, released)
    if failure is not None and failure.kind == "auth":
        raise failure
    return outcome


# A finalize whose connection is cut is tried again on new ones, after 0.5, 1 and 2 s: a blip
# or a server restart is over by then, and the claims stay well within the sweep's lease.
FINALIZE_RETRIES = 3
FINALIZE_RETRY_S = 0.5

Reconnect = Callable[[], AbstractContextManager[psycopg.Connection]]


class ConnectionLost(Exception):
    """Every connection a finalize was tried on was cut: the rows stay claimed."""


def enrich_claimed_reconnecting(
    conn: psycopg.Connection,
    reconnect: Reconnect,
    lml: BulkLookup,
    claimed: Sequence[ClaimedRow],
    *,
    cache: VerdictCache,
    around_call: LmlCallHook | None = None,
    policy: RetryPolicy | None = None,
    stats: LmlCallRecorder | None = None,
    wait: Callable[[float], object] = time.sleep,
    ask_until: float | None = None,
) -> EnrichmentOutcome:
    """`enrich_claimed`, done again on a connection from `reconnect` when its own is cut (a
    network blip, a restarted server, an operator's pg_terminate_backend): the claims are still
    ours, and the verdicts already in `cache` cost no second LML call (a retry looks up again
    only what LML did not give a verdict on). A finalize that had committed before the cut
    finds its rows no longer claimed the second time (counted raced), never written twice."""
    used, attempt = conn, 0
    while True:
        try:
            if attempt == 0:
                return enrich_claimed(
                    conn, lml, claimed, around_call=around_call, policy=policy, cache=cache,
                    stats=stats, ask_until=ask_until,
                )  # fmt: skip
            # A failing `reconnect` leaves `used` the cut connection: counted as lost too.
            with reconnect() as used:
                return enrich_claimed(
                    used, lml, claimed, around_call=around_call, policy=policy, cache=cache,
                    stats=stats, ask_until=ask_until,
                )  # fmt: skip
        except psycopg.OperationalError as err:
            if not (used.closed or used.broken):
                raise
            if attempt == FINALIZE_RETRIES:
                raise ConnectionLost(
                    f"{len(claimed)} claimed rows left claimed: the database connection was cut"
                    f" on every one of {FINALIZE_RETRIES + 1} tries ({err})"
                ) from err
            delay = FINALIZE_RETRY_S * 2**attempt
            log.warning(
                "database connection lost finalizing %d claimed rows (%s); retrying on a new one"
                " in %.1fs",
                len(claimed),
                type(err).__name__,
                delay,
            )
            wait(delay)
            attempt += 1


def _write_one_by_one(
    conn: psycopg.Connection,
    claimed: Sequence[ClaimedRow],
    plans: Sequence[FinalizePlan],
    releases: list[tuple[Release, Verdict]],
    policy: RetryPolicy,
    rng: Callable[[], float],
) -> tuple[list[FinalizePlan], set[int], set[int]]:
    """Returns the plans kept, the ids finalized and the ids released (rejected plans become
    releases in `releases`)."""
    rows = {row.flowsheet_id: row for row in claimed}
    written: set[int] = set()
    kept: list[FinalizePlan] = []
    for plan in plans:
        try:
            with flowsheet_transaction(conn, statements=1):
                written |= finalize_rows(conn, [plan])
            kept.append(plan)
        except psycopg.Error as exc:
            row = rows[plan.flowsheet_id]
            verdict = Verdict("error", reason=f"finalize rejected ({exc.sqlstate})", row_fault=True)
            release = Release(
                flowsheet_id=row.flowsheet_id,
                enriching_since=row.enriching_since,
                error=verdict.reason or "finalize rejected",
                delay_s=policy.delay_s(row.attempts + 1, rng),
                park=policy.parks(row.faults + 1, row_fault=True),
                fault=True,
            )
            releases.append((release, verdict))
    with flowsheet_transaction(conn, statements=1):
        released = release_rows(conn, [release for release, _ in releases])
    return kept, written, released


def _count(
    outcome: EnrichmentOutcome,
    plans: Iterable[FinalizePlan],
    written: set[int],
    releases: Iterable[tuple[Release, Verdict]],
    released: set[int],
) -> None:
    for plan in plans:
        if plan.flowsheet_id not in written:
            outcome.raced += 1
        elif plan.status == "enriched_match":
            outcome.match += 1
        else:
            outcome.no_match += 1
    for release, verdict in releases:
        if release.flowsheet_id not in released:
            outcome.raced += 1
        elif verdict.kind == "not_a_verdict":
            outcome.not_a_verdict += 1
        else:
            outcome.error += 1
            outcome.parked += release.park


StopReason = Literal["drained", "time_budget", "lml_failure", "connection_lost"]


@dataclass
class BacklogResult:
    outcome: EnrichmentOutcome = field(default_factory=EnrichmentOutcome)
    batches: int = 0
    claim_s: float = 0.0
    elapsed_s: float = 0.0
    stopped: StopReason = "drained"

    def rows_per_s(self) -> float:
        return self.outcome.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def lml_calls_per_row(self) -> float:
        return self.outcome.lml_calls / self.outcome.rows if self.outcome.rows else 0.0


def drain_backlog(
    conn: psycopg.Connection,
    lml: BulkLookup,
    *,
    start: datetime,
    end: datetime,
    grace_s: float,
    batch_size: int,
    time_budget_s: float,
    around_call: LmlCallHook | None = None,
    policy: RetryPolicy | None = None,
    stats: LmlCallRecorder | None = None,
    progress: Callable[[str], None] = log.info,
    reconnect: Reconnect | None = None,
) -> BacklogResult:
    """Claim and enrich rows added in [start, end), newest first, batch after batch (each below
    the previous one: a row released for a retry waits for the next run), until none
    is left, the time budget is spent (checked between batches, so a run stops cleanly with no
    row left claimed) or a whole LML call failed (the sensor comes back after the backoff).
    With `reconnect`, a batch whose finalize lost `conn` is finalized on a new connection, and
    the run then stops (`connection_lost`)."""
    result = BacklogResult()
    cache = VerdictCache()
    began = time.perf_counter()
    below_id: int | None = None
    while True:
        if time.perf_counter() - began >= time_budget_s:
            result.stopped = "time_budget"
            break
        claim_started = time.perf_counter()
        claimed = claim_backlog_batch(
            conn,
            start=start,
            end=end,
            grace_s=grace_s,
            below_id=below_id,
            limit=grown_batch(batch_size, result.outcome.rows, result.outcome.lookups),
        )
        result.claim_s += time.perf_counter() - claim_started
        if not claimed:
            break
        below_id = min(row.flowsheet_id for row in claimed)
        result.batches += 1
        ask_until = time.monotonic() + BACKLOG_ASK_WINDOW_S
        if reconnect is None:
            batch = enrich_claimed(
                conn, lml, claimed, around_call=around_call, policy=policy, cache=cache,
                stats=stats, ask_until=ask_until,
            )  # fmt: skip
        else:
            batch = enrich_claimed_reconnecting(
                conn, reconnect, lml, claimed, around_call=around_call, policy=policy,
                cache=cache, stats=stats, ask_until=ask_until,
            )  # fmt: skip
        result.outcome.add(batch)
        progress(
            f"batch {result.batches}: {len(claimed)} rows {batch.outcome_counts()}; "
            f"{result.outcome.rows} so far"
        )
        if batch.lml_failed:
            result.stopped = "lml_failure"
            break
        if conn.closed or conn.broken:
            # The batch was finalized on a new connection; the run ends here (the sensor
            # starts the next one) rather than claim on one that is gone.
            result.stopped = "connection_lost"
            break
    result.elapsed_s = time.perf_counter() - began
    return result
