"""Redis lost `wx:cdc`: stream and groups come back, and the event log still gets every row.

Entries the event log had not finished (read but not written, or not read yet) exist only in
the stream. The bridge replays from the event log's mark, so they are logged all the same.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from wx_orchestration.contracts.cdc import CDC_STREAM, EVENTLOG_GROUP
from wx_orchestration.devstack.servers import EmbeddedValkey
from wx_orchestration.sidecar.eventlog import EventLogRole
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.roles import SidecarContext
from wx_orchestration_tests.integration.sidecar_support import (
    FAST,
    connect,
    current_keys,
    insert_tracks,
    logged_keys,
    poll,
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
    role = EventLogRole(ctx)
    stop = threading.Event()
    thread = threading.Thread(target=role.run, args=(stop,))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


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
    with (
        running_sidecar(station_db, url, ("bridge",), NO_OVERLAP) as sidecar,
        connect(station_db) as conn,
    ):
        wait_listening(sidecar)
        leave_entries_unfinished(conn, station_db, url)
        valkey.stop()
        valkey.start()
        assert_every_version_logged(conn, station_db, url)


def test_entries_the_event_log_had_not_finished_survive_a_deleted_stream(
    station_db: str, redis_url: str
) -> None:
    with (
        running_sidecar(station_db, redis_url, ("bridge",), NO_OVERLAP) as sidecar,
        connect(station_db) as conn,
    ):
        wait_listening(sidecar)
        leave_entries_unfinished(conn, station_db, redis_url)
        redis.Redis.from_url(redis_url).delete(CDC_STREAM)  # same Redis run, no restart
        assert_every_version_logged(conn, station_db, redis_url)


def test_a_bridge_starting_on_an_emptied_redis_replays(station_db: str, redis_url: str) -> None:
    with connect(station_db) as conn:
        with running_sidecar(station_db, redis_url, ("bridge",), NO_OVERLAP) as sidecar:
            wait_listening(sidecar)
            leave_entries_unfinished(conn, station_db, redis_url)
        # Redis and the sidecar restarted together: no bridge saw the stream go.
        redis.Redis.from_url(redis_url).flushdb()
        with running_sidecar(station_db, redis_url, ("bridge",), NO_OVERLAP) as sidecar:
            wait_listening(sidecar)
            assert_every_version_logged(conn, station_db, redis_url)
