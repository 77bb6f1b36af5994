"""The `library_identity` asset, job and schedule as Dagster runs them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest

from wx_orchestration.defs.identity.assets import library_identity
from wx_orchestration.defs.identity.schedules import library_identity_refresh_schedule
from wx_orchestration_tests.dagster_support import (
    asset_resources,
    dagster_cli,
    job_execute,
    materialization_metadata,
)
from wx_orchestration_tests.integration.test_identity_refresh import seed_library

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def seeded(station_db: str) -> str:
    with psycopg.connect(station_db, autocommit=True) as conn:
        conn.execute("SET search_path TO wxyc_schema")
        seed_library(conn, 10 * 16, start_id=16)
    return station_db


def run_shard(
    db_url: str, lml_url: str, shard: str, redis_url: str, **config: object
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [library_identity],
        partition_key=shard,
        resources=asset_resources(db_url, lml_url, redis_url, api_key="sk-asset-secret"),
        run_config={"ops": {"library_identity": {"config": config}}},
        raise_on_error=False,
    )


def test_materialization_reports_totals_outcomes_and_checks(
    seeded, lml_emulator, redis_url
) -> None:
    result = run_shard(seeded, lml_emulator.url, "05", redis_url, batch_size=4)
    assert result.success
    metadata = materialization_metadata(result)
    totals = metadata["totals"]
    assert isinstance(totals, dict)
    assert totals["scanned"] == 10
    assert totals["scanned"] == (
        totals["rows_resolved"]
        + totals["rows_resolved_compilation"]
        + totals["rows_unresolved"]
        + sum(totals["rows_skipped"].values())
    )
    assert totals["lml_total_calls"] == 3
    assert metadata["dagster/row_count"] == 10
    table = metadata["outcomes"]
    assert isinstance(table, dg.TableMetadataValue)
    assert sum(int(r.data["rows"] or 0) for r in table.records) == totals["scanned"]
    assert {"lml_latency_p50_ms", "lml_latency_p95_ms"} <= set(metadata)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["totals_balance"].passed
    assert checks["lml_error_rate"].passed
    assert "sk-asset-secret" not in repr(metadata)


def test_lml_error_rate_check_warns_when_batches_fail(seeded, lml_emulator, redis_url) -> None:
    lml_emulator.set_faults(error_rate=1.0)
    result = run_shard(seeded, lml_emulator.url, "05", redis_url, batch_size=4)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["lml_error_rate"].passed
    assert checks["lml_error_rate"].severity == dg.AssetCheckSeverity.WARN
    assert checks["totals_balance"].passed


def test_dry_run_adds_the_diff_and_writes_nothing(seeded, lml_emulator, redis_url) -> None:
    result = run_shard(seeded, lml_emulator.url, "05", redis_url, dry_run=True)
    metadata = materialization_metadata(result)
    assert metadata["dry_run"] is True
    diff, totals = metadata["diff"], metadata["totals"]
    assert isinstance(diff, dict)
    assert isinstance(totals, dict)
    assert diff["main_insert"] == totals["rows_resolved"]
    assert "library_id" in str(metadata["diff_changes"])
    with psycopg.connect(seeded) as conn:
        assert conn.execute("SELECT count(*) FROM wxyc_schema.library_identity").fetchone() == (0,)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("batch_size", 1001),
        ("stale_threshold_days", 0),
        ("unresolved_retry_days", -1),
    ],
)
def test_invalid_config_fails_before_any_lml_call(
    seeded, lml_emulator, redis_url, field, value
) -> None:
    result = run_shard(seeded, lml_emulator.url, "05", redis_url, **{field: value})
    assert not result.success
    assert field in str(result.get_step_failure_events()[0].step_failure_data.error)
    assert lml_emulator.requests() == []


def test_rejected_key_fails_the_run_with_a_clear_message(seeded, redis_url) -> None:
    from wx_orchestration.devstack.lml_emulator import start_in_thread

    with start_in_thread(api_key="the-right-key") as locked:
        result = run_shard(seeded, locked.url, "05", redis_url)
        assert not result.success
        message = str(result.get_step_failure_events()[0].step_failure_data.error)
        assert "LML_API_KEY" in message
        assert "sk-asset-secret" not in message
        api_calls = [r for r in locked.requests() if r["path"].startswith("/api/")]
        assert len(api_calls) == 1


def test_weekly_schedule_requests_every_shard_once_per_week() -> None:
    context = dg.build_schedule_context(
        scheduled_execution_time=__import__("datetime").datetime(2026, 11, 23, 5, 0)
    )
    requests = library_identity_refresh_schedule(context)
    assert isinstance(requests, list)
    assert [r.partition_key for r in requests] == [f"{i:02d}" for i in range(16)]
    assert len({r.run_key for r in requests}) == 16
    assert all("2026-W48" in (r.run_key or "") for r in requests)


def test_definitions_validate_and_job_execute_one_shard(
    seeded, lml_emulator, redis_url, tmp_path
) -> None:
    env = {"DATABASE_URL": seeded, "LIBRARY_METADATA_URL": lml_emulator.url, "REDIS_URL": redis_url}
    validate = dagster_cli(
        tmp_path, env, "definitions", "validate", "-m", "wx_orchestration.definitions"
    )
    assert validate.returncode == 0, validate.stderr[-2000:]
    config = tmp_path / "run.yaml"
    config.write_text("ops:\n  library_identity:\n    config:\n      batch_size: 3\n")
    execute = job_execute(tmp_path, env, "library_identity_refresh_job", "07", "-c", str(config))
    assert execute.returncode == 0, execute.stderr[-3000:]
    with psycopg.connect(seeded) as conn:
        row = conn.execute(
            "SELECT count(*), bool_and(library_id % 16 = 7) FROM wxyc_schema.library_identity"
        ).fetchone()
    assert row is not None
    assert row[0] > 0
    assert row[1] is True


def test_an_open_discogs_breaker_ends_the_run_cleanly_with_the_reason(
    seeded, lml_emulator, redis_url
) -> None:
    lml_emulator.set_faults(breaker_state="open")
    result = run_shard(seeded, lml_emulator.url, "05", redis_url, breaker_wait_s=0)
    assert result.success
    metadata = materialization_metadata(result)
    assert "breaker open" in str(metadata["stopped_reason"])
    assert [r["path"] for r in lml_emulator.requests()] == ["/health"]
