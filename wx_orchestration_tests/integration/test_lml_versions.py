"""LML as it is in the wild (issue #15): non-answers that must not become verdicts, the station's
way of calling it, and the February 2026 LML without the bulk endpoints — against the emulator's
modes, on real Postgres (and Redis where the shared budget is part of the rule)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis

from wx_orchestration.clients.lml import LmlClient, LmlError
from wx_orchestration.clients.lml_budget import BudgetedLml, LmlBudget, wait_until_lml_ready
from wx_orchestration.contracts.cdc import StreamEvent
from wx_orchestration.contracts.lml import (
    LOOKUP_BULK_PATH,
    LOOKUP_PATH,
    REENRICHMENT_LOOKUPS,
    STREAMING_UPGRADE_LOOKUPS,
    LookupCaller,
)
from wx_orchestration.core.budget import BudgetLimits, lane_family
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry
from wx_orchestration.db.enrichment import claim_rows_by_ids
from wx_orchestration.db.pool import close_shared_pools
from wx_orchestration.defs.resources import LmlBudgetResource, LmlResource, RedisResource
from wx_orchestration.devstack.lml_emulator import EmulatorHandle
from wx_orchestration.flows.enrichment import EnrichmentOutcome, enrich_claimed
from wx_orchestration.sidecar.enrich import EnrichRole
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.roles import SidecarContext
from wx_orchestration_tests.integration.sidecar_support import FAST
from wx_orchestration_tests.integration.test_enrichment_flow import (
    SCHEMA,
    add_play,
    attempts,
    emulated_artist,
    flowsheet_row,
)
from wx_orchestration_tests.integration.test_sidecar_enrich import settings as role_settings

SECRET = "s3cret-lml-key-for-tests"
MISSING_BULK = f"has no POST {LOOKUP_BULK_PATH}"


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(station_db, autocommit=True) as connection:
        connection.execute(f"SET search_path TO {SCHEMA}, wx_orchestration")
        yield connection


@pytest.fixture
def client(lml_emulator: EmulatorHandle) -> Iterator[LmlClient]:
    lml = LmlClient(lml_emulator.url, total_timeout=10, max_retries=0)
    yield lml
    lml.close()


@pytest.fixture
def live_role(
    station_db: str, redis_url: str, lml_emulator: EmulatorHandle
) -> Iterator[EnrichRole]:
    """The sidecar's enrich role, driven directly (`enrich_events`), with a URL as operators
    often write it: with the `/api/v1` suffix the station's client strips."""
    ctx = SidecarContext(
        role_settings(station_db, redis_url, lml_emulator.url + "/api/v1/"),
        FAST,
        "versions",
        SidecarMetrics(),
    )
    role = EnrichRole(ctx, consumer_name="versions", consumers=1)
    yield role
    role.lml_client.close()
    close_shared_pools()


def enrich_live(role: EnrichRole, conn: psycopg.Connection, ids: list[int]) -> dict[int, str]:
    """Hand the rows to the role as the bridge would (one INSERT entry each); their statuses."""
    rows = conn.execute(
        "SELECT to_jsonb(f.*) FROM flowsheet AS f WHERE id = ANY(%s) ORDER BY id", (ids,)
    ).fetchall()
    now_ms = time.time_ns() // 1_000_000
    events = [
        decode_stream_entry(f"{now_ms}-{n}", StreamEvent("INSERT", row, now_ms, now_ms).fields())
        for n, (row,) in enumerate(rows)
    ]
    assert all(isinstance(event, FlowsheetEvent) for event in events)
    role.enrich_events(events)  # type: ignore[arg-type]
    return dict(
        conn.execute(
            "SELECT id, metadata_status::text FROM flowsheet WHERE id = ANY(%s)", (ids,)
        ).fetchall()
    )


def enrich(conn: psycopg.Connection, lml: Any, ids: list[int]) -> EnrichmentOutcome:
    return enrich_claimed(conn, lml, claim_rows_by_ids(conn, ids))


def calls(emulator: EmulatorHandle, path: str) -> list[dict[str, Any]]:
    return [r for r in emulator.requests() if r["path"] == path]


def due_now(conn: psycopg.Connection, ids: list[int]) -> None:
    """Ends the rows' backoff, so the next try need not wait for it."""
    conn.execute(
        "UPDATE wx_orchestration.enrichment_attempts SET next_attempt_at = last_attempt_at"
        " WHERE flowsheet_id = ANY(%s)",
        (ids,),
    )


def assert_pending_without_fault(conn: psycopg.Connection, row_id: int) -> None:
    assert flowsheet_row(conn, row_id)["metadata_status"] == "pending"
    record = attempts(conn, row_id)
    assert record is not None
    assert (record["faults"], record["parked_reason"], record["backing_off"]) == (0, None, True)


