"""The shared LML budget across real processes, a real Redis and the LML emulator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from wx_orchestration.clients.lml import LmlClient, LmlError
from wx_orchestration.clients.lml_budget import (
    BreakerSettings,
    BudgetedLml,
    BudgetWaitTimeout,
    LmlBudget,
)
from wx_orchestration.core.budget import BudgetLimits
from wx_orchestration.devstack.servers import EmbeddedValkey

ITEM = [{"artist": "Broadcast", "album": "Tender Buttons"}]


def run_workers(redis_url: str, lml_url: str, lanes: list[str], seconds: float, rate: float,
                reserve: float = 0.5, burst: int = 1) -> list[dict]:  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wx_orchestration_tests.budget_worker",
                redis_url,
                lml_url,
                lane,
                str(seconds),
                str(rate),
                str(reserve),
                str(burst),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for lane in lanes
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        assert proc.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def busiest_window(timestamps: list[float], seconds: float) -> int:
    """The most calls in any sliding window of `seconds`."""
    stamps = sorted(timestamps)
    best, start = 0, 0
    for end, ts in enumerate(stamps):
        while stamps[start] <= ts - seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def lookup_stamps(lml_emulator) -> list[float]:
    return [r["ts"] for r in lml_emulator.requests() if r["path"] == "/api/v1/lookup/bulk"]


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_never_exceed_the_rate_and_the_burst(redis_url, lml_emulator, processes: int):
    rate, burst = 8.0, 4
    results = run_workers(redis_url, lml_emulator.url, ["backlog", "live"] * (processes // 2),
                          seconds=3, rate=rate, burst=burst)  # fmt: skip
    stamps = lookup_stamps(lml_emulator)
    assert sum(r["calls"] for r in results) == len(stamps)
    assert len(stamps) >= rate * 2  # the budget was actually saturated
    # A grant reaches LML a moment later, which can shift one call into the next window.
    for seconds in (0.5, 1.0, 2.0):
        assert busiest_window(stamps, seconds) <= burst + rate * seconds + 1


def test_the_burst_allowance_is_shared_by_two_processes(redis_url, lml_emulator) -> None:
    rate, burst, seconds = 2.0, 12, 2.0
    results = run_workers(redis_url, lml_emulator.url, ["live", "live"], seconds=seconds,
                          rate=rate, burst=burst)  # fmt: skip
    stamps = sorted(lookup_stamps(lml_emulator))
    # Both drew on the one allowance: together, never more than one burst plus the refill
    # over the span of their calls (the processes start a moment apart).
    assert all(r["calls"] > 0 for r in results), results
    assert len(stamps) <= burst + rate * (stamps[-1] - stamps[0]) + 1, results
    # And a quiet budget answered the burst at once, not one call per interval.
    assert busiest_window(stamps, 0.5) >= burst


def test_live_keeps_its_reserve_while_batch_lanes_are_saturated(redis_url, lml_emulator) -> None:
    results = run_workers(redis_url, lml_emulator.url, ["backlog", "backlog", "backlog", "live"],
                          seconds=4, rate=10, burst=10)  # fmt: skip
    live = sum(r["calls"] for r in results if r["lane"] == "live")
    batch = sum(r["calls"] for r in results if r["lane"] == "backlog")
    # Batch lanes together may use at most half (allowing for staggered process starts and
    # their half of the burst); live gets at least its reserved half of what was granted.
    assert batch <= 0.5 * 10 * (4 + 2), results
    assert live >= 0.45 * (live + batch), results


def test_live_keeps_its_share_of_the_burst_when_batch_lanes_spend_theirs(redis_url) -> None:
    limits = BudgetLimits(rate_per_second=0.5, burst=20, live_reserve=0.5)
    backlog = LmlBudget(redis.Redis.from_url(redis_url), limits)
    live = LmlBudget(redis.Redis.from_url(redis_url), limits)  # another process
    for _ in range(10):  # the batch lanes' half of the burst, at once
        backlog.settle("backlog", backlog.acquire("backlog", timeout_s=0), "ok")
    with pytest.raises(BudgetWaitTimeout):
        backlog.acquire("backlog", timeout_s=0)
    started = time.monotonic()
    for _ in range(10):  # the live half is still saved, answered at once
        live.settle("live", live.acquire("live", timeout_s=0), "ok")
    assert time.monotonic() - started < 1  # far less than one refill (2 s)
    assert live.state("lookup")["saved_calls"] == 0


def test_live_borrows_unused_batch_capacity(redis_url) -> None:
    budget = LmlBudget(redis.Redis.from_url(redis_url), BudgetLimits(rate_per_second=4, burst=4))
    started = time.monotonic()
    for _ in range(4):  # the whole burst, not just the reserved half
        budget.settle("live", budget.acquire("live", timeout_s=0.5), "ok")
    assert time.monotonic() - started < 0.5
    with pytest.raises(BudgetWaitTimeout):
        budget.acquire("backlog", timeout_s=0.1)


def test_a_429_pauses_every_caller_for_retry_after(redis_url, lml_emulator) -> None:
    lml_emulator.set_faults(rate_limit=1, retry_after=2)
    limits = BudgetLimits(rate_per_second=50, max_concurrent=5)
    first = BudgetedLml(
        LmlClient(lml_emulator.url, max_retries=0),
        LmlBudget(redis.Redis.from_url(redis_url), limits),
        "live",
    )
    other = BudgetedLml(  # another process's view: its own budget object and connection
        LmlClient(lml_emulator.url, max_retries=0),
        LmlBudget(redis.Redis.from_url(redis_url), limits),
        "backlog",
    )
    with pytest.raises(LmlError) as info:
        first.lookup_bulk(ITEM)
    assert info.value.kind == "rate_limited"
    other.lookup_bulk(ITEM)
    requests = [r for r in lml_emulator.requests() if r["path"].startswith("/api/")]
    assert [r["status"] for r in requests] == [429, 200]
    assert requests[1]["ts"] - requests[0]["ts"] >= 1.9


def test_a_breaker_opened_by_one_process_holds_the_others(redis_url, lml_emulator) -> None:
    lml_emulator.set_faults(error_rate=1.0)
    limits = BudgetLimits(rate_per_second=100, max_concurrent=5)
    breaker = BreakerSettings(threshold=3, window_s=10, cooldown_s=1.5)
    tripping = LmlBudget(redis.Redis.from_url(redis_url), limits, breaker=breaker)
    failing = BudgetedLml(LmlClient(lml_emulator.url, max_retries=0), tripping, "backlog")
    for _ in range(3):
        with pytest.raises(LmlError):
            failing.lookup_bulk(ITEM)
    watcher = LmlBudget(redis.Redis.from_url(redis_url), limits, breaker=breaker)
    assert watcher.state("lookup")["breaker"] == "open"
    with pytest.raises(BudgetWaitTimeout, match="breaker_open"):
        watcher.acquire("live", timeout_s=0.5)
    calls_while_open = len(lml_emulator.requests())
    # After the cool-down one probe goes through; its success closes the breaker for all.
    lml_emulator.set_faults(error_rate=0.0)
    healthy = BudgetedLml(LmlClient(lml_emulator.url, max_retries=0), watcher, "live")
    healthy.lookup_bulk(ITEM)
    assert len(lml_emulator.requests()) == calls_while_open + 1
    assert tripping.state("lookup")["breaker"] == "closed"


def test_redis_down_falls_back_loudly_and_recovers(tmp_path: Path, lml_emulator, caplog) -> None:
    tmp_path.chmod(0o755)
    server = EmbeddedValkey(tmp_path)
    url = server.start()
    port = server.port
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.5)
    budget = LmlBudget(
        client, BudgetLimits(rate_per_second=50), fallback_rate_per_second=20, redis_retry_s=0.2
    )
    lml = BudgetedLml(LmlClient(lml_emulator.url, max_retries=0), budget, "live")
    lml.lookup_bulk(ITEM)
    server.stop()
    for _ in range(3):
        lml.lookup_bulk(ITEM)  # enrichment continues under the per-process fallback
    assert budget.degraded
    assert budget.stats["live"].fallback_grants == 3
    assert sum("Redis is unreachable" in r.getMessage() for r in caplog.records) == 1
    restarted = EmbeddedValkey(tmp_path, port=port)
    restarted.start()
    try:
        deadline = time.monotonic() + 10
        while budget.degraded and time.monotonic() < deadline:
            lml.lookup_bulk(ITEM)
        assert not budget.degraded
        stats = budget.stats["live"]
        assert stats.grants - stats.fallback_grants >= 2  # before the outage and after it
    finally:
        restarted.stop()
