"""The replay planner's table of cases: when the bridge's stream counts as lost, and where its
next catch-up starts (`core/replay_plan.py`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from wx_orchestration.core.replay_plan import CatchUpPlan, GroupMark, plan_catch_up, stream_lost

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
# The database's clock runs a little ahead of ours, so the two can be told apart.
DB_NOW = NOW + timedelta(seconds=30)
LOOKBACK = timedelta(hours=24)
OVERLAP = timedelta(seconds=5)
BOUND = NOW - LOOKBACK  # where the first-start lookback begins by the wall clock
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("expected_added", "added", "first_look", "lost"),
    [
        pytest.param(10, 12, False, False, id="intact"),
        pytest.param(10, 10, True, False, id="intact-at-first-look"),
        pytest.param(10, 3, False, True, id="shrunk"),
        pytest.param(10, 3, True, True, id="shrunk-at-first-look"),
        pytest.param(10, 0, False, True, id="missing-while-entries-expected"),
        pytest.param(None, 0, True, True, id="missing-at-first-look-nothing-saved"),
        pytest.param(0, 0, True, True, id="empty-at-first-look-count-saved-zero"),
        pytest.param(None, 0, False, False, id="missing-later-nothing-expected"),
        pytest.param(None, 5, True, False, id="not-empty-at-first-look-nothing-saved"),
    ],
)
def test_a_stream_is_lost_when_it_added_fewer_entries_than_it_had(
    expected_added: int | None, added: int, first_look: bool, lost: bool
) -> None:
    assert stream_lost(expected_added, added, first_look=first_look) is lost


def live(group: str, position_at: datetime) -> GroupMark:
    return GroupMark(group, position_at, NOW - timedelta(minutes=1))


def stale(group: str, position_at: datetime) -> GroupMark:
    return GroupMark(group, position_at, NOW - 2 * DAY)


def catch_up(
    start: datetime,
    *,
    replay: bool = False,
    ahead: bool = False,
    stale_groups: tuple[str, ...] = (),
    cut: GroupMark | None = None,
) -> CatchUpPlan:
    return CatchUpPlan(start, replay, ahead, BOUND, stale_groups, cut)


@pytest.mark.parametrize(
    ("given", "planned"),
    [
        # --- an ordinary catch-up ---
        pytest.param({}, catch_up(BOUND), id="no-watermark-scans-the-lookback"),
        pytest.param(
            {"saved": NOW - HOUR}, catch_up(NOW - HOUR - OVERLAP), id="watermark-minus-overlap"
        ),
        pytest.param(
            {"saved": DB_NOW}, catch_up(DB_NOW - OVERLAP), id="watermark-at-db-clock-is-trusted"
        ),
        pytest.param(
            {"saved": DB_NOW + HOUR},
            catch_up(DB_NOW - LOOKBACK, ahead=True),
            id="watermark-ahead-of-db-clock-ignored-lookback-by-db-clock",
        ),
        pytest.param(
            {"saved": NOW - HOUR, "floor": NOW - 2 * HOUR},
            catch_up(NOW - 2 * HOUR),
            id="floor-lower-than-start",
        ),
        pytest.param(
            {"saved": NOW - HOUR, "floor": NOW - HOUR},
            catch_up(NOW - HOUR - OVERLAP),
            id="floor-within-the-overlap-changes-nothing",
        ),
        pytest.param(
            {"floor": NOW - 30 * HOUR}, catch_up(NOW - 30 * HOUR), id="floor-before-the-lookback"
        ),
        pytest.param(
            {"saved": NOW - HOUR, "marks": [stale("retired", NOW - 9 * HOUR)]},
            catch_up(NOW - HOUR - OVERLAP),
            id="no-replay-due-marks-play-no-part",
        ),
        # --- a replay is due, but nothing says anything was bridged before ---
        pytest.param(
            {"replay_due": True, "marks": [live("eventlog", NOW - 3 * HOUR)]},
            catch_up(BOUND),
            id="empty-first-look-without-watermark-is-no-replay",
        ),
        pytest.param(
            {"replay_due": True, "saved": DB_NOW + HOUR, "marks": [live("eventlog", NOW - HOUR)]},
            catch_up(DB_NOW - LOOKBACK, ahead=True),
            id="watermark-ahead-of-db-clock-is-no-replay",
        ),
        # --- a replay ---
        pytest.param(
            {"replay_due": True, "saved": NOW - HOUR},
            catch_up(BOUND, replay=True),
            id="replay-without-marks-to-the-lookback",
        ),
        pytest.param(
            {"replay_due": True, "saved": NOW - HOUR, "marks": [live("eventlog", NOW - 3 * HOUR)]},
            catch_up(NOW - 3 * HOUR - OVERLAP, replay=True),
            id="replay-to-a-live-mark-minus-overlap",
        ),
        pytest.param(
            {
                "replay_due": True,
                "saved": NOW - HOUR,
                "marks": [live("eventlog", NOW - 5 * HOUR), live("enrich", NOW - 2 * HOUR)],
            },
            catch_up(NOW - 5 * HOUR - OVERLAP, replay=True),
            id="replay-to-the-oldest-live-mark",
        ),
        pytest.param(
            {
                "replay_due": True,
                "saved": NOW - HOUR,
                "marks": [stale("retired", NOW - 9 * HOUR), live("eventlog", NOW - 3 * HOUR)],
            },
            catch_up(NOW - 3 * HOUR - OVERLAP, replay=True, stale_groups=("retired",)),
            id="stale-mark-ignored",
        ),
        pytest.param(
            {"replay_due": True, "saved": NOW - HOUR, "marks": [stale("retired", NOW - 9 * HOUR)]},
            catch_up(BOUND, replay=True, stale_groups=("retired",)),
            id="only-stale-marks-to-the-lookback",
        ),
        pytest.param(
            {
                "replay_due": True,
                "saved": NOW - HOUR,
                "marks": [GroupMark("eventlog", NOW - 3 * HOUR, BOUND)],
            },
            catch_up(NOW - 3 * HOUR - OVERLAP, replay=True),
            id="mark-moved-right-at-the-bound-is-live",
        ),
        pytest.param(
            {"replay_due": True, "saved": NOW - HOUR, "marks": [live("eventlog", NOW - 3 * DAY)]},
            catch_up(BOUND, replay=True, cut=live("eventlog", NOW - 3 * DAY)),
            id="mark-older-than-lookback-cut-to-lookback",
        ),
        pytest.param(
            {
                "replay_due": True,
                "saved": NOW - HOUR,
                "marks": [live("eventlog", BOUND + timedelta(seconds=2))],
            },
            catch_up(BOUND, replay=True, cut=live("eventlog", BOUND + timedelta(seconds=2))),
            id="mark-inside-lookback-but-overlap-reaches-past-it-cut",
        ),
        pytest.param(
            {"replay_due": True, "saved": NOW - HOUR, "marks": [live("eventlog", NOW)]},
            catch_up(NOW - HOUR - OVERLAP, replay=True),
            id="replay-never-starts-later-than-the-normal-start",
        ),
        pytest.param(
            {
                "replay_due": True,
                "saved": NOW - HOUR,
                "floor": NOW - 20 * HOUR,
                "marks": [live("eventlog", NOW - 3 * HOUR)],
            },
            catch_up(NOW - 20 * HOUR, replay=True),
            id="replay-from-a-floor-below-the-mark",
        ),
        pytest.param(
            {
                "replay_due": True,
                "saved": NOW - HOUR,
                "floor": NOW - 30 * HOUR,
                "marks": [live("eventlog", NOW - 3 * DAY)],
            },
            catch_up(NOW - 30 * HOUR, replay=True, cut=live("eventlog", NOW - 3 * DAY)),
            id="floor-before-the-lookback-outranks-the-cut",
        ),
    ],
)
def test_where_a_catch_up_starts(given: dict[str, Any], planned: CatchUpPlan) -> None:
    inputs: dict[str, Any] = {
        "saved": None,
        "db_now": DB_NOW,
        "now": NOW,
        "lookback": LOOKBACK,
        "overlap": OVERLAP,
        "floor": None,
        "replay_due": False,
        "marks": [],
    }
    assert plan_catch_up(**(inputs | given)) == planned
