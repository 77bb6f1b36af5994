from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wx_orchestration.contracts.lml import (
    Artwork,
    BulkLookupResponse,
    BulkLookupResult,
    HealthResponse,
    LookupResponse,
)
from wx_orchestration.contracts.station import RESULT_COLUMNS
from wx_orchestration.core.album_record import MAX_URL_CHARS
from wx_orchestration.core.enrichment import (
    ClaimedRow,
    LookupKey,
    RetryPolicy,
    Verdict,
    composer_credit,
    discogs_unavailable,
    enrichment_candidate,
    finalize_plan,
    lookup_item,
    loose_title,
    match_columns,
    predates_degraded,
    results_by_index,
    search_columns,
    trusted_results,
    verdict_for,
)

CLAIMED_AT = datetime(2024, 3, 10, 20, 0, 0, 123456, tzinfo=UTC)


def track(**overrides: Any) -> dict[str, Any]:
    row = {
        "id": 7,
        "entry_type": "track",
        "metadata_status": "pending",
        "artist_name": "Stereolab",
        "album_title": "Dots and Loops",
        "track_title": "Brakhage",
        "search_doc": "'stereolab':1A",  # an unknown column, as production sends
    }
    row.update(overrides)
    return row


@pytest.mark.parametrize(
    ("action", "overrides", "expected"),
    [
        ("INSERT", {}, None),
        ("CATCHUP", {}, None),
        ("UPDATE", {}, "not_insert"),
        ("DELETE", {}, "not_insert"),
        ("INSERT", {"entry_type": "talkset"}, "not_track"),
        ("INSERT", {"entry_type": None}, "not_track"),
        ("CATCHUP", {"metadata_status": "enriched_match"}, "not_pending"),
        ("INSERT", {"metadata_status": "enriching"}, "not_pending"),
        ("INSERT", {"id": "7"}, "bad_id"),
        ("INSERT", {"id": True}, "bad_id"),
        ("INSERT", {"id": None}, "bad_id"),
        ("INSERT", {"artist_name": None}, "blank_artist"),
        ("INSERT", {"artist_name": ""}, "blank_artist"),
        ("INSERT", {"artist_name": " \t\u3000 "}, "blank_artist"),
        ("INSERT", {"artist_name": 42}, "blank_artist"),
    ],
)
def test_candidate_filter(action: str, overrides: dict[str, Any], expected: str | None) -> None:
    decision = enrichment_candidate(action, track(**overrides))
    if expected is None:
        assert not isinstance(decision, str)
        assert decision.flowsheet_id == 7
        assert decision.key == LookupKey("Stereolab", "Dots and Loops", "Brakhage")
    else:
        assert decision == expected


@pytest.mark.parametrize(
    ("key", "raw_message", "album", "song"),
    [
        (
            LookupKey.of(" Björk ", "Homogenic", "Jóga"),
            "Björk - Homogenic - Jóga",
            "Homogenic",
            "Jóga",
        ),
        (
            LookupKey.of("坂本龍一", "  ", "Merry Christmas Mr. Lawrence"),
            "坂本龍一 - Merry Christmas Mr. Lawrence",
            None,
            "Merry Christmas Mr. Lawrence",
        ),
        (LookupKey.of('The "Band"', None, None), 'The "Band"', None, None),
        (LookupKey.of("Sade", "Diamond Life", ""), "Sade - Diamond Life", "Diamond Life", None),
    ],
)
def test_lookup_item(
    key: LookupKey | None, raw_message: str, album: str | None, song: str | None
) -> None:
    assert key is not None
    item = lookup_item(key)
    assert (item.artist, item.album, item.song) == (key.artist, album, song)
    assert item.raw_message == raw_message
    assert item.extended is True
    # Absent parts are left out of the wire body, not sent as null.
    body = item.model_dump(exclude_none=True)
    assert ("album" in body) is (album is not None)
    assert ("song" in body) is (song is not None)


def bulk(*results: dict[str, Any]) -> BulkLookupResponse:
    return BulkLookupResponse.model_validate({"results": list(results)})


