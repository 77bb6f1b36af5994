"""Cost of the per-tick queries as the flowsheet grows (issues #6 and #9).

The flowsheet is filled to 100k and then 3M rows (history: almost all terminal), while the work
stays the same size: 500 pending track rows and 50 stale claims. The sweep, the backlog
sensor's tick, a backlog claim and the listeners' snapshot must cost the same at both sizes:
each query repeats a partial index's predicate (or walks the `add_time, id` index), and EXPLAIN
must show no sequential scan of `flowsheet`.

    python -m bench scale [--sizes 100000 3000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.common import bench_database, station_connection
from wx_orchestration.core.enrichment import RetryPolicy
from wx_orchestration.core.sweep import SweepReport
from wx_orchestration.db import sweeps
from wx_orchestration.db.enrichment import claim_backlog_batch, pending_days

PENDING_ROWS = 500
STALE_CLAIMS = 50
SNAPSHOT = """
SELECT id, artist_name, album_title, track_title, add_time, metadata_status
FROM flowsheet ORDER BY add_time DESC, id DESC LIMIT 50
"""


def grow(conn: psycopg.Connection, total: int) -> None:
    """History up to `total` rows; triggers off (bench only) so loading takes seconds."""
    have = conn.execute("SELECT count(*) FROM flowsheet").fetchone()[0]  # type: ignore[index]
    if have >= total:
        return
    conn.execute("SET session_replication_role = replica")
    conn.execute(
        """
        INSERT INTO flowsheet (entry_type, artist_name, album_title, track_title, play_order,
                               add_time, metadata_status)
        SELECT CASE WHEN g %% 7 = 0 THEN 'talkset'::flowsheet_entry_type ELSE 'track' END,
               'Artist ' || (g %% 5000), 'Album ' || (g %% 20000), 'Track ' || g, g,
               now() - interval '10 years' + (g * interval '1 minute') / 10,
               (CASE WHEN g %% 3 = 0 THEN 'enriched_no_match' ELSE 'enriched_match' END)
                   ::metadata_status_enum
        FROM generate_series(%s, %s) AS g
        """,
        (have + 1, total),
    )
    conn.execute("SET session_replication_role = DEFAULT")
    conn.execute("VACUUM ANALYZE flowsheet")


def reset_work(conn: psycopg.Connection) -> None:
    """The same small amount of work at every size: pending rows and stale claims."""
    conn.execute("SET session_replication_role = replica")
    conn.execute(
        "UPDATE flowsheet SET metadata_status = 'enriched_match', enriching_since = NULL "
        "WHERE metadata_status IN ('pending', 'enriching')"
    )
    conn.execute("TRUNCATE wx_orchestration.enrichment_attempts")
    ids = conn.execute(
        "SELECT id FROM flowsheet WHERE entry_type = 'track' ORDER BY id DESC LIMIT %s",
        (PENDING_ROWS + STALE_CLAIMS,),
    ).fetchall()
    pending = [row[0] for row in ids[:PENDING_ROWS]]
    stale = [row[0] for row in ids[PENDING_ROWS:]]
    conn.execute(
        "UPDATE flowsheet SET metadata_status = 'pending', add_time = now() - interval '3 days' "
        "WHERE id = ANY(%s)",
        (pending,),
    )
    conn.execute(
        "UPDATE flowsheet SET metadata_status = 'enriching', "
        "enriching_since = now() - interval '10 minutes' WHERE id = ANY(%s)",
        (stale,),
    )
    conn.execute("SET session_replication_role = DEFAULT")
    # As autovacuum would between ticks: flipping statuses leaves dead index entries behind.
    conn.execute("VACUUM ANALYZE flowsheet")


def plan_of(conn: psycopg.Connection, query: str, params: Any = None) -> str:
    rows = conn.execute(f"EXPLAIN {query}", params).fetchall()  # type: ignore[arg-type]
    return "\n".join(row[0] for row in rows)


def timed(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def measure(conn: psycopg.Connection, repeat: int) -> dict[str, tuple[float, str]]:
    day = datetime.now(UTC) - timedelta(days=3)
    start = day.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    end = start + timedelta(days=3)
    policy = RetryPolicy()

    def claim() -> None:
        with conn.transaction(force_rollback=True):
            claimed = claim_backlog_batch(conn, start=start, end=end, grace_s=120, limit=500)
            assert claimed

    results = {
        "sweep: count missed pending": (
            timed(lambda: sweeps.count_missed_pending(conn, SweepReport(), grace_s=120), repeat),
            plan_of(conn, sweeps._MISSED, {"bounds": [600, 3600], "grace_s": 120}),
        ),
        "sensor tick: pending days": (
            timed(lambda: pending_days(conn, tz="America/New_York", grace_s=120, limit=3), repeat),
            "",
        ),
        "claim 500 (rolled back)": (timed(claim, repeat), ""),
        "snapshot: latest 50": (
            timed(lambda: conn.execute(SNAPSHOT).fetchall(), repeat),
            plan_of(conn, SNAPSHOT),
        ),
    }
    reset_work(conn)
    stale_plan = plan_of(conn, sweeps._STALE_CLAIMS, {"lease_s": 60, "limit": 1000})
    started = time.perf_counter()
    sweeps.expire_stale_claims(conn, lease_s=60, policy=policy)
    results["sweep: expire 50 stale claims"] = ((time.perf_counter() - started) * 1000, stale_plan)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 3_000_000])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    table: dict[str, list[float]] = {}
    with bench_database() as url, station_connection(url) as conn:
        for size in args.sizes:
            started = time.perf_counter()
            grow(conn, size)
            reset_work(conn)
            print(f"flowsheet at {size:,} rows (loaded in {time.perf_counter() - started:.1f}s)")
            for name, (ms, plan) in measure(conn, args.repeat).items():
                table.setdefault(name, []).append(ms)
                seq = "Seq Scan on flowsheet" in plan
                print(f"  {name:34} {ms:8.2f} ms{'  SEQ SCAN!' if seq else ''}")
    sizes = " | ".join(f"{s:,} rows" for s in args.sizes)
    print(f"\n| query | {sizes} | ratio |")
    print("|---|" + "---|" * (len(args.sizes) + 1))
    for name, values in table.items():
        cells = " | ".join(f"{v:.2f} ms" for v in values)
        print(f"| {name} | {cells} | {values[-1] / values[0]:.2f}x |")


if __name__ == "__main__":
    main()
