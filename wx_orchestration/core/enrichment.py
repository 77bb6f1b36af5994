"""Flowsheet enrichment rules (issue #5; DESIGN.md §3, §6). Pure: no I/O, no Dagster.

One function per rule, in the order a row meets them: is it a candidate, what LML item it
becomes, which bulk result is its answer, whether that answer is a verdict at all, which results
can be trusted, and what a match or a no-match writes. The retry policy for rows that go back to
`pending` is here too, so the fast path and the backlog back off alike.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, LiteralString
from urllib.parse import quote

from wx_orchestration.contracts.lml import (
    Artwork,
    BulkLookupResponse,
    BulkLookupResult,
    HealthResponse,
    LookupItem,
    LookupResponse,
    LookupResult,
)
from wx_orchestration.core.album_record import (
    album_record,
    artist_bio,
    artwork_url,
    guarded_streaming,
    release_year,
    url,
)
from wx_orchestration.core.album_record import text as _text
from wx_orchestration.core.streaming_urls import GUARDS

_SHED_STATUSES = frozenset({"shed_limiter_saturated", "shed_breaker_open"})
_ALWAYS_TRUSTED = frozenset({"direct", "compilation"})

IgnoreReason = Literal["not_insert", "not_track", "not_pending", "bad_id", "blank_artist"]
VerdictKind = Literal["match", "no_match", "not_a_verdict", "error"]
ComposerSource = Literal["discogs_track", "discogs_release", "artist_proxy"]
TerminalStatus = Literal["enriched_match", "enriched_no_match"]


# --- candidates and lookup items ------------------------------------------------------------


@dataclass(frozen=True)
class LookupKey:
    """What LML is asked about a row; rows with equal keys share one lookup."""

    artist: str
    album: str | None
    track: str | None

    @classmethod
    def of(cls, artist: object, album: object, track: object) -> LookupKey | None:
        """None when the artist is blank: such a row is never sent to LML."""
        name = _text(artist)
        return None if name is None else cls(name, _text(album), _text(track))


@dataclass(frozen=True)
class Candidate:
    flowsheet_id: int
    key: LookupKey


def enrichment_candidate(action: str, row: Mapping[str, Any]) -> Candidate | IgnoreReason:
    """A flowsheet event's row as an enrichment candidate, or why it is ignored.

    `action` is the stream action; a CATCHUP row counts like an INSERT (the bridge read it as it
    is now, so a row written while the listener was down still takes the fast path).
    """
    if action not in ("INSERT", "CATCHUP"):
        return "not_insert"
    if row.get("entry_type") != "track":
        return "not_track"
    if row.get("metadata_status") != "pending":
        return "not_pending"
    flowsheet_id = row.get("id")
    if not isinstance(flowsheet_id, int) or isinstance(flowsheet_id, bool):
        return "bad_id"
    key = LookupKey.of(row.get("artist_name"), row.get("album_title"), row.get("track_title"))
    if key is None:
        return "blank_artist"
    return Candidate(flowsheet_id, key)


def lookup_item(key: LookupKey) -> LookupItem:
    parts = [part for part in (key.artist, key.album, key.track) if part]
    return LookupItem(
        artist=key.artist,
        album=key.album,
        song=key.track,
        raw_message=" - ".join(parts),
        extended=True,
    )


def results_by_index(
    response: BulkLookupResponse, item_count: int
) -> list[BulkLookupResult | None]:
    """The answer for each item sent, matched by `index`; None where LML gave none.

    An index outside the items sent, or a second answer for an index, is not trusted.
    """
    answers: list[BulkLookupResult | None] = [None] * item_count
    for result in response.results:
        if 0 <= result.index < item_count and answers[result.index] is None:
            answers[result.index] = result
    return answers


# --- verdicts --------------------------------------------------------------------------------


def loose_title(text: str | None) -> str:
    """Decomposed, accents dropped, lower-case, non-alphanumerics as single spaces."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    kept = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    return " ".join("".join(ch if ch.isalnum() else " " for ch in kept).split())


def trusted_results(lookup: LookupResponse, requested_album: str | None) -> list[LookupResult]:
    """The results whose artwork may be written for the row (the trust gate)."""
    if lookup.search_type in _ALWAYS_TRUSTED:
        return list(lookup.results)
    if lookup.search_type == "song_as_artist" or not lookup.results:
        return []
    first = lookup.results[0]
    wanted = loose_title(requested_album)
    if first.library_item.id == 0 and wanted and loose_title(first.library_item.title) == wanted:
        return [first]
    return []


