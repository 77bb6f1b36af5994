"""The shared LML budget's arithmetic (DESIGN.md §6). Pure: the Redis side is `clients/lml_budget`.

A rate of `r` calls/s is enforced as "at most `calls` grants in any sliding window of
`window_ms`", with `calls = max(1, floor(r))` and `window_ms = calls / r` plus a small jitter
allowance: bursts are at most one second's worth, and fractional rates (the default is 1/s, the
batch share 0.5/s) still work. The allowance covers the time between a grant and the call's
arrival at LML, which varies per call; without it LML can see one call too many in a second.

The live lane (the sidecar's fast path) keeps `live_reserve` of both the rate and the
concurrency: batch lanes (`backlog`, `identity`, `lifecycle`) together may use only the rest,
while live may use everything batch leaves unused.

The `lifecycle` lane (re-asks, link upgrades, cohort re-enrichment) is a batch lane that takes at
most `LIFECYCLE_SHARE` of the batch rate: each of its runs may make only the calls that share
buys over its schedule's interval (`lifecycle_calls`), so the backlog keeps the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LANES = ("live", "backlog", "identity", "lifecycle")
JITTER_ALLOWANCE_MS = 100
BATCH_LANES = frozenset({"backlog", "identity", "lifecycle"})
# Endpoint families share a budget: lookups draw on one, identity bulk-resolves on another.
FAMILIES = {"live": "lookup", "backlog": "lookup", "identity": "identity", "lifecycle": "lookup"}
LIFECYCLE_SHARE = 0.2


@dataclass(frozen=True)
class WindowLimit:
    calls: int
    window_ms: int

    @classmethod
    def for_rate(cls, rate_per_second: float) -> WindowLimit:
        if rate_per_second <= 0:
            raise ValueError("a rate must be positive")
        calls = max(1, math.floor(rate_per_second))
        window_ms = math.ceil(1000 * calls / rate_per_second) + JITTER_ALLOWANCE_MS
        return cls(calls=calls, window_ms=window_ms)


@dataclass(frozen=True)
class BudgetLimits:
    rate_per_second: float = 1.0
    max_concurrent: int = 5
    live_reserve: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.live_reserve < 1:
            raise ValueError("live_reserve must be in [0, 1)")
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")

    @property
    def total(self) -> WindowLimit:
        return WindowLimit.for_rate(self.rate_per_second)

    @property
    def batch(self) -> WindowLimit:
        return WindowLimit.for_rate(self.rate_per_second * (1 - self.live_reserve))

    @property
    def batch_concurrent(self) -> int:
        return max(1, math.floor(self.max_concurrent * (1 - self.live_reserve)))


def lane_family(lane: str) -> str:
    try:
        return FAMILIES[lane]
    except KeyError:
        raise ValueError(f"unknown LML lane {lane!r}; expected one of {', '.join(LANES)}") from None


def lifecycle_calls(limits: BudgetLimits, interval_s: float, share: float = LIFECYCLE_SHARE) -> int:
    """LML calls one lifecycle run may make when runs come every `interval_s`: `share` of the
    batch rate over the interval, at least one so that a tiny budget still makes progress."""
    if not 0 < share <= 1:
        raise ValueError("a lifecycle share must be in (0, 1]")
    batch_rate = limits.rate_per_second * (1 - limits.live_reserve)
    return max(1, math.floor(batch_rate * share * interval_s))
