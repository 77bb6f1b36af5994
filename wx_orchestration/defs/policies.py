"""Retry and freshness policies shared by the LML-bound assets."""

from __future__ import annotations

import dagster as dg

# A run that dies on a dropped database connection or a failover tries again; rows it had
# claimed are released by its own error path or the stale sweep. Failures that a retry cannot
# fix (a refused API key, a wrong partition key) are raised with allow_retries=False.
TRANSIENT_RETRY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
