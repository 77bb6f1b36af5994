"""Flowsheet events from `wx:cdc` entries, and their identity (DESIGN.md §6). Pure: no I/O.

`decode_stream_entry` never raises: any input gives a `FlowsheetEvent` or a `DecodeError` whose
reason goes to the dead-letter table. An event is one row version, keyed by (`flowsheet_id`,
`updated_at`, `metadata_status`) with `updated_at` normalised to UTC microseconds, so the
version notified live (`+00:00`) and read back by catch-up in another session time zone
(`-04:00`) is one event. A row is deleted once and ids are never reused, so a DELETE's key is
the id alone: the old-row image it carries must not collide with the UPDATE that wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wx_orchestration.contracts.cdc import (
    FLOWSHEET_TABLE,
    PAYLOAD_FIELD,
    STREAM_ACTIONS,
    StreamAction,
)
from wx_orchestration.core.album_record import bounded

# Oversized rows are re-read and bridged whole, so an entry can exceed pg_notify's 8000 bytes;
# a legitimate row stays far below this, and json.loads on a hostile megabyte is not free.
MAX_PAYLOAD_BYTES = 256 * 1024
METADATA_STATUSES = frozenset(
    {"pending", "enriching", "enriched_match", "enriched_no_match", "failed_no_retry"}
)
# What an event is keyed, routed and shown by: `fit_entry` never cuts these.
_IDENTITY_COLUMNS = frozenset(
    {"id", "updated_at", "metadata_status", "entry_type", "add_time", "album_id", "show_id"}
)
# What `fit_entry` leaves of a text column it has to cut.
TRIMMED_TEXT_CHARS = 2_000
_MAX_INT4 = 2**31 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DecodeError(Exception):
    """An entry that cannot become a `FlowsheetEvent`; `reason` is written to dead letters."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FlowsheetEvent:
    entry_id: str
    action: StreamAction
    flowsheet_id: int
    updated_at: datetime | None  # None only for a DELETE known by its key alone
    metadata_status: str | None
    row: Mapping[str, Any]
    cdc_ts_ms: int | None
    bridged_at_ms: int
    catchup: bool

    @property
    def key(self) -> str:
        return event_key(self.flowsheet_id, self.updated_at, self.metadata_status, self.action)


def event_key(
    flowsheet_id: int,
    updated_at: datetime | None,
    metadata_status: str | None,
    action: StreamAction = "UPDATE",
) -> str:
    if action == "DELETE":
        return f"{flowsheet_id}:deleted"
    micros = "" if updated_at is None else utc_micros(updated_at)
    return f"{flowsheet_id}:{micros}:{metadata_status or ''}"


def effective_action(event: FlowsheetEvent) -> StreamAction:
    """How a consumer treats the event: a catch-up row is an INSERT while still pending."""
    if event.action != "CATCHUP":
        return event.action
    return "INSERT" if event.metadata_status == "pending" else "UPDATE"


def row_cursor(row: Mapping[str, Any]) -> tuple[datetime, int] | None:
    """The row's (`updated_at`, `id`) position for the bridge's watermark, if it has one."""
    try:
        row_id = _int(row, "id")
        updated_at = _timestamp(row, "updated_at")
    except DecodeError:
        return None
    if updated_at is None or row_id is None:
        return None
    return updated_at, row_id


def _utf8_size(text: str) -> int:
    # Four bytes a character at most: most entries are measured without encoding them.
    if len(text) * 4 <= MAX_PAYLOAD_BYTES:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def fit_entry(payload: str) -> str:
    """A `wx:cdc` entry body that fits `MAX_PAYLOAD_BYTES`, which every group's decoder holds
    entries to: `payload` itself when it fits, else the same event with its row's longest text
    columns cut to `TRIMMED_TEXT_CHARS` (and, should that not do, with only its identity
    columns left), naming them in `trimmed`. A row written with a 400 KB `artist_bio` would
    otherwise be dead-lettered by every group, and never reach the log or listeners; cut, it
    is the same event (same key) with less text."""
    if _utf8_size(payload) <= MAX_PAYLOAD_BYTES:
        return payload
    try:
        body = json.loads(payload)
    except ValueError:
        return payload  # the decoder says why
    row = body.get("row") if isinstance(body, dict) else None
    if not isinstance(row, dict):
        return payload
    trimmed: list[str] = []
    longest = sorted(
        (k for k, v in row.items() if k not in _IDENTITY_COLUMNS and isinstance(v, str)),
        key=lambda k: -len(row[k]),
    )
    for column in longest:
        if len(row[column]) <= TRIMMED_TEXT_CHARS:
            break
        row[column] = bounded(row[column], TRIMMED_TEXT_CHARS)
        trimmed.append(column)
        fitted = _entry_json(body, trimmed)
        if _utf8_size(fitted) <= MAX_PAYLOAD_BYTES:
            return fitted
    dropped = [k for k in row if k not in _IDENTITY_COLUMNS]
    body["row"] = {k: v for k, v in row.items() if k in _IDENTITY_COLUMNS}
    return _entry_json(body, sorted({*trimmed, *dropped}))


