"""Sentry for the sidecar: initialised only when `SENTRY_DSN` is set, with secrets scrubbed."""

from __future__ import annotations

import logging
import re
from typing import Any

import sentry_sdk

log = logging.getLogger("wx_orchestration.sidecar")

# user:password@ in any URL (libpq, redis, the DSN itself).
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)
_SECRET_KEYS = re.compile(r"(password|passwd|secret|token|api_key|dsn|authorization)", re.I)


def scrub(value: Any) -> Any:
    """`value` with passwords in URLs and values under secret-looking keys replaced."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", value)
    if isinstance(value, dict):
        return {
            k: "***" if isinstance(k, str) and _SECRET_KEYS.search(k) else scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _before_send(event: Any, _hint: Any) -> Any:
    return scrub(event)


def init_sentry(dsn: str, *, instance: str) -> bool:
    if not dsn:
        return False
    sentry_sdk.init(
        dsn=dsn,
        send_default_pii=False,
        before_send=_before_send,
        before_breadcrumb=_before_send,
        server_name=instance,
    )
    sentry_sdk.set_tag("component", "wx-sidecar")
    log.info("Sentry reporting enabled")
    return True


def report_cdc_error(description: str, *, table: str | None, action: str | None) -> None:
    """A change the trigger could not notify; a no-op when Sentry is not initialised."""
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("cdc_table", table or "?")
        scope.set_tag("cdc_action", action or "?")
        scope.fingerprint = ["wx-sidecar", "cdc_error", table or "?"]
        sentry_sdk.capture_message(f"cdc_error: {description}", level="error")
