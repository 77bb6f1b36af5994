import dagster as dg

from wx_orchestration.defs.lifecycle.jobs import enrichment_lifecycle_job, enrichment_report_job

# The three passes in one run every two hours (12 runs a day) and the report once a day: with the
# stale sweep's 72, housekeeping stays under 100 runs a day.
enrichment_lifecycle_schedule = dg.ScheduleDefinition(
    name="enrichment_lifecycle_schedule",
    job=enrichment_lifecycle_job,
    cron_schedule="17 */2 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Every two hours: one run each of the no-match re-ask, the link upgrade and the "
        "streaming re-ask."
    ),
)

enrichment_report_schedule = dg.ScheduleDefinition(
    name="enrichment_report_schedule",
    job=enrichment_report_job,
    cron_schedule="30 6 * * *",
    execution_timezone="America/New_York",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 06:30 station time: the enrichment report.",
)
