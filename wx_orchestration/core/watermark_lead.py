"""How far our writes may push the station's `Last-Modified` ahead of the clock. Pure.

Production's per-statement trigger sets `flowsheet_watermark.last_modified_at` to
`GREATEST(now(), last_modified_at + 1 s)` for every statement that writes `flowsheet`, even one
that changes no row, and the apps serve it as `Last-Modified`. Statements faster than one a
second push it ahead of the wall clock: a backlog drain claiming and finalizing twenty batches a
second would move it minutes ahead.

So our writers keep a watermark of their own statements (`flowsheet_write_pace`), moved by the
same rule, and a transaction waits until that one leaves room for its statements plus a second
for a DJ's insert. Pacing on our own share rather than on the station's watermark means a burst
of the station's own writes never stalls enrichment, and our share decays a second per second
whatever others do, so every wait is short and bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_LEAD_S = 5.0
# Room left for a station writer (a DJ's insert) landing right after our commit.
STATION_WRITERS_MARGIN_S = 1.0


@dataclass(frozen=True)
class LeadPolicy:
    """`max_lead_s` 0 turns pacing off (tests, one-off loads on a copy)."""

    max_lead_s: float = MAX_LEAD_S

    def wait_s(self, own_lead_s: float, statements: int) -> float:
        """Seconds to wait before a transaction of `statements` flowsheet statements, given how
        far our own statements' watermark is ahead of the clock."""
        if self.max_lead_s <= 0:
            return 0.0
        allowed = self.max_lead_s - STATION_WRITERS_MARGIN_S - statements
        return max(0.0, own_lead_s - allowed)


# A backlog batch is a claim, a finalize and a release: at most three of our statements.
_SECONDS_PER_BATCH = 3.0
# 5,000 rows: what a batch lane of about 17 calls/s looks up in three seconds.
MAX_BACKLOG_BATCH_CALLS = 50


def backlog_batch_rows(batch_calls_per_s: float, *, items_per_call: int, max_calls: int) -> int:
    """Rows a backlog run claims at a time: the LML calls its lane may make in the three
    seconds a batch costs the watermark (at least one call, at most `max_calls`). Smaller
    batches leave the budget idle while they wait for the watermark; larger ones hold claims
    longer."""
    calls = max(1, min(max_calls, math.ceil(batch_calls_per_s * _SECONDS_PER_BATCH)))
    return calls * items_per_call


def grown_batch(base_rows: int, rows_seen: int, lookups_seen: int) -> int:
    """`base_rows` grown by how many rows each lookup has served so far in the run (plays
    repeat; the run's cache answers the repeats), so a batch keeps its LML calls' worth of
    work, up to `MAX_BACKLOG_BATCH_CALLS` calls' worth of rows."""
    ratio = rows_seen / lookups_seen if lookups_seen else 1.0
    return max(base_rows, min(round(base_rows * ratio), MAX_BACKLOG_BATCH_CALLS * 100))