def test_results_are_matched_by_index_not_position() -> None:
    response = bulk(
        {"index": 2, "status": "no_match", "lookup": {}},
        {"index": 0, "status": "match", "lookup": {}},
        {"index": 0, "status": "error", "lookup": None},  # a second answer for 0: ignored
        {"index": 9, "status": "match", "lookup": {}},  # not an item we sent
        {"index": -1, "status": "match", "lookup": {}},
    )
    answers = results_by_index(response, 3)
    assert [a.status if a else None for a in answers] == ["match", None, "no_match"]


ARTWORK = {
    "release_id": 1,
    "release_url": "https://www.discogs.com/release/1",
    "artwork_url": "https://i.discogs.com/a.jpg",
    "release_year": 1997,
}


def lookup(
    search_type: str = "direct", results: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    if results is None:
        results = [{"library_item": {"id": 12, "title": "Dots and Loops"}, "artwork": ARTWORK}]
    return {"results": results, "search_type": search_type, **extra}


def result(
    status: str = "match", lookup_body: dict[str, Any] | None = None, **extra: Any
) -> BulkLookupResult:
    return BulkLookupResult.model_validate(
        {"index": 0, "status": status, "lookup": lookup_body, **extra}
    )


KEY = LookupKey("Stereolab", "Dots and Loops", "Brakhage")


def degraded(status: str, reason: str | None, **extra: Any) -> BulkLookupResult:
    return result(status, lookup(degraded=True, degraded_reason=reason, **extra))


@pytest.mark.parametrize(
    ("answer", "kind", "reason"),
    [
        # Items LML did not answer: the row is not at fault, and nothing was said about it.
        (None, "not_a_verdict", "lml gave no answer for the item"),
        (result("error", None, message="boom"), "not_a_verdict", "lml item error: boom"),
        (result("error", None), "not_a_verdict", "lml item error: no message"),
        (result("match", None), "not_a_verdict", "lml answered match with a null lookup"),
        (result("no_match", None), "not_a_verdict", "lml answered no_match with a null lookup"),
        (result("shed_limiter_saturated", None), "not_a_verdict", "shed_limiter_saturated"),
        (result("shed_breaker_open", None), "not_a_verdict", "shed_breaker_open"),
        (result("shed_breaker_open", lookup()), "not_a_verdict", "shed_breaker_open"),
        # Every degraded answer, whatever its reason, with or without results.
        *(
            (degraded(status, reason, **shape), "not_a_verdict", f"degraded: {reason}")
            for reason in ("deadline_exceeded", "cache_only", "upstream_unavailable", "new_one")
            for status, shape in (("no_match", {"results": []}), ("match", {}))
        ),
        (degraded("no_match", None, results=[]), "not_a_verdict", "degraded: no reason given"),
        (result("no_match", lookup("none", [], timeout=True)), "not_a_verdict", "timeout"),
        # A timeout that still produced a trusted match is a match.
        (result("match", lookup(timeout=True)), "match", None),
        (result("match", lookup()), "match", None),
        (result("no_match", lookup("none", [])), "no_match", None),
        # LML's "match" is not enough: the result must pass our trust gate.
        (result("match", lookup("song_as_artist")), "no_match", None),
        # Trusted but without artwork: nothing to write, so no match.
        (
            result("match", lookup(results=[{"library_item": {"id": 3, "title": "x"}}])),
            "no_match",
            None,
        ),
    ],
)
def test_verdicts(answer: BulkLookupResult | None, kind: str, reason: str | None) -> None:
    verdict = verdict_for(answer, KEY)
    assert (verdict.kind, verdict.reason) == (kind, reason)
    assert verdict.row_fault is False
    if kind == "match":
        assert verdict.artwork is not None
        assert verdict.artwork.release_id == 1


OLD_HIT = {"results": [{"library_item": {"id": 12, "title": "Dots and Loops"}, "artwork": None}]}


@pytest.mark.parametrize(
    "answer",
    [
        result("match", OLD_HIT),
        result("no_match", {"results": [], "search_type": "none"}),
        result("match", lookup()),
    ],
)
def test_answers_of_an_lml_without_discogs_are_not_verdicts(answer: BulkLookupResult) -> None:
    verdict = verdict_for(answer, KEY, discogs_unavailable=True)
    assert (verdict.kind, verdict.reason, verdict.row_fault) == (
        "not_a_verdict",
        "lml reports discogs_api unavailable",
        False,
    )


@pytest.mark.parametrize(
    ("health", "down"),
    [
        ({"status": "ok", "services": {"discogs_api": "unavailable"}}, True),
        ({"status": "ok", "services": {"discogs_api": "ok"}}, False),
        ({"status": "ok", "discogs_breaker_state": "open"}, False),
        ({}, False),
    ],
)
def test_discogs_unavailable_reads_older_lmls_services(health: dict[str, Any], down: bool) -> None:
    assert discogs_unavailable(HealthResponse.model_validate(health)) is down


def test_an_answer_without_the_degraded_field_predates_it() -> None:
    old = bulk({"index": 0, "status": "no_match", "lookup": {"results": []}})
    current = bulk({"index": 0, "status": "no_match", "lookup": {"results": [], "degraded": False}})
    shed = bulk({"index": 0, "status": "shed_limiter_saturated", "lookup": None})
    assert predates_degraded(old)
    assert not predates_degraded(current)
    assert not predates_degraded(shed)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("Sigur Rós — Ágætis byrjun", "sigur ros agætis byrjun"),
        ("  AC/DC: 'Back in Black' ", "ac dc back in black"),
        ("Beyoncé", "BEYONCE"),
        ("ﬁre", "fire"),  # NFKD unfolds the ligature
        ("坂本龍一", "坂本龍一"),
        ("\uff26\uff55\uff4c\uff4c", "full"),  # fullwidth letters
    ],
)
def test_loose_title_equal(left: str, right: str) -> None:
    assert loose_title(left) == loose_title(right)


