"""Every environment variable wx_orchestration reads, validated in one place.

Dagster resources read the same names through `EnvVar` (see `defs/resources.py`); the sidecar and
the `wx` command use `Settings.from_env()`. README.md documents each of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from wx_orchestration.contracts.lml import DEFAULT_LML_RETRY_AFTER_CAP_S, normalize_lml_url
from wx_orchestration.core.budget import DEFAULT_BURST

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


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str
    station_schema: str
    redis_url: str
    lml_url: str
    lml_api_key: str
    lml_timeout_s: float
    sentry_dsn: str
    lml_rate_per_second: float
    lml_max_concurrent: int
    lml_live_reserve: float
    # Calls saved for a burst, shared by every process (the station's client keeps 50).
    lml_burst: int
    sidecar_host: str
    sidecar_port: int
    freshness_target_s: float
    # The longest LML `Retry-After` honoured; longer ones are capped (and logged).
    lml_retry_after_cap_s: float = DEFAULT_LML_RETRY_AFTER_CAP_S
    # /readyz details (raw errors naming hosts and users) for clients beyond loopback.
    sidecar_readyz_details: bool = False

    def __repr__(self) -> str:
        # Secrets stay out of reprs, which end up in tracebacks and logs.
        return (
            f"Settings(database_url={redact_url(self.database_url)!r}, "
            f"station_schema={self.station_schema!r}, redis_url={redact_url(self.redis_url)!r}, "
            f"lml_url={self.lml_url!r}, lml_api_key={'***' if self.lml_api_key else ''!r}, "
            f"sentry_dsn={'***' if self.sentry_dsn else ''!r})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        reserve = env_float(env, "LML_LIVE_RESERVE", 0.5)
        if reserve > 1:
            raise SettingsError(f"LML_LIVE_RESERVE={reserve} must be between 0 and 1")
        return cls(
            database_url=env.get("DATABASE_URL", ""),
            station_schema=validate_schema_name(
                env.get("WXYC_SCHEMA_NAME", "") or DEFAULT_STATION_SCHEMA
            ),
            redis_url=env.get("REDIS_URL", ""),
            lml_url=normalize_lml_url(env.get("LIBRARY_METADATA_URL", "")),
            lml_api_key=env.get("LML_API_KEY", ""),
            lml_timeout_s=env_float(env, "LML_TIMEOUT_S", 10.0, minimum=0.1),
            sentry_dsn=env.get("SENTRY_DSN", ""),
            lml_rate_per_second=env_float(env, "LML_RATE_PER_SECOND", 1.0, minimum=0.01),
            lml_max_concurrent=env_int(env, "LML_MAX_CONCURRENT", 5, minimum=1),
            lml_live_reserve=reserve,
            lml_burst=env_int(env, "LML_BURST", DEFAULT_BURST, minimum=1),
            sidecar_host=env.get("WX_SIDECAR_HOST", "") or "127.0.0.1",
            sidecar_port=env_int(env, "WX_SIDECAR_PORT", 8686, minimum=1),
            freshness_target_s=env_float(env, "WX_FRESHNESS_TARGET_S", 30.0, minimum=0.1),
            lml_retry_after_cap_s=env_float(
                env, "LML_RETRY_AFTER_CAP_S", DEFAULT_LML_RETRY_AFTER_CAP_S
            ),
            sidecar_readyz_details=env.get("WX_SIDECAR_READYZ_DETAILS", "").strip() == "1",
        )

    def require(self, *names: str) -> None:
        """Fail with one message listing every required variable that is unset."""
        fields = {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "LIBRARY_METADATA_URL": self.lml_url,
        }
        missing = [name for name in names if not fields.get(name)]
        if missing:
            raise SettingsError(f"required environment variable(s) not set: {', '.join(missing)}")


def flowsheet_max_lead_from_env(env: Mapping[str, str] | None = None) -> float:
    """`WX_FLOWSHEET_MAX_LEAD_S` (default 5): how far ahead of the clock our statements may push
    the station's `Last-Modified` (`flowsheet_watermark`); 0 turns pacing off."""
    env = os.environ if env is None else env
    value = env_float(env, "WX_FLOWSHEET_MAX_LEAD_S", 5.0)
    if 0 < value < 4:
        raise SettingsError(
            f"WX_FLOWSHEET_MAX_LEAD_S={value} leaves no room for a claim: use 0 (off) or >= 4"
        )
    return value


def report_dir_from_env(env: Mapping[str, str] | None = None) -> str:
    """`WX_REPORT_DIR` (default `reports`): where `enrichment_report` writes its HTML page."""
    env = os.environ if env is None else env
    return env.get("WX_REPORT_DIR") or "reports"
