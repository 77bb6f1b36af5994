import dagster as dg

from wx_orchestration.core.timing import SWEEP_INTERVAL_S
from wx_orchestration.defs.sweeps.jobs import stale_sweep_job

# Every 20 minutes is 72 runs a day, each a process launch kept in run history; a stranded
# claim only appears when a process dies mid-batch, and waits at most this long for its sweep.
# With the other schedules, housekeeping stays under 100 runs a day (test_schedule_budget).

stale_sweep_schedule = dg.ScheduleDefinition(
    # Named as DESIGN §7 and the runbook say (Dagster would call it stale_sweep_job_schedule).
    name="stale_sweep_schedule",
    job=stale_sweep_job,
    cron_schedule=f"*/{SWEEP_INTERVAL_S // 60} * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 20 minutes: stranded claims back to work, missed rows counted.",
)
