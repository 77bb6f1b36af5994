"""Sentry for the sidecar: initialised only when `SENTRY_DSN` is set, with secrets scrubbed."""

from __future__ import annotations

import logging
import os
from typing import Any

import sentry_sdk

from wx_orchestration.core.scrub import Scrubber, secrets_from_env
from wx_orchestration.settings import SentrySettings

log = logging.getLogger("wx_orchestration.sidecar")

_scrub = Scrubber(secrets_from_env(os.environ))


def _before_send(event: Any, _hint: Any) -> Any:
    return _scrub(event)


def init_sentry(settings: SentrySettings, *, instance: str) -> bool:
    dsn = settings.dsn.get_secret_value()
    if not dsn:
        return False
    sentry_sdk.init(
        dsn=dsn,
        environment=settings.environment,
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
