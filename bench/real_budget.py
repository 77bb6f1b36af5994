"""Enrichment under the station's real LML budget (issue #16): `python -m bench real_budget`.

    python -m bench real_budget [--pacing both|on|off] [--serial-plays 200]

The real bridge + `enrich` roles against the LML emulator (20 ms a call, its own process), the
budget at the station's 50 calls a minute (`LML_RATE_PER_SECOND=0.8333`, `LML_BURST=50`):

- burst: 200 rows in one INSERT → every row terminal (the station's worker: 660 ms);
- steady: 10 plays/s for 20 s → per-row INSERT → terminal p50 / p95, rows lost (not terminal a
  minute after the last play), LML calls (the station's worker: 128-132 of 200 lost, 68-69 calls);
- serial: one play at a time, budget off (1,000 calls/s) → p50 / p99.

The station's worker cannot be shipped, so its figures (issue #16) are the reference. For the
steady and serial scenarios the benchmark also reports our statements per play from
`pg_stat_statements` (the embedded server preloads it; every statement of the sidecar, the
bench's own INSERTs and LISTEN left out), how many of them write `flowsheet` (each moves the
station's Last-Modified) and how many rows those changed, and Postgres CPU per 1,000 plays
(user + system time of the server's processes, from /proc, including the bench's INSERTs).
Each configuration runs with our flowsheet write pacing on (`WX_FLOWSHEET_MAX_LEAD_S=5`, as in
production) and off, since pacing bounds how many statements a second we write.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import redis

from bench.common import STATION_SCHEMA, bench_database, bench_redis, station_connection
from bench.fast_path import (
    INSERT,
    FinalizeWatch,
    distinct,
    emulator,
    fast_path,
    lookup_requests,
    percentile,
    play_live,
    reset_redis,
)
from wx_orchestration.db.paced_writes import watermark_leads
from wx_orchestration.sidecar.roles import SidecarConfig

STATION_RATE = 50 / 60
STATION_BURST = 50
BUDGET_OFF_RATE = 1000.0
EMULATOR_MS = 20
# Plays before a scenario, so connections, the group and the caches are warm.
WARM_UP = 3
# Paced plays issued as a real station's are: each after our lead on Last-Modified has drained.
APART_PLAYS = 50
PG_SETTINGS = ("shared_preload_libraries=pg_stat_statements",)
_WRITES_FLOWSHEET = re.compile(r"\b(UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+flowsheet\b", re.I)
# The bench's own statements: DJs' inserts and the finalize watcher's LISTEN.
_OURS_NOT = re.compile(r"^\s*(INSERT INTO flowsheet \(artist_name|LISTEN|SELECT pg_stat)", re.I)


@dataclass
class Statements:
    total: int
    flowsheet_writes: int
    flowsheet_rows: int


def server_pids(conn: psycopg.Connection) -> list[int]:
    row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    postmaster = int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


def server_cpu_s(conn: psycopg.Connection) -> float:
    """User + system seconds of the server and its backends, living and exited (a reaped
    backend's time is in the postmaster's children's times)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    pids = server_pids(conn)
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == pids[0]:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / ticks


def statements(conn: psycopg.Connection) -> Statements:
    rows = conn.execute(
        "SELECT query, calls, rows FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchall()
    ours = [(q, c, r) for q, c, r in rows if not _OURS_NOT.match(q)]
    writes = [(c, r) for q, c, r in ours if _WRITES_FLOWSHEET.search(q)]
    return Statements(
        sum(c for _, c, _ in ours), sum(c for c, _ in writes), sum(r for _, r in writes)
    )


@dataclass
class Cost:
    plays: int
    statements: Statements
    cpu_s: float

    def line(self) -> str:
        s, n = self.statements, self.plays
        return (
            f"{s.total / n:.1f} statements per play, {s.flowsheet_writes / n:.2f} writing "
            f"flowsheet ({s.flowsheet_writes} statements changed {s.flowsheet_rows} rows), "
            f"Postgres CPU {1000 * self.cpu_s / n:.1f} ms per play = "
            f"{self.cpu_s * 1000 / n:.1f} s per 1,000 plays"
        )


@contextmanager
def costing(conn: psycopg.Connection, plays: Callable[[], int]) -> Iterator[list[Cost]]:
    conn.execute("SELECT pg_stat_statements_reset()")
    cpu = server_cpu_s(conn)
    measured: list[Cost] = []
    yield measured
    measured.append(Cost(plays(), statements(conn), server_cpu_s(conn) - cpu))


def load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def warm_up(url: str, lml_url: str, client: redis.Redis, watch: FinalizeWatch) -> None:
    warm = play_live(url, [0.05 * n for n in range(WARM_UP)], distinct(f"Warm {time.time()}"))
    watch.wait_for(list(warm.inserted), 30)
    reset_redis_budget(client)
    httpx.delete(f"{lml_url}/_emulator/requests", timeout=10)
    quiet_lead(url)


def quiet_lead(url: str, conn: psycopg.Connection | None = None) -> None:
    """Until our statements' lead on the station's Last-Modified has drained, as it has between
    a real station's plays (minutes apart) and as the budget is quiet at a scenario's start:
    otherwise the warm-up's writes would be charged to the scenario."""
    with station_connection(url) if conn is None else contextlib.nullcontext(conn) as reader:
        deadline = time.monotonic() + 30
        while watermark_leads(reader, STATION_SCHEMA)[1] > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("our write lead did not drain within 30 s")
            time.sleep(0.05)


def reset_redis_budget(client: redis.Redis) -> None:
    """A quiet budget (full bucket), as the station's worker had it in each scenario."""
    for key in client.scan_iter("wx:lml:{lookup}:*"):
        client.delete(key)


def wait_terminal(watch: FinalizeWatch, ids: list[int], timeout: float) -> int:
    """How many of `ids` were not terminal within `timeout`."""
    deadline = time.monotonic() + timeout
    while any(i not in watch.done for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sum(i not in watch.done for i in ids)


def burst(url: str, watch: FinalizeWatch, lml_url: str, plays: int) -> str:
    with station_connection(url) as conn:
        issued = time.perf_counter()
        ids = [
            row[0]
            for row in conn.execute(
                "INSERT INTO flowsheet (artist_name, album_title, track_title, play_order)"
                " SELECT 'Burst Artist ' || n, 'Album ' || n, 'Track ' || n, n"
                " FROM generate_series(1, %s) AS n RETURNING id",
                (plays,),
            ).fetchall()
        ]
    lost = wait_terminal(watch, ids, 60)
    done = [watch.done[i] for i in ids if i in watch.done]
    requests = lookup_requests(lml_url)
    items = [r.get("items", 0) for r in requests]
    return (
        f"burst of {plays} in one INSERT: all terminal {1000 * (max(done) - issued):.0f} ms "
        f"(first {1000 * (min(done) - issued):.0f} ms), {lost} lost, {len(requests)} LML calls "
        f"(items {items})"
    )


def steady(
    url: str, watch: FinalizeWatch, lml_url: str, rate: float, seconds: float
) -> tuple[str, int]:
    schedule = [n / rate for n in range(round(rate * seconds))]
    plays = play_live(url, schedule, distinct(f"Steady {time.time()}"))
    ids = list(plays.inserted)
    lost = wait_terminal(watch, ids, 60)
    latencies = [(watch.done[i] - t) * 1000 for i, t in plays.inserted.items() if i in watch.done]
    requests = lookup_requests(lml_url)
    return (
        f"{rate:g} plays/s for {seconds:g} s ({len(ids)} plays): {lost} lost, per-row "
        f"p50 {statistics.median(latencies):.0f} ms, p95 {percentile(latencies, 0.95):.0f} ms, "
        f"max {max(latencies):.0f} ms; {len(requests)} LML calls"
    ), len(ids)


def serial(url: str, watch: FinalizeWatch, plays: int, *, apart: bool = False) -> str:
    """One play at a time, each issued once the last is terminal; `apart`: also once our lead
    has drained, as it always has between a station's plays (minutes apart)."""
    latencies = []
    record = distinct(f"Serial {time.time()}")
    with station_connection(url) as conn:
        for n in range(plays):
            if apart:
                quiet_lead(url, conn)
            issued = time.perf_counter()
            row = conn.execute(INSERT, record(n)).fetchone()
            assert row is not None
            watch.wait_for([row[0]], 10)
            latencies.append((watch.done[row[0]] - issued) * 1000)
    spacing = ", each after our write lead drained" if apart else ""
    return (
        f"one play at a time ({plays}{spacing}), budget off: "
        f"p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms"
    )


def run(args: argparse.Namespace, pacing: str, redis_url: str, lml_url: str) -> None:
    os.environ["WX_FLOWSHEET_MAX_LEAD_S"] = "5" if pacing == "on" else "0"
    client = redis.Redis.from_url(redis_url)
    config = SidecarConfig()
    print(f"pacing {pacing} (WX_FLOWSHEET_MAX_LEAD_S={os.environ['WX_FLOWSHEET_MAX_LEAD_S']}):")
    reset_redis(client)
    with bench_database(PG_SETTINGS) as url, station_connection(url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        watch = FinalizeWatch(url)
        try:
            with fast_path(url, redis_url, lml_url, STATION_RATE, config, STATION_BURST):
                warm_up(url, lml_url, client, watch)
                print(f"  budget 50 calls/min, burst 50, load {load()}")
                print("    " + burst(url, watch, lml_url, args.burst_plays) + f"; load {load()}")
                warm_up(url, lml_url, client, watch)
                count = [0]
                with costing(conn, lambda: count[0]) as cost:
                    line, count[0] = steady(url, watch, lml_url, args.rate, args.seconds)
                print(f"    {line}; load {load()}")
                print(f"      {cost[0].line()}")
            reset_redis(client)
            with fast_path(url, redis_url, lml_url, BUDGET_OFF_RATE, config, STATION_BURST):
                warm_up(url, lml_url, client, watch)
                print(f"  budget off ({BUDGET_OFF_RATE:g} calls/s), load {load()}")
                with costing(conn, lambda: args.serial_plays) as cost:
                    line = serial(url, watch, args.serial_plays)
                print(f"    {line}; load {load()}")
                print(f"      {cost[0].line()}")
                if pacing == "on":
                    print(f"    {serial(url, watch, APART_PLAYS, apart=True)}; load {load()}")
        finally:
            watch.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pacing", choices=("both", "on", "off"), default="both")
    parser.add_argument("--burst-plays", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--serial-plays", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pacings = ("on", "off") if args.pacing == "both" else (args.pacing,)
    with bench_redis() as redis_url, emulator(latency_ms=EMULATOR_MS) as lml_url:
        for pacing in pacings:
            run(args, pacing, redis_url, lml_url)


if __name__ == "__main__":
    main()
