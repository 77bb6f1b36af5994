"""When a failed sidecar role is restarted, and when the process gives up instead. Pure.

A role that fails is restarted after a backoff that doubles with each recent failure (full
jitter, so a fleet whose Redis came back does not retry in step). One that fails
`max_failures` times within `window_s` cannot stay up in this process: the sidecar exits
non-zero, and its own supervisor (systemd, Kubernetes, `wx up`) starts a fresh one.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestartPolicy:
    max_failures: int = 5
    window_s: float = 300.0
    base_s: float = 1.0
    cap_s: float = 30.0


@dataclass
class FailureWindow:
    """One role's recent failures."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> bool:
        """Count a failure at `now` (monotonic seconds); True when the role should give up."""
        self.times.append(now)
        while self.times and self.times[0] <= now - self.policy.window_s:
            self.times.popleft()
        return len(self.times) >= self.policy.max_failures

    def delay_s(self, rng: Callable[[], float] = random.random) -> float:
        """How long to wait before the next start, given the failures still in the window."""
        exponent = max(0, len(self.times) - 1)
        return rng() * min(self.policy.cap_s, self.policy.base_s * 2**exponent)
