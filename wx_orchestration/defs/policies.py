"""Retry and freshness policies shared by the LML-bound assets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import ValidationError, model_validator

from wx_orchestration.clients.lml import LmlError

# A run that dies on a dropped database connection or a failover tries again; rows it had
# claimed are released by its own error path or the stale sweep. Failures that a retry cannot
# fix (a refused API key, a wrong partition key) are raised with allow_retries=False.
TRANSIENT_RETRY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class NoRetryConfig(dg.Config):
    """Run config whose invalid values fail the step once, naming the field, instead of being
    retried by TRANSIENT_RETRY (Dagster builds the config inside the retried step)."""

    @model_validator(mode="wrap")
    @classmethod
    def _invalid_config_is_final(cls, data: object, handler: Callable[[object], Any]) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            raise dg.Failure(
                description=f"invalid run config for {cls.__name__}: {exc}", allow_retries=False
            ) from None


@contextmanager
def key_refusal_is_final() -> Iterator[None]:
    """Around an LML-bound flow, whose only escaping `LmlError` is a refused key (its rows given
    back first): the step fails once, saying what to fix, since no retry can."""
    try:
        yield
    except LmlError as exc:
        raise dg.Failure(
            description=f"LML refused the API key (HTTP {exc.status}); check LML_API_KEY.",
            allow_retries=False,
        ) from None
