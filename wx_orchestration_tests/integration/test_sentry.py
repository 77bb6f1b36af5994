"""Sentry reporting against a local HTTP server standing in for Sentry."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
import sentry_sdk

from wx_orchestration.core.scrub import Scrubber, secrets_from_env
from wx_orchestration.defs.observability import sentry as dagster_sentry
from wx_orchestration.devstack.processes import wait_until

LML_KEY = "sk-sentry-secret-123"
DB_PASSWORD = "dbpass-789"


class FakeSentry:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                outer.bodies.append(raw)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        found = []
        for body in self.bodies:
            lines = body.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found


@pytest.fixture
def fake_sentry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSentry]:
    fake = FakeSentry()
    monkeypatch.setattr(dagster_sentry, "_initialised", False)
    yield fake
    sentry_sdk.init(dsn=None)  # later tests send nothing
    fake.server.shutdown()


shards = dg.StaticPartitionsDefinition(["00", "01"])


@dg.asset(partitions_def=shards)
def exploding_asset() -> None:
    raise RuntimeError(
        f"could not reach postgresql://wx:{DB_PASSWORD}@db.internal/wxyc with key {LML_KEY}"
    )


def test_a_failing_step_sends_one_tagged_event_without_secrets(fake_sentry: FakeSentry) -> None:
    env = {
        "SENTRY_DSN": f"http://publickey1234@127.0.0.1:{fake_sentry.port}/42",
        "LML_API_KEY": LML_KEY,
        "DATABASE_URL": f"postgresql://wx:{DB_PASSWORD}@db.internal/wxyc",
    }
    assert dagster_sentry.init_sentry(env)
    job = dagster_sentry.with_sentry(
        dg.define_asset_job("sentry_probe_job", selection=[exploding_asset])
    )
    defs = dg.Definitions(assets=[exploding_asset], jobs=[job])
    result = defs.resolve_job_def("sentry_probe_job").execute_in_process(
        partition_key="01", raise_on_error=False
    )
    assert not result.success
    sentry_sdk.flush(timeout=10)
    wait_until(lambda: len(fake_sentry.events()) >= 1, timeout=10, what="the Sentry event")
    (event,) = fake_sentry.events()
    assert event["tags"]["job"] == "sentry_probe_job"
    assert event["tags"]["step"] == "exploding_asset"
    assert event["tags"]["partition"] == "01"
    assert event["tags"]["run_id"] == result.run_id
    assert event["fingerprint"] == [
        "dagster",
        "sentry_probe_job",
        "exploding_asset",
        "RuntimeError",
    ]
    raw = b"".join(fake_sentry.bodies)
    assert LML_KEY.encode() not in raw
    assert DB_PASSWORD.encode() not in raw
    assert b"publickey1234" not in raw.split(b"\n", 1)[1]  # the DSN key only in the auth header


@dg.op
def exploding_op() -> None:
    raise ValueError("sweep exploded")


@dg.job
def probe_op_job() -> None:
    exploding_op()


def _failed_run_context(instance: dg.DagsterInstance, run_id: str) -> dg.RunFailureSensorContext:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    (failure,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert failure.dagster_event is not None
    return dg.build_run_status_sensor_context(
        sensor_name="sentry_run_failure_sensor",
        dagster_event=failure.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
    ).for_run_failure()


def _sentry_env(fake: FakeSentry) -> dict[str, str]:
    return {"SENTRY_DSN": f"http://publickey1234@127.0.0.1:{fake.port}/42"}


def test_a_hooked_job_failure_is_one_event_even_after_the_run_failure_sensor(
    fake_sentry: FakeSentry,
) -> None:
    """The hook reports the step; the sensor, seeing the step failure of a hooked job, does not."""
    assert dagster_sentry.init_sentry(_sentry_env(fake_sentry))
    job = dagster_sentry.with_sentry(probe_op_job)
    sensor = dagster_sentry.sentry_run_failure_sensor([job.name])
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        sensor(_failed_run_context(instance, result.run_id))
    sentry_sdk.flush(timeout=10)
    wait_until(lambda: len(fake_sentry.events()) >= 1, timeout=10, what="the hook's event")
    (event,) = fake_sentry.events()
    assert event["fingerprint"] == ["dagster", "probe_op_job", "exploding_op", "ValueError"]


def test_the_run_failure_sensor_reports_a_job_without_the_hook_once(
    fake_sentry: FakeSentry,
) -> None:
    """A UI materialization runs an implicit asset job the hook is not on: the sensor reports it."""
    assert dagster_sentry.init_sentry(_sentry_env(fake_sentry))
    sensor = dagster_sentry.sentry_run_failure_sensor(["some_other_job"])
    with dg.instance_for_test() as instance:
        result = probe_op_job.execute_in_process(instance=instance, raise_on_error=False)
        sensor(_failed_run_context(instance, result.run_id))
    sentry_sdk.flush(timeout=10)
    wait_until(lambda: len(fake_sentry.events()) >= 1, timeout=10, what="the sensor's event")
    (event,) = fake_sentry.events()
    assert event["fingerprint"] == ["dagster", "probe_op_job", "run", "RunFailure"]
    assert event["tags"]["run_id"] == result.run_id
    assert event["level"] == "error"


def test_every_registered_job_carries_the_hook() -> None:
    from wx_orchestration.definitions import defs

    for job in defs.resolve_all_job_defs():
        if job.name.startswith("__"):
            continue
        assert dagster_sentry.sentry_failure_hook in job.hook_defs, job.name


def test_nothing_is_initialised_without_a_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dagster_sentry, "_initialised", False)
    assert dagster_sentry.init_sentry({}) is False


def test_scrubber_masks_known_secrets_urls_and_secret_keys() -> None:
    scrub = Scrubber(
        secrets_from_env({"LML_API_KEY": LML_KEY, "REDIS_URL": "redis://:hunter22@r:6379/0"})
    )
    event = {
        "message": f"Bearer {LML_KEY} and redis://:hunter22@r:6379/0",
        "extra": {"password": "x", "dsn": "y", "nested": [f"postgresql://u:{DB_PASSWORD}@h/d"]},
    }
    cleaned = json.dumps(scrub(event))
    for secret in (LML_KEY, "hunter22", DB_PASSWORD):
        assert secret not in cleaned
    assert '"password": "***"' in cleaned
