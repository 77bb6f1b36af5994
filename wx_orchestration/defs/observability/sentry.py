"""Sentry for the Dagster side: one init per process, a failure hook, a run-failure sensor.

`init_sentry()` runs at the top level of `definitions.py`, so every process that loads the code
location (webserver, daemon, each step subprocess) initialises it once. Nothing is sent when
`SENTRY_DSN` is unset. `with_sentry()` puts the failure hook on every job `definitions.py`
registers and names them for the sensor it builds: step failures of those jobs are captured by
the hook with the live exception; the run-failure sensor reports everything else (UI asset
materializations, runs that failed before or outside any step), so one failure is one event.
Both use the same fingerprint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

import dagster as dg
import sentry_sdk
from dagster_shared.record import copy
from sentry_sdk.integrations.logging import ignore_logger

from wx_orchestration.core.scrub import Scrubber, secrets_from_env
from wx_orchestration.settings import SentrySettings

_initialised = False
JobT = TypeVar("JobT")


def init_sentry(env: dict[str, str] | None = None) -> bool:
    global _initialised
    env = dict(os.environ) if env is None else env
    settings = SentrySettings.from_env(env)
    dsn = settings.dsn.get_secret_value()
    if not dsn or _initialised:
        return _initialised
    scrub = Scrubber(secrets_from_env(env))
    sentry_sdk.init(
        dsn=dsn,
        before_send=lambda event, _hint: scrub(event),
        before_breadcrumb=lambda crumb, _hint: scrub(crumb),
        environment=settings.environment,
    )
    sentry_sdk.set_tag("component", "dagster")
    # Dagster logs every step failure itself; Sentry would report each one twice.
    for name in ("dagster", "dagster.builtin"):
        ignore_logger(name)
    _initialised = True
    return True


def fingerprint(job: str, step: str | None, error_type: str) -> list[str]:
    return ["dagster", job, step or "run", error_type]


def _tags(scope: Any, *, job: str, step: str | None, partition: str | None, run_id: str) -> None:
    scope.set_tag("job", job)
    scope.set_tag("step", step or "-")
    scope.set_tag("partition", partition or "-")
    scope.set_tag("run_id", run_id)


@dg.failure_hook(name="sentry_failure_hook")
def sentry_failure_hook(context: dg.HookContext) -> None:
    """Attached to every job: captures the step's exception with job/step/partition tags."""
    error = context.op_exception
    run = context.instance.get_run_by_id(context.run_id)
    partition = run.tags.get("dagster/partition") if run is not None else None
    with sentry_sdk.new_scope() as scope:
        _tags(scope, job=context.job_name, step=context.step_key, partition=partition,
              run_id=context.run_id)  # fmt: skip
        scope.fingerprint = fingerprint(
            context.job_name, context.step_key, type(error).__name__ if error else "Failure"
        )
        if error is not None:
            sentry_sdk.capture_exception(error)
        else:
            sentry_sdk.capture_message(f"{context.job_name}: step {context.step_key} failed")


def with_sentry(job: JobT) -> JobT:
    """The same job with `sentry_failure_hook` on every step; `definitions.py` names the hooked
    jobs to the run-failure sensor, and a test holds every registered job hooked."""
    if isinstance(job, dg.JobDefinition):
        return job.with_hooks({sentry_failure_hook})  # type: ignore[return-value]
    # An asset job is resolved only when Definitions loads; its hooks are a field of the record.
    return copy(job, hooks={*(getattr(job, "hooks", None) or ()), sentry_failure_hook})


def sentry_run_failure_sensor(hooked_jobs: Iterable[str]) -> dg.RunFailureSensorDefinition:
    """Reports failed runs the hook did not: those of jobs outside `hooked_jobs` (UI asset
    materializations) and those that failed before or outside any step (launch errors, run
    worker crashes)."""
    hooked = frozenset(hooked_jobs)

    @dg.run_failure_sensor(name="sentry_run_failure_sensor", minimum_interval_seconds=60)
    def _sensor(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        if run.job_name in hooked and context.get_step_failure_events():
            return
        error = context.failure_event.message or "run failed"
        with sentry_sdk.new_scope() as scope:
            _tags(scope, job=run.job_name, step=None, partition=run.tags.get("dagster/partition"),
                  run_id=run.run_id)  # fmt: skip
            scope.fingerprint = fingerprint(run.job_name, None, "RunFailure")
            sentry_sdk.capture_message(f"{run.job_name} run failed: {error}", level="error")

    return _sensor
