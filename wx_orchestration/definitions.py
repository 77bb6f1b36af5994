"""The one Dagster entry point: `dagster ... -m wx_orchestration.definitions`."""

from __future__ import annotations

import dagster as dg

from wx_orchestration.defs.resources import resources_from_env

defs = dg.Definitions(
    resources=resources_from_env(),
)
