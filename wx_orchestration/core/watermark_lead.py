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
