"""Stale sweep, requeue and health checks on a real Postgres (issue #6)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import dagster as dg
import psycopg
import pytest
import redis

from wx_orchestration.core.enrichment import RetryPolicy
from wx_orchestration.core.sweep import SweepReport
from wx_orchestration.core.timing import SWEEP_INTERVAL_S
from wx_orchestration.db.enrichment import Release, release_rows
from wx_orchestration.db.sweeps import count_missed_pending, expire_stale_claims
from wx_orchestration.defs.resources import LmlResource, PostgresResource, RedisResource
from wx_orchestration.defs.sweeps import checks
from wx_orchestration.defs.sweeps.jobs import requeue_parked_job, stale_sweep_job
from wx_orchestration.sidecar.claims import ClaimLocks

LEASE = 60.0


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(station_db, autocommit=True) as connection:
        connection.execute("SET search_path TO wxyc_schema, wx_orchestration")
        yield connection


def play(conn: psycopg.Connection, *, status: str = "pending", claimed_ago_s: float | None = None,
         added_ago_s: float = 0, artist: str = "Stereolab") -> int:  # fmt: skip
    row = conn.execute(
        """INSERT INTO flowsheet (artist_name, album_title, track_title, play_order, add_time,
               metadata_status, enriching_since)
           VALUES (%s, 'Dots and Loops', 'Brakhage', 1, now() - make_interval(secs => %s),
                   %s, now() - make_interval(secs => %s))
           RETURNING id""",
        (artist, added_ago_s, status, claimed_ago_s if claimed_ago_s is not None else 0),
    ).fetchone()
    assert row is not None
    if claimed_ago_s is None:
        conn.execute("UPDATE flowsheet SET enriching_since = NULL WHERE id = %s", (row[0],))
    return row[0]


def status_of(conn: psycopg.Connection, flowsheet_id: int) -> str:
    row = conn.execute("SELECT metadata_status FROM flowsheet WHERE id = %s", (flowsheet_id,))
    return row.fetchone()[0]  # type: ignore[index]


def attempts_of(conn: psycopg.Connection, flowsheet_id: int) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT attempts, last_error, parked_reason, next_attempt_at > last_attempt_at "
        "FROM enrichment_attempts WHERE flowsheet_id = %s",
        (flowsheet_id,),
    ).fetchone()


def sweep(conn: psycopg.Connection, policy: RetryPolicy | None = None) -> SweepReport:
    return expire_stale_claims(conn, lease_s=LEASE, policy=policy or RetryPolicy(max_attempts=5))


def test_a_claim_inside_the_lease_is_kept_and_one_past_it_is_reset(conn) -> None:
    kept = play(conn, status="enriching", claimed_ago_s=LEASE - 1)
    reset = play(conn, status="enriching", claimed_ago_s=LEASE + 1)
    report = sweep(conn)
    assert (report.reset, report.parked, report.raced) == (1, 0, 0)
    assert status_of(conn, kept) == "enriching"
    assert status_of(conn, reset) == "pending"
    attempts, last_error, parked, waits = attempts_of(conn, reset)  # type: ignore[misc]
    assert attempts == 1
    assert "claim expired" in last_error
    assert parked is None
    assert waits is True  # backoff: not claimable again at once


def test_a_finalize_racing_the_sweep_leaves_exactly_one_outcome(conn) -> None:
    row_id = play(conn, status="enriching", claimed_ago_s=LEASE + 5)
    claimed_at = conn.execute("SELECT enriching_since FROM flowsheet WHERE id = %s", (row_id,))
    since = claimed_at.fetchone()[0]  # type: ignore[index]
    # The worker's guarded finalize lands first...
    conn.execute(
        "UPDATE flowsheet SET metadata_status = 'enriched_match', enriching_since = NULL "
        "WHERE id = %s AND metadata_status = 'enriching' AND enriching_since = %s",
        (row_id, since),
    )
    # ...so the sweep, comparing the claim time it saw, touches nothing.
    with conn.transaction():
        released = release_rows(conn, [Release(row_id, since, "claim expired", 1.0)])
    assert released == set()
    assert status_of(conn, row_id) == "enriched_match"
    assert attempts_of(conn, row_id) is None


def test_a_sweep_first_makes_the_late_finalize_a_no_op(conn) -> None:
    row_id = play(conn, status="enriching", claimed_ago_s=LEASE + 5)
    since = conn.execute("SELECT enriching_since FROM flowsheet WHERE id = %s", (row_id,))
    claimed = since.fetchone()[0]  # type: ignore[index]
    assert sweep(conn).reset == 1
    late = conn.execute(
        "UPDATE flowsheet SET metadata_status = 'enriched_match' "
        "WHERE id = %s AND metadata_status = 'enriching' AND enriching_since = %s",
        (row_id, claimed),
    )
    assert late.rowcount == 0
    assert status_of(conn, row_id) == "pending"


def test_attempts_accumulate_and_park_at_the_cap_with_the_reason(conn) -> None:
    row_id = play(conn, status="enriching", claimed_ago_s=LEASE + 5)
    policy = RetryPolicy(max_attempts=3)
    for attempt in (1, 2, 3):
        conn.execute(
            "UPDATE flowsheet SET metadata_status = 'enriching', "
            "enriching_since = now() - interval '2 minutes' WHERE id = %s",
            (row_id,),
        )
        report = sweep(conn, policy)
        assert attempts_of(conn, row_id)[0] == attempt  # type: ignore[index]
    assert report.parked == 1
    assert status_of(conn, row_id) == "failed_no_retry"
    assert "claim expired" in attempts_of(conn, row_id)[2]  # type: ignore[index]


def faults_of(conn: psycopg.Connection, flowsheet_id: int) -> tuple[int, str, str | None]:
    row = conn.execute(
        "SELECT faults, last_error, parked_reason FROM enrichment_attempts WHERE flowsheet_id = %s",
        (flowsheet_id,),
    ).fetchone()
    assert row is not None
    return row


def test_an_expired_claim_is_the_rows_fault_only_when_its_worker_is_gone(
    conn: psycopg.Connection, station_db: str
) -> None:
    stranded = play(conn, status="enriching", claimed_ago_s=LEASE + 5)
    abandoned = play(conn, status="enriching", claimed_ago_s=LEASE + 5)
    # A live worker that could not finalize (its database out of reach) still holds its claim;
    # the worker of the other died, and its session with it.
    live_worker, dead_worker = ClaimLocks(station_db), ClaimLocks(station_db)
    live_worker.hold([stranded])
    live_worker.gave_up([stranded])
    live_worker.done([stranded])
    dead_worker.hold([abandoned])
    dead_worker.close()
    try:
        report = sweep(conn, RetryPolicy(max_attempts=1))
    finally:
        live_worker.close()
    assert (report.reset, report.parked) == (1, 1)
    assert status_of(conn, stranded) == "pending"
    faults, reason, parked = faults_of(conn, stranded)
    assert (faults, parked) == (0, None)
    assert "its worker alive but unable to finalize" in reason
    assert status_of(conn, abandoned) == "failed_no_retry"
    faults, reason, parked = faults_of(conn, abandoned)
    assert faults == 1
    assert "its worker gone" in reason
    assert parked == reason


def test_backoff_is_bounded_and_jittered() -> None:
    policy = RetryPolicy(base_s=10, cap_s=300, max_attempts=5)
    rng = random.Random(7).random
    delays = [[policy.delay_s(attempt, rng) for _ in range(200)] for attempt in range(1, 12)]
    for attempt, samples in enumerate(delays, start=1):
        assert all(0 <= d <= min(300, 10 * 2 ** (attempt - 1)) for d in samples)
    for samples in delays[:5]:  # below the cap: full jitter, not a fixed schedule
        assert len({round(d, 6) for d in samples}) > 150
    assert max(delays[-1]) == 300  # jitter first, then the cap


def test_missed_pending_rows_are_counted_by_age_with_the_oldest(conn) -> None:
    play(conn, added_ago_s=30)  # inside the grace period: the fast path's
    play(conn, added_ago_s=20 * 60)
    three_days = play(conn, added_ago_s=3 * 86_400)
    play(conn, added_ago_s=3 * 86_400, status="enriched_match")
    report = SweepReport()
    count_missed_pending(conn, report, grace_s=120)
    assert report.missed == 2
    assert report.missed_by_age == {
        "under_10m": 0, "10m_to_1h": 1, "1h_to_1d": 0, "1d_to_7d": 1, "over_7d": 0,
    }  # fmt: skip
    assert report.oldest_missed_age_s is not None
    assert abs(report.oldest_missed_age_s - 3 * 86_400) < 60
    assert status_of(conn, three_days) == "pending"


def resources(station_db: str, redis_url: str | None = None, **lml: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "postgres": PostgresResource(database_url=station_db),
        "lml": LmlResource(base_url="http://127.0.0.1:9", **lml),
    }
    if redis_url:
        found["redis"] = RedisResource(url=redis_url)
    return found


def test_sweep_job_resets_and_reports_as_an_asset_observation(station_db, conn) -> None:
    play(conn, status="enriching", claimed_ago_s=LEASE + 30)
    play(conn, added_ago_s=3 * 86_400)
    result = stale_sweep_job.execute_in_process(resources=resources(station_db))
    assert result.success
    (observation,) = [
        e.event_specific_data.asset_observation  # type: ignore[union-attr]
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    metadata = {k: v.value for k, v in observation.metadata.items()}
    assert metadata["sweep_reset"] == 1
    assert metadata["missed_pending"] == 1


def test_sweep_job_refuses_a_lease_shorter_than_the_lml_timeout(station_db) -> None:
    result = stale_sweep_job.execute_in_process(
        resources=resources(station_db, total_timeout_s=90),
        raise_on_error=False,
    )
    assert not result.success
    assert "lease_s (60 s) must be longer than" in str(
        result.get_step_failure_events()[0].step_failure_data.error
    )


def test_requeue_dry_run_then_requeue_by_reason(station_db, conn) -> None:
    parked = play(conn, status="failed_no_retry")
    other = play(conn, status="failed_no_retry")
    conn.execute(
        "INSERT INTO enrichment_attempts (flowsheet_id, attempts, parked_reason) VALUES "
        "(%s, 5, 'claim expired: still enriching'), (%s, 5, 'lookup error: bad item')",
        (parked, other),
    )
    config = {"ops": {"requeue_parked_rows": {"config": {"reason": "claim expired"}}}}
    dry = requeue_parked_job.execute_in_process(run_config=config, resources=resources(station_db))
    assert dry.output_for_node("requeue_parked_rows") == 1
    assert status_of(conn, parked) == "failed_no_retry"
    config["ops"]["requeue_parked_rows"]["config"]["dry_run"] = False  # type: ignore[index]
    real = requeue_parked_job.execute_in_process(run_config=config, resources=resources(station_db))
    assert real.output_for_node("requeue_parked_rows") == 1
    assert status_of(conn, parked) == "pending"
    assert attempts_of(conn, parked) is None
    assert status_of(conn, other) == "failed_no_retry"


def test_requeue_refuses_an_empty_selection(station_db) -> None:
    result = requeue_parked_job.execute_in_process(
        resources=resources(station_db), raise_on_error=False
    )
    assert not result.success


def run_check(check: Any, station_db: str, redis_url: str) -> dg.AssetCheckResult:
    wanted = {
        key: value
        for key, value in resources(station_db, redis_url).items()
        if key in check.required_resource_keys
    }
    with dg.build_op_context(resources=wanted) as context:
        return check(**{k: getattr(context.resources, k) for k in wanted})


def test_oldest_pending_age_passes_warns_and_errors(station_db, redis_url, conn) -> None:
    assert run_check(checks.oldest_pending_age, station_db, redis_url).passed
    play(conn, added_ago_s=15 * 60)
    warn = run_check(checks.oldest_pending_age, station_db, redis_url)
    assert not warn.passed
    assert warn.severity == dg.AssetCheckSeverity.WARN
    play(conn, added_ago_s=2 * 3600)
    error = run_check(checks.oldest_pending_age, station_db, redis_url)
    assert error.severity == dg.AssetCheckSeverity.ERROR


def test_stranded_claims_fails_until_swept(station_db, redis_url, conn) -> None:
    play(conn, status="enriching", claimed_ago_s=LEASE + 10)
    # Within one sweep interval of its lease, a claim is the next sweep's, not yet stranded.
    assert run_check(checks.stranded_claims, station_db, redis_url).passed
    play(conn, status="enriching", claimed_ago_s=LEASE + SWEEP_INTERVAL_S + 10)
    assert not run_check(checks.stranded_claims, station_db, redis_url).passed
    sweep(conn)
    assert run_check(checks.stranded_claims, station_db, redis_url).passed


def test_dead_letters_reports_only_new_ones(station_db, redis_url, conn) -> None:
    assert run_check(checks.dead_letters, station_db, redis_url).passed
    conn.execute(
        "INSERT INTO dead_letters (source, payload, reason) VALUES ('wx:cdc', 'x', 'not JSON')"
    )
    failed = run_check(checks.dead_letters, station_db, redis_url)
    assert not failed.passed
    assert failed.metadata["new_dead_letters"].value == 1
    assert run_check(checks.dead_letters, station_db, redis_url).passed


def test_stream_lag_fails_without_stream_and_when_a_group_falls_behind(
    station_db, redis_url
) -> None:
    assert not run_check(checks.stream_lag, station_db, redis_url).passed
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create("wx:cdc", "eventlog", id="0", mkstream=True)
    assert run_check(checks.stream_lag, station_db, redis_url).passed
    pipe = client.pipeline()
    for i in range(checks.STREAM_LAG_WARN + 1):
        pipe.xadd("wx:cdc", {"payload": str(i)})
    pipe.execute()
    assert not run_check(checks.stream_lag, station_db, redis_url).passed


def test_enrichment_freshness_from_the_event_log(station_db, redis_url, conn, monkeypatch) -> None:
    monkeypatch.setenv("WX_FRESHNESS_TARGET_S", "5")
    assert run_check(checks.enrichment_freshness, station_db, redis_url).passed
    for fid, seconds in ((1, 0.5), (2, 1.0), (3, 30.0)):
        conn.execute(
            """INSERT INTO flowsheet_events (event_key, flowsheet_id, action, metadata_status,
                   cdc_timestamp) VALUES
               (%(k)s || ':i', %(id)s, 'INSERT', 'pending', now() - interval '1 minute'),
               (%(k)s || ':t', %(id)s, 'UPDATE', 'enriched_match',
                now() - interval '1 minute' + make_interval(secs => %(s)s))""",
            {"k": str(fid), "id": fid, "s": seconds},
        )
    result = run_check(checks.enrichment_freshness, station_db, redis_url)
    assert not result.passed  # p95 ≈ 27 s > 5 s
    assert result.metadata["rows_last_hour"].value == 3
    assert result.metadata["p50_s"].value == pytest.approx(1.0, abs=0.01)


def test_enrichment_freshness_counts_plays_still_waiting(
    station_db, redis_url, conn, monkeypatch
) -> None:
    # Plays the fast path missed: the backlog enriches them minutes later, or has not yet.
    monkeypatch.setenv("WX_FRESHNESS_TARGET_S", "5")
    for fid in range(1, 10):
        conn.execute(
            """INSERT INTO flowsheet_events (event_key, flowsheet_id, action, metadata_status,
                   cdc_timestamp) VALUES
               (%(k)s || ':i', %(id)s, 'INSERT', 'pending', now() - interval '150 seconds'),
               (%(k)s || ':t', %(id)s, 'UPDATE', 'enriched_match',
                now() - interval '149 seconds')""",
            {"k": str(fid), "id": fid},
        )
    conn.execute(
        """INSERT INTO flowsheet_events (event_key, flowsheet_id, action, metadata_status,
               cdc_timestamp) VALUES ('10:i', 10, 'INSERT', 'pending', now() - interval '153 s')"""
    )
    result = run_check(checks.enrichment_freshness, station_db, redis_url)
    assert result.metadata["rows_last_hour"].value == 10
    assert result.metadata["still_waiting"].value == 1
    p95 = result.metadata["p95_s"].value
    assert isinstance(p95, float)
    assert p95 > 80  # the waiting play's 153 s weighs in
    assert not result.passed


def test_outage_retries_never_count_towards_parking(conn) -> None:
    row_id = play(conn, status="enriching", claimed_ago_s=LEASE + 5)
    policy = RetryPolicy(max_attempts=2)
    for _ in range(4):  # four calls given back during an LML outage: not the row's fault
        since = conn.execute("SELECT enriching_since FROM flowsheet WHERE id = %s", (row_id,))
        with conn.transaction():
            release_rows(
                conn,
                [Release(row_id, since.fetchone()[0], "lml call failed", 0.0)],  # type: ignore[index]
            )
        conn.execute(
            "UPDATE flowsheet SET metadata_status = 'enriching', "
            "enriching_since = now() - interval '2 minutes' WHERE id = %s",
            (row_id,),
        )
    # Then the row's own first failure (its worker died holding it): retried, not parked.
    assert sweep(conn, policy).parked == 0
    assert status_of(conn, row_id) == "pending"
    counts = conn.execute(
        "SELECT attempts, faults FROM enrichment_attempts WHERE flowsheet_id = %s", (row_id,)
    ).fetchone()
    assert counts == (5, 1)


def test_watermark_lead_warns_on_the_station_and_errors_on_ours(
    station_db, redis_url, conn
) -> None:
    fine = run_check(checks.watermark_lead, station_db, redis_url)
    assert fine.passed
    for _ in range(10):  # the station's own writers, faster than one statement a second
        conn.execute("UPDATE flowsheet SET segue = segue WHERE false")
    station = run_check(checks.watermark_lead, station_db, redis_url)
    assert not station.passed
    assert station.severity == dg.AssetCheckSeverity.WARN
    assert float(station.metadata["station_lead_s"].value) > 5  # type: ignore[arg-type]
    conn.execute(
        "UPDATE wx_orchestration.flowsheet_write_pace SET next_at = now() + interval '30 s'"
    )
    ours = run_check(checks.watermark_lead, station_db, redis_url)
    assert ours.severity == dg.AssetCheckSeverity.ERROR
    assert float(ours.metadata["our_lead_s"].value) > 5  # type: ignore[arg-type]