def _entry_json(body: dict[str, Any], trimmed: list[str]) -> str:
    return json.dumps({**body, "trimmed": trimmed}, separators=(",", ":"), ensure_ascii=False)


def decode_stream_entry(entry_id: str, fields: object) -> FlowsheetEvent | DecodeError:
    try:
        return _decode(entry_id, fields)
    except DecodeError as err:
        return err


def _decode(entry_id: str, fields: object) -> FlowsheetEvent:
    body = _payload_object(fields)
    if body.get("table", FLOWSHEET_TABLE) != FLOWSHEET_TABLE:
        raise DecodeError(f"unknown table {_short(body.get('table'))}")
    action = _action(body.get("action"))
    row = body.get("row")
    if not isinstance(row, dict):
        raise DecodeError(f"'row' is {type(row).__name__}, expected an object")
    flowsheet_id = _int(row, "id")
    if flowsheet_id is None:
        raise DecodeError("row has no 'id'")
    updated_at = _timestamp(row, "updated_at")
    if updated_at is None and action != "DELETE":
        raise DecodeError(f"{action} row {flowsheet_id} has no 'updated_at'")
    status = row.get("metadata_status")
    if status is not None and not (isinstance(status, str) and status in METADATA_STATUSES):
        raise DecodeError(f"unknown metadata_status {_short(status)}")
    if status is None and action != "DELETE":
        raise DecodeError(f"{action} row {flowsheet_id} has no 'metadata_status'")
    bridged_at_ms = _int(body, "bridged_at_ms", bits=63)
    if bridged_at_ms is None:
        raise DecodeError("missing 'bridged_at_ms'")
    catchup = body.get("catchup", action == "CATCHUP")
    if not isinstance(catchup, bool):
        raise DecodeError(f"'catchup' is {type(catchup).__name__}, expected a boolean")
    return FlowsheetEvent(
        entry_id=entry_id,
        action=action,
        flowsheet_id=flowsheet_id,
        updated_at=updated_at,
        metadata_status=status,
        row=row,
        cdc_ts_ms=_int(body, "cdc_ts_ms", bits=63),
        bridged_at_ms=bridged_at_ms,
        catchup=catchup,
    )


def _payload_object(fields: object) -> dict[str, Any]:
    if not isinstance(fields, Mapping):
        raise DecodeError(f"entry fields are {type(fields).__name__}, expected a mapping")
    raw = fields.get(PAYLOAD_FIELD.encode(), fields.get(PAYLOAD_FIELD))
    if raw is None:
        raise DecodeError(f"entry has no {PAYLOAD_FIELD!r} field")
    if not isinstance(raw, bytes | str):
        raise DecodeError(f"{PAYLOAD_FIELD!r} is {type(raw).__name__}, expected bytes")
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_PAYLOAD_BYTES:
        raise DecodeError(f"payload is {size} bytes, more than {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:
        # UnicodeDecodeError is a ValueError; RecursionError comes from deeply nested arrays.
        raise DecodeError(f"payload is not JSON: {_short(str(err))}") from None
    if not isinstance(body, dict):
        raise DecodeError(f"payload is JSON {type(body).__name__}, expected an object")
    return body


def _action(value: object) -> StreamAction:
    for known in STREAM_ACTIONS:
        if value == known:
            return known
    raise DecodeError(f"unknown action {_short(value)}")


def _int(body: Mapping[str, Any], key: str, *, bits: int = 31) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{key!r} is {type(value).__name__}, expected an integer")
    limit = _MAX_INT4 if bits == 31 else 2**bits - 1
    if not 0 <= value <= limit:
        raise DecodeError(f"{key!r} = {_short(value)} is out of range")
    return value


def _timestamp(body: Mapping[str, Any], key: str) -> datetime | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DecodeError(f"{key!r} is {type(value).__name__}, expected an ISO timestamp")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise DecodeError(f"{key!r} = {_short(value)} has no UTC offset")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise DecodeError(f"{key!r} = {_short(value)} is not an ISO timestamp") from None


def utc_micros(moment: datetime) -> int:
    """Microseconds since the epoch, the same whatever offset `moment` carries."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def entry_text(fields: object) -> str:
    """A stream entry as text for the dead-letter table, whatever it holds."""
    if isinstance(fields, Mapping) and len(fields) == 1:
        (value,) = fields.values()
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, str):
            return value
    if isinstance(fields, Mapping):
        return json.dumps(
            {_text(k): _text(v) for k, v in fields.items()}, ensure_ascii=False, default=repr
        )
    return repr(fields)


def _text(value: object) -> object:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
