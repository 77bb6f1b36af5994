"""Dagster resources and result readers shared by the asset tests."""

from __future__ import annotations

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
