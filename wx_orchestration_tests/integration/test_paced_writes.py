"""Our flowsheet writes keep the station's Last-Modified within reach of the clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from wx_orchestration.core.watermark_lead import LeadPolicy
from wx_orchestration.db.enrichment import claim_backlog_batch, claim_rows_by_ids
from wx_orchestration.db.paced_writes import flowsheet_transaction, room_wait_s
from wx_orchestration_tests.servers import STATION_SCHEMA

PACED = LeadPolicy(max_lead_s=5.0)


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(
        station_db, autocommit=True, options=f"-c search_path={STATION_SCHEMA},wx_orchestration"
    ) as c:
        yield c


def _lead_s(conn: psycopg.Connection) -> float:
    row = conn.execute(
        "SELECT extract(epoch FROM last_modified_at - clock_timestamp())::float8"
        " FROM flowsheet_watermark"
    ).fetchone()
    assert row is not None
    return row[0]


def _touch(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE flowsheet SET segue = segue WHERE false")


def test_a_claim_that_finds_nothing_writes_nothing(conn: psycopg.Connection) -> None:
    before = conn.execute("SELECT last_modified_at FROM flowsheet_watermark").fetchone()
    now = datetime.now(UTC)
    assert (
        claim_backlog_batch(conn, start=now - timedelta(days=1), end=now, grace_s=0, limit=10) == []
    )
    assert claim_rows_by_ids(conn, [1, 2, 3]) == []
    after = conn.execute("SELECT last_modified_at FROM flowsheet_watermark").fetchone()
    assert after == before


def test_our_writers_never_push_the_lead_past_the_bound(station_db: str) -> None:
    """Three writers (as several sidecars and a backlog run would be) each commit a claim-sized
    and a finalize-sized transaction as fast as they can; the lock makes them take turns."""
    leads: list[float] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with psycopg.connect(
                station_db, autocommit=True, options=f"-c search_path={STATION_SCHEMA}"
            ) as c:
                for statements in (1, 2, 1, 2):
                    with flowsheet_transaction(c, statements=statements, policy=PACED):
                        for _ in range(statements):
                            _touch(c)
                    leads.append(_lead_s(c))
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, name=f"writer-{n}") for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len(leads) == 12
    # Room is kept for one station write: our statements alone stay a second inside the bound.
    assert max(leads) <= PACED.max_lead_s - 1 + 0.1
    assert max(leads) > 2  # they did have to wait for one another


def test_a_burst_of_the_stations_own_writes_never_stalls_us(conn: psycopg.Connection) -> None:
    for _ in range(30):
        _touch(conn)  # the station's own writers: 30 s ahead, not our doing
    started = time.perf_counter()
    with flowsheet_transaction(conn, policy=PACED) as waited:
        _touch(conn)
    assert waited == 0
    assert time.perf_counter() - started < 1.0


def test_pacing_off_never_waits(conn: psycopg.Connection) -> None:
    for _ in range(10):
        with flowsheet_transaction(conn, policy=LeadPolicy(max_lead_s=0)) as waited:
            _touch(conn)
            _touch(conn)
        assert waited == 0


def test_room_for_a_claim_and_a_finalize_is_known_before_taking_the_work(
    conn: psycopg.Connection,
) -> None:
    assert room_wait_s(conn, 2, PACED) == 0
    for _ in range(3):
        with flowsheet_transaction(conn, statements=1, policy=PACED):
            _touch(conn)
    # Three of our statements stand three seconds ahead: two more must wait about one second
    # (5 s bound, 1 s kept for a DJ's insert), and pacing off never waits.
    assert 0.5 < room_wait_s(conn, 2, PACED) <= 1.0
    assert room_wait_s(conn, 2, LeadPolicy(max_lead_s=0)) == 0
