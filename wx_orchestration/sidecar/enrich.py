"""Enrichment fast path: consumer group `enrichment` on `wx:cdc` → claim → LML → finalize.

A DJ's play should be on listeners' screens well under a second after the INSERT, and the
station's LML budget (50 calls a minute) must carry every play. So each process keeps one queue
of waiting plays for its lane (`core.coalescing`), and every LML call carries everything waiting
when the budget grants its slot (up to 100 distinct lookups): a caller asks for a slot with the
queue's fullness, and while the budget makes it wait it reads on in the stream, so plays that
arrive meanwhile join the same call. A quiet budget answers at once (the saved burst); under a
steady stream calls get fuller, never more numerous (DESIGN.md §6).

Plays are claimed only once their call's slot is granted, in one statement for the whole call,
and finalized in one short transaction after it: two statements that write `flowsheet` per call,
whatever it carries, and no claim is ever held while waiting for the budget. A play that waits
longer than `WX_ENRICH_MAX_BUDGET_WAIT_S` (an open breaker, a long 429 pause) is left `pending`
for the Dagster backlog, unclaimed. A play whose lookup is in the shared cache is claimed and
finalized at once, spending no budget.

Entries are acknowledged once every play their batch brought is finalized, given back or found
not claimable; if anything raises (Postgres down, say) nothing is acknowledged and the entries
are redelivered, where a play already finalized or claimed is simply not claimable again, so it
is never finalized twice. Rows whose lookup failed go back to `pending` with backoff, for the
backlog.

Settings (`EnrichSettings`): `WX_ENRICH_CACHE_TTL_S` (default 3600), how long a verdict is shared;
`WX_ENRICH_CONSUMERS` (default 1): readers of the group in the process. One is enough: it never
waits on a call with the stream unread, and more split nothing (they share the queue).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

import psycopg
import redis
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg import sql
from psycopg_pool import ConnectionPool

from wx_orchestration.clients.lml import LmlError
from wx_orchestration.clients.lml_budget import LmlBudget
from wx_orchestration.clients.lookup_cache import LookupCache
from wx_orchestration.contracts.cdc import CDC_STREAM, ENRICHMENT_GROUP
from wx_orchestration.contracts.lml import MAX_LOOKUP_BULK_ITEMS
from wx_orchestration.core.coalescing import LaneQueue, TicketState, Waiting
from wx_orchestration.core.enrichment import (
    Candidate,
    ClaimedRow,
    LookupKey,
    Verdict,
    enrichment_candidate,
)
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry, effective_action
from wx_orchestration.core.timing import FAST_PATH_GATHER_S
from wx_orchestration.core.watermark_lead import LeadPolicy
from wx_orchestration.db.enrichment import claim_rows_by_ids
from wx_orchestration.db.paced_writes import room_wait_s
from wx_orchestration.flows.enrichment import (
    Answer,
    ConnectionLost,
    EnrichmentOutcome,
    VerdictCache,
    enrich_claimed_reconnecting,
)
from wx_orchestration.settings import DatabaseSettings
from wx_orchestration.sidecar.claims import ClaimLocks
from wx_orchestration.sidecar.consumer import StreamConsumer
from wx_orchestration.sidecar.roles import SidecarConfig, SidecarContext

log = logging.getLogger("wx_orchestration.sidecar.enrich")

LANE = "live"
# Budget waits longer than this are counted as pauses (a 429 pause, an open breaker).
BUDGET_PATIENCE_S = 2.0
# How often a caller waiting for the budget asks again when no new play arrives.
BUDGET_POLL_S = 0.25
Gather = Callable[[int, int], list[FlowsheetEvent] | None]
# A play waiting this long makes its call count as full (`core.coalescing`).
FULL_AFTER_S = 10.0
# The pool's default wait (30 s) would outlast the retries of a cut finalize.
FINALIZE_CONNECT_TIMEOUT_S = 5.0
# How soon the role notices `stop` while its consumers run.
_HALT_POLL_S = 0.2


class CallFailed(Exception):
    """A call carrying some of a batch's plays failed; the batch is left for redelivery."""


class EnrichMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.ignored = Counter(
            "wx_enrich_events_ignored",
            "Events that are not candidates, by reason",
            ["reason"],
            registry=r,
        )
        self.not_claimed = Counter(
            "wx_enrich_candidates_not_claimed",
            "Candidates no longer claimable (taken by the backlog, already done, in backoff)",
            registry=r,
        )
        self.left_for_backlog = Counter(
            "wx_enrich_left_for_backlog",
            "Plays left pending for the backlog after waiting too long for the LML budget",
            registry=r,
        )
        self.rows = Counter("wx_enrich_rows", "Claimed rows by outcome", ["outcome"], registry=r)
        self.cache_hits = Counter(
            "wx_enrich_cache_hits", "Distinct lookups answered by the shared cache", registry=r
        )
        self.lookups = Counter("wx_enrich_lookups", "Distinct lookups sent to LML", registry=r)
        self.lml_calls = Counter("wx_enrich_lml_calls", "lookup/bulk calls", registry=r)
        self.lml_failures = Counter(
            "wx_enrich_lml_failures", "lookup/bulk calls that failed as a whole", registry=r
        )

    def count(self, outcome: EnrichmentOutcome) -> None:
        for name, rows in outcome.outcome_counts().items():
            self.rows.labels(name).inc(rows)
        self.cache_hits.inc(outcome.cache_hits)
        self.lookups.inc(outcome.lookups)
        self.lml_calls.inc(outcome.lml_calls)
        self.lml_failures.inc(int(outcome.lml_failed))


class BudgetWaits(Collector):
    """The live lane's waits for the shared budget, read from the budget's own counts at
    scrape time, plus the waits longer than `BUDGET_PATIENCE_S` (pauses: a 429, an open
    breaker), counted as they begin."""

    def __init__(self, budget: LmlBudget) -> None:
        self.budget = budget
        self.pauses = 0
        self._lock = threading.Lock()

    def pause_began(self) -> None:
        with self._lock:
            self.pauses += 1

    def collect(self) -> Iterable[Metric]:
        stats = self.budget.stats[LANE]
        with self._lock:
            pauses = self.pauses
        yield CounterMetricFamily(
            "wx_enrich_budget_waits", "LML calls that waited for the shared budget", stats.waits
        )
        yield CounterMetricFamily(
            "wx_enrich_budget_wait_seconds",
            "Time LML calls spent waiting for the shared budget",
            stats.wait_ms / 1000,
        )
        yield CounterMetricFamily(
            "wx_enrich_budget_pauses",
            f"Budget waits longer than {BUDGET_PATIENCE_S}s (paused or breaker open)",
            pauses,
        )


class _Slot:
    """The LML hook of one call: the budget slot granted before its plays were taken, used by
    the call made in it (or settled unused). Without one, a call asks the budget itself."""

    def __init__(self, budget: LmlBudget, token: str | None = None, *, granted: bool = False):
        self.budget = budget
        self.token = token
        self.granted = granted

    def __call__(self, call: Callable[[], Answer], _items: int) -> Answer:
        token = (
            self.token if self.granted else self.budget.acquire(LANE, timeout_s=BUDGET_PATIENCE_S)
        )
        self.granted = False
        with self.budget.settling(LANE, token):
            return call()

    def release_unused(self) -> None:
        if self.granted:
            self.granted = False
            self.budget.settle(LANE, self.token, "ok")


