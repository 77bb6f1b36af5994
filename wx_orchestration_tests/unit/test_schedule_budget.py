"""Housekeeping stays cheap: the schedules launch at most 100 runs a day in steady state
(open-source Dagster keeps every run; dagster.yaml documents the retention)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster._utils.schedules import cron_string_iterator

from wx_orchestration.definitions import defs

MAX_RUNS_PER_DAY = 100
WEEK = timedelta(days=7)


def runs_in_a_week(schedule: dg.ScheduleDefinition) -> int:
    start = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday, no DST change in the week
    ticks = cron_string_iterator(
        start.timestamp(), str(schedule.cron_schedule), schedule.execution_timezone or "UTC"
    )
    runs = 0
    for tick in ticks:
        if tick >= start + WEEK:
            return runs
        context = dg.build_schedule_context(
            scheduled_execution_time=tick, repository_def=defs.get_repository_def()
        )
        result = schedule.evaluate_tick(context)
        runs += len(result.run_requests or [])
    raise AssertionError("unreachable")


def test_schedules_launch_at_most_100_runs_a_day() -> None:
    schedules = list(defs.schedules or [])
    per_week = {
        s.name: runs_in_a_week(s) for s in schedules if isinstance(s, dg.ScheduleDefinition)
    }
    assert len(per_week) == len(schedules)
    per_day = sum(per_week.values()) / 7
    assert per_day <= MAX_RUNS_PER_DAY, per_week
    assert per_week["stale_sweep_schedule"] == 72 * 7
