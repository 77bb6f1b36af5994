"""A separate process hammering LML through the shared budget (used by the budget tests).

python -m wx_orchestration_tests.budget_worker REDIS_URL LML_URL LANE SECONDS RATE RESERVE BURST
Prints one JSON line: {"lane", "calls", "errors", "fallback_grants"}.
"""

from __future__ import annotations

import json
import sys
import time

import redis

from wx_orchestration.clients.lml import LmlClient, LmlError
from wx_orchestration.clients.lml_budget import BudgetedLml, LmlBudget
from wx_orchestration.core.budget import BudgetLimits


def main() -> None:
    redis_url, lml_url, lane, seconds, rate, reserve, burst = sys.argv[1:8]
    budget = LmlBudget(
        redis.Redis.from_url(redis_url),
        BudgetLimits(
            rate_per_second=float(rate),
            max_concurrent=5,
            live_reserve=float(reserve),
            burst=int(burst),
        ),
    )
    lml = BudgetedLml(LmlClient(lml_url, max_retries=0), budget, lane)
    deadline = time.monotonic() + float(seconds)
    calls = errors = 0
    while time.monotonic() < deadline:
        try:
            if lane == "identity":
                lml.bulk_resolve_libraries(
                    [
                        {
                            "library_id": 1,
                            "artist_name": "A",
                            "album_title": "B",
                            "legacy_release_id": 1,
                        }
                    ]
                )
            else:
                lml.lookup_bulk([{"artist": "Stereolab", "album": "Dots and Loops"}])
            calls += 1
        except LmlError:
            errors += 1
    print(
        json.dumps(
            {
                "lane": lane,
                "calls": calls,
                "errors": errors,
                "fallback_grants": budget.stats[lane].fallback_grants,
            }
        )
    )


if __name__ == "__main__":
    main()
