"""Live-feed role: flowsheet events → stream `wx:live` → Server-Sent Events (DESIGN.md §4).

Two halves, either of which can run on any number of sidecars:

- The projector, consumer group `live` on `wx:cdc`, turns each flowsheet event into at most one
  frame (`core.live`) and appends it to `wx:live` (approximate MAXLEN). A Lua script sets a
  per-event dedupe key and XADDs in one atomic step, so a redelivered or re-bridged event is
  published once; the keys outlive the 24-hour window after which no event can produce a frame.
- The HTTP side. Each process reads `wx:live` with one reader task (XREAD BLOCK) on uvicorn's
  event loop and writes every read, encoded once, straight to each connection's transport from
  that task. Only a connection whose transport is paused (its client reads slower than it is
  written to) queues, in a bounded queue drained by a task of its own; one whose queue
  overflows is closed, and its client reconnects with `Last-Event-ID` and gets what it missed
  from the stream, a page at a time as it reads them: a replay holds at most one page per
  connection in memory (so at most `WX_LIVE_MAX_CONNECTIONS` pages in all), however far back
  it starts and whether or not the client reads. `/flowsheet/recent` reads the stream's newest
  id *before* querying, so every event after that id is one the snapshot may lack (no gap);
  the row version (`updated_at`) in every payload lets the client skip those it already has
  (no duplicate).

Configuration (environment): `WX_LIVE_CORS_ORIGINS` (comma-separated, default `*`; empty turns
CORS off), `WX_LIVE_STREAM_MAXLEN` (10000), `WX_LIVE_MAX_CONNECTIONS` (2000 per process),
`WX_LIVE_QUEUE_BYTES` (how far behind a connection may fall before it is closed, 1 MiB),
`WX_LIVE_KEEPALIVE_S` (15).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import types
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Coroutine, Generator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from psycopg_pool import ConnectionPool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from wx_orchestration.clients.redis_client import (
    delete_if_not_stream,
    delete_if_not_stream_async,
    is_wrong_type,
)
from wx_orchestration.contracts.cdc import CDC_STREAM
from wx_orchestration.contracts.live import (
    FRAME_FIELD,
    LIVE_GROUP,
    LIVE_STREAM,
    LIVE_TOPIC,
    LIVE_TOPICS,
    LiveEventType,
    LiveFrame,
)
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry
from wx_orchestration.core.live import (
    LIVE_WINDOW,
    EntryId,
    LiveEvent,
    Refetch,
    build_live_event,
    linked_album_id,
    live_event_type,
    parse_entry_id,
    resume_decision,
)
from wx_orchestration.db.live import MAX_RECENT, linked_albums, recent_plays
from wx_orchestration.settings import LiveSettings
from wx_orchestration.sidecar.consumer import StreamConsumer
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.roles import SidecarContext

log = logging.getLogger("wx_orchestration.sidecar.live")

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_RECENT = 50
_DEDUPE_PREFIX = "wx:live:published:"
# Longer than LIVE_WINDOW: past it an event produces no frame, so there is nothing to dedupe.
_DEDUPE_TTL_MS = int((LIVE_WINDOW.total_seconds() + 3600) * 1000)
_RECONNECT_DELAY_MS = 1000
# Entries per XREAD; one read is fanned out whole, so this bounds a burst well under a queue.
_READ_COUNT = 100
# Entries per page of a replay: what a connection that does not read holds of it, at most.
_REPLAY_PAGE = 50
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
_READ_RETRY_CAP_S = 30.0

# KEYS[1] the stream, KEYS[2..] one dedupe key per frame; ARGV[1] TTL ms, ARGV[2] MAXLEN,
# ARGV[3..] the frames. One round trip per batch; returns 1 per frame published, 0 per duplicate.
# A stream key of another type fails it before any write: a dedupe key set for a frame whose
# XADD then failed would have that frame skipped as a duplicate ever after.
_PUBLISH_SCRIPT = """
local found = redis.call('TYPE', KEYS[1])['ok']
if found ~= 'stream' and found ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. found)
end
local published = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[1]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'frame', ARGV[i + 1])
    published[i - 1] = 1
  else
    published[i - 1] = 0
  end