def test_loose_title_keeps_differences_that_matter() -> None:
    assert loose_title("Red") != loose_title("Red II")
    assert loose_title(None) == loose_title("") == loose_title(" -- ") == ""


def item(library_id: int, title: str | None, artwork: bool = True) -> dict[str, Any]:
    return {
        "library_item": {"id": library_id, "title": title},
        **({"artwork": {**ARTWORK, "release_id": library_id}} if artwork else {}),
    }


@pytest.mark.parametrize(
    ("search_type", "results", "album", "trusted_ids"),
    [
        ("direct", [item(5, "A"), item(6, "B")], "Z", [5, 6]),
        ("compilation", [item(5, "A")], None, [5]),
        ("song_as_artist", [item(0, "Homogenic")], "Homogenic", []),
        ("fallback", [item(0, "Homogénic!")], "homogenic", [0]),
        ("alternative", [item(0, "Homogenic"), item(0, "Homogenic")], "Homogenic", [0]),
        ("fallback", [item(9, "Homogenic")], "Homogenic", []),  # a library row: not id 0
        ("fallback", [item(0, "Post")], "Homogenic", []),
        ("fallback", [item(0, "")], "", []),  # nothing to compare with
        ("none", [item(0, "Homogenic")], None, []),
        ("fallback", [], "Homogenic", []),
    ],
)
def test_trust_gate(
    search_type: str, results: list[dict[str, Any]], album: str | None, trusted_ids: list[int]
) -> None:
    response = LookupResponse.model_validate({"results": results, "search_type": search_type})
    trusted = trusted_results(response, album)
    assert [r.library_item.id for r in trusted] == trusted_ids
    if search_type == "alternative":
        assert len(trusted) == 1  # only results[0] counts


def test_first_trusted_result_with_artwork_is_the_match() -> None:
    answer = result(
        "match", lookup(results=[item(4, "a", artwork=False), item(5, "b"), item(6, "c")])
    )
    verdict = verdict_for(answer, KEY)
    assert verdict.artwork is not None
    assert verdict.artwork.release_id == 5


def artwork(**overrides: Any) -> Artwork:
    return Artwork.model_validate(
        {
            "release_url": "https://www.discogs.com/release/9",
            "artwork_url": "https://i.discogs.com/9.jpg",
            "release_year": 1994,
            "artist_bio": "  A band.  ",
            "wikipedia_url": "https://en.wikipedia.org/wiki/Band",
            "spotify_url": "https://open.spotify.com/album/x",
            "apple_music_url": "https://music.apple.com/us/artist/1",
            "youtube_music_url": "https://music.youtube.com/channel/y",
            "bandcamp_url": "https://band.bandcamp.com",
            "soundcloud_url": None,
            **overrides,
        }
    )


