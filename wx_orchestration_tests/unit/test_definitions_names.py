"""The Dagster objects carry the names DESIGN.md §7 gives them (operators and checks use them)."""

from __future__ import annotations

from wx_orchestration.definitions import defs


def test_jobs_schedules_sensors_and_assets_have_their_contract_names() -> None:
    assert {s.name for s in defs.schedules or []} >= {
        "library_identity_refresh_schedule",
        "stale_sweep_schedule",
    }
    assert {s.name for s in defs.sensors or []} >= {
        "enrichment_backlog_sensor",
        "sidecar_health_sensor",
    }
    repository = defs.get_repository_def()
    assert set(repository.job_names) >= {
        "library_identity_refresh_job",
        "enrichment_backlog_job",
        "stale_sweep_job",
    }
    keys = {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()}
    assert keys >= {"library_identity", "flowsheet_enrichment"}
