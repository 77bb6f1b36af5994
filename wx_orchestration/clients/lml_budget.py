"""One LML budget for every process, kept in Redis (DESIGN.md §6, issue #8).

Why a Lua script rather than a library: the decision needs, atomically and on one clock (Redis
`TIME`), a token-bucket check of two buckets (all lanes, batch lanes), two lease-based
concurrency caps, a shared 429 pause and a shared breaker with a single half-open probe. The
maintained Redis rate-limit libraries do one bucket per key and no lanes, so composing them
would not be atomic. The script is short and tested against a real Redis.

If Redis is unreachable, callers fall back to a conservative per-process limit (said once,
loudly) and keep enriching; they go back to the shared budget as soon as Redis answers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
import sentry_sdk

from wx_orchestration.clients.lml import LmlApi, LmlCallRecorder, LmlClient, LmlError
from wx_orchestration.contracts.lml import (
    CALLERS,
    BulkLookupResponse,
    BulkResolveInput,
    BulkResolveResponse,
    HealthResponse,
    LookupCaller,
    LookupItem,
    LookupResponse,
)
from wx_orchestration.core.budget import BATCH_LANES, LANES, BudgetLimits, lane_family
from wx_orchestration.core.enrichment import discogs_unavailable

log = logging.getLogger("wx_orchestration.lml_budget")

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local is_batch = ARGV[1] == '1'
local token = ARGV[2]
local lease = tonumber(ARGV[9])

local pause = redis.call('PTTL', KEYS[5])
if pause > 0 then return {0, pause, 'paused'} end
local open = redis.call('PTTL', KEYS[6])
if open > 0 then return {0, open, 'breaker_open'} end

local probe = 0
if redis.call('EXISTS', KEYS[7]) == 1 then
  if not redis.call('SET', KEYS[8], token, 'NX', 'PX', lease) then
    return {0, 100, 'half_open'}
  end
  probe = 1
end

local function refuse(wait, reason)
  if probe == 1 then redis.call('DEL', KEYS[8]) end
  return {0, wait, reason}
end

redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return refuse(20, 'concurrency') end
if is_batch then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[8]) then return refuse(20, 'concurrency') end
end

-- GCRA: KEYS[1]/KEYS[2] hold each bucket's theoretical arrival time (ms); a grant needs it no
-- further ahead of now than the call's allowed lead, and moves it one interval on.
local function bucket_wait(key, allowed)
  local tat = math.max(tonumber(redis.call('GET', key) or '0') or 0, now)
  return math.max(0, tat - now - allowed), tat
end
local function take(key, tat, interval)
  local next_tat = tat + interval
  redis.call('SET', key, string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
end

local wait, total_tat = bucket_wait(KEYS[1], tonumber(ARGV[4]))
if wait > 0 then return refuse(math.ceil(wait), 'rate') end
local batch_tat = 0
if is_batch then
  wait, batch_tat = bucket_wait(KEYS[2], tonumber(ARGV[6]))
  if wait > 0 then return refuse(math.ceil(wait), 'rate') end
end

take(KEYS[1], total_tat, tonumber(ARGV[3]))
redis.call('ZADD', KEYS[3], now + lease, token)
redis.call('PEXPIRE', KEYS[3], lease + 1000)
if is_batch then
  take(KEYS[2], batch_tat, tonumber(ARGV[5]))
  redis.call('ZADD', KEYS[4], now + lease, token)
  redis.call('PEXPIRE', KEYS[4], lease + 1000)
end
if probe == 1 then return {1, 0, 'probe'} end
return {1, 0, 'ok'}
"""

# KEYS: inflight, inflight_batch, pause, open, tripped, probe, failures
# ARGV: token, outcome (ok|rate_limited|failure), retry_after_ms, threshold, window_ms, cooldown_ms
_SETTLE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local was_probe = redis.call('GET', KEYS[6]) == ARGV[1]
if was_probe then redis.call('DEL', KEYS[6]) end
local outcome = ARGV[2]
if outcome == 'ok' then
  if was_probe then redis.call('DEL', KEYS[5], KEYS[7]) end
  return 'ok'
end
if outcome == 'rate_limited' then
  local ms = tonumber(ARGV[3])
  if ms > redis.call('PTTL', KEYS[3]) then redis.call('SET', KEYS[3], '1', 'PX', ms) end
  return 'paused'
