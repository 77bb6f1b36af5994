"""Secrets out of anything that leaves the process (Sentry events, breadcrumbs). Pure.

Three nets: known secret values (the LML key, database passwords, the Sentry DSN) replaced
wherever they appear; `user:password@` in any URL; values under secret-looking keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)
_SECRET_KEYS = re.compile(r"(password|passwd|secret|token|api_key|apikey|dsn|authorization)", re.I)
MASK = "***"


def secrets_from_env(env: dict[str, str] | Any) -> list[str]:
    """The secret values configured for this process, by their documented variable names."""
    values = [env.get("LML_API_KEY", ""), env.get("SENTRY_DSN", "")]
    for name in ("DATABASE_URL", "REDIS_URL", "DAGSTER_PG_URL", "SENTRY_DSN"):
        url = env.get(name, "")
        if url and "://" in url:
            parts = urlsplit(url)
            values += [parts.password or "", parts.username if name == "SENTRY_DSN" else ""]
    # Short values would mask ordinary words; keys and passwords worth hiding are longer.
    return sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)


class Scrubber:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in secrets if s]

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, MASK)
        return _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{MASK}@", value)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                k: MASK if isinstance(k, str) and _SECRET_KEYS.search(k) else self(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value
