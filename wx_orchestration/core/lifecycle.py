"""What comes after a verdict (issue #18): re-asking no-matches, upgrading search links, cohorts.
Pure: no I/O, no Dagster.

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

from wx_orchestration.core.enrichment import (
    Verdict,
    is_search_placeholder,
    match_columns,
)

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
    None."""

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


# --- cohorts ---------------------------------------------------------------------------------

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
