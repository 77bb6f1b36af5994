"""Who holds a claim: one session advisory lock per claimed row, held by its worker's process.

A claim that outlives the stale sweep's lease is either abandoned (its worker died) or stuck
behind a database its live worker could not reach to finalize it. Only the first is the row's
fault. The station's `flowsheet` has no column for a claim's owner and we never alter it, so the
owner shows in `pg_locks` instead: while a worker holds claimed rows, a connection of its process
holds lock (`CLAIM_LOCK_CLASS`, row id) on each. A session ends with its process, so a lock
still held means its worker is alive. Locks are taken with the try- form: a lock already held
by another live session (an earlier claimer still waiting to write) says the same.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import LiteralString

import psycopg

# Key 1 of the two-int4 advisory lock form (key 2 is the flowsheet id); as text too, so that
# queries quoting it stay literal SQL.
_CLASS_TEXT: LiteralString = "2004353025"
CLAIM_LOCK_CLASS = int(_CLASS_TEXT)

# For a query on `flowsheet AS f`: whether a live session holds the lock of the row `f`.
CLAIM_HELD = f"""EXISTS (
    SELECT 1 FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.classid = {_CLASS_TEXT} AND l.objid = f.id::oid
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"""


def hold_claims(conn: psycopg.Connection, ids: Collection[int]) -> set[int]:
    """Lock the rows `ids` on `conn`'s session; returns those it locked (not held elsewhere)."""
    if not ids:
        return set()
    rows = conn.execute(
        "SELECT id FROM unnest(%s::int[]) AS id WHERE pg_try_advisory_lock(%s, id)",
        (list(ids), CLAIM_LOCK_CLASS),
    ).fetchall()
    return {row[0] for row in rows}


def let_go_of_claims(conn: psycopg.Connection, ids: Collection[int]) -> None:
    """Unlock rows this session locked (`hold_claims` said which)."""
    if ids:
        conn.execute(
            "SELECT pg_advisory_unlock(%s, id) FROM unnest(%s::int[]) AS id",
            (CLAIM_LOCK_CLASS, list(ids)),
        )
