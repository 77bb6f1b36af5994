"""The `enrich` role (fast path) on real Postgres + Redis + the LML emulator.

Most tests drive the role's own consumer one step at a time on entries written like the bridge
writes them (the row as `to_jsonb` renders it), so each asserts one rule without timing; the
first runs the real bridge and role in a sidecar. Waits poll with deadlines.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from wx_orchestration.clients.lml import LmlClient
from wx_orchestration.clients.lml_budget import LmlBudget
from wx_orchestration.clients.lookup_cache import KEY_PREFIX, LookupCache
from wx_orchestration.contracts.cdc import CDC_STREAM, ENRICHMENT_GROUP, StreamAction, StreamEvent
from wx_orchestration.core.enrichment import LookupKey, Verdict
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry
from wx_orchestration.core.timing import FAST_PATH_GATHER_S
from wx_orchestration.db.claim_locks import CLAIM_HELD
from wx_orchestration.db.pool import close_shared_pools
from wx_orchestration.devstack.lml_emulator import EmulatorHandle
from wx_orchestration.flows.enrichment import drain_backlog
from wx_orchestration.settings import Settings
from wx_orchestration.sidecar.enrich import EnrichRole
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.roles import SidecarConfig, SidecarContext
from wx_orchestration.sidecar.runtime import Sidecar
from wx_orchestration_tests.integration.sidecar_support import (
    FAST,
    poll,
    running_role,
    wait_listening,
)
from wx_orchestration_tests.servers import STATION_SCHEMA

TERMINAL = ("enriched_match", "enriched_no_match")
LOOKUP_PATH = "/api/v1/lookup/bulk"


def settings(
    station_db: str, redis_url: str, lml_url: str, rate: float = 200, burst: int = 50
) -> Settings:
    return Settings.from_env(
        {
            "DATABASE_URL": station_db,
            "REDIS_URL": redis_url,
            "WXYC_SCHEMA_NAME": STATION_SCHEMA,
            "LIBRARY_METADATA_URL": lml_url,
            # Generous unless a test is about the budget.
            "LML_RATE_PER_SECOND": str(rate),
            "LML_BURST": str(burst),
            "LML_MAX_CONCURRENT": "10",
            "WX_SIDECAR_PORT": "1",
        }
    )


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(station_db, autocommit=True) as connection:
        connection.execute(f"SET search_path TO {STATION_SCHEMA}, wx_orchestration")
        yield connection


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connection:
        yield connection


@pytest.fixture
def make_role(
    station_db: str, redis_url: str, lml_emulator: EmulatorHandle
) -> Iterator[Callable[..., EnrichRole]]:
    """Enrich roles outside a sidecar, each its own consumer of the `enrichment` group."""
    roles: list[EnrichRole] = []

    def make(name: str = "c1", rate: float = 200, burst: int = 50) -> EnrichRole:
        ctx = SidecarContext(
            settings(station_db, redis_url, lml_emulator.url, rate, burst),
            FAST,
            name,
            SidecarMetrics(),
        )
        # One consumer each, so a test steps exactly the consumer it means.
        role = EnrichRole(ctx, consumer_name=name, consumers=1)
        role.consumers[0].ensure_group()
        roles.append(role)
        return role

    yield make
    for role in roles:
        role.lml_client.close()
    close_shared_pools()


def add_play(
    conn: psycopg.Connection,
    artist: str | None,
    album: str | None = "Dots and Loops",
    track: str | None = "Brakhage",
    *,
    entry_type: str = "track",
    add_time: datetime | None = None,
) -> dict[str, Any]:
    """Insert a flowsheet row; returns it as the bridge would put it on the stream."""
    row = conn.execute(
        "INSERT INTO flowsheet (artist_name, album_title, track_title, entry_type, play_order,"
        " add_time) VALUES (%s, %s, %s, %s, 1, COALESCE(%s, now()))"
        " RETURNING to_jsonb(flowsheet.*)",
        (artist, album, track, entry_type, add_time),
    ).fetchone()
    assert row is not None
    return row[0]


def bridge(client: redis.Redis, row: dict[str, Any], action: StreamAction = "INSERT") -> str:
    now_ms = time.time_ns() // 1_000_000
    event = StreamEvent(action, row, None if action == "CATCHUP" else now_ms, now_ms)
    entry_id: Any = client.xadd(CDC_STREAM, event.fields())  # type: ignore[arg-type]
    return entry_id.decode()


def status(conn: psycopg.Connection, flowsheet_id: int) -> str:
    row = conn.execute(
        "SELECT metadata_status::text FROM flowsheet WHERE id = %s", (flowsheet_id,)
    ).fetchone()
    assert row is not None
    return row[0]


def versions(conn: psycopg.Connection, ids: list[int]) -> dict[int, tuple[str, datetime]]:
    rows = conn.execute(
        "SELECT id, metadata_status::text, updated_at FROM flowsheet WHERE id = ANY(%s)", (ids,)
    ).fetchall()
    return {row_id: (state, updated_at) for row_id, state, updated_at in rows}


def items_sent(emulator: EmulatorHandle) -> int:
    return sum(r["items"] for r in emulator.requests() if r["path"] == LOOKUP_PATH)


def calls_sent(emulator: EmulatorHandle) -> int:
    return sum(1 for r in emulator.requests() if r["path"] == LOOKUP_PATH)


def sample(role: EnrichRole, name: str, **labels: str) -> float:
    value = role.consumers[0].metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def outcomes(role: EnrichRole) -> dict[str, float]:
    names = ("match", "no_match", "not_a_verdict", "error", "raced")
    return {n: sample(role, "wx_enrich_rows_total", outcome=n) for n in names}


def unacked(client: redis.Redis) -> int:
    return client.xpending(CDC_STREAM, ENRICHMENT_GROUP)["pending"]  # type: ignore[index]


def test_the_role_never_imports_dagster() -> None:
    code = (
        "import sys, wx_orchestration.sidecar.enrich; "
        "assert 'dagster' not in sys.modules, 'dagster was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_play_is_enriched_by_the_sidecar_and_a_talkset_is_not_sent(
    station_db: str, redis_url: str, lml_emulator: EmulatorHandle, conn: psycopg.Connection
) -> None:
    sidecar = Sidecar(
        settings(station_db, redis_url, lml_emulator.url), FAST, ("bridge", "enrich"), "t"
    )
    sidecar.start(serve_http=False)
    try:
        wait_listening(sidecar)
        talkset = add_play(conn, "DJ Ana", None, None, entry_type="talkset")
        play = add_play(conn, "Stereolab")
        poll(lambda: status(conn, play["id"]) in TERMINAL, timeout=5, what="the play's verdict")
        (role,) = [r for r in sidecar.roles if isinstance(r, EnrichRole)]
        # The claim's and the finalize's own UPDATE events come back through the bridge.
        poll(
            lambda: sample(role, "wx_enrich_events_ignored_total", reason="not_insert") >= 2,
            what="the role's own UPDATEs to be read and ignored",
        )
    finally:
        assert sidecar.stop()
    assert status(conn, talkset["id"]) == "pending"
    assert (calls_sent(lml_emulator), items_sent(lml_emulator)) == (1, 1)
    assert sample(role, "wx_enrich_events_ignored_total", reason="not_track") == 1
    assert sum(outcomes(role).values()) == 1


def test_only_candidates_reach_lml_and_every_entry_is_acknowledged(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
) -> None:
    role = make_role()
    updated = add_play(conn, "Broadcast", "Tender Buttons", "Corporeal")
    blank = add_play(conn, " \t\u3000")
    talkset = add_play(conn, "DJ Ana", None, None, entry_type="talkset")
    caught_up = add_play(conn, "Stereolab")
    bridge(client, updated, "UPDATE")
    bridge(client, blank)
    bridge(client, talkset)
    bridge(client, caught_up, "CATCHUP")
    assert role.consumers[0].step() == 4

    assert (calls_sent(lml_emulator), items_sent(lml_emulator)) == (1, 1)
    assert status(conn, caught_up["id"]) in TERMINAL
    for row in (updated, blank, talkset):
        assert status(conn, row["id"]) == "pending"
    ignored = {
        reason: sample(role, "wx_enrich_events_ignored_total", reason=reason)
        for reason in ("not_insert", "blank_artist", "not_track")
    }
    assert ignored == {"not_insert": 1, "blank_artist": 1, "not_track": 1}
    assert unacked(client) == 0


def test_a_catchup_of_a_row_no_longer_pending_is_ignored(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
) -> None:
    role = make_role()
    row = add_play(conn, "Stereolab")
    bridge(client, row)
    role.consumers[0].step()
    done = conn.execute(
        "SELECT to_jsonb(flowsheet.*) FROM flowsheet WHERE id = %s", (row["id"],)
    ).fetchone()
    assert done is not None
    bridge(client, done[0], "CATCHUP")
    role.consumers[0].step()
    assert calls_sent(lml_emulator) == 1
    # A catch-up of a row past `pending` counts as an UPDATE (DESIGN.md §6).
    assert sample(role, "wx_enrich_events_ignored_total", reason="not_insert") == 1


def test_a_refused_key_is_one_line_per_call_and_the_plays_wait_for_the_backlog(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # LML wants a key we do not send: every call answers 401.
    monkeypatch.setattr(lml_emulator.emulator, "api_key", "the-key-we-lack")
    role = make_role()
    rows = [add_play(conn, f"Artist {n}") for n in range(3)]
    with caplog.at_level(logging.INFO), running_role(role):
        for row in rows:
            bridge(client, row)
        poll(lambda: attempts(conn, rows) == 3, what="the plays given back")
        poll(lambda: unacked(client) == 0, what="the batch acknowledged")
        ready, detail = role.readiness()
    assert not ready
    assert "LML refused our API key (status 401)" in detail
    assert {status(conn, row["id"]) for row in rows} == {"pending"}
    # One line per refused call, no traceback, nothing at ERROR (so no Sentry event).
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(noisy) == calls_sent(lml_emulator)
    assert all("-> 401" in r.getMessage() for r in noisy)
    assert all("LML refused our API key" in r.getMessage() for r in noisy)
    assert not any(r.exc_info for r in noisy)
    assert all(r.levelno == logging.WARNING for r in noisy)


def attempts(conn: psycopg.Connection, rows: list[dict[str, Any]]) -> int:
    found = conn.execute(
        "SELECT count(*) FROM wx_orchestration.enrichment_attempts WHERE flowsheet_id = ANY(%s)",
        ([row["id"] for row in rows],),
    ).fetchone()
    assert found is not None
    return found[0]


def test_a_finalize_whose_connection_is_cut_is_done_on_a_new_one(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Slow enough an answer to cut the connection the claim was made on while LML thinks.
    lml_emulator.set_faults(latency_ms=1500)
    role = make_role()
    row = add_play(conn, "Stereolab")
    with caplog.at_level(logging.WARNING), running_role(role):
        bridge(client, row)
        poll(lambda: status(conn, row["id"]) == "enriching", what="the claim")
        poll(lambda: claim_locked(conn, row["id"]), what="the claim's lock")
        # Every connection of the role's pool, as a network cut would (its claim locks live on
        # a connection of their own, which the cut spares here).
        cut = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend' AND application_name <> %s",
            ("wx-sidecar claim locks",),
        ).fetchall()
        assert cut
        assert all(killed for (killed,) in cut)
        poll(lambda: status(conn, row["id"]) in TERMINAL, what="the play finalized")
        poll(lambda: unacked(client) == 0, what="the batch acknowledged")
    assert calls_sent(lml_emulator) == 1  # the verdict in hand was not asked for again
    assert outcomes(role)["error"] == 0
    assert any("database connection lost finalizing 1 claimed rows" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert not claim_locked(conn, row["id"])


def claim_locked(conn: psycopg.Connection, flowsheet_id: int) -> bool:
    """Whether a live session holds the claim lock of the row, as the stale sweep sees it."""
    held = conn.execute(
        f"SELECT {CLAIM_HELD} FROM flowsheet AS f WHERE f.id = %s",
        (flowsheet_id,),
    ).fetchone()
    assert held is not None
    return held[0]


def test_a_degraded_lml_leaves_the_row_pending_and_caches_nothing(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
) -> None:
    lml_emulator.set_faults(degraded=True)
    role = make_role()
    row = add_play(conn, "Stereolab")
    bridge(client, row)
    role.consumers[0].step()
    assert status(conn, row["id"]) == "pending"
    attempts = conn.execute(
        "SELECT attempts, last_error FROM wx_orchestration.enrichment_attempts"
        " WHERE flowsheet_id = %s",
        (row["id"],),
    ).fetchone()
    assert attempts == (1, "shed_limiter_saturated")
    assert outcomes(role)["not_a_verdict"] == 1
    assert client.keys(KEY_PREFIX + "*") == []
    assert unacked(client) == 0


def test_the_same_record_twice_within_the_ttl_costs_one_call_across_sidecars(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
) -> None:
    first, second = make_role("one"), make_role("two")
    earlier = add_play(conn, "Stereolab", "Dots and Loops", "Brakhage")
    bridge(client, earlier)
    first.consumers[0].step()
    # Later in the hour, the same record; spelled differently, seen by another sidecar.
    again = add_play(conn, "  STEREOLAB ", "dots  and loops", "Brakhage")
    bridge(client, again)
    second.consumers[0].step()

    assert calls_sent(lml_emulator) == 1
    assert sample(second, "wx_enrich_cache_hits_total") == 1
    assert status(conn, again["id"]) == status(conn, earlier["id"])
    assert status(conn, again["id"]) in TERMINAL
    (key,) = client.keys(KEY_PREFIX + "*")
    assert 3590_000 < client.pttl(key) <= 3600_000  # type: ignore[operator]


def test_the_cache_keeps_only_verdicts_and_survives_a_redis_outage(client: redis.Redis) -> None:
    cache = LookupCache(client, ttl_s=60)
    key = LookupKey("Broadcast", "Tender Buttons", None)
    assert cache.put_many({key: Verdict("not_a_verdict", reason="shed_breaker_open")}) == 0
    assert cache.put_many({key: Verdict("error", reason="boom")}) == 0
    assert cache.get_many([key]) == {}
    assert cache.put_many({key: Verdict("no_match")}) == 1
    assert cache.get_many([key]) == {key: Verdict("no_match")}

    unreachable = redis.Redis(port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    down = LookupCache(unreachable, ttl_s=60)
    assert down.get_many([key]) == {}
    assert down.put_many({key: Verdict("no_match")}) == 0


def test_under_budget_pressure_plays_wait_and_share_calls_none_is_shed(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
) -> None:
    role = make_role(rate=1, burst=1)
    with running_role(role):
        rows = []
        for n in range(20):
            rows.append(add_play(conn, f"Artist {n}", f"Album {n}", None))
            bridge(client, rows[-1])
        ids = [row["id"] for row in rows]
        poll(
            lambda: {state for state, _ in versions(conn, ids).values()} <= set(TERMINAL),
            timeout=20,
            what="every play to be enriched",
        )
    # One call a second: the plays that arrived meanwhile waited and went in the next call.
    assert calls_sent(lml_emulator) <= 4
    assert items_sent(lml_emulator) == 20
    assert sample(role, "wx_enrich_budget_waits_total") >= 1
    assert outcomes(role)["not_a_verdict"] == outcomes(role)["error"] == 0


def test_stopping_during_a_budget_pause_leaves_the_play_unclaimed_for_redelivery(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
) -> None:
    role = make_role()
    # Another process got a 429 with a long Retry-After: every caller of lookups pauses.
    client.set(LmlBudget.keys("lookup")["pause"], "1", px=60_000)
    row = add_play(conn, "Stereolab")
    bridge(client, row)
    stop = threading.Event()
    worker = threading.Thread(target=role.run, args=(stop,))
    worker.start()
    try:
        poll(lambda: sample(role, "wx_enrich_budget_pauses_total") >= 1, what="a budget pause")
    finally:
        stopped_at = time.monotonic()
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    assert time.monotonic() - stopped_at < 2
    assert calls_sent(lml_emulator) == 0
    # Never claimed while it waited, so nothing to give back; its entry is delivered again.
    assert status(conn, row["id"]) == "pending"
    assert attempts(conn, [row]) == 0
    assert unacked(client) == 1


def test_a_play_waiting_past_the_budget_wait_limit_is_left_for_the_backlog(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
) -> None:
    role = make_role()
    role.max_budget_wait_s = 1.0
    # The shared breaker is open for longer than any play may wait (an LML outage).
    client.set(LmlBudget.keys("lookup")["open"], "1", px=120_000)
    row = add_play(conn, "Stereolab")
    bridge(client, row)
    with running_role(role):
        poll(
            lambda: sample(role, "wx_enrich_left_for_backlog_total") == 1,
            what="the play left to the backlog",
        )
        poll(lambda: unacked(client) == 0, what="its entry acknowledged")
    assert calls_sent(lml_emulator) == 0
    # Pending and never claimed: no attempt is counted against it, the backlog takes it.
    assert status(conn, row["id"]) == "pending"
    assert attempts(conn, [row]) == 0


def test_plays_arriving_while_a_call_waits_for_the_budget_join_it(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
) -> None:
    """A burst under a tight budget is carried by one full call, not one call per play."""
    role = make_role(rate=0.25, burst=2)
    # Another process just spent the saved calls: the next slot is four seconds away.
    other = LmlBudget(client, role.budget.limits)
    for _ in range(2):
        other.settle("live", other.acquire("live", timeout_s=0), "ok")
    with running_role(role):
        first = [add_play(conn, f"Artist {n}", f"Album {n}", None) for n in range(30)]
        for row in first:
            bridge(client, row)
        poll(lambda: role.queue.keys_waiting() == 30, what="the first plays to wait")
        later = [add_play(conn, f"Artist {n}", f"Album {n}", None) for n in range(30, 60)]
        for row in later:
            bridge(client, row)
        ids = [row["id"] for row in first + later]
        poll(
            lambda: {state for state, _ in versions(conn, ids).values()} <= set(TERMINAL),
            timeout=20,
            what="every play to be enriched",
        )
    assert (calls_sent(lml_emulator), items_sent(lml_emulator)) == (1, 60)
    assert unacked(client) == 0


def test_the_fast_path_and_the_backlog_racing_finalize_each_row_once(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
) -> None:
    lml_emulator.set_faults(latency_ms=5)
    start = datetime.now(UTC) - timedelta(minutes=10)
    rows = [
        add_play(conn, f"Artist {n}", f"Album {n}", None, add_time=start + timedelta(seconds=n))
        for n in range(300)
    ]
    for row in rows:
        bridge(client, row)
    role = make_role()
    with running_role(role):
        with LmlClient(lml_emulator.url, total_timeout=10, max_retries=0) as lml:
            backlog = drain_backlog(
                conn,
                lml,
                start=start,
                end=start + timedelta(hours=1),
                grace_s=0,
                batch_size=10,
                time_budget_s=60,
                progress=lambda _message: None,
            )
        poll(lambda: unacked(client) == 0 and role.consumers[0].last_error is None, what="acks")

    ids = [row["id"] for row in rows]
    assert {state for state, _ in versions(conn, ids).values()} <= set(TERMINAL)
    fast_counts = outcomes(role)
    finalized = fast_counts["match"] + fast_counts["no_match"]
    by_backlog = backlog.outcome.match + backlog.outcome.no_match
    # Both paths really took part, and between them every row was finalized exactly once.
    assert finalized > 0
    assert by_backlog > 0
    assert finalized + by_backlog == len(rows)
    assert fast_counts["raced"] == backlog.outcome.raced == 0
    assert sample(role, "wx_enrich_candidates_not_claimed_total") == by_backlog


def test_a_consumer_killed_mid_batch_leaves_each_row_finalized_once(
    make_role: Callable[..., EnrichRole],
    conn: psycopg.Connection,
    client: redis.Redis,
    lml_emulator: EmulatorHandle,
) -> None:
    rows = [add_play(conn, f"Artist {n}", f"Album {n}", None) for n in range(40)]
    for row in rows:
        bridge(client, row)
    doomed, survivor = make_role("doomed"), make_role("survivor")
    entries: Any = client.xreadgroup(ENRICHMENT_GROUP, "doomed", {CDC_STREAM: ">"}, count=100)
    events = [decode_stream_entry(i.decode(), fields) for i, fields in entries[0][1]]
    assert all(isinstance(event, FlowsheetEvent) for event in events)
    # The doomed consumer got through the first half (finalized) and died before any XACK.
    doomed.enrich_events(events[:20])  # type: ignore[arg-type]
    ids = [row["id"] for row in rows]
    before = versions(conn, ids)
    assert [before[i][0] for i in ids].count("pending") == 20

    with running_role(survivor):
        poll(lambda: unacked(client) == 0, what="the redelivered entries to be acknowledged")

    after = versions(conn, ids)
    assert {state for state, _ in after.values()} <= set(TERMINAL)
    for flowsheet_id in ids[:20]:
        assert after[flowsheet_id] == before[flowsheet_id]  # not written a second time
    assert items_sent(lml_emulator) == 40
    assert sample(survivor, "wx_enrich_candidates_not_claimed_total") == 20
    survived = outcomes(survivor)
    assert survived["match"] + survived["no_match"] == 20


def test_a_batch_in_hand_is_not_reclaimed_by_a_sibling(
    make_role: Callable[..., EnrichRole],
) -> None:
    role = make_role()
    assert role.consumers[0].config.read_count <= 100  # one LML call's worth per batch
    # By default, reclaiming waits out the longest such a batch can take.
    defaults = SidecarConfig()
    longest = FAST_PATH_GATHER_S + role.max_budget_wait_s + role.lml_client.total_timeout
    assert defaults.claim_idle_ms >= longest * 1000
