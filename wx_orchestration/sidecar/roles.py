"""The sidecar's roles: a name → module registry and what every role gets and gives.

A role module has `build(ctx: SidecarContext) -> Role`. To add one (e.g. `enrich`, `live`), write
the module and add its line to `ROLE_MODULES`; `--roles` defaults to every name listed here.
Roles add HTTP routes with `ctx.add_routes(...)` while they are built; Prometheus metrics go on
`ctx.metrics.registry`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import redis
from psycopg_pool import ConnectionPool
from starlette.routing import BaseRoute

from wx_orchestration.clients.lml import LmlClient
from wx_orchestration.clients.lml_budget import LmlBudget, LmlEntry
from wx_orchestration.clients.redis_client import shared_redis
from wx_orchestration.contracts.lml import LIVE_LOOKUPS
from wx_orchestration.core.timing import RECLAIM_IDLE_S
from wx_orchestration.db.pool import shared_pool
from wx_orchestration.settings import Settings
from wx_orchestration.sidecar.metrics import SidecarMetrics

# Start order; shutdown runs in reverse, so consumers stop before the bridge that feeds them.
ROLE_MODULES: dict[str, str] = {
    "bridge": "wx_orchestration.sidecar.bridge",
    "eventlog": "wx_orchestration.sidecar.eventlog",
    "enrich": "wx_orchestration.sidecar.enrich",
    "live": "wx_orchestration.sidecar.live",
}


@dataclass(frozen=True)
class SidecarConfig:
    """Tuning knobs (command-line flags of `wx-sidecar`; the defaults suit production)."""

    stream_maxlen: int = 100_000
    catchup_overlap_s: float = 5.0
    first_start_lookback_h: float = 24.0
    # Rows a catch-up writes between two rounds of live notifications.
    catchup_page: int = 2000
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 5.0
    standby_poll_s: float = 2.0
    read_count: int = 500
    read_block_ms: int = 1000
    max_deliveries: int = 5
    # Longer than the fast path's worst batch (`core.timing.check_fast_path`).
    claim_idle_ms: int = int(RECLAIM_IDLE_S * 1000)
    heartbeat_interval_s: float = 5.0
    shutdown_deadline_s: float = 10.0


@dataclass
class SidecarContext:
    settings: Settings
    config: SidecarConfig
    instance: str
    metrics: SidecarMetrics
    routes: list[BaseRoute] = field(default_factory=list)
    # Set by the bridge role so the heartbeat and /readyz can report it.
    bridge_state: str = "off"
    _lml: LmlEntry | None = field(default=None, init=False, repr=False)
    _lml_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def add_routes(self, *routes: BaseRoute) -> None:
        self.routes.extend(routes)

    def pool(self) -> ConnectionPool:
        return shared_pool(self.settings.database.url)

    def redis(self) -> redis.Redis:
        return shared_redis(self.settings.redis.url)

    def lml(self) -> LmlEntry:
        """The process's one way to LML (`LmlEntry`), built on first use."""
        with self._lml_lock:
            if self._lml is None:
                lml = self.settings.lml
                client = LmlClient(
                    lml.url,
                    api_key=lml.api_key.get_secret_value(),
                    total_timeout=lml.timeout_s,
                    retry_after_cap_s=lml.retry_after_cap_s,
                    # The sidecar's lookups are the live path's.
                    caller=LIVE_LOOKUPS,
                )
                self._lml = LmlEntry(client, LmlBudget(self.redis(), self.settings.budget.limits()))
            return self._lml


class Role(Protocol):
    name: str

    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set, then finish the batch in hand and return."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """Whether this role is doing its job right now, and a short word on why not."""
        ...


class UnknownRole(ValueError):
    pass


def parse_roles(spec: str | None) -> list[str]:
    if not spec:
        return list(ROLE_MODULES)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROLE_MODULES]
    if unknown:
        raise UnknownRole(f"unknown role(s) {', '.join(unknown)}; known: {', '.join(ROLE_MODULES)}")
    return sorted(set(names), key=list(ROLE_MODULES).index)


def build_roles(names: Sequence[str], ctx: SidecarContext) -> list[Role]:
    return [importlib.import_module(ROLE_MODULES[name]).build(ctx) for name in names]
