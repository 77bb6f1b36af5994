"""The projector, consumer group `live` on `wx:cdc`: each flowsheet event becomes at most one
frame (`core.live`), appended to `wx:live` (approximate MAXLEN). A Lua script sets a per-event
dedupe key and XADDs in one atomic step, so a redelivered or re-bridged event is published once;
the keys outlive the 24-hour window after which no event can produce a frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from psycopg_pool import ConnectionPool

from wx_orchestration.clients.redis_client import delete_if_not_stream, is_wrong_type
from wx_orchestration.contracts.live import LIVE_STREAM, LiveEventType
from wx_orchestration.core.events import FlowsheetEvent
from wx_orchestration.core.live import (
    LIVE_WINDOW,
    LiveEvent,
    build_live_event,
    linked_album_id,
    live_event_type,
)
from wx_orchestration.db.live import linked_albums
from wx_orchestration.sidecar.live.metrics import LiveMetrics

log = logging.getLogger("wx_orchestration.sidecar.live")

_DEDUPE_PREFIX = "wx:live:published:"
# Longer than LIVE_WINDOW: past it an event produces no frame, so there is nothing to dedupe.
_DEDUPE_TTL_MS = int((LIVE_WINDOW.total_seconds() + 3600) * 1000)

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
