"""Reconnecting through an outage: how long to wait, and what to say (once). Pure: no I/O.

A loop that retries a lost connection ten times a second fills the log during a database
outage and hammers a server that is starting up. `Outage` doubles the wait from `base_s` up to
`cap_s` and tells its caller when an outage starts and when it ends, so each is one log line.
A failure within `settle_s` of a recovery (connections the server cut during the outage,
found dead one by one as they are used) belongs to the same outage and says nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Outage:
    base_s: float = 0.1
    cap_s: float = 30.0
    settle_s: float = 5.0
    failures: int = 0
    since: float | None = None  # monotonic time of the first failure
    recovered_at: float | None = None
    announced: bool = False  # the start was reported, so the end will be

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, now: float) -> tuple[float, bool]:
        """Record a failure at `now`: the wait before the next try, and whether it is the first."""
        first = self.since is None and (
            self.recovered_at is None or now - self.recovered_at > self.settle_s
        )
        if self.since is None:
            self.since = now
        self.announced = self.announced or first
        delay = min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return delay, first

    def recovered(self, now: float) -> float | None:
        """Record a success: how long the outage lasted, or None if there was none to report
        (no failure, or an aftershock of one already reported as over)."""
        since, self.since, self.failures = self.since, None, 0
        announced, self.announced = self.announced, False
        if since is None:
            return None
        self.recovered_at = now
        return now - since if announced else None
