"""Bridge role: Postgres NOTIFY → stream `wx:cdc`, losing nothing (DESIGN.md §2, §6).

NOTIFY is only a wake-up. What makes the bridge lossless is the watermark: the newest
(`updated_at`, `id`) it has written to the stream, saved in `wx_orchestration.cdc_watermark`
only after the XADD succeeded. After every (re)connect it LISTENs first and then scans the
rows changed meanwhile, writing them as CATCHUP events. Whatever arrives both ways is one event
downstream (same event key). Where a scan starts, and when it replays what a lost stream took
with it, are rules of their own: `core/replay_plan.py`.

One bridge is active at a time: it holds a session advisory lock on a connection of its own,
which also sends the liveness pings its LISTEN connection must echo. If the process dies, the
session ends, the lock is free and a standby takes over, starting with a catch-up.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import redis
from psycopg import sql

from wx_orchestration.contracts.cdc import (
    CDC_CHANNEL,
    CDC_CHANNELS,
    CDC_ERROR_CHANNEL,
    CDC_OVERSIZED_CHANNEL,
    CDC_STREAM,
    FLOWSHEET_TABLE,
    PAYLOAD_FIELD,
    CdcError,
    CdcNotification,
    CdcOversized,
    NotificationError,
    StreamEvent,
    catchup_entry_json,
)
from wx_orchestration.core.change_hints import ChangeHint, events_from_hints, hinted_row_ids
from wx_orchestration.core.events import fit_entry, row_cursor
from wx_orchestration.core.outage import Outage
from wx_orchestration.core.replay_plan import GroupMark, plan_catch_up, stream_lost
from wx_orchestration.db.events import (
    DeadLetter,
    Watermark,
    cdc_source,
    consumer_marks,
    fetch_changed_rows,
    insert_dead_letters,
    load_stream_entries_added,
    load_watermark,
    oldest_mark_age_s,
    open_changed_rows,
    read_flowsheet_rows,
    save_watermark,
)
from wx_orchestration.db.paced_writes import watermark_leads
from wx_orchestration.settings import redact_url
from wx_orchestration.sidecar.roles import SidecarContext
from wx_orchestration.sidecar.sentry import report_cdc_error

log = logging.getLogger("wx_orchestration.sidecar.bridge")

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
# Every entry of a batch in one command: a pipeline of XADDs costs twice as much per entry,
# mostly in packing each command, which bounds how fast a catch-up can move a tie block.
_XADD_ALL = """
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[i])
end
return #ARGV - 2
"""
# While a catch-up runs, the watermark is saved at most this often.
_SCAN_SAVE_EVERY_S = 1.0
# How long one wait for notifications may last, so that pings and `stop` are noticed.
_POLL_S = 0.25
# How long a drain that found notifications waits for more of the same statement's.
_DRAIN_WAIT_S = 0.001


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _still_connected(conn: psycopg.Connection) -> bool:
    """Whether `conn` still has its session (asked, not assumed: a cut one looks fine until
    used)."""
    if conn.closed or conn.broken:
        return False
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


class LostLeadership(Exception):
    """The session holding the advisory lock is gone; another bridge may be active now."""


class RedisTooOld(Exception):
    """XINFO STREAM has no `entries-added` (Redis < 7), so a lost stream cannot be told."""


@dataclass(frozen=True)
class _Entry:
    """One `wx:cdc` entry on its way out: its JSON body and the row position it bridges."""

    action: str
    payload: str
    cursor: Watermark | None

    @classmethod
    def of(cls, event: StreamEvent) -> _Entry:
        position = row_cursor(event.row)
        return cls(
            event.action,
            _fitted(event.to_json()),
            None if position is None else Watermark(*position),
        )


def _fitted(payload: str) -> str:
    fitted = fit_entry(payload)
    if fitted is not payload:
        log.warning(
            "an event of %d bytes was cut to %d to fit the stream (its text columns are"
            " shortened, its key is whole)",
            len(payload.encode("utf-8", "surrogatepass")),
            len(fitted.encode("utf-8", "surrogatepass")),
        )
    return fitted


class _CatchUpScan:
    """One catch-up in progress: a cursor over the rows changed since `start`, on a connection
    of its own, read a page at a time between rounds of live notifications."""

    def __init__(
        self, url: str, schema: str, start: Watermark, replay: bool, page_size: int
    ) -> None:
        self.start = start
        self.page_size = page_size
        self.replay = replay
        # Every row of the scan before here has been written to the stream (rows sharing an
        # `updated_at` come in no order, so the position is a time: `flowsheet_id` 0).
        self.position = Watermark(start.updated_at, 0)
        self.bridged = 0
        self.conn = psycopg.connect(url, application_name="wx-sidecar bridge catch-up")
        try:
            self.conn.execute("SET TRANSACTION READ ONLY")
            self.cursor = open_changed_rows(self.conn, schema, start.updated_at)
        except BaseException:
            self.conn.close()
            raise
        # The next page is read while the current one is written to Redis: the two waits
        # overlap, and a catch-up takes the longer of them rather than their sum.
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="wx-catch-up")
        self._next = self._reader.submit(fetch_changed_rows, self.cursor, page_size)

    def fetch(self) -> list[tuple[Watermark, str]]:
        page = self._next.result()
        if len(page) == self.page_size:
            self._next = self._reader.submit(fetch_changed_rows, self.cursor, self.page_size)
        return page

    def close(self) -> None:
        self._reader.shutdown(wait=True, cancel_futures=True)
        try:
            self.conn.close()
        except psycopg.Error as err:  # closing a broken connection
            log.debug("closing the catch-up connection: %s", err)


class CdcBridge:
    name = "bridge"

    def __init__(self, ctx: SidecarContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.metrics = ctx.metrics
        self.url = ctx.settings.database.url
        self.schema = ctx.settings.database.station_schema
        self.pool = ctx.pool()
        self.redis = ctx.redis()
        self._xadd_all = self.redis.register_script(_XADD_ALL)
        self.watermark_name = cdc_source(self.schema)
        digest = hashlib.sha256(f"wx_cdc_bridge:{self.schema}".encode()).digest()
        self.lock_key = int.from_bytes(digest[:8], "big", signed=True)
        self.ping_channel = f"wx_bridge_ping_{uuid.uuid4().hex[:16]}"
        self.listen_alive = False
        self._watermark: Watermark | None = None
        # The newest row position written to the stream, live or by catch-up.
        self._newest: Watermark | None = None
        self._catchup_due = True
        # Lowest row position a failed XADD (or an abandoned scan) left unbridged; the next
        # catch-up starts there, and the watermark is not saved past it.
        self._catchup_floor: Watermark | None = None
        self._scan: _CatchUpScan | None = None
        # What `entries-added` of the stream should be at least: as saved with the watermark or
        # last seen, plus our XADDs (None: not known yet).
        self._stream_added: int | None = None
        # The value the watermark's row holds, so that a change of it alone is saved too.
        self._saved_added: int | None = None
        self._saved_at = 0.0
        self._gauges_failing = False
        # A first look counts a missing or empty stream as lost even when no count was saved.
        self._first_look = True
        # The stream was lost: the next catch-up replays what its consumers had not finished.
        self._replay_due = False

    # --- lifecycle ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        outage = Outage()
        while not stop.is_set():
            try:
                with self._leadership(stop, outage) as lock_conn:
                    if lock_conn is not None:
                        self._lead(lock_conn, stop, outage)
            except (psycopg.OperationalError, LostLeadership) as err:
                delay, first = outage.failed(time.monotonic())
                if first:
                    log.warning(
                        "bridge lost its database session (%s); retrying with backoff (up to"
                        " %.0f s) until it is back",
                        err,
                        outage.cap_s,
                    )
                stop.wait(delay)
            except RedisTooOld as err:
                log.error("bridge stopped: %s", err)
                return
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as err:
                # Restarting cannot help; one line says what will.
                log.error(
                    "bridge stopped: %s (run `wx migrate`; is WXYC_SCHEMA_NAME right?)",
                    err.diag.message_primary,
                )
                return
            finally:
                self._abandon_scan()
                self._set_state("off")
                self.listen_alive = False
                self.metrics.listen_alive.set(0)
                self.metrics.oldest_mark_age.set(0)

    def readiness(self) -> tuple[bool, str]:
        state = self.ctx.bridge_state
        if state == "leader":
            return (
                self.listen_alive,
                "leader, listening" if self.listen_alive else "leader, reconnecting",
            )
        return (state == "standby", state)

    def _set_state(self, state: str) -> None:
        self.ctx.bridge_state = state
        self.metrics.bridge_leader.set(1 if state == "leader" else 0)

    def _recovered(self, outage: Outage, what: str) -> None:
        lasted = outage.recovered(time.monotonic())
        if lasted is not None:
            log.info("%s is back after %.1f s", what, lasted)

    @contextmanager
    def _leadership(
        self, stop: threading.Event, outage: Outage
    ) -> Iterator[psycopg.Connection | None]:
        """Wait as a standby until this process holds the bridge lock (None: stopping)."""
        with psycopg.connect(
            self.url, autocommit=True, application_name="wx-sidecar bridge lock"
        ) as conn:
            self._recovered(outage, "the bridge's database session")
            self._set_state("standby")
            while not stop.is_set():
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_key,)).fetchone()
                if row and row[0]:
                    log.info("bridge is the leader on %s", redact_url(self.url))
                    self._set_state("leader")
                    self._catchup_due = True
                    # Another leader may have added entries since this process last led.
                    with self.pool.connection() as pooled:
                        self._stream_added = load_stream_entries_added(pooled, self.watermark_name)
                    self._saved_added = self._stream_added
                    self._first_look = True
                    yield conn
                    return
                stop.wait(self.config.standby_poll_s)
            yield None

    def _lead(self, lock_conn: psycopg.Connection, stop: threading.Event, outage: Outage) -> None:
        connected_before = False
        while not stop.is_set():
            try:
                with psycopg.connect(
                    self.url, autocommit=True, application_name="wx-sidecar bridge listen"
                ) as listen:
                    for channel in (*CDC_CHANNELS, self.ping_channel):
                        listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self._recovered(outage, "the LISTEN connection")
                    if connected_before:
                        self.metrics.reconnects.labels("reconnect").inc()
                    connected_before = True
                    # LISTEN is in place before the scan, so nothing falls between the two; a
                    # scan begun before this connection could have missed what fell between.
                    self._abandon_scan()
                    self._catchup_due = True
                    self._listen(listen, lock_conn, stop)
            except psycopg.OperationalError as err:
                if not _still_connected(lock_conn):
                    raise LostLeadership(str(err)) from err
                self.listen_alive = False
                self.metrics.listen_alive.set(0)
                self.metrics.reconnects.labels("connection_lost").inc()
                delay, first = outage.failed(time.monotonic())
                if first:
                    log.warning(
                        "LISTEN connection lost (%s); reconnecting with backoff (up to %.0f s)",
                        err,
                        outage.cap_s,
                    )
                stop.wait(delay)

    def _listen(
        self, listen: psycopg.Connection, lock_conn: psycopg.Connection, stop: threading.Event
    ) -> None:
        """Bridge notifications until stopped or until the connection stops echoing pings.

        A catch-up runs a page at a time between rounds of notifications, so live changes keep
        reaching the stream however long the catch-up is.
        """
        next_ping = 0.0
        ping_sent_at: float | None = None
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_ping:
                next_ping = now + self.config.ping_interval_s
                self._check_stream()
                self._report_mark_age()
                if ping_sent_at is None:
                    ping_sent_at = now
                    try:
                        lock_conn.execute("SELECT pg_notify(%s, '')", (self.ping_channel,))
                    except psycopg.OperationalError as err:
                        raise LostLeadership(str(err)) from err
            if ping_sent_at is not None and now - ping_sent_at > self.config.ping_timeout_s:
                log.warning("LISTEN connection did not echo a ping in time; reconnecting")
                self.metrics.reconnects.labels("echo_timeout").inc()
                return
            if self._catchup_due and self._scan is None:
                self._start_catch_up()
            if self._scan is not None:
                self._catch_up_page(stop)
            wait = 0 if self._scan is not None else _POLL_S
            notes = list(listen.notifies(timeout=wait, stop_after=1))
            self._drain(listen, notes)
            if any(n.channel == self.ping_channel for n in notes):
                ping_sent_at = None
                self.listen_alive = True
                self.metrics.listen_alive.set(1)
            self._bridge_notifications([n for n in notes if n.channel != self.ping_channel])

    def _drain(self, listen: psycopg.Connection, notes: list[psycopg.Notify]) -> None:
        """Add what else has arrived. A statement's notifications come together but over several
        socket reads; a drain that found some waits a moment for the rest, so that a burst is
        one publish (and the fast path's first call a full one). A lone play waits for nothing."""
        page = self.config.catchup_page
        wait = 0.0
        while notes and len(notes) < page:
            more = list(listen.notifies(timeout=wait, stop_after=page - len(notes)))
            if not more:
                return
            notes += more
            wait = _DRAIN_WAIT_S

    # --- notifications → stream -----------------------------------------------------------

    def _bridge_notifications(self, notes: Sequence[psycopg.Notify]) -> None:
        """Read the notified rows by id and publish them as the table holds them."""
        hints: list[ChangeHint] = []
        letters: list[DeadLetter] = []
        for note in notes:
            try:
                hint = self._hint(note)
            except NotificationError as err:
                letters.append(DeadLetter(f"notify/{note.channel}", None, note.payload, str(err)))
                continue
            if isinstance(hint, DeadLetter):
                letters.append(hint)
            elif hint is not None:
                hints.append(hint)
        if letters:
            with self.pool.connection() as conn:
                insert_dead_letters(conn, letters)
            for letter in letters:
                self.metrics.dead_letters.labels(letter.source).inc()
        if not hints:
            return
        with self.pool.connection() as conn:
            rows = read_flowsheet_rows(conn, self.schema, hinted_row_ids(hints))
        planned = events_from_hints(hints, rows, _now_ms())
        if planned.contradicted:
            self.metrics.notifications_ignored.inc(planned.contradicted)
            log.warning(
                "%d DELETE notification(s) for rows that exist were not bridged (not sent by the"
                " trigger)",
                planned.contradicted,
            )
        self._publish([_Entry.of(event) for event in planned.events])

    def _hint(self, note: psycopg.Notify) -> ChangeHint | DeadLetter | None:
        """What a notification says changed: a row of our flowsheet, a dead letter, or None."""
        if note.channel == CDC_CHANNEL:
            change = CdcNotification.parse(note.payload)
            # NOTIFY reaches every schema of the database: only ours is bridged.
            if change.table != FLOWSHEET_TABLE or change.schema != self.schema:
                self.metrics.notifications_ignored.inc()
                return None
            return ChangeHint(change.row_id(), change.action, change.timestamp_ms)
        if note.channel == CDC_OVERSIZED_CHANNEL:
            pointer = CdcOversized.parse(note.payload)
            if pointer.table != FLOWSHEET_TABLE or pointer.schema != self.schema:
                self.metrics.notifications_ignored.inc()
                return None
            row_id = pointer.row_id()
            if row_id is None:
                log.warning("oversized %s without a key; catching up instead", pointer.action)
                self._catchup_due = True
                return None
            return ChangeHint(row_id, pointer.action, pointer.timestamp_ms)
        if note.channel == CDC_ERROR_CHANNEL:
            return self._cdc_error(note.payload)
        return None

    def _cdc_error(self, payload: str) -> DeadLetter:
        error = CdcError.parse(payload)
        log.error("cdc_error on %s (%s): %s", error.table, error.action, error.describe())
        report_cdc_error(error.describe(), table=error.table, action=error.action)
        if error.table in (None, FLOWSHEET_TABLE):
            # The change committed without a notification; the scan will find the row.
            self._catchup_due = True
        return DeadLetter(f"notify/{CDC_ERROR_CHANNEL}", None, payload, error.describe())

    def _publish(self, entries: Sequence[_Entry]) -> bool:
        """XADD the entries, then move the watermark; on a Redis failure, arrange a catch-up."""
        if not entries:
            return True
        try:
            self._xadd_all(
                keys=[CDC_STREAM],
                args=[self.config.stream_maxlen, PAYLOAD_FIELD, *(e.payload for e in entries)],
            )
        except _REDIS_DOWN as err:
            self._unbridged(entries, err)
            return False
        if self._stream_added is not None:
            self._stream_added += len(entries)
        for action, count in Counter(e.action for e in entries).items():
            self.metrics.events_bridged.labels(action).inc(count)
        cursors = [e.cursor for e in entries if e.cursor is not None]
        if cursors:
            newest = max(cursors)
            if self._newest is None or newest > self._newest:
                self._newest = newest
            self._advance(newest)
        return True

    def _unbridged(self, entries: Sequence[_Entry], err: Exception) -> None:
        cursors = [e.cursor for e in entries if e.cursor is not None]
        if cursors:
            self._lower_floor(min(cursors))
        self._catchup_due = True
        # A scan cannot find a deleted row again, so such a loss is at least on record.
        deletes = [e for e in entries if e.action == "DELETE"]
        log.warning(
            "redis unavailable (%s): %d events left for catch-up, %d deletes dead-lettered",
            err,
            len(entries) - len(deletes),
            len(deletes),
        )
        if deletes:
            with self.pool.connection() as conn:
                insert_dead_letters(
                    conn,
                    [
                        DeadLetter(CDC_STREAM, None, e.payload, f"not bridged, redis down: {err}")
                        for e in deletes
                    ],
                )
            self.metrics.dead_letters.labels(CDC_STREAM).inc(len(deletes))

    def _lower_floor(self, position: Watermark) -> None:
        floor = self._catchup_floor
        self._catchup_floor = position if floor is None else min(floor, position)

    def _advance(self, mark: Watermark) -> None:
        # Rows from the floor on, and rows a running scan has not reached, are not bridged
        # yet: a watermark saved past them would let the next leader's catch-up skip them if
        # this process stops first.
        if self._catchup_floor is not None:
            mark = min(mark, self._catchup_floor)
        if self._scan is not None:
            mark = min(mark, self._scan.position)
        moved = self._watermark is None or mark > self._watermark
        # Until the replay is done, the higher count stays saved: should this process stop
        # first, the next leader sees the loss as well.
        replaying = self._replay_due or (self._scan is not None and self._scan.replay)
        added = None if replaying else self._stream_added
        if not moved and added in (None, self._saved_added):
            return
        now = time.monotonic()
        if self._scan is not None and now - self._saved_at < _SCAN_SAVE_EVERY_S:
            # A commit per page was a fifth of a catch-up's time; a crash costs at most this
            # much of it again (the stream absorbs the repeats), and the scan's end saves.
            return
        with self.pool.connection() as conn:
            save_watermark(conn, self.watermark_name, mark, added)
        self._saved_at = now
        if moved:
            self._watermark = mark
        if added is not None:
            self._saved_added = added

    # --- catch-up -----------------------------------------------------------------------

    def _start_catch_up(self) -> None:
        with self.pool.connection() as conn:
            saved = load_watermark(conn, self.watermark_name)
            db_now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            marks = consumer_marks(conn, self.watermark_name) if self._replay_due else []
        floor = self._catchup_floor
        plan = plan_catch_up(
            saved=None if saved is None else saved.updated_at,
            db_now=db_now,
            now=datetime.now(UTC),
            lookback=timedelta(hours=self.config.first_start_lookback_h),
            overlap=timedelta(seconds=self.config.catchup_overlap_s),
            floor=None if floor is None else floor.updated_at,
            replay_due=self._replay_due,
            marks=[GroupMark(m.group, m.position.updated_at, m.saved_at) for m in marks],
        )
        if saved is not None and plan.saved_ahead_of_clock:
            log.warning(
                "the saved CDC watermark (%s) is ahead of the database clock; catching up over"
                " the first-start lookback instead",
                saved.updated_at.isoformat(),
            )
        elif saved is not None and (self._watermark is None or saved > self._watermark):
            self._watermark = saved
        if plan.stale_groups:
            log.warning(
                "ignoring the mark of %s: not moved since before %s",
                ", ".join(plan.stale_groups),
                plan.lookback_from.isoformat(),
            )
        if plan.cut_mark is not None:
            log.warning(
                "the %s group's mark (%s) is older than the first-start lookback: replaying"
                " from %s only; its unfinished rows before then are not replayed",
                plan.cut_mark.group,
                plan.cut_mark.position_at.isoformat(),
                plan.lookback_from.isoformat(),
            )
        if plan.replay:
            log.warning(
                "%s lost entries (redis restarted empty, or the stream was deleted); replaying"
                " from %s what its consumers may not have finished",
                CDC_STREAM,
                plan.start.isoformat(),
            )
        self._scan = _CatchUpScan(
            self.url,
            self.schema,
            Watermark(plan.start, 0),
            replay=self._replay_due,
            page_size=self.config.catchup_page,
        )
        # What a scan starting now misses (a cdc_error, a reconnect) asks for another one.
        self._catchup_due = False
        self._replay_due = False
        self._catchup_floor = None

    def _catch_up_page(self, stop: threading.Event) -> None:
        scan = self._scan
        assert scan is not None
        page = scan.fetch()
        now_ms = _now_ms()
        if page:
            # Set first: the watermark saved while publishing must not pass the block in hand.
            scan.position = Watermark(page[-1][0].updated_at, 0)
        entries = [
            _Entry("CATCHUP", _fitted(catchup_entry_json(row, now_ms)), p) for p, row in page
        ]
        if not self._publish(entries):
            self._abandon_scan()
            stop.wait(1.0)  # Redis is down; the next attempt starts over from the floor
            return
        scan.bridged += len(entries)
        if len(page) == self.config.catchup_page:
            return
        self._scan = None
        scan.close()
        self.metrics.catchup_rows.inc(scan.bridged)
        log.info(
            "catch-up from %s bridged %d rows", scan.start.updated_at.isoformat(), scan.bridged
        )
        # The watermark held back while the scan ran catches up with what was published live.
        newest = self._newest
        if newest is not None:
            self._advance(newest)
        elif scan.replay and self._watermark is not None:
            self._advance(self._watermark)  # saves the stream's new count

    def _abandon_scan(self) -> None:
        """Stop a running scan; the next one starts where it had got to."""
        scan, self._scan = self._scan, None
        if scan is None:
            return
        scan.close()
        self._lower_floor(scan.position)
        self._catchup_due = True
        self._replay_due = self._replay_due or scan.replay

    def _check_stream(self) -> None:
        """Arrange a replay if `wx:cdc` added fewer entries than it had (it was lost)."""
        try:
            info = self.redis.xinfo_stream(CDC_STREAM)
        except redis.ResponseError as err:
            if "no such key" not in str(err).lower():
                raise
            added = 0
        except _REDIS_DOWN:
            return
        else:
            if "entries-added" not in info:
                raise RedisTooOld(
                    f"Redis 7 or later is required (XINFO STREAM {CDC_STREAM} has no"
                    f" entries-added); {redact_url(self.ctx.settings.redis.url)} is older"
                )
            added = int(info["entries-added"])
        if stream_lost(self._stream_added, added, first_look=self._first_look):
            self._replay_due = True
            self._catchup_due = True
        self._first_look = False
        self._stream_added = added

    def _report_mark_age(self) -> None:
        try:
            with self.pool.connection() as conn:
                age = oldest_mark_age_s(conn, self.schema, self.watermark_name)
                station, ours = watermark_leads(conn, self.schema)
        except psycopg.Error as err:
            if not self._gauges_failing:
                log.warning("consumer mark age and watermark lead unknown (%s)", err)
            self._gauges_failing = True
            return
        self._gauges_failing = False
        self.metrics.oldest_mark_age.set(age)
        self.metrics.watermark_lead.labels("station").set(station)
        self.metrics.watermark_lead.labels("ours").set(ours)


def build(ctx: SidecarContext) -> CdcBridge:
    return CdcBridge(ctx)