NON_ANSWERS: list[dict[str, Any]] = [
    *({"degraded_reason": reason} for reason in ("deadline_exceeded", "cache_only", "odd_new")),
    {"degraded": True, "breaker_state": "open"},  # shed_breaker_open
    {"degraded": True},  # shed_limiter_saturated
    *({"bulk_answers": shape} for shape in ("short", "empty", "out_of_range", "null_lookup")),
    {"bulk_answers": "item_error"},
    # The February 2026 LML with Discogs down: library hits with artwork null, no `degraded`.
    {"mode": "feb2026", "discogs_unavailable": True},
]


@pytest.mark.parametrize("knobs", NON_ANSWERS, ids=lambda knobs: "-".join(map(str, knobs.values())))
def test_every_non_answer_leaves_the_row_pending_without_fault(
    conn: psycopg.Connection,
    lml_emulator: EmulatorHandle,
    client: LmlClient,
    knobs: dict[str, Any],
) -> None:
    lml_emulator.set_faults(**knobs)
    hit, miss = add_play(conn, emulated_artist(True)), add_play(conn, emulated_artist(False))
    for attempt in range(6):  # more tries than would ever park a row at fault
        if attempt:
            due_now(conn, [hit, miss])
        # One play per call: `short` and `out_of_range` leave the last item unanswered.
        for row_id in (hit, miss):
            outcome = enrich(conn, client, [row_id])
            assert (outcome.not_a_verdict, outcome.match, outcome.no_match) == (1, 0, 0)
    for row_id in (hit, miss):
        assert_pending_without_fault(conn, row_id)
        assert (attempts(conn, row_id) or {})["attempts"] == 6


def test_the_same_plays_are_verdicts_once_lml_answers(
    conn: psycopg.Connection, lml_emulator: EmulatorHandle, client: LmlClient
) -> None:
    lml_emulator.set_faults(degraded_reason="deadline_exceeded")
    hit, miss = add_play(conn, emulated_artist(True)), add_play(conn, emulated_artist(False))
    assert enrich(conn, client, [hit, miss]).not_a_verdict == 2
    lml_emulator.reset()
    due_now(conn, [hit, miss])
    outcome = enrich(conn, client, [hit, miss])
    assert (outcome.match, outcome.no_match) == (1, 1)
    assert flowsheet_row(conn, hit)["metadata_status"] == "enriched_match"
    assert flowsheet_row(conn, miss)["metadata_status"] == "enriched_no_match"


