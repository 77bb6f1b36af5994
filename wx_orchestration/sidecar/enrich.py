"""Enrichment fast path: consumer group `enrichment` on `wx:cdc` → claim → LML → finalize.

A DJ's play should be on listeners' screens well under a second after the INSERT, so the role
enriches each batch the moment it is read rather than collecting for a while: at a live rate a
batch holds one play. Batching is natural: while lookups (or waits for the shared LML budget)
are under way, later plays queue in the stream, and the next read carries all of them — at most
100 rows per claim and per `lookup/bulk` call. Under budget pressure the role waits and so puts
more rows into each call; it never sheds one (DESIGN.md §6).

A few consumers of the group run side by side in the role (`WX_ENRICH_CONSUMERS`, default 3):
with one, a play arriving during a 20-50 ms lookup waited for it to end before its own began,
which doubled the tail latency at 10 plays/s. The budget still caps calls in flight.

The sink (`enrich_events`) is the one decision point: keep the candidates (INSERT, or CATCHUP of
a still-pending row), claim them in one committed statement, look them up through the shared
budget and the shared lookup cache, finalize or release every claimed row in one short
transaction (`flows.enrichment.enrich_claimed`), then acknowledge the whole batch. If anything
raises — Postgres down, say — nothing is acknowledged and the entries are redelivered; a row
already finalized or claimed is then simply not claimable again, so it is never finalized
twice. Rows whose lookup failed go back to `pending` with backoff, for the Dagster backlog.

Env (beyond `Settings`): `WX_ENRICH_CACHE_TTL_S` (default 3600), how long a verdict is shared;
`WX_ENRICH_CONSUMERS` (default 3).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import psycopg
import redis
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg import sql
from psycopg_pool import ConnectionPool

from wx_orchestration.clients.lml import LmlClient, LmlError
from wx_orchestration.clients.lml_budget import BudgetedLml, BudgetWaitTimeout, LmlBudget
from wx_orchestration.clients.lookup_cache import LookupCache
from wx_orchestration.contracts.cdc import CDC_STREAM, ENRICHMENT_GROUP
from wx_orchestration.contracts.lml import MAX_LOOKUP_BULK_ITEMS, BulkLookupResponse
from wx_orchestration.core.budget import BudgetLimits
from wx_orchestration.core.enrichment import Candidate, ClaimedRow, enrichment_candidate
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry, effective_action
from wx_orchestration.db.enrichment import claim_rows_by_ids
from wx_orchestration.flows.enrichment import (
    ConnectionLost,
    EnrichmentOutcome,
    VerdictCache,
    enrich_claimed_reconnecting,
)
from wx_orchestration.settings import env_float, env_int
from wx_orchestration.sidecar.claims import ClaimLocks
from wx_orchestration.sidecar.consumer import StreamConsumer
from wx_orchestration.sidecar.roles import SidecarConfig, SidecarContext

LANE = "live"
DEFAULT_CACHE_TTL_S = 3600.0
DEFAULT_CONSUMERS = 3
# A play waits for the LML budget rather than being shed; these bound how long one wait lasts
# before the role checks whether it is shutting down, and how often it asks again.
BUDGET_PATIENCE_S = 2.0
BUDGET_POLL_S = 0.25
# But claimed rows are never held longer than this while waiting (an open breaker, a long 429
# pause): past it they go back to `pending` for the backlog, before the stale sweep's lease
# (60 s by default) could count the wait as the row's failure. Must stay below the lease minus
# LML_TIMEOUT_S.
DEFAULT_MAX_BUDGET_WAIT_S = 30.0
# The pool's default wait (30 s) would outlast the retries of a cut finalize.
FINALIZE_CONNECT_TIMEOUT_S = 5.0
# How soon the role notices `stop` while its consumers run.
_HALT_POLL_S = 0.2


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
    scrape time (every consumer thread adds to them), plus the waits the role itself
    prolonged past `BUDGET_PATIENCE_S` (pauses: a 429, an open breaker)."""

    def __init__(self, budget: LmlBudget) -> None:
        self.budget = budget
        self.pauses = 0
        self.paused_s = 0.0
        self._lock = threading.Lock()

    def paused(self, seconds: float) -> None:
        with self._lock:
            self.pauses += 1
            self.paused_s += seconds

    def collect(self) -> Iterable[Metric]:
        stats = self.budget.stats[LANE]
        with self._lock:
            pauses, paused_s = self.pauses, self.paused_s
        yield CounterMetricFamily(
            "wx_enrich_budget_waits", "LML calls that waited for the shared budget", stats.waits
        )
        yield CounterMetricFamily(
            "wx_enrich_budget_wait_seconds",
            "Time LML calls spent waiting for the shared budget",
            stats.wait_ms / 1000 + paused_s,
        )
        yield CounterMetricFamily(
            "wx_enrich_budget_pauses",
            f"Budget waits longer than {BUDGET_PATIENCE_S}s (paused or breaker open)",
            pauses,
        )


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
            sql.Identifier(settings.station_schema)
        )
        self.budget = LmlBudget(
            client,
            BudgetLimits(
                settings.lml_rate_per_second,
                settings.lml_max_concurrent,
                settings.lml_live_reserve,
                settings.lml_burst,
            ),
        )
        # No client-side retries: a retry must queue for the budget like any other call.
        self.lml_client = LmlClient(
            settings.lml_url,
            api_key=settings.lml_api_key,
            total_timeout=settings.lml_timeout_s,
            max_retries=0,
        )
        self.lml = BudgetedLml(self.lml_client, self.budget, LANE, timeout_s=BUDGET_PATIENCE_S)
        ttl_s = cache_ttl_s or env_float(
            os.environ, "WX_ENRICH_CACHE_TTL_S", DEFAULT_CACHE_TTL_S, minimum=1
        )
        self.max_budget_wait_s = env_float(
            os.environ, "WX_ENRICH_MAX_BUDGET_WAIT_S", DEFAULT_MAX_BUDGET_WAIT_S, minimum=1
        )
        self.cache = LookupCache(client, ttl_s)
        self.claim_locks = ClaimLocks(settings.database_url)
        self.metrics = EnrichMetrics(ctx.metrics.registry)
        self.budget_waits = BudgetWaits(self.budget)
        ctx.metrics.registry.register(self.budget_waits)
        self._stop = threading.Event()
        # Set while LML refuses our key: every lookup fails until someone fixes it.
        self.refused: str | None = None
        count = consumers or env_int(
            os.environ, "WX_ENRICH_CONSUMERS", DEFAULT_CONSUMERS, minimum=1
        )
        name = consumer_name or ctx.instance
        self.consumers = [
            self._consumer(ctx, client, name if count == 1 else f"{name}/{n}") for n in range(count)
        ]
        self._threads: list[threading.Thread] = []

    def _consumer(
        self, ctx: SidecarContext, client: redis.Redis, name: str
    ) -> StreamConsumer[FlowsheetEvent]:
        return StreamConsumer(
            client=client,
            pool=self.pool,
            stream=CDC_STREAM,
            group=ENRICHMENT_GROUP,
            consumer=name,
            decode=decode_stream_entry,
            sink=self.enrich_events,
            metrics=ctx.metrics,
            config=self._consumer_config(ctx),
        )

    @staticmethod
    def _consumer_config(ctx: SidecarContext) -> SidecarConfig:
        """One LML call's worth of entries per read: a batch then takes at most one budget wait
        plus one LML call, which the default `claim_idle_ms` outlasts, so a batch still in
        hand is not reclaimed by a sibling (and, after enough deliveries, dead-lettered)."""
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

    def enrich_events(self, events: Sequence[FlowsheetEvent]) -> list[str]:
        """The sink: every entry of the batch once each candidate row is finalized, released
        or found not claimable; none if this raises (the batch is redelivered)."""
        candidates: dict[int, Candidate] = {}
        for event in events:
            found = enrichment_candidate(effective_action(event), event.row)
            if isinstance(found, Candidate):
                candidates.setdefault(found.flowsheet_id, found)
            else:
                self.metrics.ignored.labels(found).inc()
        ids = list(candidates)
        try:
            for first in range(0, len(ids), MAX_LOOKUP_BULK_ITEMS):
                self.enrich_rows(ids[first : first + MAX_LOOKUP_BULK_ITEMS])
        except LmlError as err:
            if err.kind != "auth":
                raise
            # The flow gave the claimed rows back before raising, and the rest were never
            # claimed: the backlog takes them all once the key is fixed. Redelivering the batch
            # would only be refused again; the client logged the refusal on one line, and a
            # traceback per batch would say nothing more.
            self.refused = f"LML refused our API key (status {err.status}); check LML_API_KEY"
        else:
            self.refused = None
        return [event.entry_id for event in events]

    def enrich_rows(self, ids: Sequence[int]) -> EnrichmentOutcome | None:
        """Claim `ids` (one committed statement) and enrich those claimed; None if none was."""
        with self._connection() as conn:
            claimed = claim_rows_by_ids(conn, ids)
            self.metrics.not_claimed.inc(len(ids) - len(claimed))
            if not claimed:
                return None
            held = [row.flowsheet_id for row in claimed]
            self.claim_locks.hold(held)
            try:
                outcome = self._enrich_claimed(conn, claimed)
            finally:
                self.claim_locks.done(held)
        self.metrics.count(outcome)
        return outcome

    def _enrich_claimed(
        self, conn: psycopg.Connection, claimed: Sequence[ClaimedRow]
    ) -> EnrichmentOutcome:
        # The flow asks its cache key by key; one MGET up front fills a per-batch cache
        # instead, and the verdicts it adds afterwards are the new ones to share.
        keys = {key for row in claimed if (key := row.key) is not None}
        shared = self.cache.get_many(keys)
        verdicts = VerdictCache()
        for key, verdict in shared.items():
            verdicts.put(key, verdict)
        outcome = self._finalized(conn, claimed, verdicts)
        fresh = {key: v for key in keys - shared.keys() if (v := verdicts.get(key)) is not None}
        self.cache.put_many(fresh)
        return outcome

    def _finalized(
        self, conn: psycopg.Connection, claimed: Sequence[ClaimedRow], verdicts: VerdictCache
    ) -> EnrichmentOutcome:
        """Finalized on a new connection if this one is cut; if every one is, the rows stay
        claimed and held (`ClaimLocks.gave_up`) so the sweep knows their worker lives."""
        try:
            return enrich_claimed_reconnecting(
                conn,
                lambda: self._connection(timeout=FINALIZE_CONNECT_TIMEOUT_S),
                self.lml,
                claimed,
                cache=verdicts,
                around_call=self._call_in_budget,
                wait=self._before_reconnecting,
            )
        except ConnectionLost:
            self.claim_locks.gave_up([row.flowsheet_id for row in claimed])
            raise

    def _before_reconnecting(self, delay_s: float) -> None:
        self._stop.wait(delay_s)
        # Whatever cut the connection likely cut the idle ones too: replace them first.
        self.pool.check()

    def _call_in_budget(
        self, call: Callable[[], BulkLookupResponse], _items: int
    ) -> BulkLookupResponse:
        """Make the call once the live lane has a slot, waiting up to `max_budget_wait_s`.

        `BudgetedLml` gives up after `BUDGET_PATIENCE_S` (at once when the budget says the
        wait is longer: a 429 pause, an open breaker) and before sending anything, so asking
        again still makes one LML call; polling here lets a shutdown interrupt the wait. Giving
        up raises `BudgetWaitTimeout`, an `LmlError`: the flow sends the claimed rows back to
        `pending` (not their fault, so never towards parking) and the backlog takes them.
        """
        deadline = time.monotonic() + self.max_budget_wait_s
        while True:
            tried = time.monotonic()
            try:
                return call()
            except BudgetWaitTimeout:
                stopping = self._stop.wait(BUDGET_POLL_S)
                self.budget_waits.paused(time.monotonic() - tried)
                if stopping:
                    raise BudgetWaitTimeout(
                        "sidecar stopping while waiting for the LML budget"
                    ) from None
                if time.monotonic() >= deadline:
                    raise BudgetWaitTimeout(
                        f"no LML budget for {self.max_budget_wait_s:g}s; claimed rows go back "
                        "to pending for the backlog"
                    ) from None

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
