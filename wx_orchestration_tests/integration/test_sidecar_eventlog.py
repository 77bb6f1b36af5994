"""Bridge + event log in one process: a row reaches `wx:cdc` and the log, once per version."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import redis
from psycopg_pool import ConnectionPool

from wx_orchestration.contracts.cdc import CDC_STREAM, EVENTLOG_GROUP, StreamEvent
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry
from wx_orchestration.db.events import cdc_source, consumer_marks, read_flowsheet_rows
from wx_orchestration.sidecar.consumer import StreamConsumer
from wx_orchestration.sidecar.eventlog import CompletenessMark, log_flowsheet_events
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration_tests.integration.sidecar_support import (
    FAST,
    connect,
    current_keys,
    dead_letters,
    insert_tracks,
    logged_keys,
    payload_json,
    poll,
    running_sidecar,
    stream_events,
    wait_listening,
)
from wx_orchestration_tests.servers import STATION_SCHEMA


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def pool(station_db: str) -> Iterator[ConnectionPool[psycopg.Connection]]:
    pool: ConnectionPool[psycopg.Connection] = ConnectionPool(station_db, min_size=1, max_size=2)
    with pool:
        yield pool


def eventlog_consumer(
    client: redis.Redis, pool: ConnectionPool, name: str, metrics: SidecarMetrics | None = None
) -> StreamConsumer[FlowsheetEvent]:
    metrics = metrics or SidecarMetrics()
    return StreamConsumer(
        client=client,
        pool=pool,
        stream=CDC_STREAM,
        group=EVENTLOG_GROUP,
        consumer=name,
        decode=decode_stream_entry,
        sink=lambda events: log_flowsheet_events(pool, metrics, events),
        metrics=metrics,
        config=FAST,
    )


def test_insert_reaches_the_stream_and_the_event_log(
    station_db: str, redis_url: str, client: redis.Redis
) -> None:
    with (
        running_sidecar(station_db, redis_url, ("bridge", "eventlog")) as sidecar,
        connect(station_db) as conn,
    ):
        wait_listening(sidecar)
        (row_id,) = insert_tracks(conn, 1)
        expected = current_keys(conn)[row_id]
        poll(lambda: expected in logged_keys(conn), what="the event-log row")
        live = [e for e in stream_events(client) if e.flowsheet_id == row_id]
        assert any(e.action == "INSERT" and not e.catchup for e in live)
        watermark = conn.execute(
            "SELECT flowsheet_id FROM wx_orchestration.cdc_watermark"
        ).fetchone()
        assert watermark == (row_id,)


def test_duplicate_entries_make_one_event_row(
    station_db: str, client: redis.Redis, pool: ConnectionPool
) -> None:
    row = {"id": 9, "updated_at": "2024-05-01T16:00:00+00:00", "metadata_status": "pending"}
    same_elsewhere = {**row, "updated_at": "2024-05-01T12:00:00-04:00"}
    for image, action in [(row, "INSERT"), (row, "INSERT"), (same_elsewhere, "CATCHUP")]:
        client.xadd(CDC_STREAM, StreamEvent(action, image, None, 1).fields())  # type: ignore[arg-type]
    metrics = SidecarMetrics()
    consumer = eventlog_consumer(client, pool, "c1", metrics)
    assert consumer.step() == 3
    with connect(station_db) as conn:
        assert list(logged_keys(conn).values()) == [9]
    assert metrics.eventlog_duplicates._value.get() == 2
    assert client.xpending(CDC_STREAM, EVENTLOG_GROUP)["pending"] == 0


def test_poison_entries_are_dead_lettered_and_never_stall_the_group(
    station_db: str, client: redis.Redis, pool: ConnectionPool
) -> None:
    good = {"id": 1, "updated_at": "2024-05-01T16:00:00+00:00", "metadata_status": "pending"}
    poison = {
        "not json": {b"payload": b"{nope"},
        "wrong types": payload_json({"action": "INSERT", "row": {"id": "one"}, "bridged_at_ms": 1}),
        "unknown table": payload_json(
            {"table": "library", "action": "INSERT", "row": good, "bridged_at_ms": 1}
        ),
        "huge body": payload_json(
            {"action": "INSERT", "row": {**good, "artist_bio": "x" * 300_000}, "bridged_at_ms": 1}
        ),
    }
    ids = {name: client.xadd(CDC_STREAM, fields).decode() for name, fields in poison.items()}  # type: ignore[arg-type,union-attr]
    client.xadd(CDC_STREAM, StreamEvent("INSERT", good, None, 1).fields())  # type: ignore[arg-type]
    consumer = eventlog_consumer(client, pool, "c1")
    consumer.step()
    with connect(station_db) as conn:
        letters = {entry_id: reason for _, entry_id, _, reason in dead_letters(conn)}
        assert set(letters) == set(ids.values())
        assert "not JSON" in letters[ids["not json"]]
        assert "'id' is str" in letters[ids["wrong types"]]
        assert "unknown table" in letters[ids["unknown table"]]
        assert "bytes, more than" in letters[ids["huge body"]]
        assert list(logged_keys(conn).values()) == [1]
    assert client.xpending(CDC_STREAM, EVENTLOG_GROUP)["pending"] == 0


def test_consumer_killed_mid_batch_has_its_entries_reclaimed(
    station_db: str, client: redis.Redis, pool: ConnectionPool
) -> None:
    for n in range(1, 51):
        row = {"id": n, "updated_at": "2024-05-01T16:00:00+00:00", "metadata_status": "pending"}
        client.xadd(CDC_STREAM, StreamEvent("INSERT", row, None, 1).fields())  # type: ignore[arg-type]
    survivor = eventlog_consumer(client, pool, "survivor")
    survivor.ensure_group()
    # The doomed consumer reads a batch and dies before acknowledging anything.
    doomed = client.xreadgroup(EVENTLOG_GROUP, "doomed", {CDC_STREAM: ">"}, count=50)
    assert len(doomed[0][1]) == 50  # type: ignore[index]
    stop = threading.Event()
    worker = threading.Thread(target=survivor.run, args=(stop,))
    worker.start()
    try:
        with connect(station_db) as conn:
            poll(lambda: len(logged_keys(conn)) == 50, what="reclaimed entries to be logged")
        poll(lambda: client.xpending(CDC_STREAM, EVENTLOG_GROUP)["pending"] == 0, what="acks")
        # Its entries taken over, the dead consumer's name goes too: restarts leave no trail.
        poll(lambda: consumers(client) == {"survivor"}, what="the dead consumer removed")
    finally:
        stop.set()
        worker.join(5)
    assert not worker.is_alive()


def consumers(client: redis.Redis) -> set[str]:
    found: Any = client.xinfo_consumers(CDC_STREAM, EVENTLOG_GROUP)
    return {c["name"].decode() for c in found}


def test_only_consumers_holding_nothing_and_idle_past_the_reclaim_idle_are_removed(
    client: redis.Redis, pool: ConnectionPool
) -> None:
    client.xadd(CDC_STREAM, payload_json({"not": "an event"}))  # type: ignore[arg-type]
    patient = eventlog_consumer(client, pool, "patient")
    patient.config = replace(FAST, claim_idle_ms=60_000)
    patient.ensure_group()
    # Another instance holds an entry; another holds nothing.
    assert client.xreadgroup(EVENTLOG_GROUP, "holder", {CDC_STREAM: ">"}, count=1)
    client.xgroup_createconsumer(CDC_STREAM, EVENTLOG_GROUP, "empty")
    client.xgroup_createconsumer(CDC_STREAM, EVENTLOG_GROUP, "patient")
    patient._prune_consumers()
    assert consumers(client) == {"patient", "holder", "empty"}  # none idle for 60 s

    eager = eventlog_consumer(client, pool, "eager")
    eager.config = replace(FAST, claim_idle_ms=1)
    poll(lambda: (eager._prune_consumers(), "empty" not in consumers(client))[1], what="pruning")
    # Whoever holds an entry stays, however idle, until the entry is reclaimed from it.
    assert "holder" in consumers(client)


def test_entries_failing_more_than_n_times_become_dead_letters(
    station_db: str, client: redis.Redis, pool: ConnectionPool
) -> None:
    row = {"id": 5, "updated_at": "2024-05-01T16:00:00+00:00", "metadata_status": "pending"}
    entry_id = client.xadd(CDC_STREAM, StreamEvent("INSERT", row, None, 1).fields()).decode()  # type: ignore[arg-type,union-attr]
    metrics = SidecarMetrics()

    def failing_sink(events: object) -> list[str]:
        raise RuntimeError("the database said no")

    consumer = StreamConsumer(
        client=client,
        pool=pool,
        stream=CDC_STREAM,
        group=EVENTLOG_GROUP,
        consumer="c1",
        decode=decode_stream_entry,
        sink=failing_sink,
        metrics=metrics,
        config=FAST.__class__(**{**FAST.__dict__, "claim_idle_ms": 0, "max_deliveries": 3}),
    )
    stop = threading.Event()
    worker = threading.Thread(target=consumer.run, args=(stop,))
    worker.start()
    try:
        with connect(station_db) as conn:
            letters = poll(lambda: dead_letters(conn), timeout=20, what="a dead letter")
    finally:
        stop.set()
        worker.join(5)
    assert letters[0][1] == entry_id
    assert "delivered 4 times" in letters[0][3]
    assert client.xpending(CDC_STREAM, EVENTLOG_GROUP)["pending"] == 0


def test_the_mark_stops_at_the_first_row_not_logged(
    station_db: str, client: redis.Redis, pool: ConnectionPool
) -> None:
    mark = CompletenessMark(STATION_SCHEMA, timedelta(hours=24), page=100)
    with connect(station_db) as conn:
        first, second, third = (insert_tracks(conn, 1)[0] for _ in range(3))
        rows = read_flowsheet_rows(conn, STATION_SCHEMA, [first, second, third])

    def log(row_id: int) -> None:
        fields = StreamEvent("CATCHUP", rows[row_id], None, 1, catchup=True).fields()
        entry_id = client.xadd(CDC_STREAM, fields).decode()  # type: ignore[arg-type,union-attr]
        event = decode_stream_entry(entry_id, fields)
        assert isinstance(event, FlowsheetEvent)
        log_flowsheet_events(pool, SidecarMetrics(), [event], mark)

    def marked() -> int:
        with connect(station_db) as conn:
            (mark_row,) = consumer_marks(conn, cdc_source(STATION_SCHEMA))
        assert mark_row.group == EVENTLOG_GROUP
        return mark_row.position.flowsheet_id

    log(first)
    log(third)
    assert marked() == first  # `second` may still be on its way: the mark waits for it
    log(second)
    assert marked() == third


def logged_row_event(client: redis.Redis, conn: psycopg.Connection) -> FlowsheetEvent:
    """A fresh row's current version as the event log's consumer would receive it."""
    (row_id,) = insert_tracks(conn, 1)
    row = read_flowsheet_rows(conn, STATION_SCHEMA, [row_id])[row_id]
    fields = StreamEvent("CATCHUP", row, None, 1, catchup=True).fields()
    entry_id = client.xadd(CDC_STREAM, fields).decode()  # type: ignore[arg-type,union-attr]
    event = decode_stream_entry(entry_id, fields)
    assert isinstance(event, FlowsheetEvent)
    return event


def test_a_mark_that_cannot_move_never_holds_the_batch_back(
    station_db: str, client: redis.Redis, pool: ConnectionPool
) -> None:
    mark = CompletenessMark(STATION_SCHEMA, timedelta(hours=24), page=100)
    metrics = SidecarMetrics()
    consumer = eventlog_consumer(client, pool, "c1", metrics)
    consumer.sink = lambda events: log_flowsheet_events(pool, metrics, events, mark)
    with connect(station_db) as conn:
        # The sidecar deployed before the migration that adds the marks.
        conn.execute("DROP TABLE wx_orchestration.cdc_consumer_marks")
        event = logged_row_event(client, conn)
        assert consumer.step() == 1
        assert list(logged_keys(conn)) == [event.key]
    assert client.xpending(CDC_STREAM, EVENTLOG_GROUP)["pending"] == 0
    assert metrics.eventlog_mark_errors._value.get() == 1
    assert metrics.consumer_errors.labels(EVENTLOG_GROUP)._value.get() == 0


def test_a_mark_another_sink_is_moving_is_skipped_not_waited_for(
    station_db: str, client: redis.Redis, pool: ConnectionPool
) -> None:
    mark = CompletenessMark(STATION_SCHEMA, timedelta(hours=24), page=100)
    metrics = SidecarMetrics()
    with connect(station_db) as conn, connect(station_db) as other_sink:
        log_flowsheet_events(pool, metrics, [logged_row_event(client, conn)], mark)
        (before,) = consumer_marks(conn, cdc_source(STATION_SCHEMA))
        event = logged_row_event(client, conn)
        with other_sink.transaction():
            other_sink.execute(
                "SELECT 1 FROM wx_orchestration.cdc_consumer_marks FOR UPDATE"
            ).fetchall()
            done = threading.Event()

            def sink() -> None:
                assert log_flowsheet_events(pool, metrics, [event], mark) == [event.entry_id]
                done.set()

            worker = threading.Thread(target=sink)
            worker.start()
            poll(done.is_set, what="the sink to return while the mark is held elsewhere")
        worker.join(5)
        assert event.key in logged_keys(conn)
        # Skipped, not timed out waiting: the holder moves it (or the next batch does).
        assert metrics.eventlog_mark_errors._value.get() == 0
        assert consumer_marks(conn, cdc_source(STATION_SCHEMA)) == [before]
