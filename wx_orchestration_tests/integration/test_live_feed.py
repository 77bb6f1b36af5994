"""The live feed end to end: rows written to Postgres, read by a real HTTP client as SSE.

A sidecar runs the `bridge` and `live` roles in-process with its HTTP server on a free port;
clients read `/events/stream` with httpx (or a raw socket, to play a client that stops reading).
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
import redis
from psycopg import sql
from psycopg_pool import ConnectionPool

from wx_orchestration.contracts.cdc import StreamEvent
from wx_orchestration.contracts.live import (
    CLIENT_COLUMNS,
    FRAME_FIELD,
    LIVE_STREAM,
    LiveFrame,
)
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry
from wx_orchestration.core.live import frame_applies, parse_entry_id
from wx_orchestration.db.live import recent_plays
from wx_orchestration.devstack.processes import free_port
from wx_orchestration.devstack.station_rows import insert_library
from wx_orchestration.sidecar.live.metrics import LiveMetrics
from wx_orchestration.sidecar.live.projector import LiveProjector
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.runtime import Sidecar
from wx_orchestration_tests.integration.sidecar_support import (
    FAST,
    connect,
    poll,
    settings_for,
    wait_listening,
)
from wx_orchestration_tests.servers import STATION_SCHEMA

ORIGIN = "http://app.example"
MAX_CONNECTIONS = 3
FORBIDDEN = {"enriching_since", "composer", "composer_source", "search_doc"}


# --- a running sidecar and an SSE client -------------------------------------------------------


@dataclass
class LiveServer:
    base: str
    sidecar: Sidecar
    database_url: str
    redis: redis.Redis

    def stream(self, **kwargs: Any) -> SseClient:
        return SseClient(f"{self.base}/events/stream", **kwargs)

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.base}/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


@contextmanager
def serving_live(
    database_url: str, redis_url: str, env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    """A sidecar with the bridge and live roles, HTTP on a free port, ready for clients."""
    settings = {
        "WX_LIVE_KEEPALIVE_S": "0.3",
        "WX_LIVE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "WX_LIVE_QUEUE_BYTES": str(256 * 1024),
        "WX_LIVE_CORS_ORIGINS": ORIGIN,
        **(env or {}),
    }
    port = free_port()
    sidecar = Sidecar(
        settings_for(database_url, redis_url, port, settings), FAST, ("bridge", "live"), "live-test"
    )
    sidecar.start()
    base = f"http://127.0.0.1:{port}"
    client = redis.Redis.from_url(redis_url)
    try:
        poll(lambda: _answers(f"{base}/healthz"), what="the sidecar's HTTP server")
        wait_listening(sidecar)
        yield LiveServer(base, sidecar, database_url, client)
    finally:
        assert sidecar.stop(), "the sidecar did not stop within its deadline"
        client.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    data: str | None
    comment: str | None = None

    @property
    def frame(self) -> LiveFrame:
        assert self.data is not None, self
        return LiveFrame.parse(self.data)


class SseClient:
    """Reads one SSE response on a thread of its own; `events` grows as they arrive."""

    def __init__(self, url: str, *, params: dict[str, str] | None = None, **headers: str) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(5.0, read=None))
        query = {"topics": "live-fs-topic", **(params or {})}
        request = self.client.build_request("GET", url, params=query, headers=headers)
        self.response = self.client.send(request, stream=True)
        assert self.response.status_code == 200, self.response.read()
        self.events: list[SseEvent] = []
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for line in self.response.iter_lines():
                if not line:
                    if fields:
                        self.events.append(SseEvent(fields.get("id"), fields.get("data")))
                    fields = {}
                elif line.startswith(":"):
                    self.events.append(SseEvent(None, None, line[1:].strip()))
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
        except (httpx.HTTPError, RuntimeError):
            pass  # closed under us
        finally:
            self.ended.set()

    def frames(self) -> list[SseEvent]:
        return [e for e in list(self.events) if e.data is not None]

    def feed(self) -> list[SseEvent]:
        """Frames after `connection-established`."""
        return [e for e in self.frames() if e.frame.type != "connection-established"]

    def wait_feed(self, count: int, *, what: str, timeout: float = 10.0) -> list[SseEvent]:
        def enough() -> list[SseEvent] | None:
            feed = self.feed()
            return feed if len(feed) >= count else None

        return poll(enough, timeout=timeout, what=what)

    def close(self) -> None:
        self.response.close()
        self.client.close()
        self.thread.join(5)


@contextmanager
def streaming(server: LiveServer, **kwargs: Any) -> Iterator[SseClient]:
    client = server.stream(**kwargs)
    try:
        poll(lambda: client.frames(), what="connection-established")
        yield client
    finally:
        client.close()


# --- rows ------------------------------------------------------------------------------------


def insert_play(conn: psycopg.Connection, title: str, *, hours_ago: float = 0, **extra: Any) -> int:
    columns = {"artist_name": "Stereolab", "track_title": title, "play_order": 1, **extra}
    query = sql.SQL(
        "INSERT INTO {} ({}, add_time) VALUES ({}, now() - %s * interval '1 hour') RETURNING id"
    ).format(
        sql.Identifier(STATION_SCHEMA, "flowsheet"),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    row = conn.execute(query, (*columns.values(), hours_ago)).fetchone()
    assert row is not None
    return row[0]


def set_status(conn: psycopg.Connection, row_id: int, status: str, **extra: Any) -> None:
    assignments = {"metadata_status": status, **extra}
    query = sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
        sql.Identifier(STATION_SCHEMA, "flowsheet"),
        sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(column)) for column in assignments
        ),
    )
    conn.execute(query, (*assignments.values(), row_id))


def live_entries(client: redis.Redis) -> list[tuple[str, LiveFrame]]:
    entries: Any = client.xrange(LIVE_STREAM)
    return [(i.decode(), LiveFrame.parse(f[FRAME_FIELD.encode()])) for i, f in entries]


def add_frames(client: redis.Redis, count: int, *, padding: int = 0) -> list[str]:
    """Frames written straight to `wx:live`, for tests about the stream rather than the rows."""
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        frame = LiveFrame("insert", {"id": n, "track_title": "x" * padding}, n)
        pipe.xadd(LIVE_STREAM, {FRAME_FIELD: frame.to_json()})
    return [entry_id.decode() for entry_id in pipe.execute()]


@pytest.fixture
def live(station_db: str, redis_url: str) -> Iterator[LiveServer]:
    with serving_live(station_db, redis_url) as server:
        yield server


# --- the tests -------------------------------------------------------------------------------


def test_plays_and_their_enrichment_reach_listeners_and_nothing_else(live: LiveServer) -> None:
    with streaming(live) as listener, connect(live.database_url) as conn:
        hello = listener.frames()[0].frame
        assert hello.type == "connection-established"
        assert hello.payload["clientId"]
        row_id = insert_play(conn, "Miss Modular", composer="Tim Gane")
        (inserted,) = listener.wait_feed(1, what="the insert")
        assert inserted.frame.type == "insert"
        assert inserted.frame.payload["id"] == row_id
        assert inserted.frame.payload["track_title"] == "Miss Modular"
        assert inserted.frame.payload["metadata_status"] == "pending"
        assert set(inserted.frame.payload) == set(CLIENT_COLUMNS)
        assert parse_entry_id(inserted.id) is not None

        # Neither the claim nor a 25-hour-old import may reach listeners.
        set_status(conn, row_id, "enriching", enriching_since="now")
        insert_play(conn, "From the archive", hours_ago=25)
        set_status(
            conn,
            row_id,
            "enriched_match",
            artwork_url="https://img.example/dots.jpg",
            composer_source="discogs",
        )
        inserted_and_enriched = listener.wait_feed(2, what="the update")
        updated = inserted_and_enriched[1].frame
        assert updated.type == "update"
        assert updated.payload["artwork_url"] == "https://img.example/dots.jpg"
        assert updated.payload["metadata_status"] == "enriched_match"
        assert updated.payload["updated_at"] > inserted.frame.payload["updated_at"]
        for event in listener.feed():
            assert not FORBIDDEN & set(event.frame.payload)
        poll(lambda: any(e.comment == "keepalive" for e in listener.events), what="a keepalive")
        # The frames are the stream's entries, ids and all, and nothing more was published.
        assert [(e.id, e.frame) for e in listener.feed()] == live_entries(live.redis)


def test_linked_rows_carry_album_metadata_and_the_discogs_flag(live: LiveServer) -> None:
    with streaming(live) as listener, connect(live.database_url) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(STATION_SCHEMA)))
        album = insert_library(
            conn, [{"artist_name": "Broadcast", "album_title": "Tender Buttons"}]
        )
        conn.execute(
            "UPDATE library SET discogs_unavailable = true,"
            " discogs_unavailable_note = 'Promo pressing' WHERE id = %s",
            (album[0],),
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (album_id, artwork_url, release_year) VALUES (%s, %s, 2005)"
            ).format(sql.Identifier(STATION_SCHEMA, "album_metadata")),
            (album[0], "https://img.example/tender.jpg"),
        )
        insert_play(conn, "America's Boy", album_id=album[0])
        (inserted,) = listener.wait_feed(1, what="the linked insert")
        assert inserted.frame.payload["artwork_url"] == "https://img.example/tender.jpg"
        assert inserted.frame.payload["release_year"] == 2005
        assert inserted.frame.payload["discogsUnavailable"] is True
        assert inserted.frame.payload["discogsUnavailableNote"] == "Promo pressing"
        snapshot = httpx.get(f"{live.base}/flowsheet/recent", timeout=5).json()
        assert snapshot["entries"] == [inserted.frame.payload]


def test_reconnect_replays_exactly_the_missed_events_in_order(live: LiveServer) -> None:
    with connect(live.database_url) as conn:
        with streaming(live) as first:
            insert_play(conn, "before the drop")
            (seen,) = first.wait_feed(1, what="the first insert")
        assert seen.id is not None
        missed_rows = [insert_play(conn, f"missed {n}") for n in range(3)]
        # Published before the update: a row the bridge first reads already enriched is one
        # insert frame, not an insert and an update.
        poll(lambda: len(live_entries(live.redis)) == 4, what="the missed inserts to be published")
        set_status(conn, missed_rows[0], "enriched_no_match")
        poll(lambda: len(live_entries(live.redis)) == 5, what="the missed update to be published")
        missed = live_entries(live.redis)[1:]
        assert [f.type for _, f in missed] == ["insert", "insert", "insert", "update"]

        def resume(**how: Any) -> None:
            missed = live_entries(live.redis)[1:]
            with streaming(live, **how) as again:
                replayed = again.wait_feed(len(missed), what="the replay")
                assert [(e.id, e.frame) for e in replayed] == missed
                insert_play(conn, "after the reconnect")
                after = again.wait_feed(len(missed) + 1, what="frames after the replay")
                assert after[-1].frame.payload["track_title"] == "after the reconnect"

        # The header (what EventSource sends), then the query parameter (what a page can set).
        resume(**{"Last-Event-ID": seen.id})
        resume(params={"lastEventId": seen.id})


def test_ids_the_stream_cannot_resume_from_get_refetch(live: LiveServer) -> None:
    ids = add_frames(live.redis, 5)
    live.redis.xtrim(LIVE_STREAM, maxlen=2, approximate=False)
    newest = ids[-1]
    for last in (ids[0], "not-an-id", "99999999999999-0"):
        with streaming(live, **{"Last-Event-ID": last}) as client:
            (refetch,) = client.wait_feed(1, what=f"refetch for {last}")
            assert refetch.frame.type == "refetch"
            assert refetch.id == newest
    # Resuming from an id still held replays only what follows it.
    with streaming(live, **{"Last-Event-ID": ids[3]}) as client:
        (replayed,) = client.wait_feed(1, what="the replay")
        assert replayed.id == ids[4]
        (fresh,) = add_frames(live.redis, 1)
        poll(lambda: len(client.feed()) == 2, what="the live frame")
        assert client.feed()[1].id == fresh


def test_snapshot_then_subscribe_has_no_gap_and_no_duplicate(live: LiveServer) -> None:
    written: list[int] = []
    subscribed = threading.Event()

    def write_plays() -> None:
        # ~200 plays/s (a third of them enriched at once) before, during and after the
        # snapshot and the subscription; the pace only keeps the total under the snapshot limit.
        pace = threading.Event()
        with connect(live.database_url) as writer:
            after_subscribing = 0
            while after_subscribing < 40 and len(written) < 190:
                n = len(written)
                written.append(insert_play(writer, f"play {n}"))
                if n % 3 == 0:
                    set_status(writer, written[-1], "enriched_match", artwork_url=f"https://a/{n}")
                after_subscribing += subscribed.is_set()
                pace.wait(0.005)

    writer = threading.Thread(target=write_plays)
    writer.start()
    try:
        poll(lambda: len(written) >= 30, what="plays before the snapshot")
        snapshot = httpx.get(f"{live.base}/flowsheet/recent?limit=200", timeout=5).json()
        listener = live.stream(params={"lastEventId": snapshot["last_event_id"]})
        subscribed.set()
    finally:
        writer.join(60)
    try:
        total = len(written)
        with connect(live.database_url) as conn:
            truth = {row["id"]: row for row in recent_plays(conn, STATION_SCHEMA, 200)}
        assert len(truth) == total

        held = {row["id"]: row for row in snapshot["entries"]}
        assert 0 < len(held) < total
        entered: list[int] = []
        merged_count = 0

        def merged() -> bool:
            # What a client does: apply each frame unless it holds that version already. A row
            # enriched before the bridge read its insert arrives as it is, enriched.
            nonlocal merged_count
            feed = listener.feed()
            for event in feed[merged_count:]:
                frame = event.frame
                row_id = frame.payload["id"]
                if frame_applies(held.get(row_id), frame):
                    if row_id not in held:
                        entered.append(row_id)
                    held[row_id] = dict(frame.payload)
            merged_count = len(feed)
            return held == truth

        poll(merged, timeout=20, what="the merged list to match the database")
        last = parse_entry_id(snapshot["last_event_id"])
        assert last is not None
        # No gap: the merged list is the database. No duplicate: nothing at or before the
        # snapshot's position is sent, and no row enters the list twice.
        assert all((parse_entry_id(e.id) or (0, 0)) > last for e in listener.feed())
        assert len(entered) == len(set(entered))
        assert not set(entered) & {row["id"] for row in snapshot["entries"]}
        assert len(snapshot["entries"]) + len(entered) == total
        # Every row the client learns of after the snapshot, it learns of by an `insert`.
        inserted = {e.frame.payload["id"] for e in listener.feed() if e.frame.type == "insert"}
        assert set(entered) <= inserted
    finally:
        listener.close()


def test_unknown_topics_are_404_and_the_connection_cap_is_503(live: LiveServer) -> None:
    many = ",".join(f"staff-only-{n}" for n in range(2000))
    unknown = httpx.get(f"{live.base}/events/stream", params={"topics": many}, timeout=5)
    assert unknown.status_code == 404
    # Not echoed: the answer names what exists, whatever was asked for.
    assert "staff-only" not in unknown.text
    assert len(unknown.content) < 200
    assert unknown.json()["topics"] == ["live-fs-topic"]
    clients = [live.stream() for _ in range(MAX_CONNECTIONS)]
    try:
        poll(lambda: all(c.frames() for c in clients), what="connections up to the cap")
        refused = httpx.get(f"{live.base}/events/stream?topics=live-fs-topic", timeout=5)
        assert refused.status_code == 503
        assert "too many" in refused.json()["error"]
        clients.pop().close()
        poll(lambda: live.metric("wx_live_connections") == MAX_CONNECTIONS - 1, what="a free slot")
        with streaming(live) as admitted:
            assert admitted.frames()[0].frame.type == "connection-established"
    finally:
        for client in clients:
            client.close()


def test_a_client_that_stops_reading_is_closed(
    live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    slow = socket.socket()
    slow.connect(("127.0.0.1", int(live.base.rsplit(":", 1)[1])))
    slow.sendall(b"GET /events/stream?topics=live-fs-topic HTTP/1.1\r\nHost: x\r\n\r\n")
    slow.settimeout(5)
    assert slow.recv(1024).startswith(b"HTTP/1.1 200")
    total_received = 0
    try:
        with streaming(live) as healthy:
            poll(lambda: live.metric("wx_live_connections") == 2, what="both connections")
            sent = 0

            def slow_client_closed() -> bool:
                # Rounds the client that reads keeps up with, until the other one's kernel
                # buffers, transport buffer and queue are all full.
                nonlocal sent
                sent += len(add_frames(live.redis, 20, padding=64 * 1024))
                healthy.wait_feed(sent, what="the frames of this round")
                return live.metric("wx_live_slow_clients_closed_total") == 1

            poll(slow_client_closed, timeout=30, what="the slow client to be closed")
            assert live.metric("wx_live_connections") == 1
            assert not healthy.ended.is_set()
            # One line of ours, no ERROR (nor so a Sentry event) from uvicorn: the cut is meant.
            poll(
                lambda: any("cut off a client" in r.getMessage() for r in caplog.records),
                what="the cut logged",
            )
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        # Once it reads again it finds the end of the response (or of the connection, had it
        # stayed stuck past the server's grace period) and reconnects with its last id.
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n") and (chunk := slow.recv(1 << 20)):
            tail = tail[-16:] + chunk
            total_received += len(chunk)
        assert total_received < sent * 64 * 1024
    finally:
        slow.close()


def test_a_client_that_falls_behind_and_catches_up_misses_nothing(
    station_db: str, redis_url: str
) -> None:
    # A queue big enough that falling behind never closes the connection.
    with serving_live(station_db, redis_url, env={"WX_LIVE_QUEUE_BYTES": str(64 << 20)}) as live:
        lagging = socket.socket()
        lagging.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        lagging.connect(("127.0.0.1", int(live.base.rsplit(":", 1)[1])))
        lagging.sendall(b"GET /events/stream?topics=live-fs-topic HTTP/1.1\r\nHost: x\r\n\r\n")
        lagging.settimeout(5)
        try:
            received = lagging.recv(1 << 16)
            assert received.startswith(b"HTTP/1.1 200")
            sent: list[str] = []

            def write_waits() -> bool:
                # Rounds it does not read, until the server's writes to it have to wait.
                sent.extend(add_frames(live.redis, 20, padding=64 * 1024))
                return live.metric("wx_live_writes_waited_total") >= 1

            poll(write_waits, timeout=30, what="a write to wait for the client")
            sent += add_frames(live.redis, 5)  # queued behind that write

            def read_until(last: str) -> list[str]:
                nonlocal received
                deadline = time.monotonic() + 30
                while f"id: {last}\n".encode() not in received:
                    assert time.monotonic() < deadline, f"timed out waiting for {last}"
                    chunk = lagging.recv(1 << 20)
                    assert chunk, "the server closed the connection"
                    received += chunk
                return [m.decode() for m in re.findall(rb"\nid: (\d+-\d+)\n", received)]

            assert read_until(sent[-1]) == sent
            # Caught up: what follows is written to it again as it comes.
            sent += add_frames(live.redis, 3)
            assert read_until(sent[-1]) == sent
            assert live.metric("wx_live_slow_clients_closed_total") == 0
            assert live.metric("wx_live_connections") == 1
        finally:
            lagging.close()


def test_cors_and_the_page(live: LiveServer) -> None:
    simple = httpx.get(f"{live.base}/flowsheet/recent", headers={"Origin": ORIGIN}, timeout=5)
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert simple.json() == {"entries": [], "last_event_id": "0-0"}
    stranger = httpx.get(f"{live.base}/flowsheet/recent", headers={"Origin": "http://x"}, timeout=5)
    assert "access-control-allow-origin" not in stranger.headers
    preflight = httpx.options(
        f"{live.base}/events/stream",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
        timeout=5,
    )
    assert preflight.status_code == 200
    assert "last-event-id" in preflight.headers["access-control-allow-headers"].lower()
    assert httpx.get(f"{live.base}/flowsheet/recent?limit=zero", timeout=5).status_code == 400
    page = httpx.get(f"{live.base}/", timeout=5)
    assert page.headers["content-type"].startswith("text/html")
    assert "/now_playing.js" in page.text
    script = httpx.get(f"{live.base}/now_playing.js", timeout=5)
    assert "EventSource" in script.text


def test_a_redelivered_event_is_published_once(station_db: str, redis_url: str) -> None:
    row = {
        "id": 4,
        "entry_type": "track",
        "add_time": "2024-05-01T16:00:00+00:00",
        "updated_at": "2024-05-01T16:00:00+00:00",
        "metadata_status": "pending",
    }
    live_copy = StreamEvent("INSERT", row, 1, 1).fields()
    caught_up = StreamEvent("CATCHUP", row, None, 2, catchup=True).fields()
    events = [
        decode_stream_entry(f"{n}-1", fields)
        for n, fields in enumerate([live_copy, live_copy, caught_up], start=1)
    ]
    metrics = LiveMetrics(SidecarMetrics())
    client = redis.Redis.from_url(redis_url)
    pool: ConnectionPool[psycopg.Connection] = ConnectionPool(station_db, min_size=1, max_size=1)
    with pool:
        projector = LiveProjector(client, pool, STATION_SCHEMA, 100, metrics)
        for event in events:
            assert isinstance(event, FlowsheetEvent), event
            # Each delivery is acknowledged, whether it published or not.
            assert projector.publish([event], now=datetime(2024, 5, 1, 16, 5, tzinfo=UTC)) == [
                event.entry_id
            ]
    assert len(live_entries(client)) == 1
    assert metrics.duplicates._value.get() == 2
    client.close()


def test_the_live_role_never_imports_dagster() -> None:
    code = (
        "import sys, wx_orchestration.sidecar.live; "
        "assert 'dagster' not in sys.modules, 'dagster was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
