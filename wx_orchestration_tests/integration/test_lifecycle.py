"""The enrichment lifecycle on real Postgres: no-match re-ask, link upgrade, cohorts."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from wx_orchestration.clients.lml import LmlClient
from wx_orchestration.contracts.live import LIVE_STREAM
from wx_orchestration.core.enrichment import LookupKey, lookup_item, search_columns
from wx_orchestration.db.lifecycle import load_cursor
from wx_orchestration.devstack.lml_emulator import lookup_item as emulated_lookup
from wx_orchestration.flows.lifecycle import (
    REASK,
    LifecycleOutcome,
    reask_no_matches,
)
from wx_orchestration_tests.integration.sidecar_support import poll
from wx_orchestration_tests.integration.test_enrichment_flow import SCHEMA, add_album, add_play
from wx_orchestration_tests.integration.test_live_feed import live_entries, serving_live

TTL_S = 30 * 86400.0
ALBUM = "Some Album"
SONG = "Some Song"


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(station_db, autocommit=True) as connection:
        connection.execute(f"SET search_path TO {SCHEMA}, wx_orchestration")
        yield connection


def emulated_artists(matches: bool) -> Iterator[str]:
    """Artists the emulator matches (or answers no-match for) with the default album and song."""
    for n in itertools.count():
        artist = f"Lifecycle Artist {n}"
        answer = emulated_lookup(lookup_item(LookupKey(artist, ALBUM, SONG)))
        if bool(answer["results"]) == matches:
            yield artist


def add_no_match(conn: psycopg.Connection, artist: str, **columns: Any) -> int:
    """A row as the live path leaves a no-match: its search links filled in."""
    links = search_columns(LookupKey(artist, ALBUM, SONG))
    return add_play(
        conn, artist, metadata_status="enriched_no_match", **{**links, **columns}
    )  # fmt: skip


def row(conn: psycopg.Connection, row_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute("SELECT * FROM flowsheet WHERE id = %s", (row_id,)).fetchone()
    assert found is not None
    return found


def reask(conn: psycopg.Connection, lml: Any, **kwargs: Any) -> LifecycleOutcome:
    return reask_no_matches(conn, lml, ttl_s=TTL_S, min_age_s=0, **{"max_calls": 5, **kwargs})


# --- no-match re-ask -------------------------------------------------------------------------


def test_a_no_match_lml_now_matches_becomes_a_match_filling_only_nulls(
    conn, lml_emulator, lml_client: LmlClient
) -> None:
    now_matches = next(emulated_artists(matches=True))
    row_id = add_no_match(conn, now_matches, artist_bio="Written by a librarian.")
    outcome = reask(conn, lml_client)
    assert (outcome.matched, outcome.stamped, outcome.not_a_verdict) == (1, 0, 0)
    after = row(conn, row_id)
    assert after["metadata_status"] == "enriched_match"
    assert after["enriching_since"] is None
    assert after["artist_bio"] == "Written by a librarian."  # populated: never clobbered
    assert after["discogs_url"].startswith("https://www.discogs.com/release/")
    # A search placeholder is not a value: LML's link replaces it.
    assert after["spotify_url"].startswith("https://open.spotify.com/album/")


def test_a_linked_no_match_fills_its_album_metadata(conn, lml_emulator, lml_client) -> None:
    album_id = add_album(conn)
    conn.execute(
        "INSERT INTO album_metadata (album_id, release_year, updated_at) VALUES (%s, 1999, now())",
        (album_id,),
    )
    row_id = add_no_match(conn, next(emulated_artists(matches=True)), album_id=album_id)
    assert reask(conn, lml_client).matched == 1
    assert row(conn, row_id)["metadata_status"] == "enriched_match"
    year, artwork = conn.execute(
        "SELECT release_year, artwork_url FROM album_metadata WHERE album_id = %s", (album_id,)
    ).fetchone()  # type: ignore[misc]
    assert year == 1999
    assert artwork is not None


def test_a_definitive_no_match_stamps_and_a_transient_answer_never_does(
    conn, lml_emulator, lml_client
) -> None:
    stays = add_no_match(conn, next(emulated_artists(matches=False)))
    lml_emulator.set_faults(degraded=True)  # every item shed: LML said nothing about the row
    shed = reask(conn, lml_client)
    assert (shed.stamped, shed.not_a_verdict) == (0, 1)
    assert row(conn, stays)["no_match_recheck_attempted_at"] is None
    assert row(conn, stays)["metadata_status"] == "enriched_no_match"

    lml_emulator.reset()
    answered = reask(conn, lml_client)
    assert answered.stamped == 1
    stamped = row(conn, stays)
    assert stamped["no_match_recheck_attempted_at"] is not None
    assert stamped["metadata_status"] == "enriched_no_match"
    # Stamped within the TTL: not due, so not asked again.
    assert reask(conn, lml_client).read == 0


def test_a_permanently_failing_slice_starves_nothing(conn, scripted_lml) -> None:
    """250 newest rows LML always sheds, 40 older ones it answers: one call a run still reaches
    the older rows on the third run, and the pass then starts again at the top."""
    fake, url = scripted_lml

    def answer(body: dict[str, Any]) -> tuple[int, Any]:
        results = [
            {"index": n, "status": "shed_limiter_saturated", "lookup": None}
            if item["artist"].startswith("Stuck")
            else {
                "index": n,
                "status": "no_match",
                "lookup": {"results": [], "search_type": "none"},
            }
            for n, item in enumerate(body["items"])
        ]
        return 200, {"results": results}

    fake.answer = answer
    answered = [add_no_match(conn, f"Answered {n}") for n in range(40)]
    stuck = [add_no_match(conn, f"Stuck {n}") for n in range(250)]
    # Newest play first: the stuck rows were played after the answered ones.
    conn.execute(
        "UPDATE flowsheet SET add_time = add_time + interval '1 hour' WHERE id = ANY(%s)", (stuck,)
    )
    with LmlClient(url) as lml:
        runs = [reask(conn, lml, max_calls=1) for _ in range(3)]
        assert [r.read for r in runs] == [100, 100, 90]
        assert [r.stamped for r in runs] == [0, 0, 40]
        assert [r.not_a_verdict for r in runs] == [100, 100, 50]
        assert runs[-1].stopped == "pass_done"  # a short page: the bottom of the pass
        stamped = conn.execute(
            "SELECT count(*) FROM flowsheet WHERE id = ANY(%s)"
            " AND no_match_recheck_attempted_at IS NOT NULL",
            (answered,),
        ).fetchone()
        assert stamped == (40,)
        # The next pass starts at the top again: the stuck rows are still due and read again.
        cursor = load_cursor(conn, REASK)
        assert (cursor.pass_number, cursor.passes_done, cursor.at_top) == (2, 1, True)
        again = reask(conn, lml, max_calls=1)
        assert (again.read, again.not_a_verdict) == (100, 100)


def test_a_failed_call_does_not_move_the_cursor(conn, lml_emulator, lml_client) -> None:
    add_no_match(conn, next(emulated_artists(matches=False)))
    lml_emulator.set_faults(error_rate=1.0)
    failed = reask(conn, lml_client)
    assert failed.stopped == "lml_failure"
    assert load_cursor(conn, REASK).at_top
    lml_emulator.reset()
    assert reask(conn, lml_client).stamped == 1


def test_a_re_asked_match_reaches_the_live_feed_as_an_update(
    station_db, redis_url, lml_emulator, lml_client
) -> None:
    with (
        serving_live(station_db, redis_url) as server,
        psycopg.connect(station_db, autocommit=True) as conn,
    ):
        conn.execute(f"SET search_path TO {SCHEMA}, wx_orchestration")
        row_id = add_no_match(
            conn,
            next(emulated_artists(matches=True)),
            add_time=datetime.now(UTC) - timedelta(minutes=5),
        )
        assert reask(conn, lml_client).matched == 1

        def update_frame() -> Any:
            for _, frame in live_entries(server.redis):
                if frame.type == "update" and frame.payload.get("id") == row_id:
                    return frame
            return None

        frame = poll(update_frame, what="the re-asked row's update on wx:live")
        assert frame.payload["metadata_status"] == "enriched_match"
        assert frame.payload["spotify_url"].startswith("https://open.spotify.com/album/")
        assert server.redis.exists(LIVE_STREAM)
