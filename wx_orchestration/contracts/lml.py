"""Typed shapes of the LML request and response bodies (DESIGN.md §3).

Every model ignores unknown keys: LML adds fields without notice and a new field must never turn a
good answer into an `invalid_response`. Free-text enumerations that LML is likely to grow (methods,
sources, degraded reasons, breaker states) are plain strings; only the values our rules branch on
are `Literal`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BULK_RESOLVE_PATH = "/api/v1/identity/bulk-resolve-libraries"
LOOKUP_BULK_PATH = "/api/v1/lookup/bulk"
LOOKUP_PATH = "/api/v1/lookup"
HEALTH_PATH = "/health"

MAX_BULK_RESOLVE_INPUTS = 1000
MAX_LOOKUP_BULK_ITEMS = 100
# A Retry-After is honoured up to this (`LML_RETRY_AFTER_CAP_S`): a misconfigured LML answering
# "come back tomorrow" must not stop enrichment for a day.
DEFAULT_LML_RETRY_AFTER_CAP_S = 300.0

_API_PREFIX = "/api/v1"


def normalize_lml_url(url: str) -> str:
    """`LIBRARY_METADATA_URL` as the station's client reads it: without a trailing `/api/v1`
    (with or without its slash) and without a trailing slash, since every path carries the
    prefix."""
    base = url.strip()
    if base.endswith(_API_PREFIX + "/"):
        base = base[: -len(_API_PREFIX) - 1]
    elif base.endswith(_API_PREFIX):
        base = base[: -len(_API_PREFIX)]
    return base.rstrip("/")


@dataclass(frozen=True)
class LookupCaller:
    """Who asks for lookups, labelled as the station's client labels its callers (`caller`
    and its traffic class, sent as `X-Caller-Reason` / `X-Caller-Class`), and whether the
    caller opts into release resolution outside the library (BS#1815: `/lookup/bulk` leaves it
    off unless asked, and albums outside the library then come back no-match)."""

    reason: str
    traffic_class: int
    release_resolution_fallback: bool

    def headers(self) -> dict[str, str]:
        return {"X-Caller-Class": str(self.traffic_class), "X-Caller-Reason": self.reason}

    def params(self) -> dict[str, str]:
        return (
            {"allow_release_resolution_fallback": "true"}
            if self.release_resolution_fallback
            else {}
        )


# The station's live worker and its flowsheet backfill. Both enrich the same plays, so both ask
# with the fallback: a backlog that asked without it would write no-match verdicts the live path
# would not (the station's flowsheet backfill uses `/lookup`, where the fallback is on).
LIVE_LOOKUPS = LookupCaller("enrichment-worker", 5, release_resolution_fallback=True)
BACKLOG_LOOKUPS = LookupCaller("flowsheet-metadata-backfill", 5, release_resolution_fallback=True)
# After a verdict, each pass asks under the name of the station job it replaces, with the
# fallback too: its verdicts must agree with the live path's.
NO_MATCH_RECHECK_LOOKUPS = LookupCaller(
    "flowsheet-no-match-recheck", 5, release_resolution_fallback=True
)
REENRICHMENT_LOOKUPS = LookupCaller("flowsheet-reenrichment", 5, release_resolution_fallback=True)
STREAMING_UPGRADE_LOOKUPS = LookupCaller(
    "streaming-url-upgrade", 5, release_resolution_fallback=True
)
# Each lane's caller unless a call names its own (identity bulk-resolves carry none).
CALLERS: dict[str, LookupCaller | None] = {
    "live": LIVE_LOOKUPS,
    "backlog": BACKLOG_LOOKUPS,
    "identity": None,
    "lifecycle": NO_MATCH_RECHECK_LOOKUPS,
}

ResolveKind = Literal["single_artist", "compilation", "unresolved"]
SearchType = Literal["direct", "fallback", "alternative", "compilation", "song_as_artist", "none"]
BulkLookupStatus = Literal[
    "match", "no_match", "error", "shed_limiter_saturated", "shed_breaker_open"
]
Confidence = Annotated[float, Field(ge=0.0, le=1.0)]


class LmlBody(BaseModel):
    model_config = ConfigDict(extra="ignore")


class BulkResolveInput(LmlBody):
    library_id: int
    # `library.artist_name` is nullable and the `artists` fallback can be missing too.
    artist_name: str | None
    album_title: str
    legacy_release_id: int


class BulkResolveRequest(LmlBody):
    inputs: list[BulkResolveInput]
    include_tracks: bool = False


class Provenance(LmlBody):
    # Catalog ids are strings in the contract, but numeric ids (Discogs, Apple Music) sometimes
    # arrive as JSON numbers; coercing keeps one stray number from failing a 1000-row batch.
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    source: str
    method: str
    confidence: Confidence | None = None
    external_id: str | None = None


class MainIdentity(LmlBody):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    discogs_artist_id: int | None = None
    musicbrainz_artist_id: str | None = None
    wikidata_qid: str | None = None
    spotify_artist_id: str | None = None
    apple_music_artist_id: str | None = None
    bandcamp_id: str | None = None


class BulkResolveTrack(LmlBody):
    """One per-track credit of a compilation. `artist_name`/`track_title` echo the
    `compilation_track_artist` row LML matched (the join key back to it); a null
    `resolved_artist_name` is a miss. Confidence is left unbounded here: one out-of-range value
    must cost only its own credit, not fail the whole batch."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    artist_name: str | None = None
    track_title: str | None = None
    track_position: str | None = None
    resolved_artist_name: str | None = None
    confidence: float | None = None