def test_match_columns_map_lml_fields() -> None:
    columns = match_columns(artwork())
    assert list(columns) == list(RESULT_COLUMNS)
    assert columns == {
        "artwork_url": "https://i.discogs.com/9.jpg",
        "discogs_url": "https://www.discogs.com/release/9",
        "spotify_url": "https://open.spotify.com/album/x",
        "apple_music_url": "https://music.apple.com/us/artist/1",
        "youtube_music_url": "https://music.youtube.com/channel/y",
        "bandcamp_url": "https://band.bandcamp.com",
        "soundcloud_url": None,
        "artist_wikipedia_url": "https://en.wikipedia.org/wiki/Band",
        "release_year": 1994,
        "artist_bio": "A band.",
    }


@pytest.mark.parametrize(
    ("overrides", "column", "expected"),
    [
        ({"artwork_url": "https://s.discogs.com/images/spacer.gif"}, "artwork_url", None),
        ({"artwork_url": "https://st.discogs.com/x/images/SPACER.GIF?v=2"}, "artwork_url", None),
        ({"artwork_url": "  "}, "artwork_url", None),
        ({"release_year": 0}, "release_year", None),
        ({"release_year": 70000}, "release_year", None),
        ({"release_year": None}, "release_year", None),
        ({"release_url": None}, "discogs_url", None),
        ({"spotify_url": "https://x/" + "a" * MAX_URL_CHARS}, "spotify_url", None),
        ({"spotify_url": "https://open.spotify.com/artist/x"}, "spotify_url", None),
        ({"spotify_url": "https://www.deezer.com/album/1"}, "spotify_url", None),
        ({"apple_music_url": "https://tidal.com/browse/album/1"}, "apple_music_url", None),
        (
            {"artist_bio": "With [a=Tim Gane], [a8390436] and [url=https://x]Laetitia[/url]."},
            "artist_bio",
            "With Tim Gane and Laetitia.",
        ),
        ({"artist_bio": ""}, "artist_bio", None),
    ],
)
def test_match_columns_drop_unusable_values(
    overrides: dict[str, Any], column: str, expected: object
) -> None:
    assert match_columns(artwork(**overrides))[column] == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            LookupKey("Stereolab", "Dots and Loops", "Brakhage"),
            {
                "spotify_url": "https://open.spotify.com/search/Stereolab%20Brakhage",
                "youtube_music_url": "https://music.youtube.com/search?q=Stereolab%20Brakhage",
                "bandcamp_url": "https://bandcamp.com/search?q=Stereolab%20Dots%20and%20Loops",
                "soundcloud_url": "https://soundcloud.com/search?q=Stereolab%20Brakhage",
            },
        ),
        (
            LookupKey("Björk", "Post", None),
            {
                "spotify_url": "https://open.spotify.com/search/Bj%C3%B6rk%20Post",
                "youtube_music_url": "https://music.youtube.com/search?q=Bj%C3%B6rk%20Post",
                "bandcamp_url": "https://bandcamp.com/search?q=Bj%C3%B6rk%20Post",
                "soundcloud_url": "https://soundcloud.com/search?q=Bj%C3%B6rk",
            },
        ),
        (
            LookupKey('Guns N\' Roses & "Friends"', None, "Why?/#1"),
            {
                "spotify_url": "https://open.spotify.com/search/Guns%20N%27%20Roses%20%26%20%22Friends%22%20Why%3F%2F%231",
                "youtube_music_url": "https://music.youtube.com/search?q=Guns%20N%27%20Roses%20%26%20%22Friends%22%20Why%3F%2F%231",
                "bandcamp_url": "https://bandcamp.com/search?q=Guns%20N%27%20Roses%20%26%20%22Friends%22",
                "soundcloud_url": "https://soundcloud.com/search?q=Guns%20N%27%20Roses%20%26%20%22Friends%22%20Why%3F%2F%231",
            },
        ),
    ],
)
def test_search_urls(key: LookupKey, expected: dict[str, str]) -> None:
    assert search_columns(key) == expected


