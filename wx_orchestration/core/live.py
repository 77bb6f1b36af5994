"""Live-feed rules (DESIGN.md §4). Pure: no I/O.

Which flowsheet events become live events, what a listener sees of a row, how a reconnecting
client's `Last-Event-ID` is answered, and how a client merges events into the list it holds.
The projector (`sidecar/live/projector.py`) and the snapshot query (`db/live.py`) both go through
`project_row`, so the list and the events that follow it carry the same columns in the same
shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from wx_orchestration.contracts.live import (
    CLIENT_COLUMNS,
    DISCOGS_UNAVAILABLE,
    DISCOGS_UNAVAILABLE_NOTE,
    MILLISECOND_COLUMNS,
    VERSION_COLUMN,
    LiveEventType,
    LiveFrame,
)
from wx_orchestration.contracts.station import RESULT_COLUMNS
from wx_orchestration.core.album_record import MAX_BIO_CHARS, bounded
from wx_orchestration.core.events import FlowsheetEvent, effective_action
from wx_orchestration.core.streaming_urls import FEED_GUARDS

# Older rows never reach listeners: historical imports and backfills must not flood them.
LIVE_WINDOW = timedelta(hours=24)
# A row "reaches" one of these when enrichment ends; `enriching` is never shown.
TERMINAL_STATUSES = frozenset({"enriched_match", "enriched_no_match", "failed_no_retry"})
_ENTRY_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_MAX_U64 = 2**64 - 1

EntryId = tuple[int, int]


@dataclass(frozen=True)
class LiveEvent:
    type: LiveEventType
    payload: dict[str, Any]
    timestamp_ms: int
    # Same flowsheet event → same key, so a redelivered event is published once.
    key: str

    def frame(self) -> LiveFrame:
        return LiveFrame(self.type, self.payload, self.timestamp_ms)


def utc_text(value: object, *, millis: bool = False) -> str | None:
    """A timestamp as fixed-width UTC text (`Z`), so versions compare as strings: with
    microseconds, or with milliseconds like JavaScript's `toISOString()` (the station's)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        return None
    text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return f"{text[:-3] if millis else text}Z"


def _moment(value: object) -> datetime | None:
    text = utc_text(value)
    return None if text is None else datetime.fromisoformat(text)


def is_recent(add_time: object, now: datetime) -> bool:
    moment = _moment(add_time)
    return moment is not None and now - moment <= LIVE_WINDOW


def linked_album_id(row: Mapping[str, Any]) -> int | None:
    album_id = row.get("album_id")
    if isinstance(album_id, int) and not isinstance(album_id, bool):
        return album_id
    return None