end
return published
"""


@dataclass(frozen=True)
class LiveConfig:
    stream_maxlen: int = 10_000
    max_connections: int = 2_000
    queue_bytes: int = 1 << 20
    keepalive_s: float = 15.0
    cors_origins: tuple[str, ...] = ("*",)
    # Only bounds how long the reader takes to notice a dropped Redis connection.
    read_block_ms: int = 5_000

    @classmethod
    def of(cls, live: LiveSettings) -> LiveConfig:
        return cls(
            stream_maxlen=live.stream_maxlen,
            max_connections=live.max_connections,
            queue_bytes=live.queue_bytes,
            keepalive_s=live.keepalive_s,
            cors_origins=live.cors_origins,
        )


class LiveMetrics:
    def __init__(self, metrics: SidecarMetrics) -> None:
        r = metrics.registry
        self.published = Counter(
            "wx_live_events_published", "Frames appended to wx:live", ["type"], registry=r
        )
        self.duplicates = Counter(
            "wx_live_duplicates_skipped", "Frames already published (redeliveries)", registry=r
        )
        self.connections = Gauge("wx_live_connections", "Open SSE connections", registry=r)
        self.rejected = Counter(
            "wx_live_connections_rejected", "SSE connections refused at the cap", registry=r
        )
        self.writes_waited = Counter(
            "wx_live_writes_waited",
            "Writes that waited for a client to read (its frames queued meanwhile)",
            registry=r,
        )
        self.slow_closed = Counter(
            "wx_live_slow_clients_closed",
            "Connections closed when their queue overflowed",
            registry=r,
        )
        self.replayed = Counter(
            "wx_live_replayed_entries", "Entries sent on reconnect from Last-Event-ID", registry=r
        )
        self.refetches = Counter(
            "wx_live_refetches", "Reconnects answered with refetch", ["reason"], registry=r
        )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_text(entry_id: EntryId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _sse_chunk(entry_id: bytes | str, frame: bytes | str) -> bytes:
    return b"id: %s\ndata: %s\n\n" % (
        entry_id if isinstance(entry_id, bytes) else entry_id.encode(),
        frame if isinstance(frame, bytes) else frame.encode(),
    )


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


def _no_stream(err: redis.ResponseError) -> bool:
    return "no such key" in str(err).lower()


# --- projector -------------------------------------------------------------------------------


class LiveProjector:
    """The sink of group `live`: publish each batch's frames, then acknowledge all of it."""

    def __init__(
        self,
        client: redis.Redis,
        pool: ConnectionPool,
        schema: str,
        maxlen: int,
        metrics: LiveMetrics,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.maxlen = maxlen
        self.metrics = metrics
        self.client = client
        self.script = client.register_script(_PUBLISH_SCRIPT)

    def publish(self, events: Sequence[FlowsheetEvent], now: datetime | None = None) -> list[str]:
        now = now or datetime.now(UTC)
        chosen: list[tuple[FlowsheetEvent, LiveEventType]] = [
            (e, kind) for e in events if (kind := live_event_type(e, now)) is not None
        ]
        album_ids = {
            album_id
            for event, kind in chosen
            if kind != "delete" and (album_id := linked_album_id(event.row)) is not None
        }
        albums: dict[int, dict[str, Any]] = {}
        if album_ids:
            with self.pool.connection() as conn:
                albums = linked_albums(conn, self.schema, album_ids)
        live = []
        for event, kind in chosen:
            album_id = linked_album_id(event.row)
            album = None if kind == "delete" or album_id is None else albums.get(album_id)
            live.append(build_live_event(event, kind, album))
        if live:
            published = self._publish(live)
            for event, new in zip(live, published, strict=True):
                if new:
                    self.metrics.published.labels(event.type).inc()
                else:
                    self.metrics.duplicates.inc()
        # Published or deliberately not: every event of the batch is done.
        return [event.entry_id for event in events]

    def _publish(self, live: Sequence[LiveEvent]) -> Any:
        keys = [LIVE_STREAM, *(_DEDUPE_PREFIX + e.key for e in live)]
        args = [_DEDUPE_TTL_MS, self.maxlen, *(e.frame().to_json() for e in live)]
        try:
            return self.script(keys=keys, args=args)
        except redis.ResponseError as err:
            found = delete_if_not_stream(self.client, LIVE_STREAM) if is_wrong_type(err) else None
            if found is None:
                raise
            log.error("%s held a %s, not a stream: deleted it", LIVE_STREAM, found)
            return self.script(keys=keys, args=args)


# --- fan-out ---------------------------------------------------------------------------------


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

    def __init__(self, redis_url: str, config: LiveConfig, metrics: LiveMetrics) -> None:
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
                    socket_timeout=self.config.read_block_ms / 1000 + 10,
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
            if not _no_stream(err):
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
                    {LIVE_STREAM: _entry_text(self.position)},
                    count=_READ_COUNT,
                    block=self.config.read_block_ms,
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
                chunks.append((entry_id, _sse_chunk(raw_id, frame)))
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
                    min=f"({_entry_text(cursor)}",
                    max=_entry_text(until),
                    count=_REPLAY_PAGE,
                )
                pipe.xrange(LIVE_STREAM, count=1)
                entries, first = await pipe.execute()
            held = parse_entry_id(_text(first[0][0])) if first else None
            if held is None or cursor < held:
                self.metrics.refetches.labels("trimmed").inc()
                frame = LiveFrame("refetch", {"reason": "trimmed"}, _now_ms())
                yield _sse_chunk(_entry_text(until), frame.to_json())
                return
            if not entries:
                return
            cursor = parse_entry_id(_text(entries[-1][0])) or until
            chunks = [
                _sse_chunk(raw_id, fields[FRAME_FIELD.encode()])
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


# --- HTTP ------------------------------------------------------------------------------------

# Set in the task of a response that ends by cutting off a client that stopped reading. uvicorn
# then logs "returned without completing response" at ERROR, which Sentry turns into an event
# for every slow listener; the cut is intended and logged on one line of our own instead.
_cut_off: ContextVar[bool] = ContextVar("wx_live_cut_off", default=False)
_INCOMPLETE_RESPONSE = "ASGI callable returned without completing response."


class _CutOffFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_cut_off.get() and record.msg == _INCOMPLETE_RESPONSE)


