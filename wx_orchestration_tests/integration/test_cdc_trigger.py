"""The mirror's flowsheet triggers: CDC payloads, updated_at, and writer serialization."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from wx_orchestration.devstack.station_rows import insert_artists, insert_library
from wx_orchestration_tests.servers import STATION_SCHEMA

CHANNELS = ("cdc", "cdc_oversized", "cdc_error")
CDC_KEYS = {"table", "schema", "action", "data", "timestamp"}
OVERSIZED_KEYS = {
    "table",
    "schema",
    "action",
    "primary_key",
    "payload_bytes",
    "timestamp",
    "reason",
}
ERROR_KEYS = {"table", "schema", "action", "sqlstate", "sqlerrm", "timestamp", "reason"}

Event = tuple[str, dict[str, Any]]


def _connect(url: str, *, autocommit: bool = False, options: str = "") -> psycopg.Connection:
    return psycopg.connect(
        url, autocommit=autocommit, options=f"-c search_path={STATION_SCHEMA} {options}"
    )


@pytest.fixture
def listener(station_db: str) -> Iterator[psycopg.Connection]:
    # Autocommit and idle: a listener inside an open transaction receives nothing.
    with _connect(station_db, autocommit=True) as conn:
        for channel in CHANNELS:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        yield conn


@pytest.fixture
def writer(station_db: str) -> Iterator[psycopg.Connection]:
    with _connect(station_db) as conn:
        yield conn


def _collect_until(
    listener: psycopg.Connection, done: Callable[[list[Event]], bool], timeout: float = 10.0
) -> list[Event]:
    deadline = time.monotonic() + timeout
    events: list[Event] = []
    while not done(events):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"notifications did not arrive in {timeout}s; got {events}")
        for notify in listener.notifies(timeout=remaining, stop_after=1):
            events.append((notify.channel, json.loads(notify.payload)))
    return events


def _matching(
    events: list[Event], channel: str, action: str, row_id: int, table: str = "flowsheet"
) -> list[dict[str, Any]]:
    def row_id_of(payload: dict[str, Any]) -> str | None:
        if "data" in payload:
            return str(payload["data"].get("id"))
        return payload.get("primary_key")

    return [
        payload
        for got_channel, payload in events
        if got_channel == channel
        and payload.get("table") == table
        and payload.get("action") == action
        and row_id_of(payload) == str(row_id)
    ]


def _await_one(
    listener: psycopg.Connection, channel: str, action: str, row_id: int, table: str = "flowsheet"
) -> dict[str, Any]:
    events = _collect_until(
        listener, lambda seen: bool(_matching(seen, channel, action, row_id, table))
    )
    return _matching(events, channel, action, row_id, table)[0]


def _server_ms(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint").fetchone()
    assert row is not None
    conn.commit()
    return row[0]


def _log_play(conn: psycopg.Connection, artist_bio: str | None = None) -> int:
    row = conn.execute(
        "INSERT INTO flowsheet (play_order, artist_name, album_title, track_title, artist_bio)"
        " VALUES (1, 'Cat Power', 'Moon Pix', 'Cross Bones Style', %s) RETURNING id",
        (artist_bio,),
    ).fetchone()
    assert row is not None
    conn.commit()
    return row[0]


def _assert_envelope(
    payload: dict[str, Any], keys: set[str], before_ms: int, after_ms: int
) -> None:
    assert set(payload) == keys
    assert payload["schema"] == STATION_SCHEMA
    assert isinstance(payload["timestamp"], int)
    assert before_ms <= payload["timestamp"] <= after_ms


def test_insert_notifies_the_whole_new_row(
    writer: psycopg.Connection, listener: psycopg.Connection
) -> None:
    before = _server_ms(writer)
    row_id = _log_play(writer)
    after = _server_ms(writer)

    payload = _await_one(listener, "cdc", "INSERT", row_id)

    _assert_envelope(payload, CDC_KEYS, before, after)
    data = payload["data"]
    assert data["id"] == row_id
    assert data["artist_name"] == "Cat Power"
    assert data["metadata_status"] == "pending"
    assert data["entry_type"] == "track"
    # The real row carries columns this project does not know; so does the mirror's.
    assert "search_doc" in data


def test_update_notifies_the_new_row(
    writer: psycopg.Connection, listener: psycopg.Connection
) -> None:
    row_id = _log_play(writer)
    before = _server_ms(writer)
    writer.execute(
        "UPDATE flowsheet SET metadata_status = 'enriching', enriching_since = now() WHERE id = %s",
        (row_id,),
    )
    writer.commit()
    after = _server_ms(writer)

    payload = _await_one(listener, "cdc", "UPDATE", row_id)

    _assert_envelope(payload, CDC_KEYS, before, after)
    assert payload["data"]["metadata_status"] == "enriching"
    assert payload["data"]["enriching_since"] is not None


def test_delete_notifies_the_old_row(
    writer: psycopg.Connection, listener: psycopg.Connection
) -> None:
    row_id = _log_play(writer)
    before = _server_ms(writer)
    writer.execute("DELETE FROM flowsheet WHERE id = %s", (row_id,))
    writer.commit()
    after = _server_ms(writer)

    payload = _await_one(listener, "cdc", "DELETE", row_id)

    _assert_envelope(payload, CDC_KEYS, before, after)
    assert payload["data"]["id"] == row_id
    assert payload["data"]["track_title"] == "Cross Bones Style"


def test_one_notification_per_row_of_a_statement(
    writer: psycopg.Connection, listener: psycopg.Connection
) -> None:
    rows = writer.execute(
        "INSERT INTO flowsheet (play_order, artist_name)"
        " SELECT n, 'artist ' || n FROM generate_series(1, 5) AS n RETURNING id"
    ).fetchall()
    writer.commit()
    ids = {row_id for (row_id,) in rows}

    def all_seen(events: list[Event]) -> bool:
        return all(_matching(events, "cdc", "INSERT", row_id) for row_id in ids)

    events = _collect_until(listener, all_seen)

    assert all(len(_matching(events, "cdc", "INSERT", row_id)) == 1 for row_id in ids)


def test_row_timestamps_carry_the_writer_session_offset(
    writer: psycopg.Connection, listener: psycopg.Connection
) -> None:
    writer.execute("SET TIME ZONE 'America/New_York'")
    row_id = _log_play(writer)
    offset = writer.execute(
        "SELECT extract(timezone FROM add_time)::int FROM flowsheet WHERE id = %s", (row_id,)
    ).fetchone()
    writer.commit()

    payload = _await_one(listener, "cdc", "INSERT", row_id)

    sent_offset = datetime.fromisoformat(payload["data"]["add_time"]).utcoffset()
    assert sent_offset is not None
    assert offset == (int(sent_offset.total_seconds()),)
    assert offset != (0,)


@pytest.mark.parametrize(
    "artist_bio",
    [
        pytest.param("x" * 20_000, id="long"),
        # Under 7800 characters but over 7800 bytes: the limit is on bytes.
        pytest.param("é" * 4_000, id="multibyte"),
    ],
)
def test_oversized_row_sends_a_pointer_instead(
    writer: psycopg.Connection, listener: psycopg.Connection, artist_bio: str
) -> None:
    before = _server_ms(writer)
    big_id = _log_play(writer, artist_bio)
    after = _server_ms(writer)
    # Notifications arrive in commit order: once this one is in, the big row's are too.
    sentinel_id = _log_play(writer)

    events = _collect_until(
        listener, lambda seen: bool(_matching(seen, "cdc", "INSERT", sentinel_id))
    )

    pointers = _matching(events, "cdc_oversized", "INSERT", big_id)
    assert len(pointers) == 1
    _assert_envelope(pointers[0], OVERSIZED_KEYS, before, after)
    assert pointers[0]["primary_key"] == str(big_id)
    assert pointers[0]["payload_bytes"] > 7800
    assert pointers[0]["reason"]
    assert _matching(events, "cdc", "INSERT", big_id) == []


def test_oversized_delete_names_the_deleted_id(
    writer: psycopg.Connection, listener: psycopg.Connection
) -> None:
    big_id = _log_play(writer, "y" * 20_000)
    writer.execute("DELETE FROM flowsheet WHERE id = %s", (big_id,))
    writer.commit()

    pointer = _await_one(listener, "cdc_oversized", "DELETE", big_id)

    assert pointer["primary_key"] == str(big_id)


def test_a_failing_payload_reports_cdc_error_and_the_write_still_succeeds(
    writer: psycopg.Connection, listener: psycopg.Connection
) -> None:
    # to_jsonb uses a cast to json when a user type has one: a failing cast makes building the
    # payload fail inside the trigger, the way an unforeseen production error would.
    writer.execute(
        """
        CREATE FUNCTION refuse_json(metadata_status_enum) RETURNS json LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'refusing to serialize' USING ERRCODE = '22023';
        END;
        $$;
        CREATE CAST (metadata_status_enum AS json) WITH FUNCTION refuse_json(metadata_status_enum);
        """
    )
    writer.commit()
    before = _server_ms(writer)

    row_id = _log_play(writer)
    after = _server_ms(writer)
    events = _collect_until(
        listener, lambda seen: any(channel == "cdc_error" for channel, _ in seen)
    )

    errors = [payload for channel, payload in events if channel == "cdc_error"]
    _assert_envelope(errors[0], ERROR_KEYS, before, after)
    assert errors[0]["table"] == "flowsheet"
    assert errors[0]["action"] == "INSERT"
    assert errors[0]["sqlstate"] == "22023"
    assert errors[0]["sqlerrm"] == "refusing to serialize"
    assert writer.execute("SELECT count(*) FROM flowsheet WHERE id = %s", (row_id,)).fetchone() == (
        1,
    )


@pytest.mark.parametrize("table", ["artists", "library"])
def test_library_and_artists_notify_too(
    writer: psycopg.Connection, listener: psycopg.Connection, table: str
) -> None:
    (artist,) = insert_artists(writer, ["Low"])
    (album,) = insert_library(
        writer, [{"artist_id": artist, "album_title": "Things We Lost in the Fire"}]
    )
    writer.commit()
    row_id = artist if table == "artists" else album

    payload = _await_one(listener, "cdc", "INSERT", row_id, table=table)

    assert set(payload) == CDC_KEYS
    assert payload["data"]["id"] == row_id


def test_updated_at_is_the_transaction_start(writer: psycopg.Connection) -> None:
    started = writer.execute("SELECT now()").fetchone()
    inserted = writer.execute(
        "INSERT INTO flowsheet (play_order, artist_name, updated_at)"
        " VALUES (1, 'Yo La Tengo', '2000-01-01') RETURNING id, updated_at"
    ).fetchone()
    assert inserted is not None
    updated = writer.execute(
        "UPDATE flowsheet SET segue = true WHERE id = %s RETURNING updated_at", (inserted[0],)
    ).fetchone()
    later = writer.execute("SELECT clock_timestamp()").fetchone()
    writer.commit()
    next_transaction = writer.execute(
        "UPDATE flowsheet SET segue = false WHERE id = %s RETURNING updated_at", (inserted[0],)
    ).fetchone()
    writer.commit()

    assert started is not None
    assert updated is not None
    assert later is not None
    assert inserted[1] == started[0]
    assert updated[0] == started[0]
    assert later[0] > started[0]
    assert next_transaction is not None
    assert next_transaction[0] > started[0]


def test_flowsheet_writers_serialize_on_the_watermark_row(
    station_db: str, writer: psycopg.Connection
) -> None:
    _log_play(writer)
    writer.execute("UPDATE flowsheet SET metadata_status = 'enriching'")  # left open

    with _connect(station_db, options="-c lock_timeout=200ms") as second:
        # A different row entirely: only the watermark row is shared with the open transaction.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            second.execute("INSERT INTO flowsheet (play_order, artist_name) VALUES (2, 'Low')")
        second.rollback()

        writer.commit()
        second.execute("INSERT INTO flowsheet (play_order, artist_name) VALUES (2, 'Low')")
        second.commit()

    assert writer.execute("SELECT count(*) FROM flowsheet").fetchone() == (2,)
