"""The fan-out: each process reads `wx:live` with one reader task (XREAD BLOCK) on uvicorn's
event loop and writes every read, encoded once, straight to each connection's transport from
that task. Only a connection whose transport is paused (its client reads slower than it is
written to) queues, in a bounded queue drained by a task of its own; one whose queue overflows
is closed, and its client reconnects with `Last-Event-ID` and gets what it missed from the
stream, a page at a time as it reads them: a replay holds at most one page per connection in
memory (so at most `WX_LIVE_MAX_CONNECTIONS` pages in all), however far back it starts and
whether or not the client reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from prometheus_client import Counter
from starlette.types import Message, Send

from wx_orchestration.clients.redis_client import delete_if_not_stream_async, is_wrong_type
from wx_orchestration.contracts.live import FRAME_FIELD, LIVE_STREAM, LiveFrame
from wx_orchestration.core.live import EntryId, entry_text, parse_entry_id, sse_chunk
from wx_orchestration.settings import LiveSettings
from wx_orchestration.sidecar.live.metrics import LiveMetrics

log = logging.getLogger("wx_orchestration.sidecar.live")

# Entries per XREAD; one read is fanned out whole, so this bounds a burst well under a queue.
_READ_COUNT = 100
# Only bounds how long the reader takes to notice a dropped Redis connection.
READ_BLOCK_MS = 5_000
# Entries per page of a replay: what a connection that does not read holds of it, at most.
_REPLAY_PAGE = 50
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
_READ_RETRY_CAP_S = 30.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_entries(response: Any) -> list[tuple[Any, Any]]:
    # RESP2 answers a list of [stream, entries]; RESP3 a mapping stream → entries.
    batches = response.values() if isinstance(response, dict) else [b for _, b in response or []]
    return [entry for batch in batches for entry in batch]


@dataclass(frozen=True)
class StreamBounds:
    first_held: EntryId | None
    newest: EntryId  # (0, 0) when there is no stream yet

    @classmethod
    def from_xinfo(cls, info: Mapping[str, Any] | None) -> StreamBounds:
        if info is None:
            return cls(None, (0, 0))
        first = info.get("first-entry")
        newest = parse_entry_id(_text(info["last-generated-id"])) or (0, 0)
        return cls(parse_entry_id(_text(first[0])) if first else None, newest)


def no_stream(err: redis.ResponseError) -> bool:
    return "no such key" in str(err).lower()


Chunk = tuple[EntryId | None, bytes]  # None: not an entry (a keepalive comment)


def _body(chunk: bytes) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": True}


@types.coroutine
def _resume(write: Coroutine[Any, Any, None], suspended: Any) -> Generator[Any, Any, None]:
    """Go on, under the awaiting task, with a `send` that suspended while driven by hand."""
    while True:
        try:
            sent = yield suspended
        except BaseException as err:  # the task's cancellation, thrown into the write
            try:
                suspended = write.throw(err)
            except StopIteration:
                return
        else:
            try:
                suspended = write.send(sent)
            except StopIteration:
                return


class Subscription:
    """One SSE connection. The fan-out writes each read to it on the spot while its transport
    takes the bytes; once a write has to wait for the client, what follows queues (bounded)
    for a writer task, and direct writes resume when that queue is empty again."""

    __slots__ = (
        "closed",
        "ended",
        "floor",
        "limit",
        "overflowed",
        "pending",
        "pending_bytes",
        "send",
        "waited",
        "writer",
    )

    def __init__(self, limit_bytes: int, floor: EntryId, waited: Counter) -> None:
        self.limit = limit_bytes
        self.waited = waited
        # Entries at or before this id were sent already (replay) or are covered by a refetch.
        self.floor = floor
        self.pending: deque[Chunk] = deque()
        self.pending_bytes = 0
        # None until the opening frames are under way: everything queues before them.
        self.send: Send | None = None
        self.writer: asyncio.Task[None] | None = None
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.overflowed = False

    def open(self, send: Send, opening: bytes, replay: AsyncIterator[bytes] | None = None) -> None:
        """Send the opening frames, then the replay, then what queued meanwhile; go live."""
        if self.closed:  # overflowed, or the hub closed, while the opening was being built
            return
        self.send = send
        # Sent by the writer task, not here: a task cancelled before its first step would
        # leave a `send` coroutine never awaited.
        if replay is None:
            # In one write with what queued meanwhile. Not counted against the limit: not lag.
            self.pending.appendleft((None, opening))
            self.writer = asyncio.create_task(self._write_queued(send))
        else:
            self.writer = asyncio.create_task(
                self._write_queued(send, self._replay(send, opening, replay))
            )

    async def _replay(self, send: Send, opening: bytes, replay: AsyncIterator[bytes]) -> None:
        # A page at a time, as the client takes them: one that does not read holds one page,
        # however far back it asked to start. Live frames queue meanwhile (and count).
        await send(_body(opening))
        async for page in replay:
            await send(_body(page))

    def offer(self, chunks: Sequence[Chunk], joined: bytes) -> None:
        """`joined`: the chunks' bytes in one piece, built once for every connection."""
        if self.closed:
            return
        if self.send is None or self.writer is not None:
            # A client that has taken everything so far keeps up, however big this read is; one
            # still holding unsent chunks is behind, and is closed once that exceeds the limit.
            if self.pending and self.pending_bytes + len(joined) > self.limit:
                self.overflowed = True
                self.close()
                return
            self.pending.extend(chunks)
            self.pending_bytes += len(joined)
            return
        first = chunks[0][0]
        if first is not None and first <= self.floor:
            joined = self._after_floor(chunks)
        if joined:
            self._write(self.send, joined)

    def _after_floor(self, chunks: Sequence[Chunk]) -> bytes:
        return b"".join(c for i, c in chunks if i is None or i > self.floor)

    def _write(self, send: Send, chunk: bytes) -> None:
        # uvicorn's `send` only suspends while the transport is paused; driving it by hand
        # spares a task wake-up per connection per read, a third of the fan-out's CPU when
        # each connection had a task of its own. (An ASGI `send` is an `async def`.)
        write = cast(Coroutine[Any, Any, None], send(_body(chunk)))
        try:
            suspended = write.send(None)
        except StopIteration:
            return
        except Exception as err:  # one failed connection must not stop the fan-out
            log.info("live feed: closing a connection whose write failed: %r", err)
            self.close()
            return
        self.waited.inc()
        self.writer = asyncio.create_task(self._write_queued(send, _resume(write, suspended)))

    async def _write_queued(self, send: Send, first: Awaitable[None] | None = None) -> None:
        try:
            if first is not None:
                await first
            while self.pending:
                joined = self._after_floor(self.pending)
                self.pending.clear()
                self.pending_bytes = 0
                if joined:
                    await send(_body(joined))
        except Exception as err:
            log.info("live feed: closing a connection whose write failed: %r", err)
            self.close()
        else:
            # No await since the queue was seen empty: the next read is written directly.
            self.writer = None

    def close(self) -> None:
        self.closed = True
        self.pending.clear()
        # Cancelling also frees a writer stuck on a client that stopped reading.
        if self.writer is not None:
            self.writer.cancel()
        if not self.ended.done():
            self.ended.set_result(None)


