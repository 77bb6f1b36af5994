"""Typed shapes of the CDC notifications (DESIGN.md §2) and of what the sidecar puts in Redis.

Three notification channels come from the station's row trigger; the bridge turns flowsheet ones
into entries of stream `wx:cdc`, one field `payload` holding a JSON `StreamEvent`. The sidecar's
heartbeat hash is here too, because the Dagster sensor reads what the sidecar writes and the two
never import each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

CDC_CHANNEL = "cdc"
CDC_OVERSIZED_CHANNEL = "cdc_oversized"
CDC_ERROR_CHANNEL = "cdc_error"
CDC_CHANNELS = (CDC_CHANNEL, CDC_OVERSIZED_CHANNEL, CDC_ERROR_CHANNEL)

FLOWSHEET_TABLE = "flowsheet"
CDC_STREAM = "wx:cdc"
EVENTLOG_GROUP = "eventlog"
ENRICHMENT_GROUP = "enrichment"
# The one field of a `wx:cdc` entry; its value is `StreamEvent.to_json()`.
PAYLOAD_FIELD = "payload"
STREAM_EVENT_VERSION = 1

TriggerAction = Literal["INSERT", "UPDATE", "DELETE"]
# CATCHUP: the row as it is now, read by the bridge's catch-up scan rather than notified.
StreamAction = Literal["INSERT", "UPDATE", "DELETE", "CATCHUP"]
TRIGGER_ACTIONS: tuple[TriggerAction, ...] = ("INSERT", "UPDATE", "DELETE")
STREAM_ACTIONS: tuple[StreamAction, ...] = ("INSERT", "UPDATE", "DELETE", "CATCHUP")
# `flowsheet.id` is a serial (int4).
_MAX_INT4 = 2**31 - 1


class NotificationError(ValueError):
    """A notification's payload is not the shape its channel promises."""


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise NotificationError(f"payload is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise NotificationError(f"payload is JSON {type(value).__name__}, not an object")
    return value


def _str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise NotificationError(f"{key!r} is {type(value).__name__}, expected a string")
    return value


def _action(body: Mapping[str, Any]) -> TriggerAction:
    action = body.get("action")
    for known in TRIGGER_ACTIONS:
        if action == known:
            return known
    raise NotificationError(f"unknown action {action!r}")


def _timestamp_ms(body: Mapping[str, Any]) -> int | None:
    value = body.get("timestamp")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


@dataclass(frozen=True)
class CdcNotification:
    """Channel `cdc`: the whole new row (old row on DELETE); `timestamp` in epoch ms."""

    table: str
    schema: str
    action: TriggerAction
    data: dict[str, Any]
    timestamp_ms: int | None

    @classmethod
    def parse(cls, raw: str) -> CdcNotification:
        body = _json_object(raw)
        data = body.get("data")
        if not isinstance(data, dict):
            raise NotificationError("'data' is not an object")
        return cls(
            _str(body, "table"), _str(body, "schema"), _action(body), data, _timestamp_ms(body)
        )

    def row_id(self) -> int:
        """The changed row's id, which is all the bridge takes from `data`."""
        value = self.data.get("id")
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_INT4:
            return value
        raise NotificationError(f"'data.id' is not a row id: {str(value)[:40]!r}")


@dataclass(frozen=True)
class CdcOversized:
    """Channel `cdc_oversized`: a pointer to a row too big to notify; re-read it by key."""

    table: str
    schema: str
    action: TriggerAction
    primary_key: str | None
    payload_bytes: int | None
    timestamp_ms: int | None
    reason: str

    @classmethod
    def parse(cls, raw: str) -> CdcOversized:
        body = _json_object(raw)
        key = body.get("primary_key")
        size = body.get("payload_bytes")
        return cls(
            _str(body, "table"),
            _str(body, "schema"),
            _action(body),
            key if isinstance(key, str) else None,
            size if isinstance(size, int) and not isinstance(size, bool) else None,
            _timestamp_ms(body),
            str(body.get("reason") or ""),
        )

    def row_id(self) -> int | None:
        """The key as a flowsheet id, or None when the trigger could not give one."""
        if self.primary_key is None or not self.primary_key.isascii():
            return None
        if not self.primary_key.isdecimal():
            return None
        value = int(self.primary_key)
        return value if 0 < value <= _MAX_INT4 else None


@dataclass(frozen=True)
class CdcError:
    """Channel `cdc_error`: the trigger could not build or send a payload; the change is lost."""

    table: str | None
    action: str | None
    sqlstate: str | None
    sqlerrm: str | None
    reason: str

    @classmethod
    def parse(cls, raw: str) -> CdcError:
        try:
            body = _json_object(raw)
        except NotificationError:
            body = {}

        def text(key: str) -> str | None:
            value = body.get(key)
            return value if isinstance(value, str) else None

        return cls(
            text("table"),
            text("action"),
            text("sqlstate"),
            text("sqlerrm"),
            text("reason") or "cdc_error notification",
        )

    def describe(self) -> str:
        return f"{self.reason}: {self.sqlstate or '?'} {self.sqlerrm or ''}".strip()


@dataclass(frozen=True)
class StreamEvent:
    """The JSON body of one `wx:cdc` entry, as the bridge writes it.

    `row` is the flowsheet row as `to_jsonb` renders it (unknown columns included; for a DELETE
    known only by its key, just `{"id": n}`). `cdc_ts_ms` is the trigger's clock (None for
    catch-up rows and re-reads); `bridged_at_ms` is when the bridge wrote the entry.
    """

    action: StreamAction
    row: dict[str, Any]
    cdc_ts_ms: int | None
    bridged_at_ms: int
    catchup: bool = False
    table: str = FLOWSHEET_TABLE

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": STREAM_EVENT_VERSION,
                "table": self.table,
                "action": self.action,
                "row": self.row,
                "cdc_ts_ms": self.cdc_ts_ms,
                "bridged_at_ms": self.bridged_at_ms,
                "catchup": self.catchup,
            },
            separators=(",", ":"),
            default=str,
        )

    def fields(self) -> dict[str, str]:
        return {PAYLOAD_FIELD: self.to_json()}


