"""This process's hold on the rows its fast path has claimed (`db.claim_locks`).

The locks live on a connection of their own, not a pooled one: a cut of the connection a
finalize runs on must not look like a dead worker to the stale sweep. Holding them is best
effort: with the database out of reach the claim goes on, and the locks are taken again at the
next use of a new connection. Rows whose finalize was given up stay held for a while
(`GIVEN_UP_HOLD_S`, far longer than any sweep lease), so the sweep that resets them sees their
worker alive and does not count the lost connection as the rows' fault.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection

import psycopg

from wx_orchestration.db.claim_locks import hold_claims, let_go_of_claims

log = logging.getLogger("wx_orchestration.sidecar.claims")

GIVEN_UP_HOLD_S = 600.0


class ClaimLocks:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._conn: psycopg.Connection | None = None
        # Rows claimed and not yet written: locked again on a new session after a cut.
        self._wanted: set[int] = set()
        # Rows the current session holds a lock on.
        self._held: set[int] = set()
        # Rows whose write was given up → when to stop holding them (monotonic seconds).
        self._given_up: dict[int, float] = {}
        self._failing = False
        self._lock = threading.Lock()

    def hold(self, ids: Collection[int]) -> None:
        """Rows just claimed."""
        with self._lock:
            now = time.monotonic()
            expired = {row for row, until in self._given_up.items() if until <= now}
            for row in expired | set(ids):
                self._given_up.pop(row, None)
            self._wanted = (self._wanted - expired) | set(ids)
            self._sync()

    def done(self, ids: Collection[int]) -> None:
        """Work on the rows is over: written (finalized, released, found taken by another), or
        given up, in which case they stay held for `GIVEN_UP_HOLD_S`."""
        with self._lock:
            self._wanted -= set(ids) - self._given_up.keys()
            self._sync()

    def gave_up(self, ids: Collection[int]) -> None:
        """The rows could not be written and stay claimed until the sweep resets them."""
        with self._lock:
            until = time.monotonic() + GIVEN_UP_HOLD_S
            self._given_up.update(dict.fromkeys(ids, until))

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _sync(self) -> None:
        # Twice: a session cut since the last use shows only when a statement fails on it.
        for attempt in (1, 2):
            try:
                conn = self._connection()
                self._held |= hold_claims(conn, self._wanted - self._held)
                let_go_of_claims(conn, self._held - self._wanted)
                self._held &= self._wanted
            except psycopg.Error as err:
                self._drop()
                if attempt == 2:
                    if not self._failing:
                        log.warning("claim locks not held (%s); taken again when it answers", err)
                    self._failing = True
            else:
                if self._failing:
                    log.info("claim locks held again")
                self._failing = False
                return

    def _connection(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = psycopg.connect(
                self.database_url,
                autocommit=True,
                connect_timeout=5,
                application_name="wx-sidecar claim locks",
            )
            self._held = set()
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._held = set()
