"""The live feed's wire format (DESIGN.md §4): frames, topics, and the client-facing columns.

Every Server-Sent Event's `data:` is one `LiveFrame` as JSON, `{type, payload, timestamp}` with
`timestamp` in epoch milliseconds. The projector stores each frame's JSON, unchanged, in field
`frame` of an entry of stream `wx:live`; the SSE server sends that text with the entry id as the
event's `id:`, so a frame is encoded once however many listeners receive it.

Payloads of `insert` and `update` are a flowsheet row limited to `CLIENT_COLUMNS`; `delete`
carries `{id}`; `refetch` carries `{reason}`; `connection-established` carries `{clientId}`.

`updated_at` is in the projection on purpose: it is the row's version (the same one that keys
events, DESIGN.md §6), rendered as fixed-width UTC (`2024-05-01T16:00:00.000000Z`) so that
comparing two versions is comparing two strings. A client merging the snapshot of
`/flowsheet/recent` with the events that follow it applies a frame only when it carries a newer
version of the row than the one it holds (`core.live.frame_applies`); that is what makes
"snapshot, then subscribe from its `last_event_id`" free of both gaps and duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from wx_orchestration.contracts.station import RESULT_COLUMNS

LIVE_STREAM = "wx:live"
# The projector's consumer group on `wx:cdc`.
LIVE_GROUP = "live"
# The one field of a `wx:live` entry; its value is `LiveFrame.to_json()`.
FRAME_FIELD = "frame"
# The station's public topic: no authentication.
LIVE_TOPIC = "live-fs-topic"
LIVE_TOPICS = frozenset({LIVE_TOPIC})

LiveEventType = Literal["insert", "update", "delete", "refetch", "connection-established"]
LIVE_EVENT_TYPES: tuple[LiveEventType, ...] = (
    "insert",
    "update",
    "delete",
    "refetch",
    "connection-established",
)


# What a listener may see of a flowsheet row, and nothing else. Left out on purpose:
# `enriching_since` (a claim's bookkeeping), `composer` and `composer_source` (not published by
# the station), `search_doc` and any other generated or legacy column the real table carries.
CLIENT_COLUMNS: tuple[str, ...] = (
    "id",
    "show_id",
    "album_id",
    "entry_type",
    "artist_name",
    "album_title",
    "track_title",
    "record_label",
    "play_order",
    "request_flag",
    "segue",
    "message",
    "add_time",
    "updated_at",
    "dj_name",
    *RESULT_COLUMNS,
    "metadata_status",
)
TIMESTAMP_COLUMNS = frozenset({"add_time", "updated_at"})


class FrameError(ValueError):
    """A `wx:live` entry that is not a frame this version understands."""


@dataclass(frozen=True)
class LiveFrame:
    type: LiveEventType
    payload: Mapping[str, Any] = field(default_factory=dict)
    timestamp_ms: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {"type": self.type, "payload": self.payload, "timestamp": self.timestamp_ms},
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def parse(cls, raw: str | bytes) -> LiveFrame:
        try:
            body = json.loads(raw)
        except ValueError as err:
            raise FrameError(f"frame is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise FrameError("frame is not a JSON object")
        kind = body.get("type")
        payload = body.get("payload")
        timestamp = body.get("timestamp")
        for known in LIVE_EVENT_TYPES:
            if kind == known:
                break
        else:
            raise FrameError(f"unknown frame type {kind!r}")
        if not isinstance(payload, dict):
            raise FrameError("frame payload is not an object")
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise FrameError("frame timestamp is not an integer")
        return cls(known, payload, timestamp)
