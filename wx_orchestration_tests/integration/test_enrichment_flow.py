"""Claim → LML → finalize on real Postgres, against the LML emulator and the scripted fake."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from wx_orchestration.clients.lml import LmlClient
from wx_orchestration.contracts.lml import LookupItem
from wx_orchestration.core.album_record import clean_discogs_bio
from wx_orchestration.core.enrichment import LookupKey, RetryPolicy, lookup_item
from wx_orchestration.db.enrichment import claim_backlog_batch, claim_rows_by_ids
from wx_orchestration.devstack.lml_emulator import lookup_item as emulated_lookup
from wx_orchestration.devstack.station_rows import insert_library
from wx_orchestration.flows.enrichment import Answer, drain_backlog, enrich_claimed
from wx_orchestration_tests.scripted_lml import ScriptedLml

SCHEMA = "wxyc_schema"
DAY_START = datetime(2024, 3, 10, 5, 0, tzinfo=UTC)  # midnight in New York (EST)
DAY_END = DAY_START + timedelta(days=1)
NOON = DAY_START + timedelta(hours=12)


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(station_db, autocommit=True) as connection:
        connection.execute(f"SET search_path TO {SCHEMA}, wx_orchestration")
        yield connection


def add_play(conn: psycopg.Connection, artist: str | None, **columns: Any) -> int:
    values = {
        "artist_name": artist,
        "album_title": "Some Album",
        "track_title": "Some Song",
        "play_order": 1,
        "add_time": NOON,
        **columns,
    }
    statement = sql.SQL("INSERT INTO flowsheet ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    row = conn.execute(statement, list(values.values())).fetchone()
    assert row is not None
    return int(row[0])


def add_album(conn: psycopg.Connection, title: str = "Linked Album") -> int:
    (album_id,) = insert_library(conn, [{"artist_name": "x", "album_title": title}])
    return album_id


def flowsheet_row(conn: psycopg.Connection, flowsheet_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM flowsheet WHERE id = %s", (flowsheet_id,)).fetchone()
    assert row is not None
    return row


def attempts(conn: psycopg.Connection, flowsheet_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT *, next_attempt_at > last_attempt_at AS backing_off "
            "FROM wx_orchestration.enrichment_attempts WHERE flowsheet_id = %s",
            (flowsheet_id,),
        ).fetchone()


def emulated_artist(match: bool, album: str = "Some Album", song: str | None = "Some Song") -> str:
    """An artist the emulator answers with a direct library match (or with nothing)."""
    for n in range(1000):
        artist = f"Artist {n}"
        answer = emulated_lookup(LookupItem(artist=artist, album=album, song=song))
        found = bool(answer["results"]) and answer["results"][0]["library_item"]["id"] != 0
        if found == match and (match or not answer["results"]):
            return artist
    raise AssertionError("no such artist among the first 1000")


def expected_artwork(artist: str, album: str = "Some Album", song: str = "Some Song") -> dict:
    key = LookupKey(artist, album, song)
    return emulated_lookup(lookup_item(key))["results"][0]["artwork"]


@pytest.fixture
def fake(scripted_lml: tuple[ScriptedLml, str]) -> Iterator[tuple[ScriptedLml, LmlClient]]:
    server, url = scripted_lml
    client = LmlClient(url, total_timeout=5, max_retries=0)
    yield server, client
    client.close()


def lookups_sent(emulator: Any) -> list[int]:
    return [r["items"] for r in emulator.requests() if r["path"] == "/api/v1/lookup/bulk"]


def test_unlinked_match_writes_the_result_columns_on_the_row(conn, lml_emulator, lml_client):
    artist = emulated_artist(match=True)
    row_id = add_play(conn, artist)
    claimed = claim_rows_by_ids(conn, [row_id])
    outcome = enrich_claimed(conn, lml_client, claimed)
    assert outcome.outcome_counts() == {
        "match": 1,
        "no_match": 0,
        "not_a_verdict": 0,
        "error": 0,
        "raced": 0,
    }
    art = expected_artwork(artist)
    row = flowsheet_row(conn, row_id)
    assert row["metadata_status"] == "enriched_match"
    assert row["enriching_since"] is None
    assert row["artwork_url"] == art["artwork_url"]
    assert row["discogs_url"] == art["release_url"]
    assert row["release_year"] == art["release_year"]
    assert row["artist_wikipedia_url"] == art["wikipedia_url"]
    assert row["apple_music_url"] == art["apple_music_url"]
    assert row["artist_bio"] == clean_discogs_bio(art["artist_bio"])
    assert row["composer"] == artist
    assert row["composer_source"] in {"artist_proxy", "discogs_release"}


def test_unlinked_no_match_writes_search_links(conn, lml_emulator, lml_client):
    artist = emulated_artist(match=False, album="Sólo", song=None)
    row_id = add_play(conn, artist, album_title="Sólo", track_title=None)
    outcome = enrich_claimed(conn, lml_client, claim_rows_by_ids(conn, [row_id]))
    assert outcome.no_match == 1
    row = flowsheet_row(conn, row_id)
    assert row["metadata_status"] == "enriched_no_match"
    slug = artist.replace(" ", "%20")
    assert row["spotify_url"] == f"https://open.spotify.com/search/{slug}%20S%C3%B3lo"
    assert row["soundcloud_url"] == f"https://soundcloud.com/search?q={slug}"
    assert row["apple_music_url"] is None
    assert row["artwork_url"] is None
    assert (row["composer"], row["composer_source"]) == (artist, "artist_proxy")


def test_linked_match_goes_to_album_metadata(conn, lml_emulator, lml_client):
    artist = emulated_artist(match=True)
    album_id = add_album(conn)
    row_id = add_play(conn, artist, album_id=album_id)
    outcome = enrich_claimed(conn, lml_client, claim_rows_by_ids(conn, [row_id]))
    assert outcome.match == 1
    row = flowsheet_row(conn, row_id)
    assert row["metadata_status"] == "enriched_match"
    assert row["composer"] == artist
    assert row["artwork_url"] is None
    assert row["discogs_url"] is None
    album = conn.execute(
        "SELECT artwork_url, discogs_url FROM album_metadata WHERE album_id = %s", (album_id,)
    ).fetchone()
    art = expected_artwork(artist)
    assert album == (art["artwork_url"], art["release_url"])


# Every album_metadata column the station's worker fills on a linked match
# (`upsertMatchedAlbumMetadata` in apps/enrichment-worker/enrich.ts).
STATION_ALBUM_RECORD = (
    "artwork_url",
    "discogs_url",
    "release_year",
    "spotify_url",
    "spotify_status",
    "apple_music_url",
    "apple_music_status",
    "youtube_music_url",
    "bandcamp_url",
    "bandcamp_status",
    "soundcloud_url",
    "artist_bio",
    "artist_wikipedia_url",
    "discogs_artist_id",
    "label",
    "full_release_date",
    "genres",
    "styles",
    "tracklist",
    "artist_image_url",
    "bio_tokens",
    "streaming_reask_attempts",
)


def album_record(conn: psycopg.Connection, album_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            sql.SQL("SELECT {} FROM album_metadata WHERE album_id = %s").format(
                sql.SQL(", ").join(map(sql.Identifier, STATION_ALBUM_RECORD))
            ),
            (album_id,),
        ).fetchone()
    assert row is not None
    return row


def emulated_full_record() -> tuple[str, dict[str, Any]]:
    """An artist whose emulated match has a value for every field, with its artwork."""
    for n in range(1000):
        artist = f"Artist {n}"
        answer = emulated_lookup(lookup_item(LookupKey(artist, "Some Album", "Some Song")))
        if not answer["results"] or answer["results"][0]["library_item"]["id"] == 0:
            continue
        art = answer["results"][0]["artwork"]
        if all(value is not None for value in art.values()):
            return artist, art
    raise AssertionError("no such artist among the first 1000")


def test_a_linked_match_fills_the_whole_album_record(conn, lml_emulator, lml_client):
    artist, art = emulated_full_record()
    album_id = add_album(conn)
    row_id = add_play(conn, artist, album_id=album_id)
    assert enrich_claimed(conn, lml_client, claim_rows_by_ids(conn, [row_id])).match == 1
    record = album_record(conn, album_id)
    assert [column for column, value in record.items() if value is None] == []
    assert record == {
        "artwork_url": art["artwork_url"],
        "discogs_url": art["release_url"],
        "release_year": art["release_year"],
        "spotify_url": art["spotify_url"],
        "spotify_status": "verified",
        "apple_music_url": art["apple_music_url"],
        "apple_music_status": "verified",
        "youtube_music_url": art["youtube_music_url"],
        "bandcamp_url": art["bandcamp_url"],
        "bandcamp_status": "verified",
        "soundcloud_url": art["soundcloud_url"],
        "artist_bio": f"{artist} is an artist invented by the LML emulator.",
        "artist_wikipedia_url": art["wikipedia_url"],
        "discogs_artist_id": art["discogs_artist_id"],
        "label": art["label"],
        "full_release_date": art["full_release_date"],
        "genres": art["genres"],
        "styles": art["styles"],
        "tracklist": art["tracklist"],
        "artist_image_url": art["artist_image_url"],
        "bio_tokens": art["profile_tokens"],
        "streaming_reask_attempts": 0,
    }
    # A second match of the album is a re-ask: counted, and its verified links stand.
    again = add_play(conn, artist, album_id=album_id)
    assert enrich_claimed(conn, lml_client, claim_rows_by_ids(conn, [again])).match == 1
    assert album_record(conn, album_id) == {**record, "streaming_reask_attempts": 1}


def test_a_verified_link_is_never_replaced_and_absent_yields_only_to_verified(conn, fake):
    server, client = fake
    album_id = add_album(conn)
    conn.execute(
        "INSERT INTO album_metadata (album_id, spotify_url, spotify_status, bandcamp_url,"
        " bandcamp_status, apple_music_url, apple_music_status) VALUES (%s,"
        " 'https://open.spotify.com/album/kept', 'verified', NULL, 'absent',"
        " 'https://music.apple.com/us/album/x/1', 'unresolved')",
        (album_id,),
    )
    artwork = {
        "release_url": "https://www.discogs.com/release/1",
        "spotify_url": "https://open.spotify.com/album/other",
        "apple_music_url": None,
        "streaming_status": {"spotify": "verified", "bandcamp": "unresolved"},
    }
    server.answer = lambda body: (
        200,
        {
            "results": [
                {
                    "index": 0,
                    "status": "match",
                    "lookup": {
                        "results": [{"library_item": {"id": 1}, "artwork": artwork}],
                        "search_type": "direct",
                    },
                }
            ]
        },
    )
    row_id = add_play(conn, "Stereolab", album_id=album_id)
    assert enrich_claimed(conn, client, claim_rows_by_ids(conn, [row_id])).match == 1
    record = album_record(conn, album_id)
    assert (record["spotify_url"], record["spotify_status"]) == (
        "https://open.spotify.com/album/kept",
        "verified",
    )
    # Absent stays absent on an unresolved answer; its link is the search fallback.
    assert record["bandcamp_status"] == "absent"
    assert record["bandcamp_url"].startswith("https://bandcamp.com/search?q=Stereolab")
    # No verdict for Apple Music this time: what was there stays.
    assert (record["apple_music_url"], record["apple_music_status"]) == (
        "https://music.apple.com/us/album/x/1",
        "unresolved",
    )


def test_linked_no_match_keeps_an_existing_lml_url(conn, lml_emulator, lml_client):
    artist = emulated_artist(match=False)
    album_id = add_album(conn)
    conn.execute(
        "INSERT INTO album_metadata (album_id, spotify_url) VALUES (%s, 'https://open.spotify.com/album/real')",
        (album_id,),
    )
    # Two plays of the same album in one batch: one album_metadata write.
    ids = [add_play(conn, artist, album_id=album_id) for _ in range(2)]
    outcome = enrich_claimed(conn, lml_client, claim_rows_by_ids(conn, ids))
    assert outcome.no_match == 2
    assert lookups_sent(lml_emulator) == [1]
    album = conn.execute(
        "SELECT spotify_url, bandcamp_url FROM album_metadata WHERE album_id = %s", (album_id,)
    ).fetchone()
    assert album is not None
    assert album[0] == "https://open.spotify.com/album/real"
    assert album[1] is not None
    assert album[1].startswith("https://bandcamp.com/search?q=")
    assert flowsheet_row(conn, ids[0])["spotify_url"] is None


@pytest.mark.parametrize("breaker_state", ["closed", "open"])
def test_shed_answers_leave_rows_pending_with_backoff(
    conn, lml_emulator, lml_client, breaker_state
):
    lml_emulator.set_faults(degraded=True, breaker_state=breaker_state)
    row_id = add_play(conn, "Stereolab")
    outcome = enrich_claimed(conn, lml_client, claim_rows_by_ids(conn, [row_id]))
    assert outcome.not_a_verdict == 1
    assert flowsheet_row(conn, row_id)["metadata_status"] == "pending"
    record = attempts(conn, row_id)
    assert record is not None
    assert record["attempts"] == 1
    assert record["backing_off"] is True
    expected = "shed_breaker_open" if breaker_state == "open" else "shed_limiter_saturated"
    assert record["last_error"] == expected
    # Still backing off: neither claimer takes it.
    assert claim_rows_by_ids(conn, [row_id]) == []
    assert claim_backlog_batch(conn, start=DAY_START, end=DAY_END, grace_s=0, limit=10) == []


def test_a_backlog_claim_resumes_below_the_previous_batch(conn):
    ids = [add_play(conn, f"Artist {n}") for n in range(5)]
    first = claim_backlog_batch(conn, start=DAY_START, end=DAY_END, grace_s=0, limit=2)
    assert [row.flowsheet_id for row in first] == ids[:-3:-1]
    below = min(row.flowsheet_id for row in first)
    nxt = claim_backlog_batch(
        conn, start=DAY_START, end=DAY_END, grace_s=0, limit=2, below_id=below
    )
    assert [row.flowsheet_id for row in nxt] == [ids[2], ids[1]]
    # A row above the cursor that is pending again is left for the next run.
    conn.execute(
        "UPDATE flowsheet SET metadata_status = 'pending', enriching_since = NULL WHERE id = %s",
        (ids[4],),
    )
    last = claim_backlog_batch(
        conn, start=DAY_START, end=DAY_END, grace_s=0, limit=2, below_id=ids[1]
    )
    assert [row.flowsheet_id for row in last] == [ids[0]]


def scripted(
    answers: dict[str, dict[str, Any] | None],
) -> Callable[[dict[str, Any]], tuple[int, Any]]:
    """Answers each item by its artist; an artist mapped to None gets no result at all."""

    def answer(body: dict[str, Any]) -> tuple[int, Any]:
        results = []
        for index, item in enumerate(body["items"]):
            result = answers[item["artist"]]
            if result is not None:
                results.append({"index": index, **result})
        return 200, {"results": results}

    return answer


MATCH = {
    "status": "match",
    "lookup": {
        "search_type": "direct",
        "results": [
            {
                "library_item": {"id": 4, "title": "Some Album"},
                "artwork": {
                    "release_url": "https://www.discogs.com/release/4",
                    "artwork_url": "https://s.discogs.com/images/spacer.gif",
                    "release_year": 0,
                    "writer_credits": {"names": [" A ", "B"], "provenance": "track"},
                },
            }
        ],
    },
}


def test_each_not_a_verdict_and_error_fails_only_its_row(conn, fake):
    server, client = fake
    server.answer = scripted(
        {
            "good": MATCH,
            "upstream": {
                "status": "no_match",
                "lookup": {"degraded": True, "degraded_reason": "upstream_unavailable"},
            },
            "slow": {"status": "no_match", "lookup": {"timeout": True}},
            "broken": {"status": "error", "lookup": None, "message": "boom"},
            "nulled": {"status": "match", "lookup": None},
            "missing": None,
        }
    )
    ids = {
        name: add_play(conn, name)
        for name in ("good", "upstream", "slow", "broken", "nulled", "missing")
    }
    outcome = enrich_claimed(conn, client, claim_rows_by_ids(conn, list(ids.values())))
    assert outcome.outcome_counts() == {
        "match": 1,
        "no_match": 0,
        "not_a_verdict": 5,
        "error": 0,
        "raced": 0,
    }
    good = flowsheet_row(conn, ids["good"])
    assert good["metadata_status"] == "enriched_match"
    assert good["artwork_url"] is None
    assert good["release_year"] is None
    assert (good["composer"], good["composer_source"]) == ("A; B", "discogs_track")
    for name in ("upstream", "slow", "broken", "nulled", "missing"):
        assert flowsheet_row(conn, ids[name])["metadata_status"] == "pending", name
    record = attempts(conn, ids["broken"])
    assert record is not None
    assert record["last_error"] == "lml item error: boom"
    (body,) = server.bodies
    assert body["items"][0] == {
        "artist": "good",
        "album": "Some Album",
        "song": "Some Song",
        "raw_message": "good - Some Album - Some Song",
        "extended": True,
    }


def test_an_item_lml_keeps_failing_is_never_parked(conn, fake):
    server, client = fake
    server.answer = scripted({"broken": {"status": "error", "lookup": None}})
    row_id = add_play(conn, "broken")
    policy = RetryPolicy(base_s=0, max_attempts=2)
    for _ in range(3):
        outcome = enrich_claimed(conn, client, claim_rows_by_ids(conn, [row_id]), policy=policy)
        assert (outcome.not_a_verdict, outcome.parked) == (1, 0)
    assert flowsheet_row(conn, row_id)["metadata_status"] == "pending"
    record = attempts(conn, row_id)
    assert record is not None
    assert (record["attempts"], record["faults"], record["parked_reason"]) == (3, 0, None)


def test_a_failed_call_releases_every_row_and_sends_no_more(conn, lml_emulator, lml_client):
    lml_emulator.set_faults(error_rate=1.0)
    ids = [add_play(conn, f"Artist {n}") for n in range(150)]
    outcome = enrich_claimed(conn, lml_client, claim_rows_by_ids(conn, ids))
    assert outcome.error == 150
    assert outcome.lml_failed
    assert lookups_sent(lml_emulator) == [100]
    statuses = conn.execute("SELECT metadata_status, count(*) FROM flowsheet GROUP BY 1").fetchall()
    assert statuses == [("pending", 150)]
    backing_off = conn.execute(
        "SELECT count(*) FROM wx_orchestration.enrichment_attempts "
        # Full jitter may draw a delay of a few milliseconds, already past by now(): compare
        # with the attempt's own time instead.
        "WHERE next_attempt_at >= last_attempt_at AND parked_reason IS NULL"
    ).fetchone()
    assert backing_off == (150,)


def test_distinct_keys_are_looked_up_once_in_chunks_of_100(conn, lml_emulator, lml_client):
    ids = [add_play(conn, f"Artist {n % 150}") for n in range(300)]
    ids.append(add_play(conn, " Artist 0 "))  # the same key once trimmed
    calls: list[int] = []

    def hook(call: Callable[[], Answer], items: int) -> Answer:
        calls.append(items)
        return call()

    outcome = enrich_claimed(conn, lml_client, claim_rows_by_ids(conn, ids), around_call=hook)
    assert calls == [100, 50]
    assert lookups_sent(lml_emulator) == [100, 50]
    assert outcome.rows == 301
    assert outcome.lookups == 150
    assert outcome.balanced()
    assert outcome.match + outcome.no_match == 301


def test_talkset_and_blank_artist_are_never_claimed_nor_sent(conn, lml_emulator, lml_client):
    talk = add_play(conn, "DJ Talk", entry_type="talkset")
    blanks = [add_play(conn, name) for name in ("", " \t ", "\n", "\u3000\xa0\u2009")]
    assert claim_rows_by_ids(conn, [talk, *blanks]) == []
    result = drain_backlog(
        conn,
        lml_client,
        start=DAY_START,
        end=DAY_END,
        grace_s=0,
        batch_size=10,
        time_budget_s=30,
    )
    assert result.outcome.rows == 0
    assert lml_emulator.requests() == []
    for row_id in (talk, *blanks):
        assert flowsheet_row(conn, row_id)["metadata_status"] == "pending"


def test_finalize_after_a_sweep_writes_nothing(conn, lml_emulator, lml_client):
    artist = emulated_artist(match=True)
    row_id = add_play(conn, artist)
    mine = claim_rows_by_ids(conn, [row_id])
    # The stale sweep resets the claim, and another claimer takes the row again.
    conn.execute("UPDATE flowsheet SET metadata_status = 'pending', enriching_since = NULL")
    swept = enrich_claimed(conn, lml_client, mine)
    assert swept.raced == 1
    assert swept.match == 0
    row = flowsheet_row(conn, row_id)
    assert row["metadata_status"] == "pending"
    assert row["artwork_url"] is None
    theirs = claim_rows_by_ids(conn, [row_id])
    assert enrich_claimed(conn, lml_client, mine).raced == 1
    assert enrich_claimed(conn, lml_client, theirs).match == 1


def test_backlog_and_fast_path_racing_finalize_each_row_once(station_db, lml_emulator):
    with psycopg.connect(station_db, autocommit=True) as setup:
        setup.execute(f"SET search_path TO {SCHEMA}, wx_orchestration")
        ids = [add_play(setup, f"Artist {n}") for n in range(400)]
    claimed: dict[str, list[int]] = {}
    outcomes: list[Any] = []
    barrier = threading.Barrier(2)
    # The fast path claims oldest first, the backlog newest first: they meet in the middle.
    chunks = [ids[i : i + 50] for i in range(0, len(ids), 50)]

    def backlog_claims(c: psycopg.Connection) -> Iterator[list]:
        while batch := claim_backlog_batch(c, start=DAY_START, end=DAY_END, grace_s=0, limit=50):
            yield batch

    def fast_claims(c: psycopg.Connection) -> Iterator[list]:
        for chunk in chunks:
            yield claim_rows_by_ids(c, chunk)

    def run(name: str, claims: Callable[[psycopg.Connection], Iterator[list]]) -> None:
        with (
            psycopg.connect(station_db, autocommit=True) as c,
            LmlClient(lml_emulator.url, max_retries=0) as client,
        ):
            c.execute(f"SET search_path TO {SCHEMA}, wx_orchestration")
            barrier.wait(10)
            rows = claimed.setdefault(name, [])
            for batch in claims(c):
                rows += [r.flowsheet_id for r in batch]
                if batch:
                    outcomes.append(enrich_claimed(c, client, batch))

    threads = [
        threading.Thread(target=run, args=("backlog", backlog_claims)),
        threading.Thread(target=run, args=("fast", fast_claims)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert set(claimed) == {"backlog", "fast"}
    assert not set(claimed["backlog"]) & set(claimed["fast"])
    assert sorted(claimed["backlog"] + claimed["fast"]) == ids
    assert sum(o.match + o.no_match for o in outcomes) == 400
    assert sum(o.raced for o in outcomes) == 0
    with psycopg.connect(station_db) as check:
        left = check.execute(
            "SELECT count(*) FROM wxyc_schema.flowsheet WHERE metadata_status NOT IN "
            "('enriched_match', 'enriched_no_match')"
        ).fetchone()
    assert left == (0,)


def test_a_row_the_database_rejects_is_given_back_and_the_rest_finalized(
    conn, lml_emulator, lml_client
):
    album = add_album(conn)
    linked = add_play(conn, emulated_artist(True), album_id=album)
    others = [
        add_play(conn, emulated_artist(True, album=f"Other {n}"), album_title=f"Other {n}")
        for n in range(3)
    ]
    claimed = claim_rows_by_ids(conn, [linked, *others])
    # The album is deleted between the claim and the finalize: its album_metadata write now
    # violates the foreign key, which fails the set-based statement for the whole batch.
    conn.execute("DELETE FROM library WHERE id = %s", (album,))
    outcome = enrich_claimed(conn, lml_client, claimed)
    assert outcome.match == 3
    assert outcome.error == 1
    assert outcome.rows == outcome.match + outcome.no_match + outcome.error + outcome.raced
    assert flowsheet_row(conn, linked)["metadata_status"] == "pending"
    assert all(flowsheet_row(conn, i)["metadata_status"] == "enriched_match" for i in others)
    assert "finalize rejected" in (attempts(conn, linked) or {}).get("last_error", "")


def test_a_backlog_finalize_whose_connection_is_cut_is_done_on_a_new_one(
    station_db: str, conn: psycopg.Connection, lml_emulator: Any, lml_client: LmlClient
) -> None:
    ids = [add_play(conn, f"Artist {n}") for n in range(5)]
    reconnected: list[int] = []

    @contextmanager
    def reconnect() -> Iterator[psycopg.Connection]:
        with psycopg.connect(station_db, autocommit=True) as fresh:
            fresh.execute(f"SET search_path TO {SCHEMA}, wx_orchestration")
            reconnected.append(fresh.info.backend_pid)
            yield fresh

    with psycopg.connect(station_db, autocommit=True) as run_conn:
        run_conn.execute(f"SET search_path TO {SCHEMA}, wx_orchestration")

        def cut_during_the_call(call: Callable[[], Answer], _items: int) -> Answer:
            # From another connection, while the claim is in hand and LML is being asked.
            conn.execute("SELECT pg_terminate_backend(%s)", (run_conn.info.backend_pid,))
            return call()

        result = drain_backlog(
            run_conn, lml_client, start=DAY_START, end=DAY_END, grace_s=0, batch_size=10,
            time_budget_s=30, around_call=cut_during_the_call, reconnect=reconnect,
        )  # fmt: skip
    assert result.stopped == "connection_lost", result
    assert len(reconnected) == 1
    outcome = result.outcome
    assert (outcome.match + outcome.no_match, outcome.error, outcome.raced) == (5, 0, 0), result
    assert len(lookups_sent(lml_emulator)) == 1  # the verdicts in hand were not asked again
    for flowsheet_id in ids:
        assert flowsheet_row(conn, flowsheet_id)["metadata_status"] in (
            "enriched_match",
            "enriched_no_match",
        )
        assert attempts(conn, flowsheet_id) is None  # nothing counted against the rows


def test_a_batch_past_its_time_to_ask_gives_the_rest_back_as_no_fault(conn, lml_client) -> None:
    import time

    from wx_orchestration.flows.enrichment import NOT_ASKED

    ids = [add_play(conn, f"Late {n}") for n in range(150)]
    claimed = claim_rows_by_ids(conn, ids)
    outcome = enrich_claimed(conn, lml_client, claimed, ask_until=time.monotonic() - 1)
    assert outcome.lml_calls == 0
    assert outcome.not_a_verdict == 150
    rows = conn.execute(
        "SELECT f.metadata_status, a.faults, a.last_error FROM flowsheet f"
        " JOIN wx_orchestration.enrichment_attempts a ON a.flowsheet_id = f.id"
        " WHERE f.id = ANY(%s)",
        (ids,),
    ).fetchall()
    assert set(rows) == {("pending", 0, NOT_ASKED)}
