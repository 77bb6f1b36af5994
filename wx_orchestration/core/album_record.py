"""The album record: what a linked match writes to `album_metadata`. Pure: no I/O.

The station's worker (`apps/enrichment-worker/enrich.ts`, `upsertMatchedAlbumMetadata`) fills
every column below from LML's `artwork`; we take the same fields, clean text the same way
(`cleanDiscogsBio`), and guard streaming URLs as its LML client does (`core.streaming_urls`).

Streaming links of Spotify, Apple Music and Bandcamp carry a verdict (`*_status`: `verified`,
`unresolved`, `absent`). The record holds this answer's verdict and URL; the merge with what the
row already holds (a verified link is never replaced, an absent one is only replaced by a
verified one) is one SQL statement over the live row (`db.enrichment`), so a concurrent writer
is never overwritten from a stale read. `*_search` are the fallbacks a non-verified Spotify or
Bandcamp link gets; Apple Music has none (its null means "no verified match").

Where we differ on purpose: text is bounded. The station writes a Discogs profile whole; a
400 KB one then rides every event of the row. `artist_bio` keeps its first `MAX_BIO_CHARS`
characters, and the other text fields their columns' widths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from wx_orchestration.contracts.lml import Artwork

MAX_BIO_CHARS = 16_000
MAX_URL_CHARS = 512
_LABEL_CHARS = 255  # album_metadata.label varchar(255)
_RELEASE_DATE_CHARS = 32  # album_metadata.full_release_date varchar(32)
_SMALLINT_MAX = 32767
_INT_MAX = 2**31 - 1
# Discogs serves this 1x1 image when a release has no cover: NULL, not an empty picture.
_SPACER_GIF = "spacer.gif"
STREAMING_VERDICT_SERVICES = ("spotify", "apple_music", "bandcamp")

_NAMED_TAG = re.compile(r"\[[alrm]=([^\]]+)\]")
_URL_TAG = re.compile(r"\[url=[^\]]+\]([^\[]*)\[/url\]")
_ID_TAG = re.compile(r",?\s*\[[alrm]\d+\]")
_SPACES = re.compile(r" +")


def text(value: object) -> str | None:
    """The trimmed string, or None when missing, not a string, or blank. NUL characters are
    dropped: PostgreSQL text cannot hold them, and one would fail a whole set-based write."""
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "").strip() or None


def bounded(value: str | None, limit: int) -> str | None:
    """At most `limit` characters, cut at a word where one is near, marked with an ellipsis."""
    if value is None or len(value) <= limit:
        return value
    head = value[: limit - 1]
    space = head.rfind(" ")
    if space > limit * 0.9:
        head = head[:space]
    return head.rstrip() + "…"


def clean_discogs_bio(bio: str) -> str:
    """Discogs markup as the apps should read it (the station's `cleanDiscogsBio`): `[a=Name]`
    keeps the name, `[url=…]text[/url]` the text, and id-only tags (`[a8390436]`) go."""
    cleaned = _NAMED_TAG.sub(r"\1", bio)
    cleaned = _URL_TAG.sub(r"\1", cleaned)
    cleaned = _ID_TAG.sub("", cleaned)
    return _SPACES.sub(" ", cleaned).strip()


def artist_bio(value: str | None) -> str | None:
    bio = text(value)
    return None if bio is None else bounded(text(clean_discogs_bio(bio)), MAX_BIO_CHARS)


def url(value: object) -> str | None:
    """A URL that fits its varchar(512) column; a longer one would fail a whole batch."""
    found = text(value)
    return found if found is not None and len(found) <= MAX_URL_CHARS else None


def artwork_url(value: object) -> str | None:
    found = url(value)
    if found is None or found.split("?", 1)[0].rsplit("/", 1)[-1].lower() == _SPACER_GIF:
        return None
    return found


def release_year(value: int | None) -> int | None:
    # Discogs says 0 for "unknown"; the apps would print it.
    return value if value is not None and 0 < value <= _SMALLINT_MAX else None


def guarded_streaming(
    artwork: Artwork, guards: Mapping[str, Callable[[object], bool]]
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """The five streaming URLs that pass their field's guard, and the explicit verdicts.

    A verdict goes with a URL the guard refused: kept, a stale `verified` would freeze a
    NULL link for good (the station's BS#2350).
    """
    status = artwork.streaming_status
    verdicts: dict[str, str | None] = {
        service: getattr(status, service) if status is not None else None
        for service in STREAMING_VERDICT_SERVICES
    }
    urls: dict[str, str | None] = {}
    for column, guard in guards.items():
        found = url(getattr(artwork, column))
        if found is not None and not guard(found):
            found = None
            service = column.removesuffix("_url")
            if service in verdicts:
                verdicts[service] = None
        urls[column] = found
    return urls, verdicts


def incoming_status(explicit: str | None, link: str | None) -> str | None:
    """This answer's verdict for a service: LML's own when it gave one, `verified` for a bare
    link (older LMLs send no verdicts), else none — never a guess."""
    if explicit is not None:
        return explicit
    return "verified" if link is not None else None


def _strings(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [kept for value in values if (kept := text(value)) is not None]


def _int4(value: int | None) -> int | None:
    return value if value is not None and 0 < value <= _INT_MAX else None


def album_record(
    artwork: Artwork,
    search: Mapping[str, str | None],
    guards: Mapping[str, Callable[[object], bool]],
) -> dict[str, Any]:
    """Every `album_metadata` column a linked match writes, plus the `*_search` fallbacks the
    merge needs. `search` is the no-match search URLs of the row (`core.enrichment`)."""
    urls, verdicts = guarded_streaming(artwork, guards)
    record: dict[str, Any] = {
        "artwork_url": artwork_url(artwork.artwork_url),
        "discogs_url": url(artwork.release_url),
        "spotify_url": urls["spotify_url"],
        "apple_music_url": urls["apple_music_url"],
        "youtube_music_url": urls["youtube_music_url"] or search.get("youtube_music_url"),
        "bandcamp_url": urls["bandcamp_url"],
        "soundcloud_url": urls["soundcloud_url"] or search.get("soundcloud_url"),
        "artist_wikipedia_url": url(artwork.wikipedia_url),
        "release_year": release_year(artwork.release_year),
        "artist_bio": artist_bio(artwork.artist_bio),
        "discogs_artist_id": _int4(artwork.discogs_artist_id),
        "label": bounded(text(artwork.label), _LABEL_CHARS),
        "full_release_date": _fits(text(artwork.full_release_date), _RELEASE_DATE_CHARS),
        "genres": _strings(artwork.genres),
        "styles": _strings(artwork.styles),
        "tracklist": artwork.tracklist,
        "artist_image_url": url(artwork.artist_image_url),
        "bio_tokens": artwork.profile_tokens,
        "spotify_search": search.get("spotify_url"),
        "bandcamp_search": search.get("bandcamp_url"),
    }
    for service in STREAMING_VERDICT_SERVICES:
        record[f"{service}_status"] = incoming_status(verdicts[service], urls[f"{service}_url"])
    return record


def _fits(value: str | None, limit: int) -> str | None:
    # A date cut short is a wrong date: dropped instead.
    return value if value is not None and len(value) <= limit else None
