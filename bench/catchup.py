"""CDC catch-up over rows that share one `updated_at`, on production's indexes.

    python -m bench.catchup [--rows N] [--naive-pages N]

One bulk write (here one COPY) stamps every row with its transaction's start, and production
indexes `updated_at` alone (DESC). The bridge (a `wx-sidecar --roles bridge` process) starts
with a watermark just before that block and must bridge all of it; meanwhile a writer inserts
one live play every 50 ms, and a reader times each from its commit to its entry in `wx:cdc`.
The naive baseline, measured on the same table in the same run, is the keyset page over
(`updated_at`, `id`) that re-sorts the whole tie block for every page; a few pages are timed and
the total extrapolated. Run it on PostgreSQL 14.22 with WX_EMBEDDED_PG_DIR (see README).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.common import STATION_SCHEMA, bench_database, bench_redis, station_connection
from wx_orchestration.contracts.cdc import CDC_STREAM
from wx_orchestration.devstack.processes import free_port
from wx_orchestration.sidecar.roles import SidecarConfig

_LIVE_EVERY_S = 0.05
_NAIVE_PAGE = """
SELECT f.updated_at, f.id, to_jsonb(f) FROM flowsheet AS f
WHERE (f.updated_at, f.id) > (%s, %s)
ORDER BY f.updated_at, f.id
LIMIT 500
"""


def _load_tied_rows(url: str, rows: int) -> datetime:
    with station_connection(url, autocommit=False) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY flowsheet (artist_name, album_title, track_title, play_order,"
                " metadata_status) FROM STDIN"
            ) as copy,
        ):
            for i in range(rows):
                copy.write_row((f"Artist {i % 5000}", f"Album {i % 9000}", f"Track {i}", i,
                                "enriched_no_match"))  # fmt: skip
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE flowsheet")
        row = conn.execute("SELECT min(updated_at), count(DISTINCT updated_at) FROM flowsheet")
        tied_at, distinct = row.fetchone()  # type: ignore[misc]
    assert distinct == 1, distinct
    return tied_at


def _naive_seconds_per_page(url: str, tied_at: datetime, pages: int) -> float:
    with station_connection(url) as conn:
        cursor = (tied_at - timedelta(seconds=1), 0)
        started = time.perf_counter()
        for _ in range(pages):
            page = conn.execute(_NAIVE_PAGE, cursor).fetchall()
            cursor = (page[-1][0], page[-1][1])
        return (time.perf_counter() - started) / pages


def _server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return row[0] if row else "?"


def _bridge(url: str, redis_url: str, log_path: Path, page: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "WXYC_SCHEMA_NAME": STATION_SCHEMA,
        "WX_SIDECAR_PORT": str(free_port("127.0.0.1")),
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wx_orchestration.sidecar",
                "--roles",
                "bridge",
                "--catchup-page",
                str(page),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def run(rows: int, naive_pages: int, page: int) -> None:
    with bench_database() as url, bench_redis() as redis_url:
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        tied_at = _load_tied_rows(url, rows)
        with station_connection(url) as conn:
            conn.execute(
                "INSERT INTO wx_orchestration.cdc_watermark (name, updated_at, flowsheet_id)"
                " VALUES (%s, %s, 0)",
                (f"{STATION_SCHEMA}.flowsheet", tied_at - timedelta(seconds=30)),
            )
        live_sent: dict[int, float] = {}
        live_seen: dict[int, float] = {}
        stop = threading.Event()
        caught_up_at: list[float] = []
        first_caught: list[float] = []

        def read_stream(started: float) -> None:
            reader = redis.Redis.from_url(redis_url)
            last, catchup_rows = "0-0", 0
            while not stop.is_set():
                reply: Any = reader.xread({CDC_STREAM: last}, count=2000, block=200)
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        body = fields[b"payload"]
                        if b'"catchup":true' in body:
                            catchup_rows += 1
                            if catchup_rows == 1:
                                first_caught.append(time.perf_counter() - started)
                            if catchup_rows == rows:
                                caught_up_at.append(time.perf_counter() - started)
                            continue
                        row_id = json.loads(body)["row"]["id"]
                        live_seen.setdefault(row_id, time.perf_counter())

        def write_live() -> None:
            with station_connection(url) as writer:
                n = 0
                while not stop.is_set():
                    n += 1
                    row = writer.execute(
                        "INSERT INTO flowsheet (artist_name, track_title, play_order)"
                        " VALUES ('Live', %s, %s) RETURNING id",
                        (f"live {n}", rows + n),
                    ).fetchone()
                    assert row is not None
                    live_sent[row[0]] = time.perf_counter()
                    stop.wait(_LIVE_EVERY_S)

        log_path = Path(tempfile.gettempdir()) / f"wx-bench-catchup-{os.getpid()}.log"
        started = time.perf_counter()
        bridge = _bridge(url, redis_url, log_path, page)
        threads = [
            threading.Thread(target=read_stream, args=(started,)),
            threading.Thread(target=write_live),
        ]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 300
            while not caught_up_at and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # a second of live plays after the catch-up, too
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            bridge.terminate()
            bridge.wait(15)
        if not caught_up_at:
            print(f"catch-up did not finish within 300 s; see {log_path}")
            return
        during = [
            (live_seen[i] - sent) * 1000
            for i, sent in live_sent.items()
            if i in live_seen and sent - started <= caught_up_at[0]
        ]
        missing = [i for i in live_sent if i not in live_seen]
        naive_s = _naive_seconds_per_page(url, tied_at, naive_pages)
        naive_total = naive_s * rows / 500
        q = statistics.quantiles(during, n=100) if len(during) >= 2 else during * 99
        print(f"PostgreSQL {_server_version(url)}, {rows:,} rows sharing one updated_at")
        scan_s = caught_up_at[0] - first_caught[0]
        print(
            f"catch-up, first to last tied row in {CDC_STREAM}: {scan_s:.2f} s"
            f" ({rows / scan_s:,.0f} rows/s, pages of {page}); from the process start"
            f" {caught_up_at[0]:.2f} s"
        )
        print(
            f"live INSERT → {CDC_STREAM} during the catch-up: {len(during)} plays,"
            f" p50 {statistics.median(during):.1f} ms, p99 {q[98]:.1f} ms,"
            f" max {max(during):.1f} ms;"
            f" not bridged: {len(missing)} (of those still in flight at the stop)"
        )
        print(
            f"naive keyset page over (updated_at, id): {naive_s * 1000:.0f} ms a page,"
            f" {naive_total:.0f} s for {rows:,} rows (from {naive_pages} pages);"
            f" ratio {naive_total / scan_s:.1f}x"
        )
        print(f"measured at {datetime.now(UTC).isoformat(timespec='seconds')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--naive-pages", type=int, default=10)
    parser.add_argument("--page", type=int, default=SidecarConfig().catchup_page)
    args = parser.parse_args()
    run(args.rows, args.naive_pages, args.page)


if __name__ == "__main__":
    main()
