from __future__ import annotations

import pytest

from wx_orchestration.core.budget import (
    JITTER_ALLOWANCE_MS,
    BudgetLimits,
    WindowLimit,
    lane_family,
)


@pytest.mark.parametrize(
    ("rate", "calls", "window_ms"),
    [(1.0, 1, 1000), (0.5, 1, 2000), (8.0, 8, 1000), (2.5, 2, 800), (0.2, 1, 5000)],
)
def test_window_limit_keeps_bursts_within_one_seconds_worth(rate, calls, window_ms) -> None:
    limit = WindowLimit.for_rate(rate)
    assert (limit.calls, limit.window_ms) == (calls, window_ms + JITTER_ALLOWANCE_MS)


def test_defaults_reserve_half_for_live() -> None:
    limits = BudgetLimits()
    assert (limits.rate_per_second, limits.max_concurrent, limits.live_reserve) == (1.0, 5, 0.5)
    assert limits.batch.calls == 1
    assert limits.batch.window_ms == 2000 + JITTER_ALLOWANCE_MS
    assert limits.batch_concurrent == 2


@pytest.mark.parametrize("bad", [{"live_reserve": 1.0}, {"live_reserve": -0.1},
                                 {"max_concurrent": 0}])  # fmt: skip
def test_invalid_limits_are_refused(bad) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        BudgetLimits(**bad)


def test_lanes_map_to_endpoint_families() -> None:
    assert [lane_family(lane) for lane in ("live", "backlog", "identity")] == [
        "lookup", "lookup", "identity",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown LML lane"):
        lane_family("bulk")
