"""`flowsheet_enrichment`, its job and `enrichment_backlog_sensor` as Dagster runs them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import psycopg
import pytest

from wx_orchestration.defs.enrichment.assets import flowsheet_enrichment
from wx_orchestration.defs.enrichment.sensors import (
    MAX_RUNS_PER_TICK,
    enrichment_backlog_sensor,
    enrichment_coverage_sensor,
)
from wx_orchestration.defs.resources import PostgresResource
from wx_orchestration_tests.dagster_support import (
    asset_resources,
    job_execute,
    materialization_metadata,
    observation_metadata,
)
from wx_orchestration_tests.integration.test_enrichment_flow import DAY_START, SCHEMA, add_play

NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(station_db, autocommit=True) as connection:
        connection.execute(f"SET search_path TO {SCHEMA}, wx_orchestration")
        yield connection


def statuses(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT metadata_status::text, count(*) FROM flowsheet GROUP BY 1")
    return {status: count for status, count in rows.fetchall()}


def materialize(
    db_url: str, lml_url: str, redis_url: str, **kwargs: object
) -> dg.ExecuteInProcessResult:
    config = kwargs.pop("config", {})
    return dg.materialize(
        [flowsheet_enrichment],
        resources=asset_resources(db_url, lml_url, redis_url),
        run_config={"ops": {"flowsheet_enrichment": {"config": config}}},
        raise_on_error=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_run_drains_its_day_only(station_db, conn, lml_emulator, redis_url) -> None:
    for n in range(30):
        add_play(conn, f"Artist {n % 20}", add_time=DAY_START + timedelta(minutes=n))
    before = add_play(conn, "Artist 1", add_time=DAY_START - timedelta(seconds=1))
    after = add_play(conn, "Artist 1", add_time=DAY_START + timedelta(days=1))
    result = materialize(
        station_db,
        lml_emulator.url,
        redis_url,
        partition_key="2024-03-10",
        config={"batch_size": 7},
    )
    assert result.success
    metadata = materialization_metadata(result)
    outcomes = metadata["outcomes"]
    assert isinstance(outcomes, dict)
    assert outcomes["match"] + outcomes["no_match"] == 30
    assert metadata["batches"] == 5
    assert metadata["lookups"] == 20  # each distinct (artist, album, track) once per run
    assert metadata["dagster/row_count"] == 30
    assert metadata["stopped"] == "drained"
    table = metadata["outcome_table"]
    assert isinstance(table, dg.TableMetadataValue)
    assert {r.data["outcome"]: r.data["rows"] for r in table.records} == outcomes
    assert {"rows_per_s", "lml_calls_per_row", "seconds"} <= set(metadata)
    assert statuses(conn)["pending"] == 2
    pending = conn.execute("SELECT id FROM flowsheet WHERE metadata_status = 'pending'")
    assert sorted(row[0] for row in pending.fetchall()) == sorted([before, after])


def test_a_range_backfill_is_one_run_over_every_day(
    station_db, conn, lml_emulator, redis_url
) -> None:
    for day in range(3):
        add_play(conn, "Artist 1", add_time=DAY_START + timedelta(days=day, hours=1))
    result = materialize(
        station_db,
        lml_emulator.url,
        redis_url,
        tags={
            "dagster/asset_partition_range_start": "2024-03-10",
            "dagster/asset_partition_range_end": "2024-03-11",
        },
    )
    assert result.success
    assert materialization_metadata(result)["dagster/row_count"] == 2
    after = statuses(conn)
    assert after.pop("pending") == 1
    assert sum(after.values()) == 2


def test_grace_period_leaves_young_rows_to_the_fast_path(
    station_db, conn, lml_emulator, redis_url
) -> None:
    young = add_play(conn, "Artist 1", add_time=datetime.now(UTC))
    today = datetime.now(NEW_YORK).date().isoformat()
    result = materialize(station_db, lml_emulator.url, redis_url, partition_key=today)
    assert result.success
    assert materialization_metadata(result)["dagster/row_count"] == 0
    assert conn.execute(
        "SELECT metadata_status::text FROM flowsheet WHERE id = %s", (young,)
    ).fetchone() == ("pending",)
    result = materialize(
        station_db,
        lml_emulator.url,
        redis_url,
        partition_key=today,
        config={"grace_period_s": 0},
    )
    assert materialization_metadata(result)["dagster/row_count"] == 1


def test_time_budget_stops_cleanly(station_db, conn, lml_emulator, redis_url) -> None:
    add_play(conn, "Artist 1", add_time=DAY_START)
    result = materialize(
        station_db,
        lml_emulator.url,
        redis_url,
        partition_key="2024-03-10",
        config={"time_budget_s": 1e-9},
    )
    assert result.success
    # Not done, so not materialized: the partition stays missing; the run says how far it got.
    assert result.get_asset_materialization_events() == []
    assert observation_metadata(result)["stopped"] == "time_budget"
    assert statuses(conn) == {"pending": 1}


def sensor_tick(db_url: str, cursor: str | None = None) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(
        cursor=cursor, resources={"postgres": PostgresResource(database_url=db_url)}
    )
    result = enrichment_backlog_sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def ny_day(delta: timedelta) -> tuple[datetime, str]:
    when = datetime.now(NEW_YORK) - delta
    return when, when.date().isoformat()


def test_sensor_skips_when_nothing_is_pending_past_the_grace_period(station_db, conn) -> None:
    result = sensor_tick(station_db)
    assert isinstance(result, dg.SkipReason)
    add_play(conn, "Artist 1", add_time=datetime.now(UTC))  # within the grace period
    add_play(conn, "  ", add_time=datetime.now(UTC) - timedelta(days=1))  # never claimable
    add_play(conn, "DJ", entry_type="talkset", add_time=datetime.now(UTC) - timedelta(days=1))
    result = sensor_tick(station_db)
    assert isinstance(result, dg.SkipReason)
    assert "older than 120 s" in (result.skip_message or "")


def test_sensor_requests_old_days_with_harmless_repeats(station_db, conn) -> None:
    when, day = ny_day(timedelta(days=3))
    add_play(conn, "Artist 1", add_time=when)
    first = sensor_tick(station_db)
    assert isinstance(first, dg.SensorResult)
    (request,) = first.run_requests or []
    assert request.partition_key == day
    assert request.run_key == f"enrichment-{day}-g0"
    assert first.cursor is not None
    assert len(first.cursor) < 200
    # The same tick evaluated again (its cursor was not saved) asks for the same run key.
    again = sensor_tick(station_db)
    assert isinstance(again, dg.SensorResult)
    assert [r.run_key for r in again.run_requests or []] == [request.run_key]
    # The next tick, with the saved cursor: that day was just requested.
    later = sensor_tick(station_db, first.cursor)
    assert isinstance(later, dg.SkipReason)
    # A newer pending row on that day makes it due again, under a new run key.
    add_play(conn, "Artist 2", add_time=when)
    newer = sensor_tick(station_db, first.cursor)
    assert isinstance(newer, dg.SensorResult)
    assert [r.run_key for r in newer.run_requests or []] == [f"enrichment-{day}-g1"]


def test_sensor_takes_the_newest_days_first_and_a_few_per_tick(station_db, conn) -> None:
    days = []
    for back in range(2, 2 + MAX_RUNS_PER_TICK + 2):
        when, day = ny_day(timedelta(days=back))
        add_play(conn, "Artist 1", add_time=when)
        days.append(day)
    backing_off = add_play(conn, "Artist 1", add_time=ny_day(timedelta(days=1))[0])
    conn.execute(
        "INSERT INTO wx_orchestration.enrichment_attempts "
        "(flowsheet_id, attempts, next_attempt_at) VALUES (%s, 1, now() + interval '1 hour')",
        (backing_off,),
    )
    result = sensor_tick(station_db)
    assert isinstance(result, dg.SensorResult)
    assert [r.partition_key for r in result.run_requests or []] == days[:MAX_RUNS_PER_TICK]
    rest = sensor_tick(station_db, result.cursor)
    assert isinstance(rest, dg.SensorResult)
    assert [r.partition_key for r in rest.run_requests or []] == days[MAX_RUNS_PER_TICK:]


def test_job_execute_drains_a_day(
    station_db, conn, lml_emulator, redis_url, tmp_path: Path
) -> None:
    for n in range(12):
        add_play(conn, f"Artist {n}", add_time=DAY_START + timedelta(hours=3, minutes=n))
    env = {
        "DATABASE_URL": station_db,
        "LIBRARY_METADATA_URL": lml_emulator.url,
        "REDIS_URL": redis_url,
        "LML_RATE_PER_SECOND": "100",
    }
    execute = job_execute(tmp_path, env, "enrichment_backlog_job", "2024-03-10")
    assert execute.returncode == 0, execute.stderr[-3000:]
    remaining = statuses(conn)
    assert remaining.get("pending", 0) == 0
    assert remaining.get("enriched_match", 0) + remaining.get("enriched_no_match", 0) == 12


def test_an_open_discogs_breaker_pauses_the_run_then_it_ends_cleanly(
    station_db, conn, lml_emulator, redis_url
) -> None:
    add_play(conn, "Stereolab", add_time=DAY_START + timedelta(hours=3))
    lml_emulator.set_faults(breaker_state="open")
    result = materialize(station_db, lml_emulator.url, redis_url, partition_key="2024-03-10",
        config={"breaker_wait_s": 0},
    )  # fmt: skip
    assert result.success
    assert result.get_asset_materialization_events() == []
    assert "breaker open" in str(observation_metadata(result)["stopped"])
    assert statuses(conn).get("pending") == 1
    assert [r["path"] for r in lml_emulator.requests()] == ["/health"]


def test_a_wrong_partition_key_is_refused_before_any_work(
    station_db, conn, lml_emulator, redis_url
) -> None:
    add_play(conn, "Artist 1", add_time=DAY_START)
    result = dg.materialize(
        [flowsheet_enrichment],
        resources=asset_resources(station_db, lml_emulator.url, redis_url),
        tags={"dagster/partition": "2024-3-10"},
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "partition key '2024-3-10' is not a partition of flowsheet_enrichment" in message
    assert "2015-01-01 …" in message
    assert statuses(conn) == {"pending": 1}
    assert lml_emulator.requests() == []


def coverage_tick(db_url: str, cursor: str | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        cursor=cursor, resources={"postgres": PostgresResource(database_url=db_url)}
    )
    result = enrichment_coverage_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def recorded_days(result: dg.SensorResult) -> dict[str, dict[str, object]]:
    days = {}
    for event in result.asset_events:
        assert isinstance(event, dg.AssetMaterialization)
        assert event.partition is not None
        days[event.partition] = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
    return days


def test_coverage_sensor_records_the_days_the_sidecar_finished(station_db, conn) -> None:
    finished_at, finished = ny_day(timedelta(days=2))
    unfinished_at, unfinished = ny_day(timedelta(days=3))
    done = add_play(conn, "Artist 1", add_time=finished_at)
    conn.execute("UPDATE flowsheet SET metadata_status = 'enriched_match' WHERE id = %s", (done,))
    add_play(conn, "Artist 2", add_time=unfinished_at)
    _, today = ny_day(timedelta(0))

    first = coverage_tick(station_db)
    days = recorded_days(first)
    assert days[finished]["dagster/row_count"] == 1
    assert days[finished]["matched"] == 1
    assert unfinished not in days
    assert today not in days
    assert "2015-01-01" in days  # a day without plays owes nothing
    assert first.cursor is not None

    # The pending day finishes (e.g. a backlog run drained it): the next pass records it, once.
    conn.execute("UPDATE flowsheet SET metadata_status = 'enriched_no_match'")
    second = recorded_days(coverage_tick(station_db, first.cursor))
    assert set(second) == {unfinished}
    assert second[unfinished]["no_match"] == 1
