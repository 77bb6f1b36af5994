"""The per-tick queries use index paths, never a sequential scan of `flowsheet` (issue #6).

bench/scale.py times them at 100k and 3M rows; this keeps the plans honest in CI at 60k.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import psycopg
import pytest

from wx_orchestration.db import enrichment, lifecycle, sweeps


@pytest.fixture
def big_flowsheet(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(station_db, autocommit=True) as conn:
        conn.execute("SET search_path TO wxyc_schema, wx_orchestration")
        conn.execute("SET session_replication_role = replica")  # bulk history, triggers off
        conn.execute(
            """
            INSERT INTO flowsheet (entry_type, artist_name, album_title, track_title, play_order,
                                   add_time, metadata_status, enriching_since)
            SELECT 'track', 'Artist ' || g, 'Album', 'Track', g,
                   now() - interval '3 years' + g * interval '25 minutes',
                   (CASE WHEN g % 200 = 0 THEN 'pending'
                         WHEN g % 1000 = 1 THEN 'enriching'
                         ELSE 'enriched_match' END)::metadata_status_enum,
                   CASE WHEN g % 1000 = 1 THEN now() - interval '5 minutes' END
            FROM generate_series(1, 60000) AS g
            """
        )
        conn.execute("SET session_replication_role = DEFAULT")
        conn.execute("VACUUM ANALYZE flowsheet")
        yield conn


def plan(conn: psycopg.Connection, query: LiteralString, params: Any) -> str:
    rows = conn.execute("EXPLAIN " + query, params).fetchall()
    return "\n".join(row[0] for row in rows)


def test_tick_queries_never_scan_the_whole_flowsheet(big_flowsheet: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    claim = {"start": now - timedelta(days=3), "end": now, "grace_s": 120, "limit": 500}
    plans = {
        "stale claims": plan(big_flowsheet, sweeps._STALE_CLAIMS, {"lease_s": 60, "limit": 1000}),
        "missed pending": plan(
            big_flowsheet, sweeps._MISSED, {"bounds": [600, 3600], "grace_s": 120}
        ),
        "stranded count": plan(big_flowsheet, sweeps._STRANDED_COUNT, (60,)),
        "sensor tick": plan(
            big_flowsheet,
            enrichment._PENDING_DAYS,
            {"tz": "America/New_York", "grace_s": 120, "limit": 3},
        ),
        "backlog claim": plan(big_flowsheet, enrichment._PICK_BATCH, {**claim, "below_id": None}),
        "backlog claim, next batch": plan(
            big_flowsheet, enrichment._PICK_BATCH, {**claim, "below_id": 59_000}
        ),
    }
    for name, text in plans.items():
        assert "Seq Scan on flowsheet" not in text, f"{name}:\n{text}"


def test_lifecycle_pages_find_the_no_match_cohort_by_its_partial_index(
    big_flowsheet: psycopg.Connection,
) -> None:
    """The re-ask's page and backlog count repeat production's partial-index predicate
    (`flowsheet_no_match_recheck_id_desc_idx`): the cohort is found without reading the rest."""
    big_flowsheet.execute(
        "UPDATE flowsheet SET metadata_status = 'enriched_no_match' WHERE play_order % 50 = 3"
    )
    big_flowsheet.execute("ANALYZE flowsheet")
    page = {"ttl_s": 86400 * 30.0, "min_age_s": 3600.0, "limit": 500}
    plans = {
        "re-ask page from the top": plan(
            big_flowsheet, lifecycle._DUE_NO_MATCHES, {**page, "after_time": None, "after_id": None}
        ),
        "re-ask page below a cursor": plan(
            big_flowsheet,
            lifecycle._DUE_NO_MATCHES,
            {**page, "after_time": datetime.now(UTC) - timedelta(days=400), "after_id": 30000},
        ),
        "re-ask backlog": plan(big_flowsheet, lifecycle._NO_MATCH_BACKLOG, {"ttl_s": 86400.0}),
    }
    for name, text in plans.items():
        assert "Seq Scan on flowsheet" not in text, f"{name}:\n{text}"
