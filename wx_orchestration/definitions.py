"""The one Dagster entry point: `dagster ... -m wx_orchestration.definitions`."""

from __future__ import annotations

import dagster as dg

from wx_orchestration.defs.identity.assets import library_identity
from wx_orchestration.defs.identity.jobs import library_identity_refresh_job
from wx_orchestration.defs.identity.schedules import library_identity_refresh_schedule
from wx_orchestration.defs.resources import resources_from_env

defs = dg.Definitions(
    assets=[library_identity],
    jobs=[library_identity_refresh_job],
    schedules=[library_identity_refresh_schedule],
    resources=resources_from_env(),
)