end
local failures = redis.call('INCR', KEYS[7])
if failures == 1 then redis.call('PEXPIRE', KEYS[7], tonumber(ARGV[5])) end
if was_probe or failures >= tonumber(ARGV[4]) then
  redis.call('SET', KEYS[4], '1', 'PX', tonumber(ARGV[6]))
  redis.call('SET', KEYS[5], '1')
  redis.call('DEL', KEYS[7])
  return 'opened'
end
return 'counted'
"""


class BudgetWaitTimeout(LmlError):
    """No LML slot within the caller's deadline (the budget is saturated, paused or the breaker
    is open). Nothing was sent; to callers it is LML being unavailable, so rows they hold go
    back to work exactly as after a failed call."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="rate_limited", retryable=True)


@dataclass(frozen=True)
class Grant:
    """One attempt's answer: granted (with the slot's token, None under the local fallback),
    or how long to wait before asking again and why."""

    granted: bool
    token: str | None
    wait_s: float
    reason: str

    @property
    def fallback(self) -> bool:
        return self.reason == "fallback"


@dataclass
class LaneStats:
    grants: int = 0
    waits: int = 0
    wait_ms: float = 0.0
    fallback_grants: int = 0


@dataclass
class _LocalLimiter:
    """Per-process sliding window used only while Redis is unreachable."""

    calls: int
    window_s: float
    granted: deque[float] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def try_acquire(self) -> float:
        """0 when granted, else seconds to wait."""
        with self.lock:
            now = time.monotonic()
            while self.granted and self.granted[0] <= now - self.window_s:
                self.granted.popleft()
            if len(self.granted) < self.calls:
                self.granted.append(now)
                return 0.0
            return self.granted[0] + self.window_s - now


@dataclass(frozen=True)
class BreakerSettings:
    threshold: int = 5
    window_s: float = 10.0
    cooldown_s: float = 30.0