class LiveHub:
    """This process's one reader of `wx:live` and the connections it feeds."""

    def __init__(self, redis_url: str, config: LiveSettings, metrics: LiveMetrics) -> None:
        self.redis_url = redis_url
        self.config = config
        self.metrics = metrics
        self.subscriptions: set[Subscription] = set()
        self.position: EntryId = (0, 0)
        self.error: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._start_lock = asyncio.Lock()
        self.closed = False

    @property
    def full(self) -> bool:
        return len(self.subscriptions) >= self.config.max_connections

    async def start(self) -> aioredis.Redis:
        """Start reading at the stream's end, once, on the calling (uvicorn's) loop."""
        async with self._start_lock:
            if self.redis is None:
                client = aioredis.Redis.from_url(
                    self.redis_url,
                    socket_connect_timeout=5,
                    socket_timeout=READ_BLOCK_MS / 1000 + 10,
                )
                self.position = (await self.bounds(client)).newest
                self.loop = asyncio.get_running_loop()
                self.redis = client
                self._tasks = [
                    asyncio.create_task(self._read_loop(client), name="live-reader"),
                    asyncio.create_task(self._keepalive_loop(), name="live-keepalive"),
                ]
            return self.redis

    @staticmethod
    async def bounds(client: aioredis.Redis) -> StreamBounds:
        try:
            return StreamBounds.from_xinfo(await client.xinfo_stream(LIVE_STREAM))
        except redis.ResponseError as err:
            if not no_stream(err):
                raise
            return StreamBounds.from_xinfo(None)

    def subscribe(self) -> Subscription:
        """Register a connection; it receives every entry after the reader's current position.

        Synchronous on purpose: between reading `position` and joining the set no entry can
        be fanned out, so replaying up to `position` and then draining the queue is exact.
        """
        subscription = Subscription(
            self.config.queue_bytes, self.position, self.metrics.writes_waited
        )
        self.subscriptions.add(subscription)
        self.metrics.connections.set(len(self.subscriptions))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)
        self.metrics.connections.set(len(self.subscriptions))

    async def _read_loop(self, client: aioredis.Redis) -> None:
        """Read and fan out for as long as the process serves; every failure is retried, with a
        backoff while it persists, and shows on /readyz meanwhile."""
        failures = 0
        while True:
            try:
                response = await client.xread(
                    {LIVE_STREAM: entry_text(self.position)},
                    count=_READ_COUNT,
                    block=READ_BLOCK_MS,
                )
            except asyncio.CancelledError:
                raise
            except Exception as err:
                failures += 1
                await self._read_failed(client, err, failures)
                continue
            if failures:
                log.info("live reader: reading %s again", LIVE_STREAM)
            failures = 0
            self.error = None
            chunks: list[Chunk] = []
            for raw_id, fields in _stream_entries(response):
                entry_id = parse_entry_id(_text(raw_id))
                frame = fields.get(FRAME_FIELD.encode())
                if entry_id is None or frame is None:
                    continue
                self.position = entry_id
                chunks.append((entry_id, sse_chunk(raw_id, frame)))
            if chunks:
                self.fan_out(chunks)

    async def _read_failed(self, client: aioredis.Redis, err: Exception, failures: int) -> None:
        if isinstance(err, _REDIS_DOWN):
            self.error = f"redis unavailable: {err}"
        else:
            self.error = f"reading {LIVE_STREAM} failed: {type(err).__name__}: {err}"
        if failures == 1:
            log.warning(
                "live reader: %s", self.error, exc_info=not isinstance(err, redis.RedisError)
            )
        if is_wrong_type(err):
            with contextlib.suppress(redis.RedisError):
                found = await delete_if_not_stream_async(client, LIVE_STREAM)
                if found is not None:
                    log.error("%s held a %s, not a stream: deleted it", LIVE_STREAM, found)
        await asyncio.sleep(min(_READ_RETRY_CAP_S, 0.5 * 2 ** min(failures - 1, 6)))

    def fan_out(self, chunks: Sequence[Chunk]) -> None:
        joined = b"".join(chunk for _, chunk in chunks)
        for subscription in list(self.subscriptions):
            subscription.offer(chunks, joined)
            if subscription.overflowed:
                self.unsubscribe(subscription)
                self.metrics.slow_closed.inc()

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive_s)
            self.fan_out([(None, b": keepalive\n\n")])

    async def replay(self, after: EntryId, until: EntryId) -> AsyncIterator[bytes]:
        """The frames in (`after`, `until`], `_REPLAY_PAGE` entries per page. Should the stream
        be trimmed past the last entry sent meanwhile (the client read that slowly), a
        `refetch` ends the replay: never a silent gap."""
        cursor = after
        while cursor < until and self.redis is not None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xrange(
                    LIVE_STREAM,
                    min=f"({entry_text(cursor)}",
                    max=entry_text(until),
                    count=_REPLAY_PAGE,
                )
                pipe.xrange(LIVE_STREAM, count=1)
                entries, first = await pipe.execute()
            held = parse_entry_id(_text(first[0][0])) if first else None
            if held is None or cursor < held:
                self.metrics.refetches.labels("trimmed").inc()
                frame = LiveFrame("refetch", {"reason": "trimmed"}, now_ms())
                yield sse_chunk(entry_text(until), frame.to_json())
                return
            if not entries:
                return
            cursor = parse_entry_id(_text(entries[-1][0])) or until
            chunks = [
                sse_chunk(raw_id, fields[FRAME_FIELD.encode()])
                for raw_id, fields in entries
                if FRAME_FIELD.encode() in fields
            ]
            self.metrics.replayed.inc(len(chunks))
            yield b"".join(chunks)

    def close(self) -> None:
        """From any thread: end every connection, stop reading, refuse new connections."""
        self.closed = True
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=5)

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for subscription in list(self.subscriptions):
            subscription.close()
        self.subscriptions.clear()
        if self.redis is not None:
            await self.redis.aclose()
