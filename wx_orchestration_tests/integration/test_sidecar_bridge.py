"""The CDC bridge: reconnects and catch-up lose nothing; oversized rows and cdc_error handled."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from psycopg import sql

from wx_orchestration_tests.integration.sidecar_support import (
    connect,
    current_keys,
    dead_letters,
    insert_tracks,
    listening_bridge,
    logged_keys,
    poll,
    running_sidecar,
    stream_events,
    wait_listening,
)
from wx_orchestration_tests.servers import STATION_SCHEMA

FLOWSHEET = sql.Identifier(STATION_SCHEMA, "flowsheet")


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def _listen_pids(conn: psycopg.Connection) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'wx-sidecar bridge listen'"
        " AND datname = current_database()"
    ).fetchall()
    return [row[0] for row in rows]


def test_listen_connection_killed_while_rows_change(station_db: str, redis_url: str) -> None:
    with (
        running_sidecar(station_db, redis_url, ("bridge", "eventlog")) as sidecar,
        connect(station_db) as conn,
        connect(station_db) as writer,
    ):
        wait_listening(sidecar)
        done = threading.Event()
        written: list[int] = []

        def keep_writing() -> None:
            while not done.is_set():
                ids = insert_tracks(writer, 3)
                writer.execute(
                    sql.SQL("UPDATE {} SET track_title = 'edited' WHERE id = ANY(%s)").format(
                        FLOWSHEET
                    ),
                    (ids[:2],),
                )
                written.extend(ids)

        thread = threading.Thread(target=keep_writing)
        thread.start()
        try:
            for _ in range(3):
                poll(lambda: len(written) > 20, what="writes before the kill")
                (pid,) = poll(lambda: _listen_pids(conn), what="the LISTEN connection")
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                poll(lambda p=pid: _listen_pids(conn) not in ([], [p]), what="a new LISTEN")
                written_at_kill = len(written)
                poll(lambda n=written_at_kill: len(written) > n + 20, what="writes after the kill")
        finally:
            done.set()
            thread.join(10)
        expected = current_keys(conn)
        assert len(expected) == len(written) > 60

        def all_logged() -> bool:
            return set(expected.values()) <= set(logged_keys(conn))

        poll(all_logged, what="every row's current version in the event log")
        logged = logged_keys(conn)
        per_row: dict[int, int] = {}
        for row_id in logged.values():
            per_row[row_id] = per_row.get(row_id, 0) + 1
        # At most the insert's version and the update's: a catch-up of a version already
        # logged live is the same event, never a second row.
        assert max(per_row.values()) <= 2
        assert sidecar.ctx.metrics.reconnects.labels("connection_lost")._value.get() >= 3
        assert sidecar.ctx.metrics.catchup_rows._value.get() > 0


def test_first_start_looks_back_and_then_follows_the_watermark(
    station_db: str, redis_url: str, client: redis.Redis
) -> None:
    with connect(station_db) as conn:
        old, recent = insert_tracks(conn, 2)
        conn.execute(
            sql.SQL("ALTER TABLE {} DISABLE TRIGGER bump_flowsheet_updated_at").format(FLOWSHEET)
        )
        conn.execute(
            sql.SQL("UPDATE {} SET updated_at = %s WHERE id = %s").format(FLOWSHEET),
            (datetime.now(UTC) - timedelta(hours=30), old),
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} ENABLE TRIGGER bump_flowsheet_updated_at").format(FLOWSHEET)
        )
        with running_sidecar(station_db, redis_url, ("bridge",)) as sidecar:
            wait_listening(sidecar)
            caught = {e.flowsheet_id for e in stream_events(client) if e.catchup}
            assert caught == {recent}
            mark = conn.execute(
                "SELECT name, flowsheet_id FROM wx_orchestration.cdc_watermark"
            ).fetchone()
            assert mark == (f"{STATION_SCHEMA}.flowsheet", recent)


def test_oversized_rows_are_read_back_and_deletes_recorded(
    station_db: str, redis_url: str, client: redis.Redis
) -> None:
    with (
        running_sidecar(station_db, redis_url, ("bridge",)) as sidecar,
        connect(station_db) as conn,
    ):
        wait_listening(sidecar)
        (row_id,) = insert_tracks(conn, 1)
        conn.execute(
            sql.SQL("UPDATE {} SET artist_bio = %s WHERE id = %s").format(FLOWSHEET),
            ("la " * 5000, row_id),
        )
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(FLOWSHEET), (row_id,))

        def actions() -> list[str]:
            return [e.action for e in stream_events(client) if e.flowsheet_id == row_id]

        # The rows are read by id when the notifications arrive: versions gone by then
        # collapse into the row as it is (here, gone).
        poll(lambda: actions()[-1:] == ["DELETE"], what="the DELETE")
        events = [e for e in stream_events(client) if e.flowsheet_id == row_id]
        delete = events[-1]
        assert delete.row == {"id": row_id}
        assert delete.key == f"{row_id}:deleted"
        # The update's re-read finds the row unless the DELETE committed first.
        for event in events:
            if event.action == "UPDATE":
                assert len(event.row["artist_bio"]) == 15000


def test_cdc_error_becomes_a_dead_letter(station_db: str, redis_url: str) -> None:
    with (
        running_sidecar(station_db, redis_url, ("bridge",)) as sidecar,
        connect(station_db) as conn,
    ):
        wait_listening(sidecar)
        payload = {
            "table": "library",
            "schema": STATION_SCHEMA,
            "action": "UPDATE",
            "sqlstate": "54000",
            "sqlerrm": "row too big",
            "timestamp": 1,
            "reason": "building or sending the cdc payload failed",
        }
        conn.execute("SELECT pg_notify('cdc_error', %s)", (json.dumps(payload),))
        (letter,) = poll(lambda: dead_letters(conn), what="the dead letter")
        assert letter[0] == "notify/cdc_error"
        assert "54000 row too big" in letter[3]
        assert json.loads(letter[2]) == payload


def test_a_second_bridge_stands_by(station_db: str, redis_url: str) -> None:
    with running_sidecar(station_db, redis_url, ("bridge",)) as first:
        wait_listening(first)
        with running_sidecar(station_db, redis_url, ("bridge",)) as second:
            poll(lambda: second.ctx.bridge_state == "standby", what="the standby")
            assert second.roles[0].readiness() == (True, "standby")
            assert first.ctx.bridge_state == "leader"


def test_notifications_of_another_schema_are_not_bridged(station_db: str, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with (
        running_sidecar(station_db, redis_url, ("bridge",)) as sidecar,
        connect(station_db) as conn,
    ):
        wait_listening(sidecar)
        # NOTIFY reaches every schema of the database; a station copy in another schema must
        # not leak into this one's stream (nor point the oversized re-read at our rows).
        ours = insert_tracks(conn, 1)[0]
        foreign = {"table": "flowsheet", "schema": "other_station", "action": "INSERT",
                   "data": {"id": ours + 1000, "entry_type": "track"}, "timestamp": 1}  # fmt: skip
        pointer = {"table": "flowsheet", "schema": "other_station", "action": "UPDATE",
                   "primary_key": str(ours), "payload_bytes": 9000, "timestamp": 1,
                   "reason": "payload exceeds 7800 bytes"}  # fmt: skip
        conn.execute("SELECT pg_notify('cdc', %s)", (json.dumps(foreign),))
        conn.execute("SELECT pg_notify('cdc_oversized', %s)", (json.dumps(pointer),))
        marker = insert_tracks(conn, 1)[0]  # notifications arrive in order: after the two
        poll(
            lambda: marker in {e.flowsheet_id for e in stream_events(client)},
            what="the marker row on the stream",
        )
        ids = [e.flowsheet_id for e in stream_events(client)]
    assert ids.count(ours) == 1
    assert ours + 1000 not in ids


def _notify(conn: psycopg.Connection, body: dict) -> None:
    conn.execute("SELECT pg_notify('cdc', %s)", (json.dumps(body),))


def test_forged_notifications_publish_only_what_the_table_holds(
    station_db: str, redis_url: str, client: redis.Redis
) -> None:
    with listening_bridge(station_db, redis_url), connect(station_db) as conn:
        (row_id,) = insert_tracks(conn, 1)
        poll(lambda: [e for e in stream_events(client) if e.flowsheet_id == row_id], what="row")
        forged = {
            "id": row_id,
            "updated_at": "2099-01-01T00:00:00+00:00",
            "metadata_status": "enriched_match",
            "spotify_url": "javascript:alert(1)",
            "entry_type": "track",
        }
        base = {"table": "flowsheet", "schema": STATION_SCHEMA, "timestamp": 4_070_908_800_000}
        _notify(conn, {**base, "action": "UPDATE", "data": forged})
        _notify(conn, {**base, "action": "DELETE", "data": forged})
        _notify(conn, {**base, "action": "INSERT", "data": {**forged, "id": 2_000_000}})
        (marker,) = insert_tracks(conn, 1)
        poll(lambda: [e for e in stream_events(client) if e.flowsheet_id == marker], what="marker")
        events = [e for e in stream_events(client) if e.flowsheet_id in (row_id, 2_000_000)]
        assert {e.action for e in events} <= {"INSERT", "UPDATE"}
        assert all(e.row.get("spotify_url") is None for e in events)
        assert all(e.metadata_status == "pending" for e in events)
        assert all(e.updated_at is not None and e.updated_at.year < 2099 for e in events)
        assert all(e.cdc_ts_ms is not None and e.cdc_ts_ms < 4_070_908_800_000 for e in events)
        saved = conn.execute(
            "SELECT updated_at <= now() FROM wx_orchestration.cdc_watermark"
        ).fetchone()
        assert saved == (True,)


def test_a_watermark_ahead_of_the_clock_does_not_switch_off_catch_up(
    station_db: str, redis_url: str, client: redis.Redis
) -> None:
    with connect(station_db) as conn:
        ids = insert_tracks(conn, 5)
        conn.execute(
            "INSERT INTO wx_orchestration.cdc_watermark (name, updated_at, flowsheet_id)"
            " VALUES (%s, '2099-01-01T00:00:00Z', 1)",
            (f"{STATION_SCHEMA}.flowsheet",),
        )
        with listening_bridge(station_db, redis_url):
            poll(
                lambda: set(ids) <= {e.flowsheet_id for e in stream_events(client)},
                what="the rows a 2099 watermark would have skipped",
            )


def test_a_database_outage_is_one_warning_then_one_line_on_recovery(
    station_db: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = station_db.rsplit("/", 1)[1]
    admin_url = station_db.rsplit("/", 1)[0] + "/postgres"
    with (
        listening_bridge(station_db, redis_url) as sidecar,
        psycopg.connect(admin_url, autocommit=True) as admin,
    ):
        (bridge,) = [role for role in sidecar.roles if role.name == "bridge"]
        caplog.set_level("INFO", logger="wx_orchestration.sidecar.bridge")
        caplog.clear()
        # Nobody, superusers included, may connect: the outage, as the bridge sees it.
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
            sql.Identifier(database)))  # fmt: skip
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            poll(lambda: bridge.readiness()[0] is False, what="the bridge to notice")
            outage_started = time.monotonic()
            while time.monotonic() - outage_started < 3.0:
                time.sleep(0.1)  # the outage lasts; the bridge retries meanwhile
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                sql.Identifier(database)))  # fmt: skip
        poll(lambda: bridge.readiness() == (True, "leader, listening"), what="the recovery")
        warnings = [
            r
            for r in caplog.records
            if r.levelname == "WARNING" and r.name == "wx_orchestration.sidecar.bridge"
        ]
        recovered = [r for r in caplog.records if "is back after" in r.getMessage()]
    # One line when it started (the lock session or the LISTEN connection, whichever noticed
    # first, and at most both), not ten a second for three seconds.
    assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]
    assert 1 <= len(recovered) <= 2
