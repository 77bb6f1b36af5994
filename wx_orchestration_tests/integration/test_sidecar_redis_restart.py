"""Redis lost `wx:cdc`: stream and groups come back, and the event log still gets every row.

Entries the event log had not finished (read but not written, or not read yet) exist only in
the stream. The bridge replays from the event log's mark, so they are logged all the same —
but from no further back than the first-start lookback, whatever the marks say.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from wx_orchestration.contracts.cdc import CDC_STREAM, EVENTLOG_GROUP
from wx_orchestration.db.events import cdc_source
from wx_orchestration.devstack.servers import EmbeddedValkey
from wx_orchestration.sidecar.eventlog import EventLogRole
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.roles import SidecarContext
from wx_orchestration.sidecar.runtime import Sidecar
from wx_orchestration_tests.integration.sidecar_support import (
    FAST,
    connect,
    current_keys,
    insert_tracks,
    listening_bridge,
    logged_keys,
    poll,
    running_role,
    running_sidecar,
    settings_for,
    stream_events,
    wait_listening,
)
from wx_orchestration_tests.servers import STATION_SCHEMA

# Without an overlap every row bridged before the newest one is outside the bridge's usual
# catch-up; the default 5 s only hides the same loss behind a wider window.
NO_OVERLAP = replace(FAST, catchup_overlap_s=0.0)


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path)
    server.start()
    yield server
    server.stop()


@contextmanager
def running_eventlog(database_url: str, redis_url: str) -> Iterator[None]:
    """The event-log role on its own thread, so it can stop while the bridge goes on."""
    ctx = SidecarContext(
        settings_for(database_url, redis_url), NO_OVERLAP, "test-eventlog", SidecarMetrics()
    )
    with running_role(EventLogRole(ctx)):
        yield


def one_by_one(conn: psycopg.Connection, count: int) -> list[int]:
    """Rows in separate transactions, so each has its own `updated_at`."""
    return [insert_tracks(conn, 1)[0] for _ in range(count)]


def eventlog_mark(conn: psycopg.Connection) -> int | None:
    row = conn.execute(
        "SELECT flowsheet_id FROM wx_orchestration.cdc_consumer_marks WHERE consumer_group = %s",
        (EVENTLOG_GROUP,),
    ).fetchone()
    return None if row is None else row[0]


def bridged(client: redis.Redis, ids: list[int]) -> bool:
    return set(ids) <= {e.flowsheet_id for e in stream_events(client)}


def leave_entries_unfinished(conn: psycopg.Connection, database_url: str, url: str) -> None:
    """Log a few rows, then bridge rows the event log reads but never writes, and rows it never
    reads; one logged row changes too."""
    client = redis.Redis.from_url(url)
    with running_eventlog(database_url, url):
        logged = insert_tracks(conn, 3)
        poll(lambda: eventlog_mark(conn) == max(logged), what="the mark past the logged rows")
    read_not_written = one_by_one(conn, 3)
    poll(lambda: bridged(client, read_not_written), what="rows on the stream")
    # A consumer that dies with the batch in hand: its entries stay pending until reclaimed.
    doomed = client.xreadgroup(EVENTLOG_GROUP, "doomed", {CDC_STREAM: ">"})
    assert len(doomed[0][1]) == 3  # type: ignore[index]
    conn.execute(
        sql.SQL("UPDATE {}.flowsheet SET track_title = 'edited' WHERE id = %s").format(
            sql.Identifier(STATION_SCHEMA)
        ),
        (logged[0],),
    )
    unread = one_by_one(conn, 3)
    poll(lambda: bridged(client, unread), what="unread rows on the stream")


def assert_every_version_logged(conn: psycopg.Connection, database_url: str, url: str) -> None:
    expected = set(current_keys(conn).values())
    with running_eventlog(database_url, url):
        poll(lambda: expected <= set(logged_keys(conn)), what="every row version logged")
    # 3 rows logged at first, the new version of one of them, 6 rows left unfinished: the
    # replay's duplicates of what was logged are the same events.
    assert len(logged_keys(conn)) == 3 + 1 + 6


def test_redis_restarted_empty(station_db: str, valkey: EmbeddedValkey) -> None:
    url = valkey.url
    with (
        running_sidecar(station_db, url, ("bridge", "eventlog")) as sidecar,
        connect(station_db) as conn,
    ):
        wait_listening(sidecar)
        insert_tracks(conn, 5)
        poll(lambda: len(logged_keys(conn)) == 5, what="rows logged before the restart")

        valkey.stop()
        during_outage = insert_tracks(conn, 10)
        valkey.start()  # same port, nothing kept: stream and groups are gone
        after = insert_tracks(conn, 5)

        expected = set(current_keys(conn).values())
        poll(lambda: expected <= set(logged_keys(conn)), timeout=20, what="every row logged")
        assert len(logged_keys(conn)) == 20
        client = redis.Redis.from_url(url)
        groups = {g["name"].decode() for g in client.xinfo_groups(CDC_STREAM)}  # type: ignore[union-attr]
        assert EVENTLOG_GROUP in groups
        assert set(during_outage) | set(after) <= set(logged_keys(conn).values())


def test_entries_the_event_log_had_not_finished_survive_a_restart(
    station_db: str, valkey: EmbeddedValkey
) -> None:
    url = valkey.url
    with listening_bridge(station_db, url, NO_OVERLAP), connect(station_db) as conn:
        leave_entries_unfinished(conn, station_db, url)
        valkey.stop()
        valkey.start()
        assert_every_version_logged(conn, station_db, url)


def test_entries_the_event_log_had_not_finished_survive_a_deleted_stream(
    station_db: str, redis_url: str
) -> None:
    with (
        listening_bridge(station_db, redis_url, NO_OVERLAP),
        connect(station_db) as conn,
    ):
        leave_entries_unfinished(conn, station_db, redis_url)
        redis.Redis.from_url(redis_url).delete(CDC_STREAM)  # same Redis run, no restart
        assert_every_version_logged(conn, station_db, redis_url)


def test_a_bridge_starting_on_an_emptied_redis_replays(station_db: str, redis_url: str) -> None:
    with connect(station_db) as conn:
        with listening_bridge(station_db, redis_url, NO_OVERLAP):
            leave_entries_unfinished(conn, station_db, redis_url)
        # Redis and the sidecar restarted together: no bridge saw the stream go.
        redis.Redis.from_url(redis_url).flushdb()
        with listening_bridge(station_db, redis_url, NO_OVERLAP):
            assert_every_version_logged(conn, station_db, redis_url)


def test_a_bridge_starting_on_an_older_snapshot_replays(station_db: str, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with connect(station_db) as conn:
        with listening_bridge(station_db, redis_url, NO_OVERLAP):
            leave_entries_unfinished(conn, station_db, redis_url)
        # Redis came back from a snapshot taken after the first two entries, and the sidecar
        # restarted with it: the stream is not empty, just shorter than it was.
        older: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(CDC_STREAM, count=2)  # type: ignore[assignment]
        client.delete(CDC_STREAM)
        for _, fields in older:
            client.xadd(CDC_STREAM, fields)  # type: ignore[arg-type]
        with listening_bridge(station_db, redis_url, NO_OVERLAP):
            assert_every_version_logged(conn, station_db, redis_url)


def quietly_changed_row(conn: psycopg.Connection, days_ago: int) -> int:
    """A row last changed days ago, never notified (as with the station's triggers off)."""
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {}.flowsheet (artist_name, track_title, play_order, updated_at)"
                " VALUES ('Broadcast', 'old', 1, now() - make_interval(days => %s)) RETURNING id"
            ).format(sql.Identifier(STATION_SCHEMA)),
            (days_ago,),
        ).fetchone()
    assert row is not None
    return row[0]


