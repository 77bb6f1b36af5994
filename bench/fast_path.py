"""The sidecar's fast path (issue #5) and the shared LML budget under a backfill (issue #8).

    python -m bench fast_path [--rate 10] [--seconds 30] [--backfill-rows 20000] ...

(a) Live plays (Poisson arrivals, `--rate` per second for `--seconds`) against an emulator
answering in 20 ms, with a generous budget: latency from issuing a DJ's INSERT to the row's
terminal status, through the real bridge + `enrich` roles, then through a naive worker in the
same run — LISTEN, claim one row, one `POST /lookup`, finalize one row — on the same schedule.

(b) A backfill of `--backfill-rows` pending rows over `--distinct` distinct records, drained with
`drain_backlog` in the budget's `backlog` lane, while live plays arrive at 1 per second through
the sidecar (50 ms emulator, budget `--budget-rate` calls/s, 5 concurrent, live reserve 0.5).
Reports live play → finalized p50/p99, LML calls and items per backfilled row against the
share of distinct records, and each lane's use of the budget.

Both measure the terminal status as the moment its CDC notification arrives on a LISTEN
connection of their own (it is sent at commit). The emulator runs in a subprocess, so its event
loop does not compete with the sidecar's threads for this process's GIL.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import redis

from bench.common import (
    STATION_SCHEMA,
    bench_database,
    bench_redis,
    copy_plays,
    station_connection,
)
from wx_orchestration.clients.lml import LmlClient
from wx_orchestration.clients.lml_budget import BudgetedLml, LmlBudget
from wx_orchestration.contracts.cdc import CDC_STREAM
from wx_orchestration.contracts.lml import BulkLookupResult
from wx_orchestration.core.budget import DEFAULT_BURST, BudgetLimits
from wx_orchestration.core.enrichment import finalize_plan, lookup_item, verdict_for
from wx_orchestration.db.enrichment import claim_rows_by_ids, finalize_rows
from wx_orchestration.flows.enrichment import drain_backlog
from wx_orchestration.settings import Settings
from wx_orchestration.sidecar.enrich import EnrichRole
from wx_orchestration.sidecar.roles import SidecarConfig
from wx_orchestration.sidecar.runtime import Sidecar

TERMINAL = ("enriched_match", "enriched_no_match")
DAY_START = datetime(2024, 3, 10, 5, 0, tzinfo=UTC)
DAY_END = DAY_START + timedelta(days=1)
WARM_UP_PLAYS = 5
INSERT = (
    "INSERT INTO flowsheet (artist_name, album_title, track_title, play_order)"
    " VALUES (%s, %s, %s, 1) RETURNING id"
)


@contextmanager
def emulator(**faults: float) -> Iterator[str]:
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in faults.items()]
    process = subprocess.Popen(
        [sys.executable, "-m", "wx_orchestration.devstack.lml_emulator", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def lookup_requests(url: str) -> list[dict]:
    return [
        r
        for r in httpx.get(f"{url}/_emulator/requests", timeout=10).json()
        if r["path"].startswith("/api/v1/lookup")
    ]


class FinalizeWatch:
    """When each row's terminal status committed, from the CDC notifications (one listener)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("LISTEN cdc")
        self.done: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._listen, name="finalize-watch", daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self.stop.is_set():
            for note in self.conn.notifies(timeout=0.2):
                received = time.perf_counter()
                data = json.loads(note.payload).get("data") or {}
                if data.get("metadata_status") in TERMINAL:
                    self.done.setdefault(data["id"], received)

    def wait_for(self, ids: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(i not in self.done for i in ids):
            if time.monotonic() > deadline:
                missing = sum(i not in self.done for i in ids)
                raise RuntimeError(f"{missing} of {len(ids)} plays were not finalized in time")
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.conn.close()


def poisson_schedule(rate: float, seconds: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    offsets, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return offsets
        offsets.append(t)


@dataclass
class LivePlays:
    inserted: dict[int, float]

    def latencies_ms(self, watch: FinalizeWatch) -> list[float]:
        return [(watch.done[i] - t) * 1000 for i, t in self.inserted.items()]


def play_live(
    url: str,
    schedule: list[float],
    record: Callable[[int], tuple[str, str, str]],
    stop: threading.Event | None = None,
) -> LivePlays:
    """Insert a play at each offset of `schedule` (a DJ's autocommit INSERT)."""
    plays = LivePlays({})
    with station_connection(url) as conn:
        started = time.perf_counter()
        for n, offset in enumerate(schedule):
            if stop is not None and stop.is_set():
                break
            time.sleep(max(0.0, started + offset - time.perf_counter()))
            issued = time.perf_counter()
            row = conn.execute(INSERT, record(n)).fetchone()
            assert row is not None
            plays.inserted[row[0]] = issued
    return plays


def sidecar_settings(
    url: str, redis_url: str, lml_url: str, rate: float, burst: int = DEFAULT_BURST
) -> Settings:
    return Settings.from_env(
        {
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "WXYC_SCHEMA_NAME": STATION_SCHEMA,
            "LIBRARY_METADATA_URL": lml_url,
            "LML_RATE_PER_SECOND": str(rate),
            "LML_BURST": str(burst),
            "LML_MAX_CONCURRENT": "5",
            "LML_LIVE_RESERVE": "0.5",
        }
    )


@contextmanager
def fast_path(
    url: str,
    redis_url: str,
    lml_url: str,
    rate: float,
    config: SidecarConfig,
    burst: int = DEFAULT_BURST,
) -> Iterator[EnrichRole]:
    sidecar = Sidecar(
        sidecar_settings(url, redis_url, lml_url, rate, burst),
        config,
        ("bridge", "enrich"),
        "bench",
    )
    sidecar.start(serve_http=False)
    try:
        bridge, role = sidecar.roles
        deadline = time.monotonic() + 30
        while bridge.readiness() != (True, "leader, listening"):
            if time.monotonic() > deadline:
                raise RuntimeError("the bridge did not start listening")
            time.sleep(0.05)
        assert isinstance(role, EnrichRole)
        yield role
    finally:
        sidecar.stop()


def naive_worker(url: str, lml: BudgetedLml, stop: threading.Event) -> None:
    """The station worker's shape: per INSERT notification, claim one row, one single-item
    lookup, finalize one row — one at a time, with the same rules and the same budget."""
    with (
        psycopg.connect(url, autocommit=True) as listen,
        station_connection(url) as conn,
    ):
        listen.execute("LISTEN cdc")
        while not stop.is_set():
            for note in listen.notifies(timeout=0.2):
                body = json.loads(note.payload)
                if body.get("action") != "INSERT" or body.get("table") != "flowsheet":
                    continue
                for row in claim_rows_by_ids(conn, [body["data"]["id"]]):
                    key = row.key
                    assert key is not None
                    answer = lml.lookup(lookup_item(key))
                    status = "match" if answer.results else "no_match"
                    result = BulkLookupResult(index=0, status=status, lookup=answer)
                    with conn.transaction():
                        finalize_rows(conn, [finalize_plan(row, key, verdict_for(result, key))])


def reset_redis(client: redis.Redis) -> None:
    client.delete(CDC_STREAM)
    for key in client.scan_iter("wx:lml:*"):
        client.delete(key)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def summary(latencies: list[float]) -> str:
    return (
        f"p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms, "
        f"max {max(latencies):.1f} ms ({len(latencies)} plays)"
    )


@contextmanager
def naive(url: str, redis_url: str, lml_url: str, rate: float) -> Iterator[None]:
    stop = threading.Event()
    budget = LmlBudget(redis.Redis.from_url(redis_url), BudgetLimits(rate, 5, 0.5))
    with LmlClient(lml_url, total_timeout=10, max_retries=0) as lml:
        worker = threading.Thread(
            target=naive_worker, args=(url, BudgetedLml(lml, budget, "live"), stop)
        )
        worker.start()
        time.sleep(0.5)  # until it LISTENs: an INSERT it missed would never be finalized
        try:
            yield
        finally:
            stop.set()
            worker.join(10)


@contextmanager
def sidecar_fast_path(url: str, redis_url: str, lml_url: str, rate: float) -> Iterator[None]:
    with fast_path(url, redis_url, lml_url, rate, SidecarConfig()):
        yield


Worker = Callable[[str, str, str, float], AbstractContextManager[None]]


def measure_live(
    worker: Worker, redis_url: str, lml_url: str, rate: float, schedule: list[float]
) -> tuple[list[float], int]:
    """INSERT → finalized latencies of the scheduled plays, and the LML calls they cost."""
    reset_redis(redis.Redis.from_url(redis_url))
    with bench_database() as url:
        watch = FinalizeWatch(url)
        try:
            with worker(url, redis_url, lml_url, rate):
                warm = play_live(url, [0.1 * n for n in range(WARM_UP_PLAYS)], distinct("Warm"))
                watch.wait_for(list(warm.inserted), 30)
                httpx.delete(f"{lml_url}/_emulator/requests", timeout=10)
                plays = play_live(url, schedule, distinct("Play"))
                watch.wait_for(list(plays.inserted), 300)
        finally:
            watch.close()
    return plays.latencies_ms(watch), len(lookup_requests(lml_url))


def distinct(prefix: str) -> Callable[[int], tuple[str, str, str]]:
    return lambda n: (f"{prefix} Artist {n}", f"Album {n}", f"Track {n}")


def live_latency(args: argparse.Namespace, redis_url: str) -> None:
    schedule = poisson_schedule(args.rate, args.seconds, seed=7)
    workers: dict[str, Worker] = {
        "fast path (bridge + enrich role)": sidecar_fast_path,
        "naive: claim 1, POST /lookup, finalize 1": naive,
    }
    print(
        f"(a) INSERT → finalized, 20 ms emulator, Poisson {args.rate:g} plays/s for "
        f"{args.seconds:g} s ({len(schedule)} plays):"
    )
    with emulator(latency_ms=20) as lml_url:
        for rate in (args.live_budget_rate, args.tight_budget_rate):
            print(f"  budget {rate:g} calls/s:")
            for name, worker in workers.items():
                latencies, calls = measure_live(worker, redis_url, lml_url, rate, schedule)
                print(f"    {name}: {summary(latencies)}; {calls} LML calls")


def seed_backfill(conn: psycopg.Connection, rows: int, distinct: int) -> None:
    rng = random.Random(11)
    records = [rng.randrange(distinct) for _ in range(rows)]
    artists = distinct // 4 or 1
    copy_plays(
        conn,
        ((f"Artist {r % artists}", f"Album {r}", f"Track {r}") for r in records),
        start=DAY_START,
    )


def lane_use(name: str, grants: int, cap_per_s: float, elapsed: float) -> str:
    return (
        f"{name}: {grants} calls ({grants / elapsed:.2f}/s), "
        f"{100 * grants / (cap_per_s * elapsed):.0f}% of its {cap_per_s:.2f} calls/s"
    )


def backfill_with_live_plays(args: argparse.Namespace, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    reset_redis(client)
    limits = BudgetLimits(args.budget_rate, 5, 0.5)
    live_records = [(f"Live Artist {n}", f"Live Album {n}", f"Live Track {n}") for n in range(40)]
    rng = random.Random(3)
    picks = [rng.randrange(len(live_records)) for _ in range(100_000)]
    # The backfilled rows must reach the backlog, not the fast path: no first-start catch-up.
    config = replace(SidecarConfig(), first_start_lookback_h=0.0)
    with emulator(latency_ms=50) as lml_url, bench_database() as url:
        with station_connection(url) as conn:
            seed_backfill(conn, args.backfill_rows, args.distinct)
        watch = FinalizeWatch(url)
        with fast_path(url, redis_url, lml_url, args.budget_rate, config) as role:
            stop_live = threading.Event()
            live: list[LivePlays] = []
            player = threading.Thread(
                target=lambda: live.append(
                    play_live(
                        url,
                        [float(n) for n in range(100_000)],
                        lambda n: live_records[picks[n]],
                        stop_live,
                    )
                )
            )
            budget = LmlBudget(client, limits)
            player.start()
            try:
                with (
                    LmlClient(lml_url, total_timeout=60, max_retries=0) as lml,
                    station_connection(url) as conn,
                ):
                    drain = drain_backlog(
                        conn,
                        BudgetedLml(lml, budget, "backlog"),
                        start=DAY_START,
                        end=DAY_END,
                        grace_s=0,
                        batch_size=args.batch_size,
                        time_budget_s=3600,
                        progress=lambda _message: None,
                    )
            finally:
                stop_live.set()
                player.join(10)
            (plays,) = live
            watch.wait_for(list(plays.inserted), 60)
            registry = role.consumers[0].metrics.registry
            live_calls = registry.get_sample_value("wx_enrich_lml_calls_total") or 0
            live_hits = registry.get_sample_value("wx_enrich_cache_hits_total") or 0
            live_waits = registry.get_sample_value("wx_enrich_budget_waits_total") or 0
            live_grants = role.budget.stats["live"].grants
        watch.close()
        latencies = plays.latencies_ms(watch)
        requests = lookup_requests(lml_url)

    outcome = drain.outcome
    elapsed = drain.elapsed_s
    total, batch = limits.total, limits.batch
    total_cap = 1000 / total.interval_ms
    batch_cap = 1000 / batch.interval_ms
    backlog_stats = budget.stats["backlog"]
    print(
        f"(b) backfill of {outcome.rows} rows ({args.distinct} distinct records, "
        f"{args.distinct / args.backfill_rows:.0%}) + live plays at 1/s, 50 ms emulator, "
        f"budget {args.budget_rate:g} calls/s, 5 concurrent, live reserve 0.5:"
    )
    print(
        f"  backfill: {elapsed:.1f} s, {outcome.outcome_counts()}, {outcome.lml_calls} LML calls "
        f"= {outcome.lml_calls / outcome.rows:.4f} per row, {outcome.lookups} items "
        f"= {outcome.lookups / outcome.rows:.3f} per row (distinct share "
        f"{args.distinct / args.backfill_rows:.3f}); budget waits {backlog_stats.waits} "
        f"({backlog_stats.wait_ms / 1000:.1f} s)"
    )
    print(
        f"  live: {summary(latencies)}; {live_calls:.0f} LML calls, {live_hits:.0f} cache hits, "
        f"{live_waits:.0f} budget waits"
    )
    print(f"  budget use over the backfill's {elapsed:.1f} s:")
    print("    " + lane_use("backlog lane", backlog_stats.grants, batch_cap, elapsed))
    print("    " + lane_use("live lane", live_grants, total_cap - batch_cap, elapsed) + " reserve")
    print("    " + lane_use("all lanes", backlog_stats.grants + live_grants, total_cap, elapsed))
    print(f"  emulator saw {len(requests)} lookup calls in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=10.0, help="live plays per second in (a)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--live-budget-rate", type=float, default=50.0)
    parser.add_argument(
        "--tight-budget-rate", type=float, default=5.0, help="(a) again, below the play rate"
    )
    parser.add_argument("--backfill-rows", type=int, default=20_000)
    parser.add_argument("--distinct", type=int, default=4_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--budget-rate", type=float, default=3.0)
    parser.add_argument("--only", choices=("a", "b"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with bench_redis() as redis_url:
        if args.only in (None, "a"):
            live_latency(args, redis_url)
        if args.only in (None, "b"):
            backfill_with_live_plays(args, redis_url)


if __name__ == "__main__":
    main()
