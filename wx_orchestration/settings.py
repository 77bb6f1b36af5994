"""Every environment variable wx_orchestration reads: one pydantic-settings model per component.

The sidecar and `wx` build `Settings` once at start and hand it on, and the Dagster code location
when it loads `definitions.py`; code shared by both sides reads its few knobs at use through the
same models (the pacing bound, `WX_SQL_DIR`, the checks' targets). Bad values fail in one line
naming the variable (never echoing its value: some are secrets); the sidecar also refuses a
combination that breaks the claim-timing rule of `core.timing`. README.md's configuration table
documents each variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from wx_orchestration.contracts.lml import DEFAULT_LML_RETRY_AFTER_CAP_S, normalize_lml_url
from wx_orchestration.core.budget import DEFAULT_BURST, BudgetLimits
from wx_orchestration.core.timing import (
    FAST_PATH_BUDGET_WAIT_S,
    RECLAIM_IDLE_S,
    ClaimTimingError,
    check_fast_path,
)

DEFAULT_STATION_SCHEMA = "wxyc_schema"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def validate_schema_name(name: str, variable: str = "WXYC_SCHEMA_NAME") -> str:
    if not _IDENTIFIER.match(name):
        raise SettingsError(
            f"{variable}={name!r} is not a plain lower-case SQL identifier "
            "(letters, digits, underscore; at most 63 characters)"
        )
    return name


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


# The environment a model reads: the process's, or the mapping `from_env` was given.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("wx_environ", default=None)


class _Environ(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRON.get()
        if env is None:
            return super()._load_env_vars()
        return {name: value for name, value in env.items() if value != ""}


@contextmanager
def _reading(env: Mapping[str, str] | None) -> Iterator[None]:
    token = _ENVIRON.set(env)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def _one_line(err: ValidationError) -> str:
    problems = []
    for error in err.errors():
        variable = ".".join(str(part) for part in error["loc"]) or "settings"
        problems.append(f"{variable}: {error['msg']}")
    return "; ".join(problems)


class EnvSettings(BaseSettings):
    """One component's variables, each named by its `validation_alias`."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        case_sensitive=True,
        # An empty variable is an unset one, as a shell's `VAR=` means.
        env_ignore_empty=True,
        # Values stay out of errors: DATABASE_URL and friends carry passwords.
        hide_input_in_errors=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _Environ(settings_cls))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """The model from `env` (default: the process environment) alone."""
        with _reading(env):
            try:
                return cls()
            except ValidationError as err:
                raise SettingsError(_one_line(err)) from None

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if isinstance(value, str) and "://" in value else value


class DatabaseSettings(EnvSettings):
    url: str = Field("", validation_alias="DATABASE_URL")
    station_schema: str = Field(DEFAULT_STATION_SCHEMA, validation_alias="WXYC_SCHEMA_NAME")
    # How far ahead of the clock our statements may push the station's `Last-Modified`
    # (`flowsheet_watermark`); 0 turns pacing off.
    max_lead_s: float = Field(5.0, ge=0, validation_alias="WX_FLOWSHEET_MAX_LEAD_S")
    # Where the migration files are; empty: the repository's `sql/`.
    sql_dir: str = Field("", validation_alias="WX_SQL_DIR")

    _plain_identifier = field_validator("station_schema")(validate_schema_name)

    @field_validator("max_lead_s")
    @classmethod
    def _room_for_a_claim(cls, value: float) -> float:
        if 0 < value < 4:
            raise ValueError("leaves no room for a claim: use 0 (off) or at least 4")
        return value


class RedisSettings(EnvSettings):
    url: str = Field("", validation_alias="REDIS_URL")


class LmlSettings(EnvSettings):
    url: str = Field("", validation_alias="LIBRARY_METADATA_URL")
    api_key: SecretStr = Field(SecretStr(""), validation_alias="LML_API_KEY")
    # The fast path's call timeout.
    timeout_s: float = Field(10.0, ge=0.1, validation_alias="LML_TIMEOUT_S")
    # The longest `Retry-After` honoured; longer ones are capped (and logged).
    retry_after_cap_s: float = Field(
        DEFAULT_LML_RETRY_AFTER_CAP_S, ge=0, validation_alias="LML_RETRY_AFTER_CAP_S"
    )

    @field_validator("url")
    @classmethod
    def _as_the_station_reads_it(cls, value: str) -> str:
        return normalize_lml_url(value)


class BudgetSettings(EnvSettings):
    """The LML budget every process shares (kept in Redis)."""

    rate_per_second: float = Field(1.0, ge=0.01, validation_alias="LML_RATE_PER_SECOND")
    max_concurrent: int = Field(5, ge=1, validation_alias="LML_MAX_CONCURRENT")
    live_reserve: float = Field(0.5, ge=0, lt=1, validation_alias="LML_LIVE_RESERVE")
    # Calls saved for a burst (the station's client keeps 50).
    burst: int = Field(DEFAULT_BURST, ge=1, validation_alias="LML_BURST")

    def limits(self) -> BudgetLimits:
        return BudgetLimits(
            self.rate_per_second, self.max_concurrent, self.live_reserve, self.burst
        )


