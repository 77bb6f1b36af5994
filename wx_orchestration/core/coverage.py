"""Which station days the coverage sensor records as enriched, and what it remembers.

A day is recorded once it is over and none of its track rows is still owed a verdict. The
first pass covers the whole history; later passes re-read only the last few days (late rows,
rows still in backoff), because an older day that gets work again is drained by a backlog run,
and that run's materialization is the record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Self

RECHECK_DAYS = 3
MAX_DAYS_PER_PASS = 5000


@dataclass
class CoverageCursor:
    through: date | None = None
    recorded: set[date] = field(default_factory=set)

    @classmethod
    def parse(cls, raw: str | None) -> Self:
        try:
            data = json.loads(raw or "{}")
            through = data.get("through")
            return cls(
                date.fromisoformat(through) if through else None,
                {date.fromisoformat(d) for d in data.get("recorded", [])},
            )
        except (ValueError, TypeError, AttributeError):
            # An unreadable cursor costs one full pass; recording a day twice is harmless.
            return cls()

    def dump(self) -> str:
        return json.dumps(
            {
                "through": self.through.isoformat() if self.through else None,
                "recorded": sorted(d.isoformat() for d in self.recorded),
            },
            separators=(",", ":"),
        )


def pass_window(cursor: CoverageCursor, *, first_day: date, yesterday: date) -> tuple[date, date]:
    """The days this pass reads: from a few days before where the last pass ended (or the
    first partition), through yesterday, at most MAX_DAYS_PER_PASS of them."""
    start = first_day if cursor.through is None else cursor.through - timedelta(RECHECK_DAYS)
    start = max(start, first_day)
    return start, min(yesterday, start + timedelta(MAX_DAYS_PER_PASS - 1))


def days_to_record(
    cursor: CoverageCursor, start: date, end: date, unfinished: dict[date, int]
) -> list[date]:
    """Days in [start, end] with nothing unfinished (no track rows at all counts as done) that
    this cursor has not recorded; advances the cursor past them."""
    days = []
    day = start
    while day <= end:
        if unfinished.get(day, 0) == 0 and day not in cursor.recorded:
            days.append(day)
        day += timedelta(1)
    cursor.recorded = {
        d for d in cursor.recorded | set(days) if d > end - timedelta(RECHECK_DAYS + 1)
    }
    cursor.through = end
    return days
