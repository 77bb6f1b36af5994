"""What comes after a verdict (issue #18): re-asking no-matches, upgrading search links,
re-asking unresolved streaming verdicts, cohorts. Pure: no I/O, no Dagster.

A recurring pass walks its cohort newest play first, (add_time, id) descending, from a saved
cursor. Every run resumes below the last row the previous run read, whatever that row's answer
was; at the bottom the pass wraps to the top. So a row due for a re-ask is read within one pass
(at most cohort size / rows per run runs), a slice LML never answers costs each pass only its
own size, and nothing is re-read forever (the station's recheck re-read one window for weeks:
its ordering key moved only on a definitive answer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, LiteralString

from wx_orchestration.core.album_record import guarded_streaming, incoming_status
from wx_orchestration.core.enrichment import (
    LookupKey,
    Verdict,
    is_search_placeholder,
    match_columns,
    search_columns,
)
from wx_orchestration.core.streaming_urls import GUARDS

ReaskAction = Literal["match", "stamp", "leave"]


def reask_action(verdict: Verdict) -> ReaskAction:
    """A trusted match is written; a no-match (including a match the trust gate rejected) is a
    definitive answer and stamps the row; anything else says nothing about the row and leaves it
    due, unstamped (stamping a transient froze rows for a whole TTL at the station)."""
    if verdict.kind == "match":
        return "match"
    if verdict.kind == "no_match":
        return "stamp"
    return "leave"


@dataclass(frozen=True)
class PassCursor:
    """Where a pass stands: below (`add_time`, `flowsheet_id`), or at the top when both are
    None. The streaming re-ask walks albums: its cursor holds an album's (`updated_at`,
    `album_id`) in those two fields."""

    add_time: datetime | None = None
    flowsheet_id: int | None = None
    pass_number: int = 1
    pass_started_at: datetime | None = None
    passes_done: int = 0
    last_pass_s: float | None = None

    @property
    def at_top(self) -> bool:
        return self.add_time is None


def advanced(
    cursor: PassCursor, last_read: tuple[datetime, int] | None, *, page_full: bool, now: datetime
) -> PassCursor:
    """The cursor after a run read a page ending at `last_read` (None: read nothing).

    A short page means the pass reached the bottom: the next run starts a new pass at the top.
    """
    if page_full and last_read is not None:
        return replace(cursor, add_time=last_read[0], flowsheet_id=last_read[1])
    started = cursor.pass_started_at or now
    return PassCursor(
        pass_number=cursor.pass_number + 1,
        pass_started_at=now,
        passes_done=cursor.passes_done + 1,
        last_pass_s=(now - started).total_seconds(),
    )


def rows_per_run(calls: int, items_per_call: int) -> int:
    """Rows a run reads: what its calls can ask (rows with equal keys share one item, so this
    is a floor on what the calls cover)."""
    return max(1, calls * items_per_call)


def pass_runs(cohort_rows: int, rows_per_run_: int) -> int:
    """Runs one pass over `cohort_rows` takes at most."""
    return -(-cohort_rows // max(1, rows_per_run_))


# --- link upgrade ----------------------------------------------------------------------------

LINK_COLUMNS: tuple[LiteralString, ...] = (
    "spotify_url",
    "youtube_music_url",
    "bandcamp_url",
    "soundcloud_url",
)


def upgraded_links(current: Mapping[str, str | None], verdict: Verdict) -> dict[str, str]:
    """Column → verified link for each column that holds a search placeholder now and for which
    LML gave a real link. Verified links are never in the result; nor is anything when the
    answer is not a trusted match."""
    if verdict.kind != "match" or verdict.artwork is None:
        return {}
    offered = match_columns(verdict.artwork)
    upgrades: dict[str, str] = {}
    for column in LINK_COLUMNS:
        link = offered.get(column)
        if (
            is_search_placeholder(column, current.get(column))
            and isinstance(link, str)
            and not is_search_placeholder(column, link)
        ):
            upgrades[column] = link
    return upgrades


# --- streaming re-ask ------------------------------------------------------------------------
#
# The station's worker (`apps/enrichment-worker/streaming-reask.ts`, BS#1915) re-asks LML about
# every matched album (`artwork_url` or `discogs_url` set, the library row has an artist) that
# still holds an `unresolved` Spotify, Apple Music or Bandcamp verdict, or the frozen Bandcamp
# shape (no verdict, a `bandcamp.com/search` link), while `streaming_reask_attempts` is under
# the cap. It asks by the library's artist and title with no track. A definitive answer spends
# one attempt and bumps `updated_at`; an answer that is no answer (a shed, a degraded search,
# a failed call) spends nothing. Its spacing is its hourly tick; ours is the same `updated_at`
# it bumps, so one album is asked at most once per `retry_after`.

STREAMING_REASK_ATTEMPT_CAP = 3
# The album record's services with a verdict, spelt out as literals: SQL is composed from them.
STREAMING_SERVICES: tuple[LiteralString, ...] = ("spotify", "apple_music", "bandcamp")


def streaming_reask_key(artist_name: object, album_title: object) -> LookupKey | None:
    """What the re-ask asks about an album: no track, as the station's sweep asks."""
    return LookupKey.of(artist_name, album_title, None)


