"""Where the bridge's catch-up starts, and when it replays a lost stream (DESIGN.md §2, §6).
Pure: the bridge reads the watermark, the clocks and the marks, and logs what the plan says.

A catch-up scans rows changed since the saved watermark minus an overlap: `updated_at` is the
transaction *start*, so a transaction committing now can carry a timestamp older than rows
already bridged. Without a watermark it scans the first-start lookback. A watermark ahead of
the database clock was saved by a version that trusted a notification's text (nothing real is
that new): it is ignored, and the scan covers the lookback before the database clock. A scan
never starts after the floor, the position a failed XADD or an abandoned scan left unbridged.
Rows sharing an `updated_at` come in no order, so a scan starts at a time, not at a row.

The stream itself can be lost: Redis restarted empty (or from an older snapshot), the stream
deleted or the database flushed. Entries a group had not finished — read but not yet written
and acknowledged, or not read at all — went with it, and they may be far older than the
watermark. The bridge knows how many entries the stream has had added at least (`entries-added`
of XINFO STREAM, Redis 7: as last seen plus its own XADDs) and saves that with the watermark, so
a bridge starting after the loss knows it too. When the stream reports fewer, or is missing or
empty at a first look, a replay is due; it happens only if a watermark says something was
bridged before. The replay reaches back to the oldest consumer mark
(`wx_orchestration.cdc_consumer_marks`: every row before it has its current version in that
group's table; the event log keeps one) minus the overlap: the mark passed rows that were
committed, and one whose transaction began before it and committed after carries an older
`updated_at`. Never further than the first-start lookback, though: a mark stuck on a row that
will never be logged (or left by a retired group; marks that have not moved within the lookback
are ignored) would otherwise have the replay push more rows through a stream capped at
`stream_maxlen` than it holds, trimming entries before anyone reads them. Without a mark, the
replay starts at that lookback too. A replay never starts later than the catch-up would have.
A row changed several times meanwhile is replayed as it is now: versions that existed only in
the lost stream cannot be read back. A group deleted on its own needs no replay: its consumers
recreate it at the start of the stream and read it all again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


def stream_lost(expected_added: int | None, added: int, *, first_look: bool) -> bool:
    """Whether the stream lost entries, so that the next catch-up is a replay.

    `expected_added` is what its `entries-added` should be at least (None: not known yet),
    `added` what it reports now (0: the stream is missing). With nothing expected, a first look
    can still tell a missing or empty stream; whether anything was bridged into it, the
    catch-up's plan checks (a watermark).
    """
    return (expected_added is not None and added < expected_added) or (first_look and added == 0)


@dataclass(frozen=True)
class GroupMark:
    """A consumer group's mark: the `updated_at` of its position, and when it last moved."""

    group: str
    position_at: datetime
    saved_at: datetime


@dataclass(frozen=True)
class CatchUpPlan:
    start: datetime  # the scan's first `updated_at`
    # It reaches back to the consumers' marks for what they lost with the stream.
    replay: bool
    # The saved watermark was ahead of the database clock, so it was not used.
    saved_ahead_of_clock: bool
    # Where the first-start lookback begins by the wall clock: a replay's furthest reach.
    lookback_from: datetime
    # Groups whose marks a replay ignored: they have not moved since `lookback_from`.
    stale_groups: tuple[str, ...] = ()
    # The oldest live mark, when it lay before `lookback_from` and the replay was cut there.
    cut_mark: GroupMark | None = None


def plan_catch_up(
    *,
    saved: datetime | None,
    db_now: datetime,
    now: datetime,
    lookback: timedelta,
    overlap: timedelta,
    floor: datetime | None,
    replay_due: bool,
    marks: Sequence[GroupMark],
) -> CatchUpPlan:
    """Where the next catch-up starts: `saved` is the watermark's `updated_at` (None: none
    saved), `floor` that of the lowest position left unbridged (None: none), `marks` the
    consumer groups' marks (read only when a replay is due)."""
    lookback_from = now - lookback
    ahead = saved is not None and saved > db_now
    if saved is None:
        start = lookback_from
    elif ahead:
        start = db_now - lookback
    else:
        start = saved - overlap
    if floor is not None and floor < start:
        start = floor
    if not replay_due or saved is None or ahead:
        return CatchUpPlan(start, False, ahead, lookback_from)
    stale = tuple(m.group for m in marks if m.saved_at < lookback_from)
    live = [m for m in marks if m.saved_at >= lookback_from]
    cut = None
    if not live:
        reach = lookback_from
    else:
        oldest = min(live, key=lambda m: m.position_at)
        reach = oldest.position_at - overlap
        if reach < lookback_from:
            cut = oldest
            reach = lookback_from
    return CatchUpPlan(min(start, reach), True, False, lookback_from, stale, cut)
