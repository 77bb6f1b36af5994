"""The enrichment lifecycle on real Postgres: no-match re-ask, streaming re-ask, cohorts."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from wx_orchestration.clients.lml import LmlClient
from wx_orchestration.contracts.live import LIVE_STREAM
from wx_orchestration.core.enrichment import LookupKey, lookup_item, search_columns
from wx_orchestration.core.lifecycle import STREAMING_REASK_ATTEMPT_CAP
from wx_orchestration.db.lifecycle import load_cursor
from wx_orchestration.devstack.lml_emulator import lookup_item as emulated_lookup
from wx_orchestration.devstack.station_rows import insert_library
from wx_orchestration.flows.lifecycle import (
    REASK,
    STREAMING_REASK,
    LifecycleOutcome,
    reask_no_matches,
    reask_streaming,
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


# --- streaming re-ask ------------------------------------------------------------------------

LIBRARIAN_LINK = "https://open.spotify.com/album/0000000000verifiedbyhand"


def emulated_albums(matches: bool = True, **verdicts: str) -> Iterator[tuple[str, str]]:
    """(artist, title) of albums the emulator matches (or not), asked as the streaming re-ask
    asks (no track), with these streaming verdicts."""
    for n in itertools.count():
        artist, title = f"Streaming Artist {n}", f"Streaming Album {n}"
        answer = emulated_lookup(lookup_item(LookupKey(artist, title, None)))
        if bool(answer["results"]) != matches:
            continue
        if not matches:
            yield artist, title
            continue
        status = answer["results"][0]["artwork"]["streaming_status"]
        if all(status[service] == verdict for service, verdict in verdicts.items()):
            yield artist, title


def add_matched_album(conn: psycopg.Connection, artist: str, title: str, **columns: Any) -> int:
    """A matched album as the live path leaves one whose links did not all resolve: every
    verdict `unresolved`, Spotify's and Bandcamp's search links in place, written a day ago."""
    (album_id,) = insert_library(conn, [{"artist_name": artist, "album_title": title}])
    search = search_columns(LookupKey(artist, title, None))
    values = {
        "album_id": album_id,
        "artwork_url": "https://img.example/cover.jpg",
        "spotify_status": "unresolved",
        "spotify_url": search["spotify_url"],
        "apple_music_status": "unresolved",
        "bandcamp_status": "unresolved",
        "bandcamp_url": search["bandcamp_url"],
        "updated_at": datetime.now(UTC) - timedelta(days=1),
        **columns,
    }
    statement = sql.SQL("INSERT INTO album_metadata ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    conn.execute(statement, list(values.values()))
    return album_id


def album(conn: psycopg.Connection, album_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(
            "SELECT * FROM album_metadata WHERE album_id = %s", (album_id,)
        ).fetchone()
    assert found is not None
    return found


def reask_albums(conn: psycopg.Connection, lml: Any, **kwargs: Any) -> LifecycleOutcome:
    return reask_streaming(conn, lml, **{"retry_after_s": 3600.0, "max_calls": 5, **kwargs})


def test_an_unresolved_verdict_lml_now_answers_is_written_and_a_verified_link_never_is(
    conn, lml_emulator, lml_client
) -> None:
    resolved = emulated_albums(spotify="verified", apple_music="verified", bandcamp="verified")
    healed = add_matched_album(conn, *next(resolved))
    kept = add_matched_album(
        conn, *next(resolved), spotify_status="verified", spotify_url=LIBRARIAN_LINK
    )
    play = add_play(conn, "Streaming Artist", metadata_status="enriched_match", album_id=healed)
    play_before = row(conn, play)["updated_at"]
    before = album(conn, healed)

    outcome = reask_albums(conn, lml_client)
    assert (outcome.read, outcome.matched, outcome.stamped, outcome.not_a_verdict) == (2, 2, 0, 0)
    assert outcome.upgraded == 2
    assert outcome.stopped == "pass_done"
    after = album(conn, healed)
    assert after["spotify_status"] == "verified"
    assert after["spotify_url"].startswith("https://open.spotify.com/album/")
    assert after["apple_music_status"] == "verified"
    assert after["apple_music_url"].startswith("https://music.apple.com/")
    assert after["bandcamp_status"] == "verified"
    assert ".bandcamp.com/album/" in after["bandcamp_url"]
    assert after["streaming_reask_attempts"] == 1
    assert after["updated_at"] > before["updated_at"]
    # Only the streaming columns: the rest of the record is as it was.
    assert after["artwork_url"] == before["artwork_url"]
    # A verified link is never touched; the other services of the same album are written.
    untouched = album(conn, kept)
    assert (untouched["spotify_status"], untouched["spotify_url"]) == ("verified", LIBRARIAN_LINK)
    assert untouched["apple_music_status"] == "verified"
    # Only album_metadata is written: the linked play is not, so the feed sends no update (it
    # carries flowsheet changes; the play shows the new links in the next snapshot).
    assert row(conn, play)["updated_at"] == play_before
    # Answered: not asked again within the spacing.
    assert reask_albums(conn, lml_client).read == 0


def test_only_unresolved_matched_albums_under_the_cap_are_asked(
    conn, lml_emulator, lml_client
) -> None:
    stays = emulated_albums(apple_music="unresolved")
    asked = add_matched_album(conn, *next(stays))
    # The station's frozen Bandcamp shape: a search link and no verdict.
    frozen_bandcamp = add_matched_album(
        conn, *next(stays), spotify_status="verified", spotify_url=LIBRARIAN_LINK,
        apple_music_status="verified", bandcamp_status=None,
    )  # fmt: skip
    skipped = [
        add_matched_album(conn, *next(stays), streaming_reask_attempts=STREAMING_REASK_ATTEMPT_CAP),
        add_matched_album(conn, *next(stays), artwork_url=None),  # never matched
        add_matched_album(conn, *next(stays), updated_at=datetime.now(UTC)),  # just written
        add_matched_album(  # every verdict settled
            conn,
            *next(stays),
            spotify_status="absent",
            apple_music_status="verified",
            bandcamp_status="absent",
        ),
    ]
    before = {i: album(conn, i) for i in skipped}
    assert reask_albums(conn, lml_client).read == 2
    assert {i: album(conn, i) for i in skipped} == before
    unfrozen = album(conn, frozen_bandcamp)
    assert unfrozen["streaming_reask_attempts"] == 1
    assert unfrozen["bandcamp_status"] in ("verified", "absent")
    assert unfrozen["spotify_url"] == LIBRARIAN_LINK
    # Apple Music stays unresolved: asked again once the spacing is over, until the cap.
    for attempt in range(2, STREAMING_REASK_ATTEMPT_CAP + 2):
        conn.execute(
            "UPDATE album_metadata SET updated_at = updated_at - interval '2 hours'"
            " WHERE album_id = %s",
            (asked,),
        )
        again = reask_albums(conn, lml_client)
        attempts = min(attempt, STREAMING_REASK_ATTEMPT_CAP)
        assert album(conn, asked)["streaming_reask_attempts"] == attempts
        assert again.matched == again.read == int(attempt <= STREAMING_REASK_ATTEMPT_CAP)
    assert album(conn, asked)["apple_music_status"] == "unresolved"
    assert album(conn, asked)["spotify_status"] == "verified"


def test_a_transient_streaming_answer_writes_and_spends_nothing(
    conn, lml_emulator, lml_client
) -> None:
    album_id = add_matched_album(conn, *next(emulated_albums(spotify="verified")))
    before = album(conn, album_id)
    lml_emulator.set_faults(degraded=True)  # every item shed
    shed = reask_albums(conn, lml_client)
    assert (shed.read, shed.stamped, shed.not_a_verdict) == (1, 0, 1)
    assert album(conn, album_id) == before
    lml_emulator.set_faults(degraded=False, degraded_reason="deadline_exceeded")
    assert reask_albums(conn, lml_client).not_a_verdict == 1
    assert album(conn, album_id) == before
    lml_emulator.set_faults(degraded_reason=None, error_rate=1.0)  # the call itself fails
    failed = reask_albums(conn, lml_client)
    assert failed.stopped == "lml_failure"
    assert album(conn, album_id) == before
    assert load_cursor(conn, STREAMING_REASK).at_top

    lml_emulator.reset()
    no_match = add_matched_album(conn, *next(emulated_albums(matches=False)))
    unmatched_before = album(conn, no_match)
    answered = reask_albums(conn, lml_client)
    assert (answered.matched, answered.stamped) == (1, 1)
    assert album(conn, album_id)["spotify_status"] == "verified"
    # A no-match is an answer: it spends the attempt and writes nothing else.
    unmatched = album(conn, no_match)
    assert unmatched["streaming_reask_attempts"] == 1
    streaming = ("spotify_status", "spotify_url", "apple_music_status", "bandcamp_url")
    assert [unmatched[c] for c in streaming] == [unmatched_before[c] for c in streaming]
