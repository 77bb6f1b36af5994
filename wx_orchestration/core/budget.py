"""The shared LML budget's arithmetic (DESIGN.md §6). Pure: the Redis side is `clients/lml_budget`.

A rate of `r` calls/s with a burst allowance of `b` calls is a token bucket: it holds at most `b`
calls' worth, refills at `r`, and a call takes one. It is kept as a GCRA "theoretical arrival
time" (one number per bucket), so a grant is one atomic comparison in Redis. The station's own
client keeps 50 calls saved (`LML_BURST`): a quiet budget answers a burst of plays at once.

Saved calls are spent in proportion to how full a call is (`Bucket.depth_for`): a call carrying
a full 100 items may draw the whole allowance, one carrying a single play only the last call's
worth. Under a steady stream of plays a caller therefore waits while plays gather, and calls get
fuller rather than more numerous, keeping the allowance for a real burst.

The live lane (the sidecar's fast path) keeps `live_reserve` of the rate, the burst and the
concurrency: batch lanes (`backlog`, `identity`, `lifecycle`) draw on both the shared bucket and
a bucket of their own holding only the rest, while live may use everything batch leaves unused.

The `lifecycle` lane (re-asks, link upgrades, cohort re-enrichment) is a batch lane that takes at
most `LIFECYCLE_SHARE` of the batch rate: each of its runs may make only the calls that share
buys over its schedule's interval (`lifecycle_calls`), so the backlog keeps the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LANES = ("live", "backlog", "identity", "lifecycle")
BATCH_LANES = frozenset({"backlog", "identity", "lifecycle"})
# Endpoint families share a budget: lookups draw on one, identity bulk-resolves on another.
FAMILIES = {"live": "lookup", "backlog": "lookup", "identity": "identity", "lifecycle": "lookup"}
DEFAULT_BURST = 50
LIFECYCLE_SHARE = 0.2


@dataclass(frozen=True)
class Bucket:
    """`burst` calls saved at most, refilled one per `interval_ms`."""

    interval_ms: float
    burst: int

    @classmethod
    def for_rate(cls, rate_per_second: float, burst: int) -> Bucket:
        if rate_per_second <= 0:
            raise ValueError("a rate must be positive")
        return cls(interval_ms=1000 / rate_per_second, burst=max(1, burst))

    def depth_for(self, fullness: float) -> int:
        """Saved calls a call may draw on when it carries `fullness` (0..1) of a full call:
        in proportion, at least one (so a lone play is never refused by a full bucket)."""
        share = min(max(fullness, 0.0), 1.0)
        return min(self.burst, max(1, math.ceil(self.burst * share - 1e-9)))

    def lead_allowed_ms(self, fullness: float) -> float:
        """How far the bucket's theoretical arrival time may stand ahead of now for a grant."""
        return (self.depth_for(fullness) - 1) * self.interval_ms


@dataclass(frozen=True)
class BudgetLimits:
    rate_per_second: float = 1.0
    max_concurrent: int = 5
    live_reserve: float = 0.5
    burst: int = DEFAULT_BURST

    def __post_init__(self) -> None:
        if not 0 <= self.live_reserve < 1:
            raise ValueError("live_reserve must be in [0, 1)")
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")

    @property
    def total(self) -> Bucket:
        return Bucket.for_rate(self.rate_per_second, self.burst)

    @property
    def batch(self) -> Bucket:
        share = 1 - self.live_reserve
        return Bucket.for_rate(self.rate_per_second * share, math.floor(self.burst * share))

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
