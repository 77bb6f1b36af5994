"""Dagster resources and result readers shared by the asset tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from wx_orchestration.defs.resources import (
    LmlBudgetResource,
    LmlResource,
    PostgresResource,
    RedisResource,
)


def asset_resources(db_url: str, lml_url: str, redis_url: str, **lml: Any) -> dict[str, Any]:
    """The resources an LML-bound asset needs, with a budget generous enough not to pace tests."""
    return {
        "lml": LmlResource(base_url=lml_url, **lml),
        "postgres": PostgresResource(database_url=db_url),
        "lml_budget": LmlBudgetResource(
            redis=RedisResource(url=redis_url), rate_per_second=1000, max_concurrent=5
        ),
    }


def materialization_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    """Metadata values of the run's (first) materialization."""
    event = result.get_asset_materialization_events()[0]
    mat = event.step_materialization_data.materialization
    return {key: value.value for key, value in mat.metadata.items()}


def observation_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    """Metadata values of the run's (first) asset observation."""
    (event,) = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"][:1]
    observation = event.asset_observation_data.asset_observation
    return {key: value.value for key, value in observation.metadata.items()}


def dagster_cli(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`dagster <args>` as CI runs it: a fresh instance in `home`, the stack named by `env`."""
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), *args],
        env={**os.environ, "DAGSTER_HOME": str(home), **env},
        cwd=home,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def job_execute(
    home: Path, env: dict[str, str], job: str, partition: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`dagster job execute` of one partition of `job` in `wx_orchestration.definitions`."""
    return dagster_cli(
        home, env, "job", "execute", "-m", "wx_orchestration.definitions", "-j", job,
        "--tags", json.dumps({"dagster/partition": partition}), *extra,
    )  # fmt: skip