def project_row(row: Mapping[str, Any], linked: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The client-facing columns of a flowsheet row; unknown and internal keys are dropped.

    `linked` is what the library holds for a linked row: its `album_metadata` columns (which
    win over the row's own wherever they have a value, so apps get artwork whichever table
    holds it) and its `discogs_unavailable` flag and note, which become the station's
    `discogsUnavailable` / `discogsUnavailableNote` fields. An unlinked row, or one whose album
    is not in the library, has neither field.

    As the station's feed does, a `spotify_url` that is not a release or a search, or an
    `apple_music_url` not on Apple, is shown as null whoever wrote it. A bio is bounded like
    the ones we write (`core.album_record`).
    """
    payload = {column: row.get(column) for column in CLIENT_COLUMNS}
    if linked is not None and linked_album_id(row) is not None:
        for column in RESULT_COLUMNS:
            if linked.get(column) is not None:
                payload[column] = linked[column]
        flag = linked.get("discogs_unavailable")
        if isinstance(flag, bool):
            payload[DISCOGS_UNAVAILABLE] = flag
            note = linked.get("discogs_unavailable_note")
            if note is not None:
                payload[DISCOGS_UNAVAILABLE_NOTE] = note
    for column, guard in FEED_GUARDS.items():
        if payload[column] is not None and not guard(payload[column]):
            payload[column] = None
    if isinstance(payload["artist_bio"], str):
        payload["artist_bio"] = bounded(payload["artist_bio"], MAX_BIO_CHARS)
    for column in MILLISECOND_COLUMNS:
        payload[column] = utc_text(payload[column], millis=True)
    payload[VERSION_COLUMN] = utc_text(payload[VERSION_COLUMN])
    return payload


def live_event_type(event: FlowsheetEvent, now: datetime) -> LiveEventType | None:
    """What listeners hear of a flowsheet event, or None when they hear nothing."""
    action = effective_action(event)
    row = event.row
    if action == "DELETE":
        # A DELETE known only by its key has no entry_type; the client ignores unknown ids.
        return "delete" if row.get("entry_type", "track") == "track" else None
    if row.get("entry_type") != "track" or not is_recent(row.get("add_time"), now):
        return None
    if action == "INSERT":
        # Read when its notification arrived: a row enriched before then is inserted enriched.
        return "insert"
    return "update" if event.metadata_status in TERMINAL_STATUSES else None


def build_live_event(
    event: FlowsheetEvent, kind: LiveEventType, linked: Mapping[str, Any] | None = None
) -> LiveEvent:
    payload = {"id": event.flowsheet_id} if kind == "delete" else project_row(event.row, linked)
    # The trigger's clock when there is one: a redelivery must produce the very same frame.
    timestamp_ms = event.cdc_ts_ms if event.cdc_ts_ms is not None else event.bridged_at_ms
    return LiveEvent(kind, payload, timestamp_ms, f"{kind}:{event.key}")


# --- resuming a stream ---------------------------------------------------------------------


def parse_entry_id(text: str | None) -> EntryId | None:
    """A full stream entry id (`<ms>-<seq>`) as a comparable pair; None if it is not one."""
    match = _ENTRY_ID.match(text.strip()) if text else None
    if match is None:
        return None
    millis, seq = int(match[1]), int(match[2])
    return (millis, seq) if millis <= _MAX_U64 and seq <= _MAX_U64 else None


def entry_text(entry_id: EntryId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def sse_chunk(entry_id: bytes | str, frame: bytes | str) -> bytes:
    """One Server-Sent Event: the stream entry id as its `id:`, a frame's JSON as its `data:`."""
    return b"id: %s\ndata: %s\n\n" % (
        entry_id if isinstance(entry_id, bytes) else entry_id.encode(),
        frame if isinstance(frame, bytes) else frame.encode(),
    )


@dataclass(frozen=True)
class Replay:
    """Send every entry after `after`, in order, then go on live."""

    after: EntryId


@dataclass(frozen=True)
class Refetch:
    """Send `refetch` (id: the newest entry) and go on live from there; never a silent gap."""

    reason: str


def resume_decision(
    last_event_id: str, first_held: EntryId | None, newest: EntryId
) -> Replay | Refetch:
    """Answer a reconnect from `last_event_id`.

    `first_held` is the oldest entry the stream still holds (None when it holds none);
    `newest` is the last id it generated (`(0, 0)` when there is no stream).
    """
    last = parse_entry_id(last_event_id)
    if last is None:
        return Refetch("unparseable")
    if last == newest:
        return Replay(last)
    if last > newest:
        return Refetch("reset")  # the stream is not the one that id came from
    if first_held is None or last < first_held:
        return Refetch("trimmed")
    return Replay(last)


# --- merging on the client -----------------------------------------------------------------


def frame_applies(held: Mapping[str, Any] | None, frame: LiveFrame) -> bool:
    """Whether a client holding `held` (the row with the frame's id, if any) should apply it.

    An insert or update applies unless the client already holds that row at the same or a
    newer version (`updated_at`): it was in the snapshot, or arrived first from another
    projector. So a row is never listed twice nor rolled back to an older version.
    """
    if frame.type == "delete":
        return held is not None
    if frame.type not in ("insert", "update"):
        return False
    if held is None:
        return True
    held_version, new_version = held.get("updated_at"), frame.payload.get("updated_at")
    if not isinstance(held_version, str) or not isinstance(new_version, str):
        return True
    return new_version > held_version
