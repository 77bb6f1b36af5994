import dagster as dg

from wx_orchestration.defs.sweeps.jobs import stale_sweep_job

stale_sweep_schedule = dg.ScheduleDefinition(
    # Named as DESIGN §7 and the runbook say (Dagster would call it stale_sweep_job_schedule).
    name="stale_sweep_schedule",
    job=stale_sweep_job,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every minute: stranded claims back to work, missed rows counted.",
)
