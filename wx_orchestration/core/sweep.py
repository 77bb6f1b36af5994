"""Stale-sweep policy (issue #6). Pure: no I/O, no Dagster.

A claim older than the lease goes back to `pending`, counted as an attempt. It is the row's
fault (towards parking) only when its worker is gone: a worker that died on the row. A live one
that lost its database connection and could not finalize in time is not the row's doing
(`db.claim_locks` tells the two apart). At `max_attempts` faults the row is parked
(`failed_no_retry`) with its reason. How long the lease must be is `core.timing`'s rule.
"""

from __future__ import annotations

from dataclasses import dataclass

# Age buckets for pending rows the fast path missed: (label, upper bound in seconds).
AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("under_10m", 600),
    ("10m_to_1h", 3600),
    ("1h_to_1d", 86_400),
    ("1d_to_7d", 7 * 86_400),
    ("over_7d", float("inf")),
)


def claim_expiry_is_a_fault(*, worker_alive: bool) -> bool:
    return not worker_alive


def expired_claim_reason(lease_s: float, attempt: int, *, worker_alive: bool) -> str:
    worker = "its worker alive but unable to finalize" if worker_alive else "its worker gone"
    return (
        f"claim expired: still enriching after the {lease_s:g}s lease, {worker} (attempt {attempt})"
    )


@dataclass
class SweepReport:
    reset: int = 0
    parked: int = 0
    raced: int = 0  # finalized (or reset) by someone else between our read and our write
    missed: int = 0
    missed_by_age: dict[str, int] | None = None
    oldest_missed_age_s: float | None = None

    def as_metadata(self) -> dict[str, object]:
        return {
            "reset": self.reset,
            "parked": self.parked,
            "raced": self.raced,
            "missed": self.missed,
            "missed_by_age": self.missed_by_age or {},
            "oldest_missed_age_s": self.oldest_missed_age_s,
        }
