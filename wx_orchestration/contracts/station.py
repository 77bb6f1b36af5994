"""Names from the station's tables that several parts of wx_orchestration share (DESIGN.md §2)."""

from __future__ import annotations

# The enrichment results, in table order: on `flowsheet` for unlinked rows, in
# `album_metadata` (keyed by album_id) for linked ones.
RESULT_COLUMNS = (
    "artwork_url",
    "discogs_url",
    "spotify_url",
    "apple_music_url",
    "youtube_music_url",
    "bandcamp_url",
    "soundcloud_url",
    "artist_wikipedia_url",
    "release_year",
    "artist_bio",
)
