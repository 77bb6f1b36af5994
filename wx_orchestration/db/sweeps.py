"""SQL of the stale sweep and of the operator's requeue, on index-only paths.

Every query on `flowsheet` repeats a partial index's whole predicate, so its cost follows the
number of claimed or pending rows, never the size of the flowsheet (bench/sweep_scale.py).
Connections carry `search_path = <station schema>, wx_orchestration`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from wx_orchestration.core.enrichment import RetryPolicy
from wx_orchestration.core.sweep import (
    AGE_BUCKETS,
    SweepReport,
    claim_expiry_is_a_fault,
    expired_claim_reason,
)
from wx_orchestration.db.claim_locks import CLAIM_HELD
from wx_orchestration.db.enrichment import Release, release_rows
from wx_orchestration.db.paced_writes import flowsheet_transaction

_STALE_CLAIMS = f"""
SELECT f.id, f.enriching_since, COALESCE(a.attempts, 0), COALESCE(a.faults, 0),
       {CLAIM_HELD} AS worker_alive
FROM flowsheet AS f
LEFT JOIN wx_orchestration.enrichment_attempts AS a ON a.flowsheet_id = f.id
WHERE f.metadata_status = 'enriching'
  AND f.enriching_since < now() - make_interval(secs => %(lease_s)s)
ORDER BY f.enriching_since
LIMIT %(limit)s
"""

# width_bucket over the bucket bounds: bucket i counts ages in [bound[i-1], bound[i]).
_MISSED = """
SELECT width_bucket(extract(epoch FROM now() - f.add_time), %(bounds)s::float8[]) AS bucket,
       count(*), max(extract(epoch FROM now() - f.add_time))
FROM flowsheet AS f
WHERE f.entry_type = 'track' AND f.artist_name IS NOT NULL
  AND f.metadata_status = 'pending'
  AND f.add_time < now() - make_interval(secs => %(grace_s)s)
GROUP BY bucket
"""

_STRANDED_COUNT = """
SELECT count(*) FROM flowsheet AS f
WHERE f.metadata_status = 'enriching'
  AND f.enriching_since < now() - make_interval(secs => %s)
"""


def expire_stale_claims(
    conn: psycopg.Connection,
    *,
    lease_s: float,
    policy: RetryPolicy,
    batch: int = 1000,
    rng: Callable[[], float] = random.random,
) -> SweepReport:
    """Return claims older than the lease to `pending` (or park them at the attempt cap).

    Compare-and-set on (`id`, `enriching_since` as read): a finalize that lands between our
    read and our write wins, and the row is counted as raced. `conn` must be autocommit: each
    batch is one short transaction.
    """
    report = SweepReport()
    while True:
        stale = conn.execute(_STALE_CLAIMS, {"lease_s": lease_s, "limit": batch}).fetchall()
        if not stale:
            return report
        releases = []
        for flowsheet_id, enriching_since, attempts, faults, worker_alive in stale:
            # Claims are never held through budget waits past the lease (README): an expired
            # one was abandoned by a worker that died on this row (the row's own failure), or
            # left by a live one that could not reach the database to finalize it (not).
            fault = claim_expiry_is_a_fault(worker_alive=worker_alive)
            releases.append(
                Release(
                    flowsheet_id=flowsheet_id,
                    enriching_since=enriching_since,
                    error=expired_claim_reason(lease_s, attempts + 1, worker_alive=worker_alive),
                    delay_s=policy.delay_s(attempts + 1, rng),
                    park=policy.parks(faults + 1, row_fault=fault),
                    fault=fault,
                )
            )
        with flowsheet_transaction(conn, statements=1):
            released = release_rows(conn, releases)
        report.reset += sum(1 for r in releases if r.flowsheet_id in released and not r.park)
        report.parked += sum(1 for r in releases if r.flowsheet_id in released and r.park)
        report.raced += len(releases) - len(released)
        if len(stale) < batch:
            return report


def count_missed_pending(conn: psycopg.Connection, report: SweepReport, *, grace_s: float) -> None:
    """Pending track rows older than the grace period (the fast path missed them)."""
    bounds = [upper for _, upper in AGE_BUCKETS[:-1]]
    by_age = dict.fromkeys((label for label, _ in AGE_BUCKETS), 0)
    oldest: float | None = None
    for bucket, count, max_age in conn.execute(_MISSED, {"bounds": bounds, "grace_s": grace_s}):
        by_age[AGE_BUCKETS[bucket][0]] = int(count)
        oldest = max(oldest or 0.0, float(max_age))
    report.missed = sum(by_age.values())
    report.missed_by_age = by_age
    report.oldest_missed_age_s = round(oldest, 1) if oldest is not None else None


def stranded_claims(conn: psycopg.Connection, *, lease_s: float) -> int:
    row = conn.execute(_STRANDED_COUNT, (lease_s,)).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class ParkedRow:
    flowsheet_id: int
    reason: str | None
    last_attempt_at: datetime | None


_PARKED = """
SELECT f.id, a.parked_reason, a.last_attempt_at
FROM flowsheet AS f
LEFT JOIN wx_orchestration.enrichment_attempts AS a ON a.flowsheet_id = f.id
WHERE f.metadata_status = 'failed_no_retry'
  AND (%(ids)s::int[] IS NULL OR f.id = ANY(%(ids)s))
  AND (%(reason)s::text IS NULL OR a.parked_reason ILIKE '%%' || %(reason)s || '%%')
ORDER BY f.id
"""

_REQUEUE = """
WITH requeued AS (
    UPDATE flowsheet AS f
    SET metadata_status = 'pending', enriching_since = NULL
    WHERE f.id = ANY(%s) AND f.metadata_status = 'failed_no_retry'
    RETURNING f.id
), forgotten AS (
    DELETE FROM wx_orchestration.enrichment_attempts AS a
    USING requeued WHERE a.flowsheet_id = requeued.id
)
SELECT id FROM requeued
"""


def parked_rows(
    conn: psycopg.Connection, *, ids: Sequence[int] | None, reason: str | None
) -> list[ParkedRow]:
    rows = conn.execute(
        _PARKED, {"ids": list(ids) if ids is not None else None, "reason": reason}
    ).fetchall()
    return [ParkedRow(*row) for row in rows]


def requeue(conn: psycopg.Connection, ids: Sequence[int]) -> list[int]:
    """`failed_no_retry` → `pending` with attempts reset, in one short transaction."""
    if not ids:
        return []
    with flowsheet_transaction(conn, statements=1):
        return [row[0] for row in conn.execute(_REQUEUE, (list(ids),)).fetchall()]
