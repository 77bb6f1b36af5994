"""The live-feed role: the projector under the shared consumer runtime, and the routes it serves.

`/flowsheet/recent` reads the stream's newest id *before* querying, so every event after that id
is one the snapshot may lack (no gap); the row version (`updated_at`) in every payload lets the
client skip those it already has (no duplicate).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wx_orchestration.contracts.cdc import CDC_STREAM
from wx_orchestration.contracts.live import LIVE_GROUP, LIVE_STREAM
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry
from wx_orchestration.core.live import entry_text
from wx_orchestration.db.live import MAX_RECENT, recent_plays
from wx_orchestration.settings import LiveSettings
from wx_orchestration.sidecar.consumer import StreamConsumer
from wx_orchestration.sidecar.live.fanout import LiveHub, StreamBounds, no_stream
from wx_orchestration.sidecar.live.http import (
    CUT_OFF_FILTER,
    EventStream,
    cors_middleware,
    json_error,
)
from wx_orchestration.sidecar.live.metrics import LiveMetrics
from wx_orchestration.sidecar.live.projector import LiveProjector
from wx_orchestration.sidecar.roles import SidecarContext

# The now-playing page, beside this package (`sidecar/static`, shipped as package data).
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
DEFAULT_RECENT = 50


class LiveRole:
    name = "live"

    def __init__(self, ctx: SidecarContext, config: LiveSettings) -> None:
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
        logging.getLogger("uvicorn.error").addFilter(CUT_OFF_FILTER)
        self.page = (STATIC_DIR / "now_playing.html").read_bytes()
        self.script = (STATIC_DIR / "now_playing.js").read_bytes()
        cors = cors_middleware(self.config.cors_origins)
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
            return json_error(400, f"limit must be a positive integer (at most {MAX_RECENT})")
        # The stream position first: whatever the snapshot misses comes after it.
        try:
            info: Any = self.redis.xinfo_stream(LIVE_STREAM)
            bounds = StreamBounds.from_xinfo(info)
        except redis.ResponseError as err:
            if not no_stream(err):
                raise
            bounds = StreamBounds.from_xinfo(None)
        with self.pool.connection() as conn:
            entries = recent_plays(conn, self.schema, min(limit, MAX_RECENT))
        return JSONResponse(
            {"entries": entries, "last_event_id": entry_text(bounds.newest)},
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
    return LiveRole(ctx, ctx.settings.live)
