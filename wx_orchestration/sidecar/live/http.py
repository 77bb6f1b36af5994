"""`GET /events/stream`: the ASGI app that opens a connection (refusals, `connection-established`,
the answer to `Last-Event-ID`) and hands it to the fan-out, and the CORS around the role's routes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import redis
import redis.asyncio as aioredis
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from wx_orchestration.contracts.live import LIVE_TOPIC, LIVE_TOPICS, LiveFrame
from wx_orchestration.core.live import Refetch, entry_text, resume_decision, sse_chunk
from wx_orchestration.sidecar.live.fanout import LiveHub, Subscription, now_ms
from wx_orchestration.sidecar.live.metrics import LiveMetrics

log = logging.getLogger("wx_orchestration.sidecar.live")

_RECONNECT_DELAY_MS = 1000

# Set in the task of a response that ends by cutting off a client that stopped reading. uvicorn
# then logs "returned without completing response" at ERROR, which Sentry turns into an event
# for every slow listener; the cut is intended and logged on one line of our own instead.
_cut_off: ContextVar[bool] = ContextVar("wx_live_cut_off", default=False)
_INCOMPLETE_RESPONSE = "ASGI callable returned without completing response."


class _CutOffFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_cut_off.get() and record.msg == _INCOMPLETE_RESPONSE)


CUT_OFF_FILTER = _CutOffFilter()


def json_error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def cors_middleware(origins: tuple[str, ...]) -> list[Middleware] | None:
    # Pure ASGI middleware only around the stream: the fan-out drives each `send` coroutine
    # by hand (Subscription._write), which a BaseHTTPMiddleware's stream-based send breaks.
    return (
        [
            Middleware(
                CORSMiddleware,
                allow_origins=list(origins),
                allow_methods=["GET"],
                allow_headers=["Last-Event-ID", "Cache-Control"],
                max_age=600,
            )
        ]
        if origins
        else None
    )


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
                refusal = json_error(503, "this server is shutting down; reconnect")
            elif self.hub.full:
                self.metrics.rejected.inc()
                refusal = json_error(
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
            await json_error(503, "live feed temporarily unavailable")(scope, receive, send)
            return
        await self._stream(subscription, opening, replay, receive, send)

    def _refusal(self, request: Request) -> Response | None:
        if request.method != "GET":
            return json_error(405, "method not allowed")
        requested = request.query_params.get("topics", LIVE_TOPIC)
        topics = {t.strip() for t in requested.split(",") if t.strip()}
        if not topics or topics - LIVE_TOPICS:
            # The topics asked for are not echoed: the answer stays small whatever was sent.
            return json_error(404, "unknown topic", topics=sorted(LIVE_TOPICS))
        return None

    async def _opening(
        self, client: aioredis.Redis, request: Request, subscription: Subscription
    ) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """`connection-established` (and a `refetch`), then the missed entries, if any."""
        hello = LiveFrame("connection-established", {"clientId": uuid.uuid4().hex}, now_ms())
        chunks = [b"retry: %d\ndata: %s\n\n" % (_RECONNECT_DELAY_MS, hello.to_json().encode())]
        last = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
        if last is None:
            return b"".join(chunks), None
        bounds = await self.hub.bounds(client)
        decision = resume_decision(last, bounds.first_held, bounds.newest)
        replay = None
        if isinstance(decision, Refetch):
            self.metrics.refetches.labels(decision.reason).inc()
            frame = LiveFrame("refetch", {"reason": decision.reason}, now_ms())
            chunks.append(sse_chunk(entry_text(bounds.newest), frame.to_json()))
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