def test_search_urls_too_long_for_the_column_are_left_out() -> None:
    key = LookupKey("あ" * 40, None, "い" * 40)  # 9 characters each once encoded
    urls = search_columns(key)
    assert urls["spotify_url"] is None
    assert urls["soundcloud_url"] is None
    bandcamp = urls["bandcamp_url"]
    assert bandcamp is not None
    assert len(bandcamp) <= MAX_URL_CHARS


@pytest.mark.parametrize(
    ("credits", "expected"),
    [
        (
            {"names": [" Lennon ", "", "McCartney"], "provenance": "track"},
            ("Lennon; McCartney", "discogs_track"),
        ),
        ({"names": ["Björk"], "provenance": "release"}, ("Björk", "discogs_release")),
        ({"names": ["Someone"], "provenance": "lml-emulator"}, ("Someone", "discogs_release")),
        ({"names": ["  ", ""], "provenance": "track"}, ("The Artist", "artist_proxy")),
        ({"names": [], "provenance": "track"}, ("The Artist", "artist_proxy")),
        (None, ("The Artist", "artist_proxy")),
    ],
)
def test_composer(credits: dict[str, Any] | None, expected: tuple[str, str]) -> None:
    assert composer_credit(artwork(writer_credits=credits), "The Artist") == expected
    assert composer_credit(None, "The Artist") == ("The Artist", "artist_proxy")


def claimed(album_id: int | None = None) -> ClaimedRow:
    return ClaimedRow(7, CLAIMED_AT, album_id, "Stereolab", "Dots and Loops", "Brakhage")


@pytest.mark.parametrize("album_id", [None, 55])
def test_finalize_plans(album_id: int | None) -> None:
    match = finalize_plan(claimed(album_id), KEY, Verdict("match", artwork=artwork()))
    assert (match.status, match.fill_only, match.album_id) == ("enriched_match", False, album_id)
    assert match.columns["discogs_url"] == "https://www.discogs.com/release/9"
    assert (match.composer, match.composer_source) == ("Stereolab", "artist_proxy")
    assert match.enriching_since == CLAIMED_AT
    miss = finalize_plan(claimed(album_id), KEY, Verdict("no_match"))
    assert (miss.status, miss.fill_only) == ("enriched_no_match", True)
    assert set(miss.columns) == {
        "spotify_url",
        "youtube_music_url",
        "bandcamp_url",
        "soundcloud_url",
    }
    with pytest.raises(ValueError, match="not_a_verdict"):
        finalize_plan(claimed(album_id), KEY, Verdict("not_a_verdict", reason="timeout"))


@given(
    attempt=st.integers(min_value=-5, max_value=10_000),
    u=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    base=st.floats(min_value=0.001, max_value=1e4),
    cap=st.floats(min_value=0.0, max_value=1e7),
)
def test_backoff_is_jittered_then_capped(attempt: int, u: float, base: float, cap: float) -> None:
    policy = RetryPolicy(base_s=base, cap_s=cap)
    delay = policy.delay_s(attempt, lambda: u)
    assert 0.0 <= delay <= cap
    assert delay <= base * 2.0 ** min(max(attempt, 1) - 1, 64)


def test_backoff_doubles_and_hits_the_cap() -> None:
    policy = RetryPolicy(base_s=10, cap_s=100)
    assert [policy.delay_s(n, lambda: 0.5) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 80]
    assert policy.delay_s(6, lambda: 0.999) == 100
    assert policy.delay_s(1, lambda: 0.0) == 0


@pytest.mark.parametrize(
    ("attempts", "row_fault", "parks"),
    [(7, True, False), (8, True, True), (9, True, True), (8, False, False), (1000, False, False)],
)
def test_parking_counts_only_the_rows_own_failures(
    attempts: int, row_fault: bool, parks: bool
) -> None:
    assert RetryPolicy(max_attempts=8).parks(attempts, row_fault) is parks


def test_nul_characters_from_lml_are_dropped_before_they_reach_postgres() -> None:
    artwork = Artwork.model_validate(
        {
            "artist_bio": "Formed in\x00 London.",
            "writer_credits": {"names": ["Tim\x00 Gane", "\x00"], "provenance": "track"},
        }
    )
    assert match_columns(artwork)["artist_bio"] == "Formed in London."
    assert composer_credit(artwork, "Stereolab") == ("Tim Gane", "discogs_track")