def set_mark(
    conn: psycopg.Connection, group: str, at: tuple[datetime, int], saved_days_ago: int = 0
) -> None:
    conn.execute(
        """
        INSERT INTO wx_orchestration.cdc_consumer_marks
            (source, consumer_group, updated_at, flowsheet_id, saved_at)
        VALUES (%s, %s, %s, %s, now() - make_interval(days => %s))
        ON CONFLICT (source, consumer_group) DO UPDATE
            SET updated_at = EXCLUDED.updated_at, flowsheet_id = EXCLUDED.flowsheet_id,
                saved_at = EXCLUDED.saved_at
        """,
        (cdc_source(STATION_SCHEMA), group, at[0], at[1], saved_days_ago),
    )


def position(conn: psycopg.Connection, row_id: int) -> tuple[datetime, int]:
    row = conn.execute(
        sql.SQL("SELECT updated_at, id FROM {}.flowsheet WHERE id = %s").format(
            sql.Identifier(STATION_SCHEMA)
        ),
        (row_id,),
    ).fetchone()
    assert row is not None
    return row


def oldest_mark_age(sidecar: Sidecar) -> float | None:
    return sidecar.ctx.metrics.registry.get_sample_value("wx_cdc_oldest_mark_age_seconds")


def test_a_replay_reaches_back_no_further_than_the_lookback(
    station_db: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(redis_url)
    with (
        listening_bridge(station_db, redis_url, NO_OVERLAP) as sidecar,
        connect(station_db) as conn,
    ):
        # The event log is stuck before a row whose current version it will never get.
        stuck_on = quietly_changed_row(conn, days_ago=3)
        set_mark(conn, EVENTLOG_GROUP, (datetime.now(UTC) - timedelta(days=4), 0))
        recent = one_by_one(conn, 3)
        poll(lambda: bridged(client, recent), what="rows on the stream")
        # How long the row it is stuck on has waited, not how old the mark's own position is.
        poll(lambda: (oldest_mark_age(sidecar) or 0) > 3 * 86400 - 60, what="the mark's age")

        with caplog.at_level(logging.WARNING, logger="wx_orchestration.sidecar.bridge"):
            client.delete(CDC_STREAM)
            poll(lambda: bridged(client, recent), what="the replay")
        replayed = {e.flowsheet_id for e in stream_events(client)}
        assert stuck_on not in replayed  # three days back: beyond the 24 h lookback
        assert any(
            "the eventlog group's mark" in r.getMessage() and "older than" in r.getMessage()
            for r in caplog.records
        )


def test_a_mark_that_has_not_moved_within_the_lookback_is_ignored(
    station_db: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(redis_url)
    with (
        listening_bridge(station_db, redis_url, NO_OVERLAP),
        connect(station_db) as conn,
    ):
        logged_before, marked, unfinished = one_by_one(conn, 3)
        poll(lambda: bridged(client, [unfinished]), what="rows on the stream")
        set_mark(conn, EVENTLOG_GROUP, position(conn, marked))
        # A group since retired left its mark behind, and nobody moves it any more.
        set_mark(conn, "retired", position(conn, logged_before), saved_days_ago=2)

        with caplog.at_level(logging.WARNING, logger="wx_orchestration.sidecar.bridge"):
            client.delete(CDC_STREAM)
            poll(lambda: bridged(client, [marked, unfinished]), what="the replay")
        assert logged_before not in {e.flowsheet_id for e in stream_events(client)}
        assert any("ignoring the mark of retired" in r.getMessage() for r in caplog.records)
