from __future__ import annotations

import pytest

from wx_orchestration.core.budget import Bucket, BudgetLimits, lane_family


@pytest.mark.parametrize(("rate", "interval_ms"), [(1.0, 1000), (0.5, 2000), (50 / 60, 1200)])
def test_a_bucket_refills_one_call_per_interval(rate, interval_ms) -> None:
    assert Bucket.for_rate(rate, 50).interval_ms == pytest.approx(interval_ms)


@pytest.mark.parametrize(
    ("fullness", "depth"), [(0.0, 1), (0.01, 1), (0.02, 1), (0.03, 2), (0.5, 25), (1.0, 50),
                            (1.5, 50)],
)  # fmt: skip
def test_calls_draw_on_the_saved_burst_in_proportion_to_fullness(fullness, depth) -> None:
    bucket = Bucket.for_rate(1.0, 50)
    assert bucket.depth_for(fullness) == depth
    assert bucket.lead_allowed_ms(fullness) == (depth - 1) * 1000


def test_defaults_save_the_station_clients_burst_and_reserve_half_for_live() -> None:
    limits = BudgetLimits()
    assert (limits.rate_per_second, limits.max_concurrent, limits.live_reserve) == (1.0, 5, 0.5)
    assert (limits.total.burst, limits.total.interval_ms) == (50, 1000)
    assert (limits.batch.burst, limits.batch.interval_ms) == (25, 2000)
    assert limits.batch_concurrent == 2


def test_a_burst_of_one_is_the_sustained_rate_alone() -> None:
    limits = BudgetLimits(rate_per_second=2, burst=1)
    assert limits.total.depth_for(1.0) == limits.batch.depth_for(1.0) == 1


@pytest.mark.parametrize("bad", [{"live_reserve": 1.0}, {"live_reserve": -0.1},
                                 {"max_concurrent": 0}, {"burst": 0}])  # fmt: skip
def test_invalid_limits_are_refused(bad) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        BudgetLimits(**bad)


def test_lanes_map_to_endpoint_families() -> None:
    assert [lane_family(lane) for lane in ("live", "backlog", "identity")] == [
        "lookup", "lookup", "identity",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown LML lane"):
        lane_family("bulk")