class EnrichRole:
    name = "enrich"

    def __init__(
        self,
        ctx: SidecarContext,
        *,
        consumer_name: str | None = None,
        consumers: int | None = None,
        cache_ttl_s: float | None = None,
    ) -> None:
        settings = ctx.settings
        settings.require("LIBRARY_METADATA_URL")
        client = ctx.redis()
        self.pool: ConnectionPool = ctx.pool()
        self.search_path = sql.SQL("SET search_path TO {}, wx_orchestration").format(
            sql.Identifier(settings.database.station_schema)
        )
        # The role takes budget slots itself (one per coalesced call), so it holds the
        # entry's parts rather than a budgeted lane.
        lml = ctx.lml()
        self.budget = lml.budget
        self.lml_client = lml.client
        ttl_s = cache_ttl_s or settings.enrich.cache_ttl_s
        self.max_budget_wait_s = settings.enrich.max_budget_wait_s
        self.cache = LookupCache(client, ttl_s)
        self.claim_locks = ClaimLocks(settings.database.url)
        self.metrics = EnrichMetrics(ctx.metrics.registry)
        self.budget_waits = BudgetWaits(self.budget)
        ctx.metrics.registry.register(self.budget_waits)
        # Flowsheet ids of the plays waiting for a call, shared by every consumer's sink.
        self.queue: LaneQueue[int, LookupKey] = LaneQueue(MAX_LOOKUP_BULK_ITEMS, FULL_AFTER_S)
        self._queue_changed = threading.Condition()
        self._callers_waiting = 0
        self._stop = threading.Event()
        # Set while LML refuses our key: every lookup fails until someone fixes it.
        self.refused: str | None = None
        count = consumers or settings.enrich.consumers
        name = consumer_name or ctx.instance
        self.consumers = [
            self._consumer(ctx, client, name if count == 1 else f"{name}/{n}") for n in range(count)
        ]
        self._threads: list[threading.Thread] = []

    def _consumer(
        self, ctx: SidecarContext, client: redis.Redis, name: str
    ) -> StreamConsumer[FlowsheetEvent]:
        def sink(events: Sequence[FlowsheetEvent]) -> list[str]:
            return self.enrich_events(events, more=consumer.read_more)

        consumer = StreamConsumer(
            client=client,
            pool=self.pool,
            stream=CDC_STREAM,
            group=ENRICHMENT_GROUP,
            consumer=name,
            decode=decode_stream_entry,
            sink=sink,
            metrics=ctx.metrics,
            config=self._consumer_config(ctx),
        )
        return consumer

    @staticmethod
    def _consumer_config(ctx: SidecarContext) -> SidecarConfig:
        """One LML call's worth of entries per read, so a batch's plays are settled within one
        budget wait plus a call or two, which the default `claim_idle_ms` outlasts: a batch
        still in hand is not reclaimed by a sibling (and, after enough deliveries,
        dead-lettered)."""
        return replace(ctx.config, read_count=min(ctx.config.read_count, MAX_LOOKUP_BULK_ITEMS))

    def run(self, stop: threading.Event) -> None:
        """Run every consumer until `stop`; each finishes its batch in hand before returning.
        One whose loop fails stops its siblings, and the error goes to the role's supervisor."""
        halt = threading.Event()
        self._stop = halt
        failed: list[Exception] = []

        def consume(consumer: StreamConsumer[FlowsheetEvent]) -> None:
            try:
                consumer.run(halt)
            except Exception as err:
                failed.append(err)
            finally:
                halt.set()

        self._threads = [
            threading.Thread(target=consume, args=(c,), name=f"enrich-{n}", daemon=True)
            for n, c in enumerate(self.consumers)
        ]
        for thread in self._threads:
            thread.start()
        try:
            while not halt.wait(_HALT_POLL_S):
                if stop.is_set():
                    halt.set()
        finally:
            halt.set()
            with self._queue_changed:
                self._queue_changed.notify_all()
            for thread in self._threads:
                thread.join()
            if stop.is_set():
                self.lml_client.close()
                self.claim_locks.close()
        if failed:
            raise failed[0]

    def readiness(self) -> tuple[bool, str]:
        errors = [c.last_error for c in self.consumers if c.last_error]
        if self.refused is not None:
            errors.append(self.refused)
        return (not errors, errors[0] if errors else "consuming")

    def enrich_events(
        self,
        events: Sequence[FlowsheetEvent],
        more: Callable[[int, int], list[FlowsheetEvent]] | None = None,
    ) -> list[str]:
        """The sink: the batch's entries (and those `more` added while a call waited for the
        budget) once each of their plays is settled; none if stopping first (they are
        redelivered); raises if a call carrying some of them failed."""
        finished = [event.entry_id for event in events]
        until = time.monotonic() + FAST_PATH_GATHER_S

        def gather(count: int, block_ms: int) -> list[FlowsheetEvent] | None:
            return more(count, block_ms) if more and time.monotonic() < until else None

        with self._queue_changed:
            ticket = self.queue.open_ticket()
        try:
            self._admit(events, ticket)
            state = self._see_through(ticket, gather, finished)
        finally:
            with self._queue_changed:
                self.queue.close_ticket(ticket)
        if state == "failed":
            raise CallFailed("a call carrying plays of this batch failed; it is redelivered")
        return finished if state == "done" else []

    def _admit(self, events: Sequence[FlowsheetEvent], ticket: int) -> None:
        """Queue the candidates; those the shared cache answers are finalized at once."""
        candidates: dict[int, Candidate] = {}
        for event in events:
            found = enrichment_candidate(effective_action(event), event.row)
            if isinstance(found, Candidate):
                candidates.setdefault(found.flowsheet_id, found)
            else:
                self.metrics.ignored.labels(found).inc()
        if not candidates:
            return
        shared = self.cache.get_many({c.key for c in candidates.values()})
        known = [c.flowsheet_id for c in candidates.values() if c.key in shared]
        if known:
            self._carry(known, shared, _Slot(self.budget))
        with self._queue_changed:
            self.queue.add(
                ticket,
                ((c.flowsheet_id, c.key) for c in candidates.values() if c.key not in shared),
                time.monotonic(),
            )
            self._queue_changed.notify_all()

    def _see_through(
        self,
        ticket: int,
        gather: Gather,
        finished: list[str],
    ) -> TicketState | None:
        """Until the ticket's plays are settled: be the process's caller for the waiting
        plays when one more is wanted, else wait for the others. None when stopping."""
        while True:
            with self._queue_changed:
                state = self.queue.state(ticket)
                if state != "waiting":
                    return state
                if self._stop.is_set():
                    self.queue.take_ticket(ticket)
                    return None
                expired = self.queue.take_since(time.monotonic() - self.max_budget_wait_s)
                self.queue.settled(expired, ok=True)
                calling = not expired and self._callers_waiting < self.queue.callers_wanted()
                if calling:
                    self._callers_waiting += 1
                elif not expired:
                    self._queue_changed.wait(_HALT_POLL_S)
            if expired:
                self._left_for_backlog(expired)
            elif calling:
                self._call_when_granted(ticket, gather, finished)

    def _left_for_backlog(self, expired: Sequence[Waiting[int, LookupKey]]) -> None:
        self.metrics.left_for_backlog.inc(len(expired))
        log.warning(
            "%d plays waited %.0fs for the LML budget; left pending for the backlog",
            len(expired),
            self.max_budget_wait_s,
        )
        with self._queue_changed:
            self._queue_changed.notify_all()

    def _call_when_granted(
        self,
        ticket: int,
        gather: Gather,
        finished: list[str],
    ) -> None:
        """Wait for a slot sized by the queue's fullness, gathering plays meanwhile; then take
        everything waiting and make the call. Returns without one when there is nothing left
        to carry, the oldest play waited too long, or the role stops."""
        started = time.monotonic()
        waited = paused = False
        still_waiting = True
        try:
            while True:
                with self._queue_changed:
                    oldest = self.queue.oldest_since()
                    if (
                        self._stop.is_set()
                        or oldest is None
                        or time.monotonic() - oldest >= self.max_budget_wait_s
                    ):
                        return
                    fullness = self.queue.fullness(time.monotonic())
                pacing = self._pacing_wait_s()
                if pacing > 0:
                    self._wait_gathering(ticket, gather, finished, min(pacing, BUDGET_POLL_S))
                    continue
                grant = self.budget.try_acquire(LANE, fullness=fullness)
                if grant.granted:
                    break
                waited = True
                if not paused and grant.wait_s > BUDGET_PATIENCE_S:
                    paused = True
                    self.budget_waits.pause_began()
                self._wait_gathering(ticket, gather, finished, min(grant.wait_s, BUDGET_POLL_S))
            with self._queue_changed:
                taken = self.queue.take()
                self._callers_waiting -= 1
                still_waiting = False
                self._queue_changed.notify_all()
        finally:
            if still_waiting:
                with self._queue_changed:
                    self._callers_waiting -= 1
                    self._queue_changed.notify_all()
        self.budget.count_grant(
            LANE, time.monotonic() - started if waited else 0.0, fallback=grant.fallback
        )
        self._call(taken, _Slot(self.budget, grant.token, granted=True))

    def _pacing_wait_s(self) -> float:
        """How long until our flowsheet writes have room for this call's claim and finalize
        (`db.paced_writes`): waited for, gathering, before the call takes its plays, so a burst
        under pacing is carried by fewer, fuller calls instead of a partial first one."""
        policy = LeadPolicy(max_lead_s=DatabaseSettings.from_env().max_lead_s)
        if policy.max_lead_s <= 0:
            return 0.0
        with self._connection() as conn:
            return room_wait_s(conn, 2, policy)

    def _wait_gathering(
        self,
        ticket: int,
        gather: Gather,
        finished: list[str],
        wait_s: float,
    ) -> None:
        """Wait up to `wait_s` for the budget, reading on in the stream meanwhile: plays that
        arrive join the waiting call."""
        events = gather(MAX_LOOKUP_BULK_ITEMS, round(wait_s * 1000))
        if events is None:
            with self._queue_changed:
                self._queue_changed.wait(wait_s)
            return
        if events:
            finished.extend(event.entry_id for event in events)
            self._admit(events, ticket)

    def _call(self, taken: Sequence[Waiting[int, LookupKey]], slot: _Slot) -> None:
        ids = list(dict.fromkeys(waiting.item for waiting in taken))
        ok = False
        try:
            self._carry(ids, self.cache.get_many({w.key for w in taken}), slot)
            ok = True
        finally:
            slot.release_unused()
            with self._queue_changed:
                self.queue.settled(taken, ok=ok)
                self._queue_changed.notify_all()

    def _carry(self, ids: Sequence[int], shared: Mapping[LookupKey, Verdict], slot: _Slot) -> None:
        """Claim `ids` (one committed statement), look up what `shared` does not answer in
        `slot`, and finalize or give back every claimed row in one short transaction."""
        with self._connection() as conn:
            claimed = claim_rows_by_ids(conn, ids)
            self.metrics.not_claimed.inc(len(ids) - len(claimed))
            if not claimed:
                return
            held = [row.flowsheet_id for row in claimed]
            self.claim_locks.hold(held)
            verdicts = VerdictCache()
            for key, verdict in shared.items():
                verdicts.put(key, verdict)
            try:
                outcome = self._finalized(conn, claimed, verdicts, slot)
            except LmlError as err:
                if err.kind != "auth":
                    raise
                # The flow gave the claimed rows back before raising: the backlog takes them
                # once the key is fixed. The client logged the refusal on one line, and a
                # traceback per call would say nothing more.
                self.refused = f"LML refused our API key (status {err.status}); check LML_API_KEY"
                return
            finally:
                self.claim_locks.done(held)
        self.refused = None
        keys = {key for row in claimed if (key := row.key) is not None}
        self.cache.put_many(
            {key: v for key in keys - shared.keys() if (v := verdicts.get(key)) is not None}
        )
        self.metrics.count(outcome)

    def _finalized(
        self,
        conn: psycopg.Connection,
        claimed: Sequence[ClaimedRow],
        verdicts: VerdictCache,
        slot: _Slot,
    ) -> EnrichmentOutcome:
        """Finalized on a new connection if this one is cut; if every one is, the rows stay
        claimed and held (`ClaimLocks.gave_up`) so the sweep knows their worker lives."""
        try:
            return enrich_claimed_reconnecting(
                conn,
                lambda: self._connection(timeout=FINALIZE_CONNECT_TIMEOUT_S),
                self.lml_client,
                claimed,
                cache=verdicts,
                around_call=slot,
                wait=self._before_reconnecting,
            )
        except ConnectionLost:
            self.claim_locks.gave_up([row.flowsheet_id for row in claimed])
            raise

    def _before_reconnecting(self, delay_s: float) -> None:
        self._stop.wait(delay_s)
        # Whatever cut the connection likely cut the idle ones too: replace them first.
        self.pool.check()

    @contextmanager
    def _connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection on the station schema (what the flow needs): the
        claim commits at once and no transaction is held across the LML call."""
        with self.pool.connection(timeout=timeout) as conn:
            conn.autocommit = True
            try:
                conn.execute(self.search_path)
                yield conn
            finally:
                if not conn.closed:  # a cut one goes back to the pool only to be discarded
                    conn.autocommit = False


def build(ctx: SidecarContext) -> EnrichRole:
    return EnrichRole(ctx)
