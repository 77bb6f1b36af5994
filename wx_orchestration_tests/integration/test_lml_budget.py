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
                reserve: float = 0.5) -> list[dict]:  # fmt: skip
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


def busiest_second(timestamps: list[float]) -> int:
    """The most calls in any sliding one-second window."""
    stamps = sorted(timestamps)
    best, start = 0, 0
    for end, ts in enumerate(stamps):
        while stamps[start] <= ts - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_never_exceed_the_rate_in_any_second(
    redis_url, lml_emulator, processes: int
) -> None:
    rate = 8.0
    results = run_workers(redis_url, lml_emulator.url, ["backlog", "live"] * (processes // 2),
                          seconds=3, rate=rate)  # fmt: skip
    stamps = [r["ts"] for r in lml_emulator.requests() if r["path"] == "/api/v1/lookup/bulk"]
    assert sum(r["calls"] for r in results) == len(stamps)
    assert len(stamps) >= rate * 2  # the budget was actually saturated
    assert busiest_second(stamps) <= rate


def test_live_keeps_its_reserve_while_batch_lanes_are_saturated(redis_url, lml_emulator) -> None:
    results = run_workers(redis_url, lml_emulator.url, ["backlog", "backlog", "backlog", "live"],
                          seconds=4, rate=10)  # fmt: skip
    live = sum(r["calls"] for r in results if r["lane"] == "live")
    batch = sum(r["calls"] for r in results if r["lane"] == "backlog")
    # Batch lanes together may use at most half (allowing for staggered process starts and
    # one burst); live gets at least its reserved half of what was granted.
    assert batch <= 0.5 * 10 * (4 + 2), results
    assert live >= 0.45 * (live + batch), results


def test_live_borrows_unused_batch_capacity(redis_url) -> None:
    budget = LmlBudget(redis.Redis.from_url(redis_url), BudgetLimits(rate_per_second=4))
    started = time.monotonic()
    for _ in range(4):  # the whole second's worth, not just the reserved half
        budget.settle("live", budget.acquire("live", timeout_s=0.5), "ok")
    assert time.monotonic() - started < 0.5
    with pytest.raises(BudgetWaitTimeout):
        budget.acquire("backlog", timeout_s=0.3)


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
        assert budget.state("lookup")["recent_grants"] >= 1
    finally:
        restarted.stop()
