"""The shared LML budget's arithmetic (DESIGN.md §6). Pure: the Redis side is `clients/lml_budget`.

A rate of `r` calls/s is enforced as "at most `calls` grants in any sliding window of
`window_ms`", with `calls = max(1, floor(r))` and `window_ms = calls / r` plus a small jitter
allowance: bursts are at most one second's worth, and fractional rates (the default is 1/s, the
batch share 0.5/s) still work. The allowance covers the time between a grant and the call's
arrival at LML, which varies per call; without it LML can see one call too many in a second.

The live lane (the sidecar's fast path) keeps `live_reserve` of both the rate and the
concurrency: batch lanes (`backlog`, `identity`) together may use only the rest, while live may
use everything batch leaves unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LANES = ("live", "backlog", "identity")
JITTER_ALLOWANCE_MS = 100
BATCH_LANES = frozenset({"backlog", "identity"})
# Endpoint families share a budget: lookups draw on one, identity bulk-resolves on another.
FAMILIES = {"live": "lookup", "backlog": "lookup", "identity": "identity"}


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