def first_match(results: Sequence[LookupResult]) -> Artwork | None:
    return next((result.artwork for result in results if result.artwork is not None), None)


@dataclass(frozen=True)
class Verdict:
    """`row_fault`: the failure is the row's own (the database rejected its values, its artist
    is blank), not LML's; only row faults count towards parking."""

    kind: VerdictKind
    artwork: Artwork | None = None
    reason: str | None = None
    row_fault: bool = False


def not_a_verdict_reason(
    result: BulkLookupResult | None, match: Artwork | None, *, discogs_unavailable: bool = False
) -> str | None:
    """Why an answer says nothing about the row (it goes back to `pending`, no fault), else None.

    Only what LML positively said is a verdict (DESIGN.md §6). A shed, a degraded search (any
    `degraded_reason`: a `deadline_exceeded` or `cache_only` answer with no results once wrote
    26k rows `enriched_no_match` for good) or an item LML did not answer is LML's state, not the
    record's. So is every answer of an older LML (no `degraded` field) whose health says Discogs
    is unavailable: it answers library hits with `artwork: null`.
    """
    if result is None:
        return "lml gave no answer for the item"
    if result.status in _SHED_STATUSES:
        return result.status
    if result.status == "error":
        return f"lml item error: {result.message or 'no message'}"
    lookup = result.lookup
    if lookup is None:
        return f"lml answered {result.status} with a null lookup"
    if lookup.degraded:
        return f"degraded: {lookup.degraded_reason or 'no reason given'}"
    if discogs_unavailable:
        return "lml reports discogs_api unavailable"
    if lookup.timeout and match is None:
        return "timeout"
    return None


def verdict_for(
    result: BulkLookupResult | None, key: LookupKey, *, discogs_unavailable: bool = False
) -> Verdict:
    """One row's verdict from its bulk result (None: LML sent no result for its index).
    `discogs_unavailable`: the answering LML's health says so (`discogs_unavailable`)."""
    lookup = result.lookup if result is not None else None
    match = first_match(trusted_results(lookup, key.album)) if lookup is not None else None
    reason = not_a_verdict_reason(result, match, discogs_unavailable=discogs_unavailable)
    if reason is not None:
        return Verdict("not_a_verdict", reason=reason)
    if match is not None:
        return Verdict("match", artwork=match)
    return Verdict("no_match")


def discogs_unavailable(health: HealthResponse) -> bool:
    """Whether an LML's health says Discogs is down (older LMLs: `services.discogs_api`)."""
    services = health.services or {}
    return services.get("discogs_api") == "unavailable"


def predates_degraded(response: BulkLookupResponse) -> bool:
    """Whether the answer comes from an LML older than the `degraded` field: its no-matches are
    verdicts only while its health says Discogs is available."""
    return any(
        result.lookup is not None and "degraded" not in result.lookup.model_fields_set
        for result in response.results
    )


# --- finalize plans --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedRow:
    """A row this process claimed (`pending` → `enriching`), as the claim returned it."""

    flowsheet_id: int
    enriching_since: datetime
    album_id: int | None
    artist_name: str | None
    album_title: str | None
    track_title: str | None
    attempts: int = 0  # earlier retries recorded for the row (drives the backoff)
    faults: int = 0  # of those, the row's own failures (drive parking)

    @property
    def key(self) -> LookupKey | None:
        return LookupKey.of(self.artist_name, self.album_title, self.track_title)


@dataclass(frozen=True)
class FinalizePlan:
    """What one claimed row's terminal write is.

    `columns` go on the flowsheet row when it is unlinked, into `album_metadata` for `album_id`
    when linked. `fill_only`: existing values win (no-match search URLs never replace a URL LML
    gave earlier).
    """

    flowsheet_id: int
    enriching_since: datetime
    status: TerminalStatus
    album_id: int | None
    columns: Mapping[str, Any]
    composer: str
    composer_source: ComposerSource
    fill_only: bool