class BulkResolveResult(LmlBody):
    kind: ResolveKind
    library_id: int
    provenance: list[Provenance] = Field(default_factory=list)
    main: MainIdentity | None = None
    method: str | None = None
    confidence: Confidence | None = None
    tracks_attempted: bool | None = None
    tracks: list[BulkResolveTrack] | None = None

    @field_validator("provenance", mode="before")
    @classmethod
    def _null_provenance_is_empty(cls, value: object) -> object:
        return [] if value is None else value


class BulkResolveResponse(LmlBody):
    results: list[BulkResolveResult]
    cache_stats: dict[str, Any] | None = None
    tracks_contract_version: int | None = None


class LookupItem(LmlBody):
    artist: str
    album: str | None = None
    song: str | None = None
    raw_message: str | None = None
    extended: bool | None = None


class BulkLookupRequest(LmlBody):
    items: list[LookupItem]


class LibraryItem(LmlBody):
    # `id == 0` marks a result that is not a row of the station's library.
    id: int
    title: str | None = None
    artist: str | None = None


class WriterCredits(LmlBody):
    names: list[str]
    provenance: str


StreamingVerdict = Literal["verified", "unresolved", "absent"]


class StreamingStatus(LmlBody):
    """LML's verdict per streaming service (absent key: that service was not consulted)."""

    spotify: StreamingVerdict | None = None
    apple_music: StreamingVerdict | None = None
    bandcamp: StreamingVerdict | None = None


class Artwork(LmlBody):
    release_id: int | None = None
    release_url: str | None = None
    album: str | None = None
    artist: str | None = None
    artwork_url: str | None = None
    release_year: int | None = None
    artist_bio: str | None = None
    wikipedia_url: str | None = None
    spotify_url: str | None = None
    apple_music_url: str | None = None
    youtube_music_url: str | None = None
    bandcamp_url: str | None = None
    soundcloud_url: str | None = None
    writer_credits: WriterCredits | None = None
    streaming_status: StreamingStatus | None = None
    # The album record's extra fields: LML sends them when the item asks `extended: true`.
    discogs_artist_id: int | None = None
    label: str | None = None
    full_release_date: str | None = None
    genres: list[str] | None = None
    styles: list[str] | None = None
    tracklist: list[Any] | None = None
    artist_image_url: str | None = None
    profile_tokens: list[Any] | None = None


class LookupResult(LmlBody):
    library_item: LibraryItem
    artwork: Artwork | None = None


class LookupResponse(LmlBody):
    results: list[LookupResult] = Field(default_factory=list)
    search_type: SearchType = "none"
    degraded: bool = False
    degraded_reason: str | None = None
    timeout: bool = False


class BulkLookupResult(LmlBody):
    index: int
    status: BulkLookupStatus
    lookup: LookupResponse | None = None
    message: str | None = None


class BulkLookupResponse(LmlBody):
    results: list[BulkLookupResult]


class HealthResponse(LmlBody):
    status: str | None = None
    discogs_breaker_state: str | None = None
    # Older LMLs (February 2026) report upstreams here instead, e.g. {"discogs_api": "ok"}.
    services: dict[str, Any] | None = None
