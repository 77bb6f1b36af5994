"""The typed resources every Dagster asset, check, sensor and schedule uses.

Each wraps a plain client that the sidecar uses directly (it never imports Dagster), so the
resource adds configuration and nothing else.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
import redis
from psycopg import sql
from pydantic import Field, PrivateAttr

from wx_orchestration.clients.lml import LmlClient
from wx_orchestration.clients.lml_budget import BudgetedLml, LmlBudget, LmlEntry
from wx_orchestration.clients.redis_client import shared_redis
from wx_orchestration.contracts.lml import (
    BACKLOG_LOOKUPS,
    DEFAULT_LML_RETRY_AFTER_CAP_S,
    LookupCaller,
)
from wx_orchestration.core.budget import DEFAULT_BURST, BudgetLimits
from wx_orchestration.db.pool import shared_pool
from wx_orchestration.settings import (
    DEFAULT_STATION_SCHEMA,
    Settings,
    redact_url,
    validate_schema_name,
)


class LmlResource(dg.ConfigurableResource):
    """The Library Metadata Lookup service (`LIBRARY_METADATA_URL`, `LML_API_KEY`)."""

    base_url: str = Field(description="LML base URL, e.g. https://lml.example.org")
    api_key: str = Field(default="", description="Bearer key; empty sends no Authorization header")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    total_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="per call, retries included; the stale sweep's lease must outlast it",
    )
    # Retries are left to callers by default, so that each attempt queues for the shared budget.
    max_retries: int = Field(default=0, ge=0)
    retry_after_cap_s: float = Field(
        default=DEFAULT_LML_RETRY_AFTER_CAP_S,
        ge=0,
        description="longest Retry-After honoured (LML_RETRY_AFTER_CAP_S)",
    )

    _client: LmlClient | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __repr_args__(self) -> Sequence[tuple[str | None, Any]]:
        return [
            (name, "***" if name == "api_key" and value else value)
            for name, value in super().__repr_args__()
        ]

    def get_client(self) -> LmlClient:
        with self._lock:
            if self._client is None:
                self._client = LmlClient(
                    self.base_url,
                    api_key=self.api_key,
                    connect_timeout=self.connect_timeout_s,
                    read_timeout=self.read_timeout_s,
                    total_timeout=self.total_timeout_s,
                    max_retries=self.max_retries,
                    caller=BACKLOG_LOOKUPS,
                    retry_after_cap_s=self.retry_after_cap_s,
                )
            return self._client


class PostgresResource(dg.ConfigurableResource):
    """The station database (`DATABASE_URL`), through one psycopg pool per process."""

    database_url: str = Field(description="libpq URL of the station database")
    station_schema: str = Field(
        default=DEFAULT_STATION_SCHEMA, description="schema of the station tables"
    )
    pool_max_size: int = Field(default=4, ge=1)

    def __repr_args__(self) -> Sequence[tuple[str | None, Any]]:
        return [
            (name, redact_url(value) if name == "database_url" else value)
            for name, value in super().__repr_args__()
        ]

    @property
    def schema(self) -> str:
        return validate_schema_name(self.station_schema)

    @contextmanager
    def connection(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection with `search_path` set to the station schema, then ours.

        By default the block is one transaction, committed on exit (rolled back on error).
        With `autocommit`, the caller delimits transactions itself (`conn.transaction()`).
        """
        with shared_pool(self.database_url, max_size=self.pool_max_size).connection() as conn:
            conn.autocommit = autocommit
            try:
                conn.execute(
                    sql.SQL("SET search_path TO {}, wx_orchestration").format(
                        sql.Identifier(self.schema)
                    )
                )
                yield conn
            finally:
                if autocommit:
                    conn.autocommit = False


class RedisResource(dg.ConfigurableResource):
    """Redis (`REDIS_URL`): streams, consumer groups, the shared LML budget."""

    url: str = Field(description="redis:// URL")

    def __repr_args__(self) -> Sequence[tuple[str | None, Any]]:
        return [
            (name, redact_url(value) if name == "url" else value)
            for name, value in super().__repr_args__()
        ]

    def get_client(self) -> redis.Redis:
        return shared_redis(self.url)


class LmlBudgetResource(dg.ConfigurableResource):
    """The LML budget shared by every process (`LML_RATE_PER_SECOND`, `LML_MAX_CONCURRENT`,
    `LML_LIVE_RESERVE`, `LML_BURST`), kept in Redis."""

    redis: RedisResource
    rate_per_second: float = Field(default=1.0, gt=0)
    max_concurrent: int = Field(default=5, ge=1)
    live_reserve: float = Field(default=0.5, ge=0, lt=1)
    burst: int = Field(default=DEFAULT_BURST, ge=1)

    _budget: LmlBudget | None = PrivateAttr(default=None)

    def get_budget(self) -> LmlBudget:
        if self._budget is None:
            self._budget = LmlBudget(
                self.redis.get_client(),
                BudgetLimits(
                    self.rate_per_second, self.max_concurrent, self.live_reserve, self.burst
                ),
            )
        return self._budget

    def budgeted(
        self,
        lml: LmlResource,
        lane: str,
        *,
        caller: LookupCaller | None = None,
        wait_timeout_s: float | None = None,
    ) -> BudgetedLml:
        """`lml` drawing on the budget in `lane` (`LmlEntry.lane`): the run's one client and
        the shared budget, both built once per process."""
        return LmlEntry(lml.get_client(), self.get_budget()).lane(
            lane, caller=caller, wait_timeout_s=wait_timeout_s
        )


def _optional_env(name: str, default: str) -> str:
    # EnvVar refuses unset variables at launch; these two have documented defaults.
    return dg.EnvVar(name) if os.environ.get(name) else default  # type: ignore[return-value]


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """Resource instances wired to the environment with `EnvVar` (resolved at launch)."""
    settings = Settings.from_env()
    redis_resource = RedisResource(url=dg.EnvVar("REDIS_URL"))
    return {
        "lml": LmlResource(
            base_url=dg.EnvVar("LIBRARY_METADATA_URL"),
            api_key=_optional_env("LML_API_KEY", ""),
            retry_after_cap_s=settings.lml.retry_after_cap_s,
        ),
        "postgres": PostgresResource(
            database_url=dg.EnvVar("DATABASE_URL"),
            station_schema=_optional_env("WXYC_SCHEMA_NAME", DEFAULT_STATION_SCHEMA),
        ),
        "redis": redis_resource,
        # Numbers, not secrets: read once at load so that defaults apply when unset.
        "lml_budget": LmlBudgetResource(
            redis=redis_resource,
            rate_per_second=settings.budget.rate_per_second,
            max_concurrent=settings.budget.max_concurrent,
            live_reserve=settings.budget.live_reserve,
            burst=settings.budget.burst,
        ),
    }
