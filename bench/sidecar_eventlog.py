"""Sidecar event-log benchmark: stream → Postgres throughput and INSERT → event-log latency.

    python -m bench.sidecar_eventlog [--events N] [--single-events N] [--latency-rows N]

Servers come from `bench.common` (embedded, durable commits; or DATABASE_URL / REDIS_URL).
Both consumers run through the same `StreamConsumer` and sink as the sidecar, in the same run:
COUNT=100 and 500 with one set-based INSERT per batch, then COUNT=1 (one statement, one
transaction and one XACK per entry) as the baseline.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import replace

import psycopg
import redis
from psycopg import sql
from psycopg_pool import ConnectionPool

from bench.common import STATION_SCHEMA, bench_database, bench_redis
from wx_orchestration.contracts.cdc import CDC_STREAM, EVENTLOG_GROUP, StreamEvent
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry
from wx_orchestration.settings import Settings
from wx_orchestration.sidecar.consumer import StreamConsumer
from wx_orchestration.sidecar.eventlog import log_flowsheet_events
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.roles import SidecarConfig
from wx_orchestration.sidecar.runtime import Sidecar


def _reset(url: str, client: redis.Redis) -> None:
    client.delete(CDC_STREAM)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE wx_orchestration.flowsheet_events")


def _fill_stream(client: redis.Redis, count: int) -> None:
    now_ms = time.time_ns() // 1_000_000
    pipe = client.pipeline(transaction=False)
    for n in range(1, count + 1):
        row = {
            "id": n,
            "updated_at": "2024-05-01T16:00:00+00:00",
            "metadata_status": "pending",
            "artist_name": "Stereolab",
            "track_title": f"track {n}",
            "play_order": n,
        }
        pipe.xadd(CDC_STREAM, StreamEvent("INSERT", row, now_ms, now_ms).fields())  # type: ignore[arg-type]
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()


def stream_to_log_rate(url: str, client: redis.Redis, events: int, count: int) -> float:
    """Events per second from `wx:cdc` into flowsheet_events with XREADGROUP COUNT=`count`."""
    _reset(url, client)
    _fill_stream(client, events)
    config = replace(SidecarConfig(), read_count=count, read_block_ms=100)
    metrics = SidecarMetrics()
    pool: ConnectionPool[psycopg.Connection] = ConnectionPool(url, min_size=1, max_size=2)
    with pool:
        consumer: StreamConsumer[FlowsheetEvent] = StreamConsumer(
            client=client,
            pool=pool,
            stream=CDC_STREAM,
            group=EVENTLOG_GROUP,
            consumer="bench",
            decode=decode_stream_entry,
            sink=lambda batch: log_flowsheet_events(pool, metrics, batch),
            metrics=metrics,
            config=config,
        )
        consumer.ensure_group()
        started = time.perf_counter()
        handled = 0
        while handled < events:
            handled += consumer.step()
            elapsed = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM wx_orchestration.flowsheet_events").fetchone()
    if row is None or row[0] != events:
        raise RuntimeError(f"expected {events} event rows, found {row}")
    return events / elapsed


def insert_to_log_latency(url: str, redis_url: str, rows: int, rate: float) -> list[float]:
    """Milliseconds from a DJ's INSERT (its add_time) to the event-log row (its logged_at)."""
    client = redis.Redis.from_url(redis_url)
    _reset(url, client)
    client.delete(CDC_STREAM)
    settings = Settings.from_env(
        {"DATABASE_URL": url, "REDIS_URL": redis_url, "WXYC_SCHEMA_NAME": STATION_SCHEMA}
    )
    sidecar = Sidecar(settings, SidecarConfig(), ("bridge", "eventlog"), "bench")
    sidecar.start(serve_http=False)
    try:
        deadline = time.monotonic() + 30
        while sidecar.roles[0].readiness() != (True, "leader, listening"):
            if time.monotonic() > deadline:
                raise RuntimeError("the bridge did not start listening")
            time.sleep(0.05)
        insert = sql.SQL(
            "INSERT INTO {}.flowsheet (artist_name, track_title, play_order) VALUES (%s, %s, %s)"
        ).format(sql.Identifier(STATION_SCHEMA))
        with psycopg.connect(url, autocommit=True) as conn:
            start = time.perf_counter()
            for n in range(rows):
                time.sleep(max(0.0, start + n / rate - time.perf_counter()))
                conn.execute(insert, ("Broadcast", f"track {n}", n))
            deadline = time.monotonic() + 30
            while True:
                done = conn.execute(
                    "SELECT count(*) FROM wx_orchestration.flowsheet_events"
                ).fetchone()
                if done and done[0] >= rows:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {done} of {rows} rows reached the event log")
                time.sleep(0.05)
            latencies = conn.execute(
                sql.SQL(
                    "SELECT extract(epoch FROM e.logged_at - f.add_time) * 1000"
                    " FROM wx_orchestration.flowsheet_events e JOIN {}.flowsheet f"
                    " ON f.id = e.flowsheet_id"
                ).format(sql.Identifier(STATION_SCHEMA))
            ).fetchall()
    finally:
        sidecar.stop()
    return [float(row[0]) for row in latencies]


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description="stream → event log throughput and latency")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--single-events", type=int, default=5_000)
    parser.add_argument("--latency-rows", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with bench_database() as url, bench_redis() as redis_url:
        client = redis.Redis.from_url(redis_url)
        results = {}
        for count in (100, 500):
            results[count] = stream_to_log_rate(url, client, args.events, count)
            print(f"stream → event log, COUNT={count}, set-based: {results[count]:,.0f} events/s")
        single = stream_to_log_rate(url, client, args.single_events, 1)
        print(f"stream → event log, COUNT=1, one row per statement: {single:,.0f} events/s")
        print(f"ratio (COUNT=500 / COUNT=1): {results[500] / single:.1f}x")
        latencies = insert_to_log_latency(url, redis_url, args.latency_rows, args.rate)
        print(
            f"INSERT → event-log row at {args.rate:.0f} rows/s ({len(latencies)} rows): "
            f"p50 {statistics.median(latencies):.2f} ms, "
            f"p99 {_percentile(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms"
        )


if __name__ == "__main__":
    main()
