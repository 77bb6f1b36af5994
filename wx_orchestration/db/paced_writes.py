"""Transactions that write `flowsheet`, paced to keep the station's Last-Modified honest.

See `core.watermark_lead` for why. Our writers (sidecars, backlog runs, sweeps, in any number of
processes) take one transaction-scoped advisory lock, read our own statements' watermark, write,
and move it in the same transaction, so two of ours can never both take the same room. The
station's own writers never take the lock, so they wait on nothing new. A wait happens between
transactions: nothing is locked and no claim time is taken while we wait.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from wx_orchestration.core.watermark_lead import LeadPolicy
from wx_orchestration.settings import DatabaseSettings

_PACE_LOCK = int.from_bytes(
    hashlib.sha256(b"wx_orchestration:flowsheet writes").digest()[:8], "big", signed=True
)
# Relative to the clock now, not to the transaction's start: the lock may have been waited for.
_OWN_LEAD = """
SELECT extract(epoch FROM greatest(next_at, clock_timestamp()) - clock_timestamp())::float8
FROM wx_orchestration.flowsheet_write_pace
"""
_MOVE = """
UPDATE wx_orchestration.flowsheet_write_pace
SET next_at = greatest(next_at, clock_timestamp()) + make_interval(secs => %s)
"""


@contextmanager
def flowsheet_transaction(
    conn: psycopg.Connection, *, statements: int = 2, policy: LeadPolicy | None = None
) -> Iterator[float]:
    """A transaction on autocommit `conn` for at most `statements` statements that write
    `flowsheet`, begun once our share of the watermark's lead leaves room for them. Yields the
    seconds waited."""
    if not conn.autocommit:
        raise ValueError("flowsheet_transaction needs an autocommit connection")
    policy = policy or LeadPolicy(max_lead_s=DatabaseSettings.from_env().max_lead_s)
    if policy.max_lead_s <= 0 or statements == 0:
        # Unpaced writes (tests, one-off loads), and transactions that write no flowsheet row,
        # neither wait nor leave debt for paced ones.
        with conn.transaction():
            yield 0.0
        return
    waited = 0.0
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PACE_LOCK,))
            row = conn.execute(_OWN_LEAD).fetchone()
            wait = policy.wait_s(row[0] if row else 0.0, statements)
            if wait <= 0:
                yield waited
                conn.execute(_MOVE, (float(statements),))
                return
        time.sleep(wait)
        waited += wait


def room_wait_s(conn: psycopg.Connection, statements: int, policy: LeadPolicy) -> float:
    """Seconds until our statements' lead leaves room for `statements` more, read without the
    pace lock: a caller that waits for room before it takes its work makes the work wait, not a
    claim, and takes more of it."""
    if policy.max_lead_s <= 0:
        return 0.0
    row = conn.execute(_OWN_LEAD).fetchone()
    return policy.wait_s(row[0] if row else 0.0, statements)


_LEADS = """
SELECT extract(epoch FROM w.last_modified_at - clock_timestamp())::float8,
       extract(epoch FROM p.next_at - clock_timestamp())::float8
FROM {}.flowsheet_watermark AS w, wx_orchestration.flowsheet_write_pace AS p
"""


def watermark_leads(conn: psycopg.Connection, schema: str) -> tuple[float, float]:
    """How far the station's `Last-Modified` stands ahead of the clock now, and how far our own
    statements alone would have put it (negative: behind the clock)."""
    row = conn.execute(sql.SQL(_LEADS).format(sql.Identifier(schema))).fetchone()
    if row is None:
        raise LookupError("flowsheet_watermark or flowsheet_write_pace has no row")
    return row[0], row[1]