class EnrichSettings(EnvSettings):
    """The sidecar's fast path."""

    consumers: int = Field(1, ge=1, validation_alias="WX_ENRICH_CONSUMERS")
    cache_ttl_s: float = Field(3600.0, ge=1, validation_alias="WX_ENRICH_CACHE_TTL_S")
    max_budget_wait_s: float = Field(
        FAST_PATH_BUDGET_WAIT_S, ge=1, validation_alias="WX_ENRICH_MAX_BUDGET_WAIT_S"
    )


def _origins(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(origin.strip() for origin in value.split(",") if origin.strip())
    return value


class LiveSettings(EnvSettings):
    """The live feed (SSE)."""

    stream_maxlen: int = Field(10_000, ge=1, validation_alias="WX_LIVE_STREAM_MAXLEN")
    max_connections: int = Field(2_000, ge=1, validation_alias="WX_LIVE_MAX_CONNECTIONS")
    queue_bytes: int = Field(1 << 20, ge=1024, validation_alias="WX_LIVE_QUEUE_BYTES")
    keepalive_s: float = Field(15.0, ge=0.05, validation_alias="WX_LIVE_KEEPALIVE_S")
    # Set but empty turns CORS off, so this one variable keeps its empty value.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        ("*",), validation_alias="WX_LIVE_CORS_ORIGINS"
    )

    _split = field_validator("cors_origins", mode="before")(_origins)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        live = super().from_env(env)
        env = os.environ if env is None else env
        if env.get("WX_LIVE_CORS_ORIGINS") == "":
            return live.model_copy(update={"cors_origins": ()})
        return live


class SidecarSettings(EnvSettings):
    host: str = Field("127.0.0.1", validation_alias="WX_SIDECAR_HOST")
    port: int = Field(8686, ge=1, le=65535, validation_alias="WX_SIDECAR_PORT")
    # /readyz details (raw errors naming hosts and users) for clients beyond loopback too.
    readyz_details: bool = Field(False, validation_alias="WX_SIDECAR_READYZ_DETAILS")
    roles: str = Field("", validation_alias="WX_SIDECAR_ROLES")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", validation_alias="WX_LOG_LEVEL"
    )

    @field_validator("readyz_details", mode="before")
    @classmethod
    def _one_or_zero(cls, value: Any) -> Any:
        # Raw errors name hosts and users: only an explicit 1 shows them beyond loopback.
        if isinstance(value, str) and value.strip() not in ("0", "1"):
            raise ValueError("use 1 (on) or 0 (off)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


class SentrySettings(EnvSettings):
    dsn: SecretStr = Field(SecretStr(""), validation_alias="SENTRY_DSN")
    environment: str = Field("production", validation_alias="WX_ENVIRONMENT")


class ChecksSettings(EnvSettings):
    """What the asset checks and reports compare against, and where reports go."""

    freshness_target_s: float = Field(30.0, ge=0.1, validation_alias="WX_FRESHNESS_TARGET_S")
    report_dir: str = Field("reports", validation_alias="WX_REPORT_DIR")


class Settings(BaseModel):
    """Every component's settings, validated together once per process."""

    model_config = ConfigDict(frozen=True)

    database: DatabaseSettings
    redis: RedisSettings
    lml: LmlSettings
    budget: BudgetSettings
    enrich: EnrichSettings
    live: LiveSettings
    sidecar: SidecarSettings
    sentry: SentrySettings
    checks: ChecksSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        settings = cls(
            database=DatabaseSettings.from_env(env),
            redis=RedisSettings.from_env(env),
            lml=LmlSettings.from_env(env),
            budget=BudgetSettings.from_env(env),
            enrich=EnrichSettings.from_env(env),
            live=LiveSettings.from_env(env),
            sidecar=SidecarSettings.from_env(env),
            sentry=SentrySettings.from_env(env),
            checks=ChecksSettings.from_env(env),
        )
        return settings

    def check_timing(self, reclaim_idle_s: float = RECLAIM_IDLE_S) -> None:
        """The fast path's worst batch fits inside the reclaim idle (`core.timing`); the
        sidecar checks it at start when it runs the fast path."""
        try:
            check_fast_path(
                max_budget_wait_s=self.enrich.max_budget_wait_s,
                lml_timeout_s=self.lml.timeout_s,
                reclaim_idle_s=reclaim_idle_s,
            )
        except ClaimTimingError as err:
            raise SettingsError(str(err)) from None

    def require(self, *names: str) -> None:
        """Fail with one message listing every required variable that is unset."""
        fields = {
            "DATABASE_URL": self.database.url,
            "REDIS_URL": self.redis.url,
            "LIBRARY_METADATA_URL": self.lml.url,
        }
        missing = [name for name in names if not fields.get(name)]
        if missing:
            raise SettingsError(f"required environment variable(s) not set: {', '.join(missing)}")
