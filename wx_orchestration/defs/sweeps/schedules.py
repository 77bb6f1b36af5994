import dagster as dg

from wx_orchestration.defs.sweeps.jobs import stale_sweep_job

# Every 15 minutes is 96 runs a day, each a process launch kept in run history; a stranded
# claim only appears when a process dies mid-batch, and waits at most this long for its sweep.
SWEEP_INTERVAL_S = 15 * 60

stale_sweep_schedule = dg.ScheduleDefinition(
    # Named as DESIGN §7 and the runbook say (Dagster would call it stale_sweep_job_schedule).
    name="stale_sweep_schedule",
    job=stale_sweep_job,
    cron_schedule=f"*/{SWEEP_INTERVAL_S // 60} * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 15 minutes: stranded claims back to work, missed rows counted.",
)
