"""Reconnecting through an outage: how long to wait, and what to say (once). Pure: no I/O.

A loop that retries a lost connection ten times a second fills the log during a database
outage and hammers a server that is starting up. `Outage` doubles the wait from `base_s` up to
`cap_s` and tells its caller when an outage starts and when it ends, so each is one log line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Outage:
    base_s: float = 0.1
    cap_s: float = 30.0
    failures: int = 0
    since: float | None = None  # monotonic time of the first failure

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, now: float) -> tuple[float, bool]:
        """Record a failure at `now`: the wait before the next try, and whether it is the first."""
        first = self.since is None
        if first:
            self.since = now
        delay = min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return delay, first

    def recovered(self, now: float) -> float | None:
        """Record a success: how long the outage lasted, or None if there was none."""
        since, self.since, self.failures = self.since, None, 0
        return None if since is None else now - since
