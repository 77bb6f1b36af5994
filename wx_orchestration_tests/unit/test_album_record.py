"""The album record's mapping from LML's artwork, and the station's streaming-URL guard."""

from __future__ import annotations

import pytest

from wx_orchestration.contracts.lml import Artwork
from wx_orchestration.core.album_record import (
    MAX_BIO_CHARS,
    album_record,
    artist_bio,
    bounded,
    clean_discogs_bio,
)
from wx_orchestration.core.streaming_urls import GUARDS, is_spotify_album_slot

SEARCH = {
    "spotify_url": "https://open.spotify.com/search/a",
    "youtube_music_url": "https://music.youtube.com/search?q=a",
    "bandcamp_url": "https://bandcamp.com/search?q=a",
    "soundcloud_url": "https://soundcloud.com/search?q=a",
}


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("[a=Stereolab] on [l=Duophonic]", "Stereolab on Duophonic"),
        ("See [r=Dots] and [m=Emperor]", "See Dots and Emperor"),
        ("Site: [url=https://x.example]here[/url].", "Site: here."),
        ("With Tim, [a8390436] and Lae", "With Tim and Lae"),
        ("  two   spaces  ", "two spaces"),
    ],
)
def test_discogs_markup_is_cleaned_like_the_station(raw: str, cleaned: str) -> None:
    assert clean_discogs_bio(raw) == cleaned


def test_a_huge_bio_is_bounded_at_a_word() -> None:
    bio = artist_bio("word " * 100_000)
    assert bio is not None
    assert len(bio) <= MAX_BIO_CHARS
    assert bio.endswith("word…")
    assert bounded("short", 10) == "short"


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://open.spotify.com/album/1A2GTWGtFfWp7KSQTwWOyo", True),
        ("https://open.spotify.com/intl-de/album/1A2GTWGtFfWp7KSQTwWOyo", True),
        ("https://open.spotify.com/search/Cat%20Power%20Moon%20Pix", True),
        ("https://open.spotify.com/artist/7CaUk9xCxdXAmmqQn3PLR7", False),
        ("https://open.spotify.com/track/1A2GTWGtFfWp7KSQTwWOyo", False),
        ("https://open.spotify.com/album", False),
        ("https://open.spotify.com.evil.example/album/1", False),
        ("https://spotify.com\\@evil.example/album/1", False),
        ("https://www.deezer.com/album/254381182", False),
        ("spotify:album:1", False),
    ],
)
def test_the_spotify_slot_holds_a_release_or_a_search(url: str, kept: bool) -> None:
    assert is_spotify_album_slot(url) is kept


def test_a_refused_link_loses_its_verdict_and_the_record_falls_back_to_search() -> None:
    artwork = Artwork.model_validate(
        {
            "spotify_url": "https://open.spotify.com/artist/x",
            "bandcamp_url": "https://music.sufjan.com/album/x",
            "youtube_music_url": "https://www.deezer.com/x",
            "streaming_status": {"spotify": "verified", "bandcamp": "verified"},
            "release_year": 0,
            "label": "L" * 300,
            "full_release_date": "sometime in the late nineteen-nineties, probably",
            "genres": ["Rock", " ", "Pop\x00"],
        }
    )
    record = album_record(artwork, SEARCH, GUARDS)
    assert (record["spotify_url"], record["spotify_status"]) == (None, None)
    assert record["spotify_search"] == SEARCH["spotify_url"]
    # A label's own storefront domain is a Bandcamp link the guard cannot refuse.
    assert record["bandcamp_status"] == "verified"
    assert record["youtube_music_url"] == SEARCH["youtube_music_url"]
    assert record["apple_music_status"] is None
    assert record["release_year"] is None
    assert len(record["label"]) == 255
    assert record["full_release_date"] is None
    assert record["genres"] == ["Rock", "Pop"]


def test_a_bare_link_from_an_older_lml_is_verified() -> None:
    artwork = Artwork.model_validate({"apple_music_url": "https://music.apple.com/us/album/x/1"})
    record = album_record(artwork, SEARCH, GUARDS)
    assert record["apple_music_status"] == "verified"
    assert record["bandcamp_status"] is None
