"""The consumer-group runtime every stream-reading role shares.

One loop per consumer: reclaim entries left idle by dead consumers (XAUTOCLAIM), else read new
ones (XREADGROUP BLOCK + COUNT); decode each; entries that cannot be decoded or have been
delivered more than `max_deliveries` times become dead letters; the rest go to the role's sink,
which returns exactly the entry ids it finished. Only those ids and the dead-lettered ones are
acknowledged — never speculatively — so anything else is redelivered and, if it keeps failing,
dead-lettered in its turn. Nothing blocks the group.

Redis can lose what the loop reads from: a restart empty or a FLUSHDB, a deleted stream (a
blocked reader then gets `UNBLOCKED`, the next read `NOGROUP`), or the stream's key overwritten
with another type (`WRONGTYPE`). The loop recreates the group (and the stream) and goes on; a
key of ours holding another type is deleted first (`clients.redis_client.delete_if_not_stream`),
and the bridge replays what the stream lost. After each full reclaim pass, consumers of the
group that hold nothing and have been idle longer than the reclaim idle (dead instances, whose
entries were just reclaimed) are deleted, so names do not pile up at every restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import redis
from psycopg_pool import ConnectionPool

from wx_orchestration.clients.redis_client import delete_if_not_stream, is_wrong_type
from wx_orchestration.core.events import DecodeError, entry_text
from wx_orchestration.db.events import DeadLetter, insert_dead_letters
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.roles import SidecarConfig

log = logging.getLogger("wx_orchestration.sidecar.consumer")

E = TypeVar("E")
# Receives the decoded events of one batch; returns the entry ids that may be acknowledged.
Sink = Callable[[Sequence[E]], Collection[str]]
Entry = tuple[str, Any]

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)

# KEYS[1] the stream; ARGV[1] the group, ARGV[2] the calling consumer, ARGV[3] the idle (ms)
# past which a consumer holding nothing is gone. Checked and deleted in one step, so a consumer
# that reads meanwhile can never lose entries it holds. Returns the names deleted.
_PRUNE_CONSUMERS = """
local deleted = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted[#deleted + 1] = info['name']
  end
end
return deleted
"""


@dataclass
class _Batch(Generic[E]):
    size: int
    started: float
    events: list[E] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamConsumer(Generic[E]):
    def __init__(
        self,
        *,
        client: redis.Redis,
        pool: ConnectionPool,
        stream: str,
        group: str,
        consumer: str,
        decode: Callable[[str, Any], E | DecodeError],
        sink: Sink[E],
        metrics: SidecarMetrics,
        config: SidecarConfig,
    ) -> None:
        self.client = client
        self.pool = pool
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.decode = decode
        self.sink = sink
        self.metrics = metrics
        self.config = config
        self._claim_cursor = "0-0"
        self._next_claim_at = 0.0
        self._group_ready = False
        self.last_error: str | None = None

    @property
    def dead_letter_source(self) -> str:
        return f"{self.stream}/{self.group}"

    def run(self, stop: threading.Event) -> None:
        log.info("consumer %s of group %s on %s started", self.consumer, self.group, self.stream)
        while not stop.is_set():
            try:
                self.step()
                self.last_error = None
            except _REDIS_DOWN as err:
                self._failed(f"redis unavailable: {err}")
                stop.wait(1.0)
            except redis.ResponseError as err:
                if not self._repaired(err):
                    log.error("consumer %s: batch failed: %s", self.consumer, err)
                    self._failed(f"redis refused: {err}")
                    stop.wait(1.0)
            except Exception as err:
                # A sink or database failure leaves the batch pending; it is redelivered.
                log.exception("consumer %s: batch failed", self.consumer)
                self._failed(f"{type(err).__name__}: {err}")
                stop.wait(1.0)
        log.info("consumer %s of group %s stopped", self.consumer, self.group)

    def _failed(self, message: str) -> None:
        self.last_error = message
        self._group_ready = False
        self.metrics.consumer_errors.labels(self.group).inc()

    def _repaired(self, err: redis.ResponseError) -> bool:
        """Whether `err` said the stream or group is gone (now to be recreated)."""
        message = str(err)
        if message.startswith(("NOGROUP", "UNBLOCKED")):
            log.warning("group %s on %s is gone (%s); recreating it", self.group, self.stream, err)
            self._group_ready = False
            return True
        if is_wrong_type(err):
            # Or the sink's own command hit a wrong type: then the stream is fine, and the
            # batch failed like any other.
            found = delete_if_not_stream(self.client, self.stream)
            if found is not None:
                log.error(
                    "%s held a %s, not a stream: deleted it; recreating the stream and group %s",
                    self.stream,
                    found,
                    self.group,
                )
                self._group_ready = False
                return True
        return False

    def ensure_group(self) -> None:
        self._claim_cursor = "0-0"
        try:
            # From the start of the stream: after a Redis reset everything in it is new to us.
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created group %s on %s", self.group, self.stream)
        except redis.ResponseError as err:
            if not str(err).startswith("BUSYGROUP"):
                raise
        self._group_ready = True

    def step(self) -> int:
        """Handle one batch (reclaimed entries first); return how many entries it held."""
        if not self._group_ready:
            self.ensure_group()
        batch = self._next_batch()
        if batch is None:
            return 0
        self._finish(batch)
        return batch.size

    def _next_batch(self) -> _Batch[E] | None:
        if time.monotonic() >= self._next_claim_at:
            reclaimed = self._reclaim()
            if reclaimed:
                return self._prepare(reclaimed, self._deliveries(reclaimed))
        entries = self._read(self.config.read_count, self.config.read_block_ms)
        return self._prepare(entries, {}) if entries else None

    def _read(self, count: int, block_ms: int | None) -> list[Entry]:
        response: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        # RESP2 answers a list of [stream, entries]; RESP3 a mapping stream → entries.
        streams = (
            response.values() if isinstance(response, dict) else [b for _, b in response or []]
        )
        return [(_text(i), f) for batch in streams for i, f in batch]

    def read_more(self, count: int, block_ms: int) -> list[E]:
        """New entries for a sink still holding its batch, waiting up to `block_ms` for the first
        (the enrich role adds plays to a call waiting for the LML budget). Poison is
        dead-lettered and acknowledged at once; the rest is the sink's, acknowledged with what
        it returns."""
        entries = self._read(count, max(1, block_ms))
        if not entries:
            return []
        batch = self._prepare(entries, {})
        self._dead_letter(batch.letters)
        return batch.events

    def _reclaim(self) -> list[Entry]:
        next_cursor, claimed, *_ = self.client.xautoclaim(  # type: ignore[misc]
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.config.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.config.read_count,
        )
        self._claim_cursor = _text(next_cursor)
        if self._claim_cursor == "0-0":
            # A full pass is done; the next can wait until more entries could have gone idle.
            self._next_claim_at = time.monotonic() + self.config.claim_idle_ms / 2000
            self._prune_consumers()
        entries = [(_text(i), f) for i, f in claimed if f is not None]
        if entries:
            self.metrics.reclaimed.labels(self.group).inc(len(entries))
            log.info("consumer %s reclaimed %d idle entries", self.consumer, len(entries))
        return entries

    def _prune_consumers(self) -> None:
        deleted: Any = self.client.eval(
            _PRUNE_CONSUMERS,
            1,
            self.stream,
            self.group,
            self.consumer,
            self.config.claim_idle_ms,
        )
        if deleted:
            names = ", ".join(_text(name) for name in deleted)
            log.info(
                "group %s: removed consumers gone idle with nothing pending: %s", self.group, names
            )

    def _deliveries(self, entries: Sequence[Entry]) -> dict[str, int]:
        ids = [entry_id for entry_id, _ in entries]
        pending = self.client.xpending_range(
            self.stream,
            self.group,
            min=min(ids, key=_id_order),
            max=max(ids, key=_id_order),
            count=len(ids) * 2,
            consumername=self.consumer,
        )
        return {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}  # type: ignore[arg-type]

    def _prepare(self, entries: Sequence[Entry], deliveries: dict[str, int]) -> _Batch[E]:
        batch: _Batch[E] = _Batch(len(entries), time.perf_counter())
        for entry_id, fields in entries:
            times = deliveries.get(entry_id, 1)
            if times > self.config.max_deliveries:
                reason = f"delivered {times} times, limit {self.config.max_deliveries}"
                batch.letters.append(self._letter(entry_id, fields, reason))
                continue
            decoded = self.decode(entry_id, fields)
            if isinstance(decoded, DecodeError):
                batch.letters.append(self._letter(entry_id, fields, decoded.reason))
            else:
                batch.events.append(decoded)
        return batch

    def _finish(self, batch: _Batch[E]) -> None:
        """Dead-letter the poison, give the rest to the sink, acknowledge what it returns."""
        # Poison first: it must never wait on (or be retried with) a sink that is failing.
        self._dead_letter(batch.letters)
        if batch.events:
            self._ack(list(self.sink(batch.events)))
        self.metrics.batch_size.labels(self.group).observe(batch.size)
        self.metrics.batch_seconds.labels(self.group).observe(time.perf_counter() - batch.started)

    def _dead_letter(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        with self.pool.connection() as conn:
            insert_dead_letters(conn, letters)
        self.metrics.dead_letters.labels(self.dead_letter_source).inc(len(letters))
        log.warning(
            "consumer %s dead-lettered %d entries (first: %s)",
            self.consumer,
            len(letters),
            letters[0].reason,
        )
        self._ack([letter.entry_id for letter in letters if letter.entry_id])

    def _ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            self.client.xack(self.stream, self.group, *entry_ids)
            self.metrics.acked.labels(self.group).inc(len(entry_ids))

    def _letter(self, entry_id: str, fields: Any, reason: str) -> DeadLetter:
        return DeadLetter(self.dead_letter_source, entry_id, entry_text(fields), reason)


def _id_order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)
