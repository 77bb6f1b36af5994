"""The bridge's rules: notifications are hints (what it publishes is what the table holds),
outages are one line each, catch-up entries are the events they stand for."""

from __future__ import annotations

from wx_orchestration.core.change_hints import ChangeHint, events_from_hints, hinted_row_ids
from wx_orchestration.core.outage import Outage

NOW_MS = 1_700_000_000_000


def _row(row_id: int, status: str = "pending", url: str | None = None) -> dict:
    return {"id": row_id, "metadata_status": status, "spotify_url": url, "updated_at": "x"}


def test_rows_are_published_as_the_table_holds_them() -> None:
    planned = events_from_hints(
        [ChangeHint(1, "INSERT", NOW_MS - 5), ChangeHint(2, "UPDATE", NOW_MS - 3)],
        {1: _row(1), 2: _row(2, "enriched_match", "https://open.spotify.com/album/x")},
        NOW_MS,
    )
    assert [(e.action, e.row["id"], e.cdc_ts_ms) for e in planned.events] == [
        ("INSERT", 1, NOW_MS - 5),
        ("UPDATE", 2, NOW_MS - 3),
    ]
    assert planned.events[1].row["spotify_url"] == "https://open.spotify.com/album/x"


def test_an_insert_read_after_its_enrichment_is_still_an_insert() -> None:
    planned = events_from_hints(
        [ChangeHint(1, "INSERT", None)], {1: _row(1, "enriched_match")}, NOW_MS
    )
    assert [(e.action, e.row["metadata_status"]) for e in planned.events] == [
        ("INSERT", "enriched_match")
    ]


def test_several_hints_for_a_row_are_one_event_of_its_current_version() -> None:
    hints = [ChangeHint(7, "INSERT", NOW_MS - 9), ChangeHint(7, "UPDATE", NOW_MS - 2)]
    planned = events_from_hints(hints, {7: _row(7)}, NOW_MS)
    assert [(e.action, e.cdc_ts_ms) for e in planned.events] == [("INSERT", NOW_MS - 2)]
    assert hinted_row_ids([*hints, ChangeHint(3, "UPDATE", None)]) == [7, 3]


def test_a_delete_is_published_by_id_only_when_the_row_is_gone() -> None:
    planned = events_from_hints(
        [ChangeHint(1, "DELETE", NOW_MS), ChangeHint(2, "DELETE", NOW_MS)], {2: _row(2)}, NOW_MS
    )
    assert [(e.action, e.row) for e in planned.events] == [("DELETE", {"id": 1})]
    assert planned.contradicted == 1


def test_a_change_of_a_row_gone_since_waits_for_its_delete() -> None:
    planned = events_from_hints([ChangeHint(4, "UPDATE", NOW_MS)], {}, NOW_MS)
    assert planned.events == []
    assert planned.gone == 1


def test_a_forged_clock_never_lies_ahead() -> None:
    far = 4_070_908_800_000  # 2099
    planned = events_from_hints([ChangeHint(1, "UPDATE", far)], {1: _row(1)}, NOW_MS)
    assert planned.events[0].cdc_ts_ms == NOW_MS


def test_outage_backs_off_to_the_cap_and_reports_once() -> None:
    outage = Outage(base_s=0.1, cap_s=30.0)
    delays, firsts = zip(*(outage.failed(float(t)) for t in range(12)), strict=True)
    assert firsts == (True,) + (False,) * 11
    assert delays[:4] == (0.1, 0.2, 0.4, 0.8)
    assert max(delays) == 30.0
    assert outage.recovered(20.0) == 20.0
    assert outage.recovered(21.0) is None
    # Connections cut during the outage, found dead just after it: the same outage.
    assert outage.failed(22.0) == (0.1, False)
    assert outage.recovered(22.5) is None
    assert outage.failed(40.0) == (0.1, True)


def test_a_catch_up_entry_from_database_json_is_the_event_it_stands_for() -> None:
    import json

    from wx_orchestration.contracts.cdc import StreamEvent, catchup_entry_json
    from wx_orchestration.core.events import decode_stream_entry

    row = {"id": 9, "updated_at": "2026-12-04T16:00:00.123456+00:00", "metadata_status": "pending",
           "artist_name": 'Zoë "Q" \u2603', "entry_type": "track"}  # fmt: skip
    spliced = catchup_entry_json(json.dumps(row), NOW_MS)
    built = StreamEvent("CATCHUP", row, None, NOW_MS, catchup=True).to_json()
    assert json.loads(spliced) == json.loads(built)
    assert decode_stream_entry("1-0", {b"payload": spliced.encode()}) == decode_stream_entry(
        "1-0", {b"payload": built.encode()}
    )