def test_a_day_long_retry_after_is_capped_for_every_caller_and_logged(
    lml_emulator: EmulatorHandle,
    client: LmlClient,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lml_emulator.set_faults(rate_limit=1, retry_after=86_400)
    caplog.set_level(logging.WARNING, logger="wx_orchestration.lml")
    with redis.Redis.from_url(redis_url) as connection:
        budget = LmlBudget(connection, BudgetLimits(100, 5, 0.5))
        family = lane_family("live")
        connection.delete(*LmlBudget.keys(family).values())
        with pytest.raises(LmlError) as raised:
            BudgetedLml(client, budget, "live").lookup_bulk([{"artist": "Can"}])
        paused_ms = budget.state(family)["paused_ms"]
        connection.delete(*LmlBudget.keys(family).values())
    assert (raised.value.kind, raised.value.retry_after) == ("rate_limited", 300)
    assert 290_000 < paused_ms <= 300_000
    (line,) = [r.getMessage() for r in caplog.records if "Retry-After" in r.getMessage()]
    assert "86400s" in line
    assert "LML_RETRY_AFTER_CAP_S=300s" in line
    assert "pause for 300s" in line


def test_a_minute_or_less_is_honoured_without_a_line(
    lml_emulator: EmulatorHandle, client: LmlClient, caplog: pytest.LogCaptureFixture
) -> None:
    lml_emulator.set_faults(rate_limit=1, retry_after=60)
    caplog.set_level(logging.WARNING, logger="wx_orchestration.lml")
    with pytest.raises(LmlError) as raised:
        client.lookup_bulk([{"artist": "Can"}])
    assert raised.value.retry_after == 60
    assert not [r for r in caplog.records if "Retry-After" in r.getMessage()]


def test_live_lookups_are_called_as_the_station_calls_them(
    conn: psycopg.Connection, lml_emulator: EmulatorHandle, live_role: EnrichRole
) -> None:
    row_id = add_play(conn, emulated_artist(True))
    assert enrich_live(live_role, conn, [row_id]) == {row_id: "enriched_match"}
    (call,) = calls(lml_emulator, LOOKUP_BULK_PATH)
    assert call["query"] == "allow_release_resolution_fallback=true"
    assert call["caller"] == {"x-caller-class": "5", "x-caller-reason": "enrichment-worker"}


def test_backlog_lookups_say_who_asks_and_ask_for_the_fallback_too(
    conn: psycopg.Connection, lml_emulator: EmulatorHandle
) -> None:
    resource = LmlResource(base_url=lml_emulator.url + "/api/v1")
    row_id = add_play(conn, emulated_artist(False))
    assert enrich(conn, resource.get_client(), [row_id]).no_match == 1
    (call,) = calls(lml_emulator, LOOKUP_BULK_PATH)
    assert call["query"] == "allow_release_resolution_fallback=true"
    assert call["caller"] == {
        "x-caller-class": "5",
        "x-caller-reason": "flowsheet-metadata-backfill",
    }
    resource.get_client().close()


@pytest.mark.parametrize(
    ("lane", "caller", "reason"),
    [
        ("backlog", None, "flowsheet-metadata-backfill"),
        ("lifecycle", None, "flowsheet-no-match-recheck"),
        ("lifecycle", REENRICHMENT_LOOKUPS, "flowsheet-reenrichment"),
        ("lifecycle", STREAMING_UPGRADE_LOOKUPS, "streaming-url-upgrade"),
    ],
)
def test_each_lane_asks_under_its_own_name_through_the_one_entry(
    lml_emulator: EmulatorHandle,
    redis_url: str,
    lane: str,
    caller: LookupCaller | None,
    reason: str,
) -> None:
    lml = LmlResource(base_url=lml_emulator.url)
    budget = LmlBudgetResource(redis=RedisResource(url=redis_url), rate_per_second=100)
    budgeted = budget.budgeted(lml, lane, caller=caller, wait_timeout_s=5)
    budgeted.lookup_bulk([{"artist": "Can"}])
    (call,) = calls(lml_emulator, LOOKUP_BULK_PATH)
    assert call["caller"] == {"x-caller-class": "5", "x-caller-reason": reason}
    assert call["query"] == "allow_release_resolution_fallback=true"
    # One client and one budget per process, whatever the lane.
    assert budgeted.client is lml.get_client()
    assert budgeted.budget is budget.get_budget()
    assert budget.get_budget().stats[lane].grants == 1
    lml.get_client().close()


def test_error_lines_name_the_absolute_url_never_the_key(
    lml_emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    lml_emulator.set_faults(error_rate=1.0)
    caplog.set_level(logging.DEBUG, logger="wx_orchestration.lml")
    lml = LmlClient(lml_emulator.url + "/api/v1", api_key=SECRET, max_retries=0)
    with lml, pytest.raises(LmlError) as raised:
        lml.lookup_bulk([{"artist": "Can"}])
    assert f"{lml_emulator.url}{LOOKUP_BULK_PATH} answered HTTP 5" in str(raised.value)
    assert f"{lml_emulator.url}{LOOKUP_BULK_PATH}" in caplog.text
    assert SECRET not in str(raised.value)
    assert SECRET not in caplog.text


def test_feb2026_plays_are_enriched_per_item_with_one_line_about_the_missing_endpoint(
    conn: psycopg.Connection,
    lml_emulator: EmulatorHandle,
    client: LmlClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lml_emulator.set_faults(mode="feb2026")
    caplog.set_level(logging.DEBUG, logger="wx_orchestration")
    first = [add_play(conn, emulated_artist(True)), add_play(conn, emulated_artist(False))]
    later = add_play(conn, emulated_artist(True, album="Other Album"), album_title="Other Album")
    assert enrich(conn, client, first).outcome_counts() == {
        "match": 1,
        "no_match": 1,
        "not_a_verdict": 0,
        "error": 0,
        "raced": 0,
    }
    assert enrich(conn, client, [later]).match == 1
    assert [flowsheet_row(conn, i)["metadata_status"] for i in (*first, later)] == [
        "enriched_match",
        "enriched_no_match",
        "enriched_match",
    ]
    # One 404, then never asked again; every item through /api/v1/lookup.
    assert [c["status"] for c in calls(lml_emulator, LOOKUP_BULK_PATH)] == [404]
    assert [c["status"] for c in calls(lml_emulator, LOOKUP_PATH)] == [200, 200, 200]
    (line,) = [r for r in caplog.records if MISSING_BULK in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert f"one POST {LOOKUP_PATH} per item" in line.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r is not line]


def test_feb2026_live_lookups_each_draw_on_the_shared_budget(
    conn: psycopg.Connection, lml_emulator: EmulatorHandle, live_role: EnrichRole
) -> None:
    lml_emulator.set_faults(mode="feb2026")
    ids = [add_play(conn, emulated_artist(True)), add_play(conn, emulated_artist(False))]
    grants: Callable[[], int] = lambda: live_role.budget.stats["live"].grants  # noqa: E731
    before = grants()
    assert sorted(enrich_live(live_role, conn, ids).values()) == [
        "enriched_match",
        "enriched_no_match",
    ]
    # The refused bulk call and each per-item lookup took a slot of their own.
    assert grants() - before == 3
    per_item = calls(lml_emulator, LOOKUP_PATH)
    assert len(per_item) == 2
    assert all(c["caller"]["x-caller-reason"] == "enrichment-worker" for c in per_item)


@pytest.mark.parametrize(
    ("down", "reason"), [(True, "LML reports discogs_api unavailable"), (False, None)]
)
def test_batch_runs_wait_while_an_older_lml_has_no_discogs(
    lml_emulator: EmulatorHandle, client: LmlClient, down: bool, reason: str | None
) -> None:
    lml_emulator.set_faults(mode="feb2026", discogs_unavailable=down)
    assert wait_until_lml_ready(client, max_wait_s=0) == reason