def streaming_changes(
    current: Mapping[str, str | None], verdict: Verdict, key: LookupKey
) -> dict[str, str] | None:
    """The streaming columns one album's answer changes, or None when the answer is not one:
    then nothing is written and no attempt is spent. An empty dict still spends the attempt
    (a no-match, or a match that settles nothing).

    Per service, only what LML positively said is written: a verified field is never touched;
    a verified verdict with a link the guard keeps replaces the link; `absent` yields only to
    `verified`; an `absent` or `unresolved` verdict changes the status and at most fills a
    missing Spotify or Bandcamp link with its search link, never replacing a link.
    """
    if verdict.kind == "no_match":
        return {}
    if verdict.kind != "match" or verdict.artwork is None:
        return None
    links, verdicts = guarded_streaming(verdict.artwork, GUARDS)
    search = search_columns(key)
    changes: dict[str, str] = {}
    for service in STREAMING_SERVICES:
        status_column, url_column = f"{service}_status", f"{service}_url"
        held = current.get(status_column)
        link = links[url_column]
        if is_search_placeholder(url_column, link):
            link = None  # a search page is what a service without a verdict gets, not a verdict
        incoming = incoming_status(verdicts[service], link)
        if held == "verified" or incoming is None:
            continue
        if incoming == "verified":
            # Verified with no link to keep would freeze a NULL link for good (BS#2350).
            if link is not None:
                changes[status_column], changes[url_column] = "verified", link
            continue
        if held == "absent":
            continue
        if incoming != held:
            changes[status_column] = incoming
        fallback = search.get(url_column)
        if current.get(url_column) is None and fallback is not None:
            changes[url_column] = fallback
    return changes


# --- cohorts ---------------------------------------------------------------------------------

# A cohort run's cursor is named after the cohort: `cohort:<name>`.
COHORT_CURSOR_PREFIX = "cohort:"
COHORT_STATUSES = ("enriched_match", "enriched_no_match", "failed_no_retry")
Linked = Literal["any", "linked", "unlinked"]


@dataclass(frozen=True)
class CohortSpec:
    """Which track rows a re-enrichment run takes. Every filter narrows; an `ids` list alone is
    a cohort too. Rows being enriched or still pending are never taken: they are owed a verdict
    by the live path already."""

    statuses: Sequence[str] = ("enriched_no_match",)
    linked: Linked = "any"
    added_from: datetime | None = None
    added_to: datetime | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None
    missing_artwork: bool = False
    ids: Sequence[int] = ()

    def __post_init__(self) -> None:
        unknown = set(self.statuses) - set(COHORT_STATUSES)
        if unknown or not self.statuses:
            raise ValueError(
                f"cohort statuses must be among {', '.join(COHORT_STATUSES)}; got "
                f"{', '.join(sorted(unknown)) or 'none'}"
            )
        for start, end, name in (
            (self.added_from, self.added_to, "add_time"),
            (self.updated_from, self.updated_to, "updated_at"),
        ):
            if start is not None and end is not None and start >= end:
                raise ValueError(f"the {name} window is empty ({start} >= {end})")

    def describe(self) -> dict[str, Any]:
        return {
            "statuses": list(self.statuses),
            "linked": self.linked,
            "add_time": [_iso(self.added_from), _iso(self.added_to)],
            "updated_at": [_iso(self.updated_from), _iso(self.updated_to)],
            "missing_artwork": self.missing_artwork,
            "ids": len(self.ids),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