def match_columns(artwork: Artwork) -> dict[str, Any]:
    """The 10 result columns of an unlinked match (on the flowsheet row), from LML's artwork."""
    urls, _ = guarded_streaming(artwork, GUARDS)
    return {
        "artwork_url": artwork_url(artwork.artwork_url),
        "discogs_url": url(artwork.release_url),
        **urls,
        "artist_wikipedia_url": url(artwork.wikipedia_url),
        "release_year": release_year(artwork.release_year),
        "artist_bio": artist_bio(artwork.artist_bio),
    }


def _search(template: str, *parts: str | None) -> str | None:
    query = " ".join(part for part in parts if part)
    return url(template + quote(query, safe=""))


# A no-match's search link per column: a placeholder, not a verified link. Any URL starting
# with one of these is treated as empty by every fill (a real link from LML replaces it) and is
# what the link upgrade looks for.
SEARCH_URL_PREFIXES: dict[str, LiteralString] = {
    "spotify_url": "https://open.spotify.com/search/",
    "youtube_music_url": "https://music.youtube.com/search?q=",
    "bandcamp_url": "https://bandcamp.com/search?q=",
    "soundcloud_url": "https://soundcloud.com/search?q=",
}


def is_search_placeholder(column: str, url: str | None) -> bool:
    prefix = SEARCH_URL_PREFIXES.get(column)
    return prefix is not None and url is not None and url.startswith(prefix)


def search_columns(key: LookupKey) -> dict[str, Any]:
    """The no-match search URLs; Apple Music has no search link (its URL comes only from LML)."""
    song_or_album = key.track or key.album
    parts = {
        "spotify_url": (key.artist, song_or_album),
        "youtube_music_url": (key.artist, song_or_album),
        "bandcamp_url": (key.artist, key.album),
        "soundcloud_url": (key.artist, key.track),
    }
    return {column: _search(SEARCH_URL_PREFIXES[column], *parts[column]) for column in parts}


def composer_credit(artwork: Artwork | None, artist: str) -> tuple[str, ComposerSource]:
    credits = artwork.writer_credits if artwork is not None else None
    if credits is not None:
        names = [name for raw in credits.names if (name := _text(raw))]
        if names:
            source: ComposerSource = (
                "discogs_track" if credits.provenance == "track" else "discogs_release"
            )
            return "; ".join(names), source
    return artist, "artist_proxy"


def finalize_plan(row: ClaimedRow, key: LookupKey, verdict: Verdict) -> FinalizePlan:
    """The terminal write for a `match` or `no_match` verdict: a linked match writes the whole
    album record (`core.album_record`), an unlinked one the row's 10 result columns."""
    if verdict.kind == "match" and verdict.artwork is not None:
        status: TerminalStatus = "enriched_match"
        fill_only = False
        if row.album_id is None:
            columns = match_columns(verdict.artwork)
        else:
            columns = album_record(verdict.artwork, search_columns(key), GUARDS)
    elif verdict.kind == "no_match":
        status, columns, fill_only = "enriched_no_match", search_columns(key), True
    else:
        raise ValueError(f"a {verdict.kind} verdict has no terminal write")
    composer, source = composer_credit(verdict.artwork, key.artist)
    return FinalizePlan(
        flowsheet_id=row.flowsheet_id,
        enriching_since=row.enriching_since,
        status=status,
        album_id=row.album_id,
        columns=columns,
        composer=composer,
        composer_source=source,
        fill_only=fill_only,
    )


# --- retries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for rows that go back to `pending`, and when a row is parked for a person.

    Only the row's own failures (`Verdict.row_fault`) count towards parking: a shed, degraded or
    unreachable LML says nothing about the row, so an outage of any length parks nothing.
    """

    base_s: float = 60.0
    cap_s: float = 6 * 3600.0
    max_attempts: int = 5

    def delay_s(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds before the `attempt`-th retry (1-based): full jitter, then the cap."""
        # Beyond 2**64 the product exceeds any cap; clamping keeps the float finite.
        exponent = min(max(attempt, 1) - 1, 64)
        return min(self.cap_s, rng() * self.base_s * 2.0**exponent)

    def parks(self, faults: int, row_fault: bool) -> bool:
        """Whether a row whose own failure this is, the `faults`-th, is parked instead of
        retried; failures that are not the row's (outages, shed, budget) never park it."""
        return row_fault and faults >= self.max_attempts
