"""Live-feed rules: which events listeners hear, what they see of a row, how reconnects resume."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wx_orchestration.contracts.cdc import StreamAction, StreamEvent
from wx_orchestration.contracts.live import (
    CLIENT_COLUMNS,
    FrameError,
    LiveFrame,
)
from wx_orchestration.contracts.station import RESULT_COLUMNS
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry
from wx_orchestration.core.live import (
    Refetch,
    Replay,
    build_live_event,
    frame_applies,
    live_event_type,
    parse_entry_id,
    project_row,
    resume_decision,
    utc_text,
)

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def flowsheet_row(**changes: Any) -> dict[str, Any]:
    row = {
        "id": 7,
        "show_id": 3,
        "album_id": None,
        "entry_type": "track",
        "artist_name": "Stereolab",
        "album_title": "Dots and Loops",
        "track_title": "Miss Modular",
        "record_label": "Duophonic",
        "play_order": 4,
        "request_flag": False,
        "segue": False,
        "message": None,
        "add_time": (NOW - timedelta(minutes=5)).isoformat(),
        "updated_at": (NOW - timedelta(minutes=1)).isoformat(),
        "dj_name": "DJ Cassette",
        "metadata_status": "pending",
        "enriching_since": None,
        "composer": "Tim Gane",
        "composer_source": "discogs",
        "search_doc": "'stereolab':1A",
        "legacy_show_code": "X7",
        **{column: None for column in RESULT_COLUMNS},
    }
    row.update(changes)
    return row


def event(action: StreamAction, cdc_ts_ms: int | None = 111, **changes: Any) -> FlowsheetEvent:
    row = flowsheet_row(**changes)
    fields = StreamEvent(action, row, cdc_ts_ms, 222, catchup=action == "CATCHUP").fields()
    decoded = decode_stream_entry("1-0", fields)
    assert isinstance(decoded, FlowsheetEvent), decoded
    return decoded


@pytest.mark.parametrize(
    ("action", "status", "expected"),
    [
        ("INSERT", "pending", "insert"),
        ("CATCHUP", "pending", "insert"),
        ("UPDATE", "enriched_match", "update"),
        ("UPDATE", "enriched_no_match", "update"),
        ("UPDATE", "failed_no_retry", "update"),
        ("CATCHUP", "enriched_match", "update"),
        ("UPDATE", "enriching", None),
        ("CATCHUP", "enriching", None),
        ("UPDATE", "pending", None),  # a claim reset back to pending says nothing new
        ("DELETE", "enriched_match", "delete"),
    ],
)
def test_which_events_listeners_hear(
    action: StreamAction, status: str, expected: str | None
) -> None:
    assert live_event_type(event(action, metadata_status=status), NOW) == expected


@pytest.mark.parametrize(
    ("action", "status"), [("INSERT", "pending"), ("UPDATE", "enriched_match")]
)
def test_rows_older_than_24_hours_stay_silent(action: StreamAction, status: str) -> None:
    just_inside = (NOW - timedelta(hours=23, minutes=59)).isoformat()
    too_old = (NOW - timedelta(hours=25)).isoformat()
    assert live_event_type(event(action, metadata_status=status, add_time=just_inside), NOW)
    assert live_event_type(event(action, metadata_status=status, add_time=too_old), NOW) is None


def test_only_track_rows_are_inserted_or_updated() -> None:
    assert live_event_type(event("INSERT", entry_type="talkset"), NOW) is None
    assert live_event_type(event("DELETE", entry_type="talkset"), NOW) is None
    assert live_event_type(event("INSERT", add_time="not a time"), NOW) is None


def test_a_delete_known_by_its_key_alone_carries_only_the_id() -> None:
    fields = StreamEvent("DELETE", {"id": 9}, None, 222).fields()
    decoded = decode_stream_entry("1-0", fields)
    assert isinstance(decoded, FlowsheetEvent)
    assert live_event_type(decoded, NOW) == "delete"
    live = build_live_event(decoded, "delete")
    assert (live.payload, live.timestamp_ms) == ({"id": 9}, 222)


def test_payload_is_the_client_columns_only_with_utc_timestamps() -> None:
    payload = project_row(
        flowsheet_row(add_time="2024-05-02T07:55:00-04:00", updated_at="2024-05-02T11:59:00+00:00")
    )
    assert tuple(payload) == CLIENT_COLUMNS
    for internal in ("enriching_since", "composer", "composer_source", "search_doc"):
        assert internal not in payload
    assert "legacy_show_code" not in payload
    assert payload["add_time"] == "2024-05-02T11:55:00.000Z"
    assert payload["updated_at"] == "2024-05-02T11:59:00.000000Z"


def test_linked_rows_take_enrichment_from_album_metadata() -> None:
    row = flowsheet_row(album_id=42, artwork_url="https://old/a.jpg", discogs_url="https://d/1")
    album = {column: None for column in RESULT_COLUMNS} | {"artwork_url": "https://new/a.jpg"}
    linked = project_row(row, album)
    assert linked["artwork_url"] == "https://new/a.jpg"
    assert linked["discogs_url"] == "https://d/1"  # album_metadata has none: the row's stands
    unlinked = project_row(flowsheet_row(artwork_url="https://own.jpg"), album)
    assert unlinked["artwork_url"] == "https://own.jpg"


def test_the_same_version_makes_the_same_frame_whichever_way_it_arrived() -> None:
    live = build_live_event(event("INSERT"), "insert")
    caught_up = build_live_event(event("CATCHUP"), "insert")
    assert live.key == caught_up.key
    assert live.timestamp_ms == 111
    assert caught_up.timestamp_ms == 111
    assert build_live_event(event("INSERT", cdc_ts_ms=None), "insert").timestamp_ms == 222
    enriched = build_live_event(event("UPDATE", metadata_status="enriched_match"), "update")
    assert enriched.key != live.key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1714564800000-0", (1714564800000, 0)),
        (" 5-12 ", (5, 12)),
        ("0-0", (0, 0)),
        ("", None),
        ("abc", None),
        ("5", None),
        ("5-1-2", None),
        ("-5-1", None),
        ("99999999999999999999-0", None),
        (None, None),
    ],
)
def test_parse_entry_id(text: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_entry_id(text) == expected


@pytest.mark.parametrize(
    ("last", "first_held", "newest", "expected"),
    [
        ("10-0", (5, 0), (20, 0), Replay((10, 0))),
        ("5-0", (5, 0), (20, 0), Replay((5, 0))),
        ("20-0", (5, 0), (20, 0), Replay((20, 0))),
        ("4-9", (5, 0), (20, 0), Refetch("trimmed")),
        ("21-0", (5, 0), (20, 0), Refetch("reset")),
        ("garbage", (5, 0), (20, 0), Refetch("unparseable")),
        ("20-0", None, (20, 0), Replay((20, 0))),  # everything trimmed, nothing missed
        ("19-0", None, (20, 0), Refetch("trimmed")),
        ("0-0", None, (0, 0), Replay((0, 0))),  # no stream yet
        ("3-0", None, (0, 0), Refetch("reset")),  # Redis came back empty
    ],
)
def test_resume_decision(
    last: str,
    first_held: tuple[int, int] | None,
    newest: tuple[int, int],
    expected: Replay | Refetch,
) -> None:
    assert resume_decision(last, first_held, newest) == expected


def frame(kind: str, **payload: Any) -> LiveFrame:
    return LiveFrame.parse(LiveFrame(kind, payload, 1).to_json())  # type: ignore[arg-type]


def test_a_client_applies_only_newer_versions() -> None:
    held = {"id": 7, "updated_at": "2024-05-02T11:59:00.000000Z"}
    same = frame("insert", id=7, updated_at="2024-05-02T11:59:00.000000Z")
    newer = frame("update", id=7, updated_at="2024-05-02T11:59:00.000001Z")
    older = frame("insert", id=7, updated_at="2024-05-02T11:58:00.000000Z")
    assert not frame_applies(held, same)
    assert frame_applies(held, newer)
    assert not frame_applies(held, older)
    assert frame_applies(None, same)
    assert frame_applies(held, frame("delete", id=7))
    assert not frame_applies(None, frame("delete", id=7))
    assert not frame_applies(held, frame("refetch"))


def test_frames_round_trip_and_reject_garbage() -> None:
    original = LiveFrame("update", {"id": 1, "artist_name": "Añoranza"}, 1714564800000)
    assert LiveFrame.parse(original.to_json()) == original
    for raw in ("nope", "[]", '{"type":"boom","payload":{},"timestamp":1}',
                '{"type":"insert","payload":[],"timestamp":1}',
                '{"type":"insert","payload":{},"timestamp":true}'):  # fmt: skip
        with pytest.raises(FrameError):
            LiveFrame.parse(raw)


_moments = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(_moments, _moments, st.integers(-14 * 60, 14 * 60))
def test_versions_compare_as_text_like_the_moments_they_are(
    a: datetime, b: datetime, offset_min: int
) -> None:
    shifted = a.astimezone(timezone(timedelta(minutes=offset_min)))
    text_a, text_b = utc_text(shifted.isoformat()), utc_text(b)
    assert text_a is not None
    assert text_b is not None
    assert (text_a < text_b) == (a < b)
    assert (text_a == text_b) == (a == b)
