"""A 400 KB artist bio still yields a logged, broadcast terminal event (issue #15).

One sidecar runs the bridge, the fast path, the event log and the live projector against real
Postgres and Redis; LML is the scripted fake, answering a match whose bio is 400 KB. Whether
the text arrives through our own write (bounded) or through someone else's (cut by the bridge
to fit the stream), the row's terminal version is logged and reaches `wx:live`, and nothing is
dead-lettered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from wx_orchestration.contracts.live import FRAME_FIELD, LIVE_STREAM, LiveFrame
from wx_orchestration.core.album_record import MAX_BIO_CHARS
from wx_orchestration.core.events import TRIMMED_TEXT_CHARS
from wx_orchestration.settings import Settings
from wx_orchestration.sidecar.runtime import Sidecar
from wx_orchestration_tests.integration.sidecar_support import (
    FAST,
    current_keys,
    dead_letters,
    logged_keys,
    poll,
    wait_listening,
)
from wx_orchestration_tests.scripted_lml import ScriptedLml
from wx_orchestration_tests.servers import STATION_SCHEMA

BIG_BIO = "Formed in London in 1990 by Tim Gane and Laetitia Sadier. " * 7_000  # ~400 KB


def match_with_big_bio(body: dict[str, Any]) -> tuple[int, Any]:
    artwork = {
        "release_url": "https://www.discogs.com/release/1",
        "artwork_url": "https://i.discogs.com/1.jpg",
        "artist_bio": BIG_BIO,
    }
    lookup = {
        "results": [{"library_item": {"id": 1, "title": "Dots"}, "artwork": artwork}],
        "search_type": "direct",
    }
    results = [{"index": n, "status": "match", "lookup": lookup} for n in range(len(body["items"]))]
    return 200, {"results": results}


@pytest.fixture
def sidecar(
    station_db: str, redis_url: str, scripted_lml: tuple[ScriptedLml, str]
) -> Iterator[Sidecar]:
    server, lml_url = scripted_lml
    server.answer = match_with_big_bio
    settings = Settings.from_env(
        {
            "DATABASE_URL": station_db,
            "REDIS_URL": redis_url,
            "WXYC_SCHEMA_NAME": STATION_SCHEMA,
            "LIBRARY_METADATA_URL": lml_url,
            "LML_RATE_PER_SECOND": "100",
            "WX_SIDECAR_PORT": "1",
        }
    )
    running = Sidecar(settings, FAST, ("bridge", "enrich", "eventlog", "live"), "oversized")
    running.start(serve_http=False)
    try:
        wait_listening(running)
        yield running
    finally:
        assert running.stop(), "the sidecar did not stop within its deadline"


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(station_db, autocommit=True) as connection:
        connection.execute(f"SET search_path TO {STATION_SCHEMA}, wx_orchestration")
        yield connection


def add_play(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "INSERT INTO flowsheet (artist_name, album_title, track_title, play_order)"
        " VALUES ('Stereolab', 'Dots', 'Brakhage', 1) RETURNING id"
    ).fetchone()
    assert row is not None
    return row[0]


def live_updates(client: redis.Redis, flowsheet_id: int) -> list[LiveFrame]:
    entries: Any = client.xrange(LIVE_STREAM)
    frames = [LiveFrame.parse(fields[FRAME_FIELD.encode()]) for _, fields in entries]
    return [f for f in frames if f.type == "update" and f.payload["id"] == flowsheet_id]


def terminal_logged(conn: psycopg.Connection, flowsheet_id: int) -> bool:
    key = current_keys(conn)[flowsheet_id]
    return key.endswith(":enriched_match") and key in logged_keys(conn)


def test_a_match_with_a_400_kb_bio_is_logged_and_broadcast(
    sidecar: Sidecar, conn: psycopg.Connection, redis_url: str
) -> None:
    play = add_play(conn)
    poll(lambda: terminal_logged(conn, play), timeout=20, what="the terminal event in the log")
    with redis.Redis.from_url(redis_url) as client:
        (frame,) = poll(lambda: live_updates(client, play), what="the update frame")
    bio = frame.payload["artist_bio"]
    assert BIG_BIO.startswith(bio.removesuffix("…"))
    assert len(bio) <= MAX_BIO_CHARS
    assert dead_letters(conn) == []


def test_a_400_kb_bio_written_by_someone_else_still_reaches_the_log_and_listeners(
    sidecar: Sidecar, conn: psycopg.Connection, redis_url: str
) -> None:
    # The station's own worker writes a Discogs profile whole.
    row = conn.execute(
        "INSERT INTO flowsheet (artist_name, album_title, track_title, play_order,"
        " metadata_status, artist_bio) VALUES ('Stereolab', 'Dots', 'Brakhage', 1,"
        " 'enriching', 'short') RETURNING id"
    ).fetchone()
    assert row is not None
    play = row[0]
    conn.execute(
        "UPDATE flowsheet SET metadata_status = 'enriched_match', artist_bio = %s WHERE id = %s",
        (BIG_BIO, play),
    )
    poll(lambda: terminal_logged(conn, play), timeout=20, what="the terminal event in the log")
    with redis.Redis.from_url(redis_url) as client:
        (frame,) = poll(lambda: live_updates(client, play), what="the update frame")
    assert frame.payload["artist_name"] == "Stereolab"
    assert len(frame.payload["artist_bio"]) <= TRIMMED_TEXT_CHARS
    assert dead_letters(conn) == []
