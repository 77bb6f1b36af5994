"""The one Dagster entry point: `dagster ... -m wx_orchestration.definitions`."""

from __future__ import annotations

import dagster as dg

from wx_orchestration.defs.identity.assets import library_identity
from wx_orchestration.defs.identity.jobs import library_identity_refresh_job
from wx_orchestration.defs.identity.schedules import library_identity_refresh_schedule
from wx_orchestration.defs.observability.assets import wx_cdc_stream
from wx_orchestration.defs.observability.sensors import sidecar_health_sensor
from wx_orchestration.defs.observability.sentry import init_sentry, sentry_run_failure_sensor
from wx_orchestration.defs.resources import resources_from_env

# Module top level on purpose: every process that loads the location (webserver, daemon, each
# step subprocess) initialises Sentry once. A no-op without SENTRY_DSN.
init_sentry()

defs = dg.Definitions(
    assets=[library_identity, wx_cdc_stream],
    jobs=[library_identity_refresh_job],
    schedules=[library_identity_refresh_schedule],
    sensors=[sidecar_health_sensor, sentry_run_failure_sensor],
    resources=resources_from_env(),
)