def catchup_entry_json(row_json: str, bridged_at_ms: int, table: str = FLOWSHEET_TABLE) -> str:
    """`StreamEvent("CATCHUP", row, None, bridged_at_ms, catchup=True).to_json()`, around a row
    already rendered as JSON by the database: catch-up moves whole tables of rows, and parsing
    each into Python only to write it out again cost more than reading it."""
    return (
        f'{{"v":{STREAM_EVENT_VERSION},"table":{json.dumps(table)},"action":"CATCHUP",'
        f'"row":{row_json},"cdc_ts_ms":null,"bridged_at_ms":{int(bridged_at_ms)},"catchup":true}}'
    )


# --- sidecar heartbeat (written by the sidecar, read by `sidecar_health_sensor`) ---------------

HEARTBEAT_KEY_PREFIX = "wx:sidecar:"


def heartbeat_key(instance: str) -> str:
    return f"{HEARTBEAT_KEY_PREFIX}{instance}"


@dataclass(frozen=True)
class SidecarHeartbeat:
    """Hash `wx:sidecar:<instance>`, refreshed every few seconds and expiring when not."""

    instance: str
    roles: tuple[str, ...]
    last_seen_ms: int
    started_at_ms: int
    bridge_state: str  # "leader", "standby" or "off"
    lag: dict[str, int | None]  # per consumer group on wx:cdc
    dead_letters: int  # written by this process since it started

    def to_hash(self) -> dict[str, str]:
        return {
            "instance": self.instance,
            "roles": ",".join(self.roles),
            "last_seen_ms": str(self.last_seen_ms),
            "started_at_ms": str(self.started_at_ms),
            "bridge_state": self.bridge_state,
            "lag": json.dumps(self.lag, sort_keys=True),
            "dead_letters": str(self.dead_letters),
        }

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> SidecarHeartbeat | None:
        """None when the hash is not a heartbeat this version understands."""
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        try:
            lag = json.loads(fields.get("lag") or "{}")
            return cls(
                instance=fields["instance"],
                roles=tuple(r for r in fields.get("roles", "").split(",") if r),
                last_seen_ms=int(fields["last_seen_ms"]),
                started_at_ms=int(fields["started_at_ms"]),
                bridge_state=fields.get("bridge_state", "off"),
                lag={str(k): (v if isinstance(v, int) else None) for k, v in lag.items()},
                dead_letters=int(fields.get("dead_letters", "0")),
            )
        except (KeyError, ValueError, AttributeError, UnicodeDecodeError):
            return None


@dataclass(frozen=True)
class GroupStats:
    """One consumer group of a stream, from XINFO GROUPS (`lag` is None when Redis can't tell)."""

    name: str
    consumers: int
    pending: int
    lag: int | None

    @classmethod
    def from_xinfo(cls, raw: Mapping[str, Any]) -> GroupStats:
        name = raw.get("name")
        lag = raw.get("lag")
        return cls(
            name=name.decode() if isinstance(name, bytes) else str(name),
            consumers=int(raw.get("consumers") or 0),
            pending=int(raw.get("pending") or 0),
            lag=int(lag) if isinstance(lag, int) else None,
        )
