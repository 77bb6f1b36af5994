"""The live feed's payload is the station's client-facing projection, plus `updated_at`.

The allow-list below is written down from the station's own code
(`CLIENT_FACING_FLOWSHEET_COLUMNS`, apps/backend/utils/flowsheet-projection.ts in
WXYC/Backend-Service) on purpose, not imported: a change to our projection must be a change to
this file too. The URL-guard and Discogs-unavailable cases are the station's own test cases
(tests/unit/apps/backend/utils/flowsheet-projection.test.ts).
"""

from __future__ import annotations

from typing import Any

import pytest

from wx_orchestration.core.live import project_row

STATION_ALLOW_LIST = {
    "id",
    "show_id",
    "album_id",
    "rotation_id",
    "entry_type",
    "artist_name",
    "album_title",
    "track_title",
    "track_position",
    "record_label",
    "label_id",
    "play_order",
    "request_flag",
    "segue",
    "message",
    "add_time",
    "radio_hour",
    "dj_name",
    "metadata_status",
    "artwork_url",
    "discogs_url",
    "release_year",
    "spotify_url",
    "apple_music_url",
    "youtube_music_url",
    "bandcamp_url",
    "soundcloud_url",
    "artist_bio",
    "artist_wikipedia_url",
}
# What our replay rule needs beyond it (the row version).
OURS = {"updated_at"}
# Internal columns of the real table (the station's INTERNAL_FLOWSHEET_COLUMNS fixture).
INTERNAL = {
    "search_doc",
    "enriching_since",
    "metadata_attempt_at",
    "no_match_recheck_attempted_at",
    "legacy_link_attempted_at",
    "linkage_source",
    "linkage_confidence",
    "linked_at",
    "composer",
    "composer_source",
    "legacy_entry_id",
    "legacy_release_id",
    "no_match_evidence",
}


def full_row(**overrides: Any) -> dict[str, Any]:
    """A flowsheet row with every production column, as `to_jsonb` renders it."""
    row: dict[str, Any] = {
        "id": 7,
        "show_id": 3,
        "album_id": None,
        "rotation_id": 12,
        "entry_type": "track",
        "artist_name": "Jessica Pratt",
        "album_title": "Quiet Signs",
        "track_title": "Fare Thee Well",
        "track_position": "A2",
        "record_label": "Mexican Summer",
        "label_id": 44,
        "play_order": 5,
        "request_flag": False,
        "segue": True,
        "message": None,
        "add_time": "2024-02-01T07:00:00.123456-05:00",
        "radio_hour": "2024-02-01T12:00:00+00:00",
        "dj_name": "DJ Ana",
        "metadata_status": "enriched_match",
        "artwork_url": "https://i.discogs.com/1.jpg",
        "discogs_url": "https://www.discogs.com/release/1",
        "release_year": 2019,
        "spotify_url": "https://open.spotify.com/album/1A2GTWGtFfWp7KSQTwWOyo",
        "apple_music_url": "https://music.apple.com/us/album/quiet-signs/1",
        "youtube_music_url": "https://music.youtube.com/browse/x",
        "bandcamp_url": "https://jessicapratt.bandcamp.com/album/quiet-signs",
        "soundcloud_url": "https://soundcloud.com/jessicapratt",
        "artist_bio": "A singer.",
        "artist_wikipedia_url": "https://en.wikipedia.org/wiki/Jessica_Pratt",
        "updated_at": "2024-02-01T12:00:01.654321+00:00",
    }
    row |= {column: "internal" for column in INTERNAL}
    return row | overrides


def test_the_payload_is_exactly_the_allow_list_plus_the_version() -> None:
    payload = project_row(full_row())
    assert set(payload) == STATION_ALLOW_LIST | OURS
    assert not set(payload) & INTERNAL


def test_client_columns_keep_their_values() -> None:
    row, payload = full_row(), project_row(full_row())
    for column in STATION_ALLOW_LIST - {"add_time", "radio_hour"}:
        assert payload[column] == row[column], column


def test_timestamps_are_milliseconds_and_the_version_keeps_microseconds() -> None:
    payload = project_row(full_row())
    assert payload["add_time"] == "2024-02-01T12:00:00.123Z"
    assert payload["radio_hour"] == "2024-02-01T12:00:00.000Z"
    assert payload["updated_at"] == "2024-02-01T12:00:01.654321Z"


@pytest.mark.parametrize(
    "url",
    [
        "https://www.deezer.com/album/254381182",
        "https://open.spotify.com.evil.example/album/1",
        "https://open.spotify.com/artist/7CaUk9xCxdXAmmqQn3PLR7",
        "https://open.spotify.com/track/1A2GTWGtFfWp7KSQTwWOyo",
        "https://open.spotify.com/album",
    ],
)
def test_a_spotify_url_that_is_not_a_release_is_shown_as_null(url: str) -> None:
    payload = project_row(full_row(spotify_url=url))
    assert payload["spotify_url"] is None
    assert payload["youtube_music_url"] == full_row()["youtube_music_url"]


@pytest.mark.parametrize(
    "url",
    [
        "https://open.spotify.com/album/1A2GTWGtFfWp7KSQTwWOyo",
        "https://open.spotify.com/intl-de/album/1A2GTWGtFfWp7KSQTwWOyo",
        "https://open.spotify.com/search/Cat%20Power%20Moon%20Pix",
    ],
)
def test_a_release_or_search_spotify_url_passes(url: str) -> None:
    assert project_row(full_row(spotify_url=url))["spotify_url"] == url


def test_apple_music_is_host_checked_only() -> None:
    assert project_row(full_row(apple_music_url="https://tidal.com/x"))["apple_music_url"] is None
    artist_page = "https://music.apple.com/us/artist/cat-power/12345"
    assert project_row(full_row(apple_music_url=artist_page))["apple_music_url"] == artist_page


def linked(flag: bool, note: str | None) -> dict[str, Any]:
    return {"discogs_unavailable": flag, "discogs_unavailable_note": note}


@pytest.mark.parametrize(
    ("library", "expected"),
    [
        (None, {}),
        (linked(False, None), {"discogsUnavailable": False}),
        (linked(True, None), {"discogsUnavailable": True}),
        (
            linked(True, "Embargoed promo pressing"),
            {"discogsUnavailable": True, "discogsUnavailableNote": "Embargoed promo pressing"},
        ),
    ],
)
def test_a_linked_row_carries_the_discogs_unavailable_fields(
    library: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    payload = project_row(full_row(album_id=42), library)
    assert {k: v for k, v in payload.items() if k.startswith("discogs") and k != "discogs_url"} == (
        expected
    )
    assert set(payload) == STATION_ALLOW_LIST | OURS | set(expected)


def test_an_unlinked_row_never_carries_them() -> None:
    payload = project_row(full_row(album_id=None), linked(True, "note"))
    assert "discogsUnavailable" not in payload
