"""The live feed's wire format (DESIGN.md §4): frames, topics, and the client-facing columns.

Every Server-Sent Event's `data:` is one `LiveFrame` as JSON, `{type, payload, timestamp}` with
`timestamp` in epoch milliseconds. The projector stores each frame's JSON, unchanged, in field
`frame` of an entry of stream `wx:live`; the SSE server sends that text with the entry id as the
event's `id:`, so a frame is encoded once however many listeners receive it.

Payloads of `insert` and `update` are a flowsheet row limited to `CLIENT_COLUMNS` (plus the
Discogs-unavailable fields of a linked row); `delete`
carries `{id}`; `refetch` carries `{reason}`; `connection-established` carries `{clientId}`.

`updated_at` is in the projection on purpose: it is the row's version (the same one that keys
events, DESIGN.md §6), rendered as fixed-width UTC with microseconds
(`2024-05-01T16:00:00.000000Z`; the station's own timestamps are in milliseconds) so that
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


# What a listener may see of a flowsheet row, and nothing else: the station's client-facing
# allow-list (`CLIENT_FACING_FLOWSHEET_COLUMNS`, apps/backend/utils/flowsheet-projection.ts in
# WXYC/Backend-Service), in its order. Never `enriching_since`, `composer`, `search_doc`,
# linkage or legacy columns: a column the station adds is not shown until it is added here.
STATION_CLIENT_COLUMNS: tuple[str, ...] = (
    "id",
    "show_id",
    "album_id",
    "rotation_id",
    "entry_type",
    "artist_name",
    "album_title",
    "track_title",
    "track_position",
    "record_label",
    "label_id",
    "play_order",
    "request_flag",
    "segue",
    "message",
    "add_time",
    "radio_hour",
    "dj_name",
    "metadata_status",
    "artwork_url",
    "discogs_url",
    "release_year",
    "spotify_url",
    "apple_music_url",
    "youtube_music_url",
    "bandcamp_url",
    "soundcloud_url",
    "artist_bio",
    "artist_wikipedia_url",
)
# Plus the row's version, which the station leaves out: merging a snapshot with the events
# after it needs it (`core.live.frame_applies`).
CLIENT_COLUMNS: tuple[str, ...] = (*STATION_CLIENT_COLUMNS, "updated_at")
# Rendered as the apps get them from the station (JavaScript's `toISOString()`: milliseconds).
MILLISECOND_COLUMNS = frozenset({"add_time", "radio_hour"})
# The row version keeps its microseconds: two versions within one millisecond must differ.
VERSION_COLUMN = "updated_at"
# For a row linked to the library, the station's feed adds its "not on Discogs" flag:
# `discogsUnavailable` (a boolean) and, when the music director wrote one, the note.
DISCOGS_UNAVAILABLE = "discogsUnavailable"
DISCOGS_UNAVAILABLE_NOTE = "discogsUnavailableNote"


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