_CUT_OFF_FILTER = _CutOffFilter()


def _json_error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream:
    """`GET /events/stream?topics=live-fs-topic`, a raw ASGI app so a stuck write can be cut."""

    def __init__(self, hub: LiveHub, metrics: LiveMetrics) -> None:
        self.hub = hub
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        refusal = self._refusal(request)
        if refusal is None:
            client = await self.hub.start()
            if self.hub.closed:
                refusal = _json_error(503, "this server is shutting down; reconnect")
            elif self.hub.full:
                self.metrics.rejected.inc()
                refusal = _json_error(
                    503,
                    "too many live-feed connections on this server; retry shortly",
                    max_connections=self.hub.config.max_connections,
                )
                refusal.headers["Retry-After"] = "5"
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        subscription = self.hub.subscribe()
        try:
            opening, replay = await self._opening(client, request, subscription)
        except redis.RedisError as err:
            self.hub.unsubscribe(subscription)
            log.warning("live feed: Redis unavailable for a new connection: %s", err)
            await _json_error(503, "live feed temporarily unavailable")(scope, receive, send)
            return
        await self._stream(subscription, opening, replay, receive, send)

    def _refusal(self, request: Request) -> Response | None:
        if request.method != "GET":
            return _json_error(405, "method not allowed")
        requested = request.query_params.get("topics", LIVE_TOPIC)
        topics = {t.strip() for t in requested.split(",") if t.strip()}
        if not topics or topics - LIVE_TOPICS:
            # The topics asked for are not echoed: the answer stays small whatever was sent.
            return _json_error(404, "unknown topic", topics=sorted(LIVE_TOPICS))
        return None

    async def _opening(
        self, client: aioredis.Redis, request: Request, subscription: Subscription
    ) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """`connection-established` (and a `refetch`), then the missed entries, if any."""
        hello = LiveFrame("connection-established", {"clientId": uuid.uuid4().hex}, _now_ms())
        chunks = [b"retry: %d\ndata: %s\n\n" % (_RECONNECT_DELAY_MS, hello.to_json().encode())]
        last = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
        if last is None:
            return b"".join(chunks), None
        bounds = await self.hub.bounds(client)
        decision = resume_decision(last, bounds.first_held, bounds.newest)
        replay = None
        if isinstance(decision, Refetch):
            self.metrics.refetches.labels(decision.reason).inc()
            frame = LiveFrame("refetch", {"reason": decision.reason}, _now_ms())
            chunks.append(_sse_chunk(_entry_text(bounds.newest), frame.to_json()))
            subscription.floor = max(subscription.floor, bounds.newest)
        else:
            replay = self.hub.replay(decision.after, subscription.floor)
            subscription.floor = max(subscription.floor, decision.after)
        return b"".join(chunks), replay

    async def _stream(
        self,
        subscription: Subscription,
        opening: bytes,
        replay: AsyncIterator[bytes] | None,
        receive: Receive,
        send: Send,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )

        subscription.open(send, opening, replay)
        watcher = asyncio.create_task(_until_disconnected(receive))
        try:
            await asyncio.wait({subscription.ended, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.unsubscribe(subscription)
            subscription.close()
            watcher.cancel()
            writer = subscription.writer
            await asyncio.gather(
                watcher, *([writer] if writer is not None else []), return_exceptions=True
            )
        if watcher.cancelled():
            # Still connected (closed by us): end the response cleanly if the client takes it;
            # one that stopped reading is cut off when this returns.
            try:
                async with asyncio.timeout(1.0):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except TimeoutError:
                _cut_off.set(True)
                log.info("live feed: cut off a client that stopped reading")


class LiveRole:
    name = "live"

    def __init__(self, ctx: SidecarContext, config: LiveConfig) -> None:
        self.config = config
        self.pool = ctx.pool()
        self.schema = ctx.settings.database.station_schema
        self.redis = ctx.redis()
        self.metrics = LiveMetrics(ctx.metrics)
        projector = LiveProjector(
            self.redis, self.pool, self.schema, self.config.stream_maxlen, self.metrics
        )
        self.consumer: StreamConsumer[FlowsheetEvent] = StreamConsumer(
            client=self.redis,
            pool=self.pool,
            stream=CDC_STREAM,
            group=LIVE_GROUP,
            consumer=ctx.instance,
            decode=decode_stream_entry,
            sink=projector.publish,
            metrics=ctx.metrics,
            config=ctx.config,
        )
        self.hub = LiveHub(ctx.settings.redis.url, self.config, self.metrics)
        logging.getLogger("uvicorn.error").addFilter(_CUT_OFF_FILTER)
        self.page = (STATIC_DIR / "now_playing.html").read_bytes()
        self.script = (STATIC_DIR / "now_playing.js").read_bytes()
        # Pure ASGI middleware only around the stream: the fan-out drives each `send` coroutine
        # by hand (Subscription._write), which a BaseHTTPMiddleware's stream-based send breaks.
        cors = (
            [
                Middleware(
                    CORSMiddleware,
                    allow_origins=list(self.config.cors_origins),
                    allow_methods=["GET"],
                    allow_headers=["Last-Event-ID", "Cache-Control"],
                    max_age=600,
                )
            ]
            if self.config.cors_origins
            else None
        )
        ctx.add_routes(
            Route("/events/stream", EventStream(self.hub, self.metrics), middleware=cors),
            Route("/flowsheet/recent", self.recent, methods=["GET", "OPTIONS"], middleware=cors),
            Route("/", self.now_playing_page),
            Route("/now_playing.js", self.now_playing_script),
        )

    def run(self, stop: threading.Event) -> None:
        try:
            self.consumer.run(stop)
        finally:
            # A restart after a failure keeps serving the connections in place.
            if stop.is_set():
                self.hub.close()

    def readiness(self) -> tuple[bool, str]:
        error = self.consumer.last_error or self.hub.error
        return (error is None, error or "projecting")

    def recent(self, request: Request) -> Response:
        raw = request.query_params.get("limit", str(DEFAULT_RECENT))
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if limit < 1:
            return _json_error(400, f"limit must be a positive integer (at most {MAX_RECENT})")
        # The stream position first: whatever the snapshot misses comes after it.
        try:
            info: Any = self.redis.xinfo_stream(LIVE_STREAM)
            bounds = StreamBounds.from_xinfo(info)
        except redis.ResponseError as err:
            if not _no_stream(err):
                raise
            bounds = StreamBounds.from_xinfo(None)
        with self.pool.connection() as conn:
            entries = recent_plays(conn, self.schema, min(limit, MAX_RECENT))
        return JSONResponse(
            {"entries": entries, "last_event_id": _entry_text(bounds.newest)},
            headers={"Cache-Control": "no-store"},
        )

    def now_playing_page(self, _request: Request) -> Response:
        return Response(
            self.page,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src * data:; "
                "style-src 'self' 'unsafe-inline'; connect-src 'self'; base-uri 'none'",
            },
        )

    def now_playing_script(self, _request: Request) -> Response:
        return Response(self.script, media_type="text/javascript; charset=utf-8")


def build(ctx: SidecarContext) -> LiveRole:
    return LiveRole(ctx, LiveConfig.of(ctx.settings.live))
