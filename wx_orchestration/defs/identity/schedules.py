from __future__ import annotations

import dagster as dg

from wx_orchestration.defs.identity.jobs import library_identity_refresh_job
from wx_orchestration.defs.identity.partitions import LIBRARY_SHARDS


@dg.schedule(
    job=library_identity_refresh_job,
    cron_schedule="0 5 * * 1",
    execution_timezone="America/New_York",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekly: one run per library shard (the `lml` pool keeps LML load bounded).",
)
def library_identity_refresh_schedule(
    context: dg.ScheduleEvaluationContext,
) -> list[dg.RunRequest]:
    week = context.scheduled_execution_time.strftime("%G-W%V")
    return [
        dg.RunRequest(run_key=f"identity-{week}-{key}", partition_key=key)
        for key in LIBRARY_SHARDS.get_partition_keys()
    ]
