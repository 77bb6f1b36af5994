"""Sentry for the Dagster side: one init per process, a failure hook, a run-failure sensor.

`init_sentry()` runs at the top level of `definitions.py`, so every process that loads the code
location (webserver, daemon, each step subprocess) initialises it once. Nothing is sent when
`SENTRY_DSN` is unset. Step failures are captured by the hook with the live exception; the
run-failure sensor reports only runs that failed without a step failure (the hook already
told Sentry about those), so one failure is one event. Both use the same fingerprint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dagster as dg
import sentry_sdk
from sentry_sdk.integrations.logging import ignore_logger

from wx_orchestration.core.scrub import Scrubber, secrets_from_env

log = logging.getLogger("wx_orchestration.sentry")
_initialised = False
# Jobs whose step failures the hook reports; the run-failure sensor leaves those to it.
_HOOKED_JOBS: set[str] = set()


def asset_job_with_sentry(name: str, **kwargs: Any) -> dg.UnresolvedAssetJobDefinition:
    """`define_asset_job` with the Sentry failure hook on every step."""
    _HOOKED_JOBS.add(name)
    return dg.define_asset_job(name, hooks={sentry_failure_hook}, **kwargs)


def init_sentry(env: dict[str, str] | None = None) -> bool:
    global _initialised
    env = dict(os.environ) if env is None else env
    dsn = env.get("SENTRY_DSN", "")
    if not dsn or _initialised:
        return _initialised
    scrub = Scrubber(secrets_from_env(env))
    sentry_sdk.init(
        dsn=dsn,
        before_send=lambda event, _hint: scrub(event),
        before_breadcrumb=lambda crumb, _hint: scrub(crumb),
        environment=env.get("WX_ENVIRONMENT", "production"),
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


@dg.run_failure_sensor(name="sentry_run_failure_sensor", minimum_interval_seconds=60)
def sentry_run_failure_sensor(context: dg.RunFailureSensorContext) -> None:
    """Runs of unhooked jobs (UI asset materializations), and runs that failed before or outside
    any step (launch errors, run worker crashes)."""
    if context.dagster_run.job_name in _HOOKED_JOBS and context.get_step_failure_events():
        return
    run = context.dagster_run
    error = context.failure_event.message or "run failed"
    with sentry_sdk.new_scope() as scope:
        _tags(scope, job=run.job_name, step=None, partition=run.tags.get("dagster/partition"),
              run_id=run.run_id)  # fmt: skip
        scope.fingerprint = fingerprint(run.job_name, None, "RunFailure")
        sentry_sdk.capture_message(f"{run.job_name} run failed: {error}", level="error")
