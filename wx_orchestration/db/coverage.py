"""Which flowsheet days are fully enriched: the truth behind `flowsheet_enrichment`'s partitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import psycopg

from wx_orchestration.db.enrichment import UNFINISHED

_DAY_COVERAGE = f"""
SELECT (f.add_time AT TIME ZONE %(tz)s)::date AS day,
       count(*),
       count(*) FILTER (WHERE {UNFINISHED}),
       count(*) FILTER (WHERE f.metadata_status = 'enriched_match'),
       count(*) FILTER (WHERE f.metadata_status = 'enriched_no_match'),
       count(*) FILTER (WHERE f.metadata_status = 'failed_no_retry')
FROM flowsheet AS f
WHERE f.entry_type = 'track'
  AND f.add_time >= (%(first)s::date)::timestamp AT TIME ZONE %(tz)s
  AND f.add_time < ((%(last)s::date + 1)::timestamp) AT TIME ZONE %(tz)s
GROUP BY day
"""


@dataclass(frozen=True)
class DayCoverage:
    day: date
    track_rows: int
    unfinished: int
    matched: int
    no_match: int
    parked: int


def day_coverage(
    conn: psycopg.Connection, *, tz: str, first: date, last: date
) -> list[DayCoverage]:
    """Per station day in [first, last] that has track rows: how many, and how many unfinished."""
    rows = conn.execute(_DAY_COVERAGE, {"tz": tz, "first": first, "last": last}).fetchall()
    return sorted((DayCoverage(*row) for row in rows), key=lambda c: c.day)
