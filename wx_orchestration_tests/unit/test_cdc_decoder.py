"""The `wx:cdc` entry decoder and the event key: table-driven cases plus properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wx_orchestration.contracts.cdc import (
    PAYLOAD_FIELD,
    CdcError,
    CdcNotification,
    CdcOversized,
    NotificationError,
    StreamEvent,
)
from wx_orchestration.core.events import (
    MAX_PAYLOAD_BYTES,
    DecodeError,
    FlowsheetEvent,
    decode_stream_entry,
    effective_action,
    entry_text,
    event_key,
    fit_entry,
    row_cursor,
)

ROW = {
    "id": 42,
    "artist_name": "Stereolab",
    "updated_at": "2024-05-01T16:00:00.123456+00:00",
    "metadata_status": "pending",
    "search_doc": "'stereolab':1A",  # a column this project does not know
}


def entry(body: Any) -> dict[bytes, bytes]:
    raw = body if isinstance(body, str) else json.dumps(body)
    return {PAYLOAD_FIELD.encode(): raw.encode()}


def body(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "v": 1,
        "table": "flowsheet",
        "action": "INSERT",
        "row": dict(ROW),
        "cdc_ts_ms": 1714579200123,
        "bridged_at_ms": 1714579200125,
        "catchup": False,
    }
    value.update(overrides)
    return value


def decoded(fields: Any) -> FlowsheetEvent:
    result = decode_stream_entry("1-0", fields)
    assert isinstance(result, FlowsheetEvent), result
    return result


def test_bridge_output_round_trips() -> None:
    event = StreamEvent("UPDATE", dict(ROW), 1714579200123, 1714579200125)
    got = decoded(event.fields())
    assert (got.flowsheet_id, got.action, got.metadata_status) == (42, "UPDATE", "pending")
    assert got.updated_at == datetime(2024, 5, 1, 16, 0, 0, 123456, tzinfo=UTC)
    assert got.row["search_doc"] == "'stereolab':1A"
    assert (got.cdc_ts_ms, got.bridged_at_ms, got.catchup) == (1714579200123, 1714579200125, False)


def test_str_keys_and_values_are_accepted() -> None:
    assert decoded({"payload": json.dumps(body())}).flowsheet_id == 42


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"payload": b"not json"}, "not JSON"),
        ({b"payload": b"\xff\xfe"}, "not JSON"),
        ({b"payload": b"[1, 2]"}, "JSON list"),
        ({b"other": b"{}"}, "no 'payload'"),
        ("a string", "expected a mapping"),
        (entry(body(table="library")), "unknown table"),
        (entry(body(action="TRUNCATE")), "unknown action"),
        (entry(body(row=[1])), "'row' is list"),
        (entry(body(row={**ROW, "id": "42"})), "'id' is str"),
        (entry(body(row={**ROW, "id": True})), "'id' is bool"),
        (entry(body(row={**ROW, "id": 2**40})), "out of range"),
        (entry(body(row={k: v for k, v in ROW.items() if k != "id"})), "no 'id'"),
        (entry(body(row={**ROW, "updated_at": 17})), "'updated_at' is int"),
        (entry(body(row={**ROW, "updated_at": "yesterday"})), "not an ISO timestamp"),
        (entry(body(row={**ROW, "updated_at": "2024-05-01T16:00:00"})), "no UTC offset"),
        (entry(body(row={**ROW, "updated_at": None})), "no 'updated_at'"),
        (entry(body(row={**ROW, "metadata_status": "done"})), "unknown metadata_status"),
        (entry(body(row={**ROW, "metadata_status": None})), "no 'metadata_status'"),
        (entry(body(action="DELETE", row={"id": 1, "metadata_status": []})), "metadata_status"),
        (entry(body(bridged_at_ms="now")), "'bridged_at_ms' is str"),
        (entry(body(bridged_at_ms=None)), "missing 'bridged_at_ms'"),
        (entry(body(catchup="yes")), "'catchup' is str"),
        (entry("[" * 100_000), "not JSON"),
        (entry(body(row={**ROW, "artist_bio": "x" * MAX_PAYLOAD_BYTES})), "more than"),
    ],
)
def test_poison_entries_give_a_reason(fields: Any, reason: str) -> None:
    result = decode_stream_entry("1-0", fields)
    assert isinstance(result, DecodeError)
    assert reason in result.reason


def test_delete_known_by_its_key_alone() -> None:
    got = decoded(entry(body(action="DELETE", row={"id": 42})))
    assert (got.updated_at, got.metadata_status) == (None, None)
    assert got.key == "42:deleted"


def test_delete_key_differs_from_the_update_that_wrote_the_row() -> None:
    update = decoded(entry(body(action="UPDATE")))
    delete = decoded(entry(body(action="DELETE")))
    assert update.key != delete.key


def test_same_version_from_live_and_catchup_has_one_key() -> None:
    live = decoded(entry(body(row={**ROW, "updated_at": "2024-05-01T16:00:00.5+00:00"})))
    caught = decoded(
        entry(
            body(
                action="CATCHUP",
                catchup=True,
                cdc_ts_ms=None,
                row={**ROW, "updated_at": "2024-05-01T12:00:00.500000-04:00"},
            )
        )
    )
    assert live.key == caught.key
    assert caught.catchup


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"updated_at": "2024-05-01T16:00:00.123457+00:00"}, False),
        ({"metadata_status": "enriching"}, False),
        ({"id": 43}, False),
        ({"artist_name": "Broadcast"}, True),
    ],
)
def test_key_is_the_row_version(change: dict[str, Any], same: bool) -> None:
    base = decoded(entry(body()))
    other = decoded(entry(body(row={**ROW, **change})))
    assert (base.key == other.key) is same


@pytest.mark.parametrize(
    ("action", "status", "expected"),
    [
        ("CATCHUP", "pending", "INSERT"),
        ("CATCHUP", "enriched_match", "UPDATE"),
        ("INSERT", "pending", "INSERT"),
        ("UPDATE", "pending", "UPDATE"),
    ],
)
def test_catchup_acts_like_insert_while_pending(action: str, status: str, expected: str) -> None:
    event = decoded(entry(body(action=action, row={**ROW, "metadata_status": status})))
    assert effective_action(event) == expected


def test_row_cursor() -> None:
    assert row_cursor(ROW) == (datetime(2024, 5, 1, 16, 0, 0, 123456, tzinfo=UTC), 42)
    assert row_cursor({"id": 1}) is None
    assert row_cursor({"id": "x", "updated_at": ROW["updated_at"]}) is None


def test_entry_text_keeps_undecodable_payloads_readable() -> None:
    assert entry_text({b"payload": b"\xffabc"}) == "\ufffdabc"
    assert json.loads(entry_text({b"a": b"1", b"b": b"2"})) == {"a": "1", "b": "2"}


def test_notification_shapes() -> None:
    note = CdcNotification.parse(
        json.dumps(
            {"table": "flowsheet", "schema": "s", "action": "INSERT", "data": ROW, "timestamp": 5}
        )
    )
    assert (note.action, note.data["id"], note.timestamp_ms) == ("INSERT", 42, 5)
    with pytest.raises(NotificationError):
        CdcNotification.parse('{"table": "flowsheet", "action": "INSERT", "data": []}')
    oversized = CdcOversized.parse(
        '{"table":"flowsheet","schema":"s","action":"UPDATE","primary_key":"7",'
        '"payload_bytes":9000,"timestamp":1,"reason":"big"}'
    )
    assert oversized.row_id() == 7
    assert (
        CdcOversized.parse(
            '{"table":"flowsheet","schema":"s","action":"UPDATE","primary_key":null}'
        ).row_id()
        is None
    )
    error = CdcError.parse('{"sqlstate":"54000","sqlerrm":"too big","reason":"failed"}')
    assert error.describe() == "failed: 54000 too big"
    assert CdcError.parse("garbage").reason == "cdc_error notification"


# --- properties ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


def _near_miss_rows() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "id": st.integers() | json_values,
            "updated_at": st.text(max_size=40) | json_values,
            "metadata_status": st.sampled_from(["pending", "enriching", "bogus"]) | json_values,
        },
    ).flatmap(
        lambda row: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(
            lambda extra: {**extra, **row}
        )
    )


@settings(max_examples=500)
@given(
    st.one_of(
        st.binary(max_size=200).map(lambda b: {b"payload": b}),
        st.text(max_size=200).map(lambda t: {"payload": t}),
        json_values.map(lambda v: {b"payload": json.dumps(v).encode()}),
        st.fixed_dictionaries(
            {
                "action": st.sampled_from(["INSERT", "UPDATE", "DELETE", "CATCHUP", "X"])
                | json_values
            },
            optional={
                "table": st.sampled_from(["flowsheet", "library"]) | json_values,
                "row": _near_miss_rows() | json_values,
                "cdc_ts_ms": st.integers() | json_values,
                "bridged_at_ms": st.integers() | json_values,
                "catchup": st.booleans() | json_values,
            },
        ).map(lambda v: {b"payload": json.dumps(v).encode()}),
        st.dictionaries(st.binary(max_size=10), st.binary(max_size=50), max_size=3),
        json_values,
    )
)
def test_decoder_returns_an_event_or_a_decode_error(fields: Any) -> None:
    result = decode_stream_entry("1-0", fields)
    assert isinstance(result, FlowsheetEvent | DecodeError)
    if isinstance(result, DecodeError):
        assert result.reason
    else:
        assert result.key.startswith(f"{result.flowsheet_id}:")
    assert isinstance(entry_text(fields), str)


@given(
    moment=moments, first=offsets, second=offsets, status=st.sampled_from(["pending", "enriching"])
)
def test_offsets_never_change_the_key(
    moment: datetime, first: timezone, second: timezone, status: str
) -> None:
    def event(offset: timezone) -> FlowsheetEvent:
        row = {
            "id": 7,
            "updated_at": moment.astimezone(offset).isoformat(),
            "metadata_status": status,
        }
        return decoded(StreamEvent("UPDATE", row, None, 1).fields())

    assert event(first).key == event(second).key == event_key(7, moment, status)


def _decoded(payload: str) -> FlowsheetEvent:
    event = decode_stream_entry("1-0", {PAYLOAD_FIELD.encode(): payload.encode()})
    assert isinstance(event, FlowsheetEvent)
    return event


@pytest.mark.parametrize("bio", ["é" * 400_000, "a" * 400_000, "😀" * 100_000])
def test_an_oversized_entry_is_cut_to_fit_and_keeps_its_key(bio: str) -> None:
    row = {**ROW, "metadata_status": "enriched_match", "artist_bio": bio, "message": "hi"}
    whole = StreamEvent("UPDATE", row, 1, 2).to_json()
    assert isinstance(decode_stream_entry("1-0", {PAYLOAD_FIELD: whole}), DecodeError)
    fitted = fit_entry(whole)
    assert len(fitted.encode()) <= MAX_PAYLOAD_BYTES
    event = _decoded(fitted)
    assert event.key == event_key(42, datetime(2024, 5, 1, 16, 0, 0, 123456, UTC), "enriched_match")
    assert event.row["artist_name"] == "Stereolab"
    assert event.row["message"] == "hi"
    assert event.row["artist_bio"].startswith(bio[:100])
    assert json.loads(fitted)["trimmed"] == ["artist_bio"]


def test_an_entry_that_fits_is_left_as_it_is() -> None:
    payload = StreamEvent("UPDATE", ROW, 1, 2).to_json()
    assert fit_entry(payload) is payload


def test_a_row_too_wide_to_cut_keeps_only_its_identity() -> None:
    row = {**ROW, **{f"legacy_{n}": "x" * 1_999 for n in range(200)}}
    fitted = fit_entry(StreamEvent("UPDATE", row, 1, 2).to_json())
    event = _decoded(fitted)
    assert set(event.row) == {"id", "updated_at", "metadata_status"}
    assert len(json.loads(fitted)["trimmed"]) == 202