class LmlBudget:
    """Acquire a slot per LML call in a lane; report how the call went."""

    def __init__(
        self,
        client: redis.Redis,
        limits: BudgetLimits,
        *,
        breaker: BreakerSettings | None = None,
        lease_s: float = 120.0,
        fallback_rate_per_second: float = 0.2,
        redis_retry_s: float = 5.0,
    ) -> None:
        self.redis = client
        self.limits = limits
        self.breaker = breaker or BreakerSettings()
        self.lease_ms = int(lease_s * 1000)
        self.fallback = _LocalLimiter(1, 1 / fallback_rate_per_second)
        self.fallback_rate_per_second = fallback_rate_per_second
        self.redis_retry_s = redis_retry_s
        self.stats: dict[str, LaneStats] = {lane: LaneStats() for lane in LANES}
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)
        self._redis_down_since: float | None = None
        self._state_lock = threading.Lock()

    @staticmethod
    def keys(family: str) -> dict[str, str]:
        # One hash tag per family keeps every key of a decision in one cluster slot.
        prefix = f"wx:lml:{{{family}}}"
        names = ("total", "batch", "inflight", "inflight_batch", "pause", "open", "tripped")
        return {name: f"{prefix}:{name}" for name in (*names, "probe", "failures")}

    def _use_redis(self) -> bool:
        with self._state_lock:
            down = self._redis_down_since
        return down is None or time.monotonic() - down >= self.redis_retry_s

    def _redis_failed(self, exc: Exception) -> None:
        with self._state_lock:
            first = self._redis_down_since is None
            self._redis_down_since = time.monotonic()
        if first:
            log.error(
                "LML budget: Redis is unreachable (%s); falling back to a per-process limit of "
                "%.2f calls/s until it answers again",
                type(exc).__name__,
                self.fallback_rate_per_second,
            )

    def _redis_answered(self) -> None:
        with self._state_lock:
            was_down = self._redis_down_since is not None
            self._redis_down_since = None
        if was_down:
            log.warning("LML budget: Redis answers again; the shared budget is back in force")

    @property
    def degraded(self) -> bool:
        return self._redis_down_since is not None

    def _try(self, lane: str, token: str, fullness: float) -> tuple[bool, float, str]:
        k = self.keys(lane_family(lane))
        total, batch = self.limits.total, self.limits.batch
        granted, wait_ms, reason = self._acquire(
            keys=[k["total"], k["batch"], k["inflight"], k["inflight_batch"], k["pause"],
                  k["open"], k["tripped"], k["probe"]],
            args=[
                "1" if lane in BATCH_LANES else "0", token,
                total.interval_ms, total.lead_allowed_ms(fullness),
                batch.interval_ms, batch.lead_allowed_ms(fullness),
                self.limits.max_concurrent, self.limits.batch_concurrent, self.lease_ms,
            ],
        )  # fmt: skip
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        return bool(granted), float(wait_ms) / 1000, reason

    def try_acquire(self, lane: str, *, fullness: float = 1.0) -> Grant:
        """One attempt at a slot for a call carrying `fullness` (0..1) of a full call's items:
        the fuller, the more of the saved burst it may draw on (`core.budget.Bucket`)."""
        lane_family(lane)
        if self._use_redis():
            token = uuid.uuid4().hex
            try:
                granted, wait_s, reason = self._try(lane, token, fullness)
            except redis.RedisError as exc:
                self._redis_failed(exc)
            else:
                self._redis_answered()
                return Grant(granted, token if granted else None, wait_s, reason)
        wait_s = self.fallback.try_acquire()
        return Grant(wait_s == 0, None, wait_s, "fallback")

    def acquire(
        self, lane: str, *, timeout_s: float | None = None, fullness: float = 1.0
    ) -> str | None:
        """Wait for a slot; return its token (None when granted by the local fallback)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        started, waited = time.monotonic(), False
        while True:
            grant = self.try_acquire(lane, fullness=fullness)
            if grant.granted:
                waited_s = time.monotonic() - started if waited else 0.0
                self.count_grant(lane, waited_s, fallback=grant.fallback)
                return grant.token
            waited = True
            if deadline is not None and time.monotonic() + grant.wait_s > deadline:
                raise BudgetWaitTimeout(f"no LML slot for lane {lane!r} ({grant.reason})")
            time.sleep(min(grant.wait_s, 0.25))

    def count_grant(self, lane: str, waited_s: float, *, fallback: bool = False) -> None:
        stats = self.stats[lane]
        stats.grants += 1
        stats.fallback_grants += int(fallback)
        if waited_s > 0:
            stats.waits += 1
            stats.wait_ms += waited_s * 1000

    def settle(
        self, lane: str, token: str | None, outcome: str, *, retry_after_s: float | None = None
    ) -> None:
        """Release the slot and report `ok`, `rate_limited` or `failure` (5xx, timeouts)."""
        if token is None:
            return
        k = self.keys(lane_family(lane))
        try:
            result = self._settle(
                keys=[k["inflight"], k["inflight_batch"], k["pause"], k["open"], k["tripped"],
                      k["probe"], k["failures"]],
                args=[token, outcome, int((retry_after_s or 1.0) * 1000), self.breaker.threshold,
                      int(self.breaker.window_s * 1000), int(self.breaker.cooldown_s * 1000)],
            )  # fmt: skip
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return
        if result in (b"opened", "opened"):
            log.error("LML breaker opened for %s calls (shared by every process)", lane)
            sentry_sdk.add_breadcrumb(
                category="lml.budget", message=f"breaker opened ({lane} lane)", level="warning"
            )
        elif outcome == "rate_limited":
            sentry_sdk.add_breadcrumb(
                category="lml.budget",
                message=f"429: every caller paused {retry_after_s or 1.0:g}s",
                level="warning",
            )

    @contextmanager
    def slot(self, lane: str, *, timeout_s: float | None = None) -> Iterator[None]:
        with self.settling(lane, self.acquire(lane, timeout_s=timeout_s)):
            yield

    @contextmanager
    def settling(self, lane: str, token: str | None) -> Iterator[None]:
        """Settle a granted slot when the call made inside ends, by how it ended."""
        outcome, retry_after = "ok", None
        try:
            yield
        except LmlError as exc:
            if exc.kind == "rate_limited":
                outcome, retry_after = "rate_limited", exc.retry_after
            elif exc.retryable:
                outcome = "failure"
            raise
        finally:
            self.settle(lane, token, outcome, retry_after_s=retry_after)

    def state(self, family: str) -> dict[str, Any]:
        """Shared state for /metrics, run metadata and the UI."""
        k = self.keys(family)
        pipe = self.redis.pipeline()
        pipe.pttl(k["pause"])
        pipe.pttl(k["open"])
        pipe.exists(k["tripped"])
        pipe.zcard(k["inflight"])
        pipe.get(k["total"])
        pipe.time()
        pause, open_ms, tripped, inflight, tat, (seconds, micros) = pipe.execute()
        total = self.limits.total
        lead_ms = max(0.0, float(tat or 0) - (seconds * 1000 + micros / 1000))
        breaker = "open" if open_ms > 0 else "half_open" if tripped else "closed"
        return {
            "family": family,
            "paused_ms": max(pause, 0),
            "breaker": breaker,
            "in_flight": inflight,
            "saved_calls": max(0, math.floor(total.burst - lead_ms / total.interval_ms)),
            "limits": {
                "rate_per_second": self.limits.rate_per_second,
                "max_concurrent": self.limits.max_concurrent,
                "live_reserve": self.limits.live_reserve,
                "burst": self.limits.burst,
            },
        }

    def stats_summary(self) -> dict[str, dict[str, float]]:
        return {
            lane: {
                "grants": s.grants,
                "waits": s.waits,
                "wait_ms": round(s.wait_ms, 1),
                "fallback_grants": s.fallback_grants,
            }
            for lane, s in self.stats.items()
            if s.grants
        }


class BudgetedLml:
    """An `LmlClient` whose every call draws on the shared budget in one lane, its lookups
    labelled with the lane's caller (`LmlEntry.lane` builds these).

    Give it a client with `max_retries=0`: a retry must queue for the budget like any call.
    """

    def __init__(
        self,
        client: LmlClient,
        budget: LmlBudget,
        lane: str,
        *,
        timeout_s: float | None = None,
        caller: LookupCaller | None = None,
    ) -> None:
        lane_family(lane)
        self.client = client
        self.budget = budget
        self.lane = lane
        self.timeout_s = timeout_s
        self.caller = caller

    def bulk_resolve_libraries(
        self,
        inputs: Sequence[BulkResolveInput | Mapping[str, Any]],
        include_tracks: bool = False,
        *,
        stats: LmlCallRecorder | None = None,
    ) -> BulkResolveResponse:
        with self.budget.slot(self.lane, timeout_s=self.timeout_s):
            return self.client.bulk_resolve_libraries(inputs, include_tracks, stats=stats)

    def lookup_bulk(
        self,
        items: Sequence[LookupItem | Mapping[str, Any]],
        *,
        stats: LmlCallRecorder | None = None,
    ) -> BulkLookupResponse:
        with self.budget.slot(self.lane, timeout_s=self.timeout_s):
            return self.client.lookup_bulk(items, stats=stats, caller=self.caller)

    def lookup(
        self, item: LookupItem | Mapping[str, Any], *, stats: LmlCallRecorder | None = None
    ) -> LookupResponse:
        with self.budget.slot(self.lane, timeout_s=self.timeout_s):
            return self.client.lookup(item, stats=stats, caller=self.caller)

    def health(self) -> HealthResponse:
        # Health checks are how callers decide whether to spend budget; they cost none.
        return self.client.health()

    def lacks(self, path: str) -> bool:
        return self.client.lacks(path)


@dataclass(frozen=True)
class LmlEntry:
    """A process's one way to LML: one client (no retries of its own: each attempt queues for
    the budget) and the budget every process shares, handed out per lane. The sidecar's context
    and the Dagster resources each build it once per process."""

    client: LmlClient
    budget: LmlBudget

    def lane(
        self,
        lane: str,
        *,
        caller: LookupCaller | None = None,
        wait_timeout_s: float | None = None,
    ) -> BudgetedLml:
        """Calls in `lane`, labelled as `caller` (default: the lane's own, `CALLERS`); a caller
        holding claims bounds its budget waits with `wait_timeout_s`."""
        lane_family(lane)  # an unknown lane is a clear error, before its caller is looked up
        return BudgetedLml(
            self.client, self.budget, lane, timeout_s=wait_timeout_s, caller=caller or CALLERS[lane]
        )


def wait_until_lml_ready(
    lml: LmlApi,
    *,
    max_wait_s: float,
    poll_s: float = 5.0,
    progress: Callable[[str], None] = log.info,
) -> str | None:
    """Before a batch run spends budget: wait (bounded) while LML reports Discogs down (its
    breaker open, or an older LML's `services.discogs_api` unavailable: every answer would go
    back to `pending`). Returns None when ready, else why the run should stop now."""
    deadline = time.monotonic() + max_wait_s
    while True:
        try:
            health = lml.health()
        except LmlError as exc:
            reason = f"LML /health failed ({exc.kind}, status {exc.status})"
        else:
            if health.discogs_breaker_state == "open":
                reason = "LML reports its Discogs breaker open"
            elif discogs_unavailable(health):
                reason = "LML reports discogs_api unavailable"
            else:
                return None
        if time.monotonic() + poll_s > deadline:
            return reason
        progress(f"{reason}; batch work waits (up to {max_wait_s:.0f}s in all)")
        time.sleep(poll_s)
