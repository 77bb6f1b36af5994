"""The one Dagster entry point: `dagster ... -m wx_orchestration.definitions`."""

from __future__ import annotations

import dagster as dg

from wx_orchestration.defs.enrichment.assets import flowsheet_enrichment
from wx_orchestration.defs.enrichment.jobs import enrichment_backlog_job
from wx_orchestration.defs.enrichment.sensors import (
    enrichment_backlog_sensor,
    enrichment_coverage_sensor,
)
from wx_orchestration.defs.identity.assets import library_identity
from wx_orchestration.defs.identity.jobs import library_identity_refresh_job
from wx_orchestration.defs.identity.schedules import library_identity_refresh_schedule
from wx_orchestration.defs.lifecycle.assets import (
    enrichment_report,
    link_upgrade,
    no_match_reask,
    streaming_reask,
)
from wx_orchestration.defs.lifecycle.checks import LIFECYCLE_CHECKS
from wx_orchestration.defs.lifecycle.jobs import (
    cohort_reenrichment_job,
    enrichment_lifecycle_job,
    enrichment_report_job,
)
from wx_orchestration.defs.lifecycle.schedules import (
    enrichment_lifecycle_schedule,
    enrichment_report_schedule,
)
from wx_orchestration.defs.observability.assets import lml_budget, wx_cdc_stream
from wx_orchestration.defs.observability.sensors import sidecar_health_sensor
from wx_orchestration.defs.observability.sentry import (
    init_sentry,
    sentry_run_failure_sensor,
)
from wx_orchestration.defs.resources import resources_from_env
from wx_orchestration.defs.station.assets import STATION_ASSETS
from wx_orchestration.defs.sweeps.checks import (
    HEALTH_CHECKS,
    health_checks_job,
)
from wx_orchestration.defs.sweeps.jobs import requeue_parked_job, stale_sweep_job
from wx_orchestration.defs.sweeps.schedules import stale_sweep_schedule

# Module top level on purpose: every process that loads the location (webserver, daemon, each
# step subprocess) initialises Sentry once. A no-op without SENTRY_DSN.
init_sentry()

JOBS = [
    library_identity_refresh_job,
    enrichment_backlog_job,
    stale_sweep_job,
    requeue_parked_job,
    health_checks_job,
    enrichment_lifecycle_job,
    enrichment_report_job,
    cohort_reenrichment_job,
]

defs = dg.Definitions(
    assets=[
        *STATION_ASSETS,
        library_identity,
        flowsheet_enrichment,
        wx_cdc_stream,
        lml_budget,
        no_match_reask,
        link_upgrade,
        streaming_reask,
        enrichment_report,
    ],
    asset_checks=[*HEALTH_CHECKS, *LIFECYCLE_CHECKS],
    jobs=JOBS,
    schedules=[
        library_identity_refresh_schedule,
        stale_sweep_schedule,
        enrichment_lifecycle_schedule,
        enrichment_report_schedule,
    ],
    sensors=[
        enrichment_backlog_sensor,
        enrichment_coverage_sensor,
        sidecar_health_sensor,
        sentry_run_failure_sensor(job.name for job in JOBS),
    ],
    resources=resources_from_env(),
)
