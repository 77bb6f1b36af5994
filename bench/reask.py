"""No-match re-ask coverage (issue #18): is every row of a 300,000-row no-match cohort re-asked
within one TTL at the configured budget share, without the lane ever exceeding its share?

Arithmetic first (calls a run may make, rows a run reads, runs a pass takes), then a simulation
of the schedule: a run every two hours for two TTLs, driving the real cursor rule
(`core.lifecycle.advanced`), the real allowance (`core.budget.lifecycle_calls`) and the
re-ask's due predicate, with a new-no-match inflow at the top of the order and a slice that LML
never answers (shed every time). No database: this is about the schedule, not the SQL; the SQL
of a page is what `test_lifecycle.py` runs.

`python -m bench reask`
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from wx_orchestration.contracts.lml import MAX_LOOKUP_BULK_ITEMS
from wx_orchestration.core.budget import LIFECYCLE_SHARE, BudgetLimits, lifecycle_calls
from wx_orchestration.core.lifecycle import PassCursor, advanced, pass_runs, rows_per_run
from wx_orchestration.defs.lifecycle.assets import PASS_INTERVAL_S

COHORT = 300_000
TTL_S = 30 * 86400.0
INFLOW_PER_DAY = 40  # the station's measured new no-matches a day (its recheck README)
STUCK_SHARE = 0.05  # rows LML sheds on every ask, newest first: the worst place for them
MATCH_RATE = 0.02  # a re-ask that now matches (leaves the cohort)
DAYS = 60


@dataclass
class Simulated:
    runs: int
    max_calls_in_a_run: int
    lane_calls_per_s: float
    first_pass_days: float
    worst_wait_days: float  # longest a row waited, once due, for its next ask
    never_asked: int  # answerable rows due for more than a TTL and never asked


def simulate(share: float, limits: BudgetLimits, seed: int = 7) -> Simulated:
    rng = np.random.default_rng(seed)
    allowance = lifecycle_calls(limits, PASS_INTERVAL_S, share)
    page = rows_per_run(allowance, MAX_LOOKUP_BULK_ITEMS)
    inflow_per_run = round(INFLOW_PER_DAY * PASS_INTERVAL_S / 86400)
    runs = int(DAYS * 86400 / PASS_INTERVAL_S)
    total = COHORT + inflow_per_run * runs
    # Rows by position in the pass order, newest first: new rows are prepended, so position
    # `n` of the arrays is the (total - 1 - n)-th row ever written. Index by write order.
    stamped = np.full(total, -np.inf)  # when the last definitive answer was (s); -inf: never
    due_since = np.zeros(total)  # when the row last became due
    in_cohort = np.zeros(total, dtype=bool)
    in_cohort[:COHORT] = True
    stuck = np.zeros(total, dtype=bool)
    stuck[COHORT - int(COHORT * STUCK_SHARE) : COHORT] = True  # the newest of the initial rows
    written = COHORT
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cursor = PassCursor(pass_started_at=start)
    cursor_pos = written  # rows with write order < cursor_pos are below the cursor
    worst_wait = 0.0
    first_pass_s: float | None = None
    max_calls = 0
    calls_total = 0
    for run in range(runs):
        now_s = run * PASS_INTERVAL_S
        now = start + timedelta(seconds=now_s)
        fresh = slice(written, written + inflow_per_run)
        in_cohort[fresh] = True
        due_since[fresh] = now_s
        stuck[fresh] = rng.random(inflow_per_run) < STUCK_SHARE
        written += inflow_per_run
        if cursor.at_top:
            cursor_pos = written
        due = in_cohort[:cursor_pos] & (stamped[:cursor_pos] <= now_s - TTL_S)
        # Newest first below the cursor: the highest write orders first.
        picked = np.flatnonzero(due)[::-1][:page]
        calls = math.ceil(len(picked) / MAX_LOOKUP_BULK_ITEMS)
        max_calls = max(max_calls, calls)
        calls_total += calls
        answered = picked[~stuck[picked]]
        # A row LML never answers has no wait to speak of: it is read once a pass, that is all.
        waits = now_s - np.maximum(due_since[answered], stamped[answered] + TTL_S)
        if len(waits):
            worst_wait = max(worst_wait, float(waits.max()))
        matched = answered[rng.random(len(answered)) < MATCH_RATE]
        stamped[answered] = now_s
        due_since[answered] = now_s + TTL_S
        in_cohort[matched] = False
        last = (now, int(picked[-1])) if len(picked) else None
        before = cursor.pass_number
        cursor = advanced(cursor, last, page_full=len(picked) == page, now=now)
        cursor_pos = int(picked[-1]) if not cursor.at_top and len(picked) else cursor_pos
        if cursor.pass_number != before and first_pass_s is None:
            first_pass_s = now_s + PASS_INTERVAL_S
    end_s = runs * PASS_INTERVAL_S
    pending = in_cohort[:written] & (stamped[:written] == -np.inf) & ~stuck[:written]
    never = int((pending & (due_since[:written] < end_s - TTL_S)).sum())
    return Simulated(
        runs=runs,
        max_calls_in_a_run=max_calls,
        lane_calls_per_s=calls_total / end_s,
        first_pass_days=(first_pass_s or math.inf) / 86400,
        worst_wait_days=worst_wait / 86400,
        never_asked=never,
    )


def arithmetic(share: float, limits: BudgetLimits) -> dict[str, float]:
    allowance = lifecycle_calls(limits, PASS_INTERVAL_S, share)
    per_run = rows_per_run(allowance, MAX_LOOKUP_BULK_ITEMS)
    runs = pass_runs(COHORT, per_run)
    batch_rate = limits.rate_per_second * (1 - limits.live_reserve)
    return {
        "share": share,
        "lane_rate_cap": batch_rate * share,
        "calls_per_run": allowance,
        "rows_per_run": per_run,
        "runs_per_pass": runs,
        "pass_days": runs * PASS_INTERVAL_S / 86400,
    }


def main() -> None:
    limits = BudgetLimits()  # LML_RATE_PER_SECOND=1, LML_LIVE_RESERVE=0.5: the defaults
    # The configured share, and the smallest share whose pass still fits in one TTL.
    needed = COHORT / (TTL_S / PASS_INTERVAL_S) / MAX_LOOKUP_BULK_ITEMS
    tight = math.ceil(needed * 1.2) / (limits.rate_per_second * 0.5 * PASS_INTERVAL_S)
    print(f"cohort {COHORT:,}, TTL {TTL_S / 86400:.0f} d, a run every {PASS_INTERVAL_S / 3600:g} h")
    header = (
        "| share | lane cap (calls/s) | calls/run | rows/run | runs/pass | pass (days) "
        "| sim: max calls in a run | sim: lane calls/s | sim: first pass (days) "
        "| sim: worst wait once due (days) | sim: rows due > 1 TTL, never asked |"
    )
    print(header)
    print("|" + "---|" * 11)
    for share in (LIFECYCLE_SHARE, round(tight, 4)):
        a = arithmetic(share, limits)
        s = simulate(share, limits)
        assert s.max_calls_in_a_run <= a["calls_per_run"]
        assert s.lane_calls_per_s <= a["lane_rate_cap"]
        assert s.worst_wait_days <= TTL_S / 86400
        assert s.never_asked == 0
        print(
            f"| {share:g} | {a['lane_rate_cap']:.4f} | {a['calls_per_run']:.0f} "
            f"| {a['rows_per_run']:,.0f} | {a['runs_per_pass']:.0f} | {a['pass_days']:.2f} "
            f"| {s.max_calls_in_a_run} | {s.lane_calls_per_s:.4f} | {s.first_pass_days:.2f} "
            f"| {s.worst_wait_days:.2f} | {s.never_asked} |"
        )


if __name__ == "__main__":
    main()
