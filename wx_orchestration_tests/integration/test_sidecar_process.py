"""The sidecar as a real process: HTTP endpoints, SIGKILL failover, SIGTERM, no Dagster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from wx_orchestration.devstack.processes import free_port
from wx_orchestration_tests.integration.sidecar_support import (
    connect,
    fast_flags,
    insert_tracks,
    poll,
    sidecar_process,
    stop_process,
    stream_events,
)
from wx_orchestration_tests.servers import STATION_SCHEMA


def test_sidecar_never_imports_dagster() -> None:
    code = (
        "import sys, wx_orchestration.sidecar.__main__, wx_orchestration.sidecar.bridge, "
        "wx_orchestration.sidecar.eventlog; "
        "assert 'dagster' not in sys.modules, 'dagster was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class Sidecars:
    def __init__(self, station_db: str, redis_url: str, tmp_path: Path) -> None:
        self.env = {
            "DATABASE_URL": station_db,
            "REDIS_URL": redis_url,
            "WXYC_SCHEMA_NAME": STATION_SCHEMA,
        }
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, roles: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        process = sidecar_process(
            {**self.env, "WX_SIDECAR_PORT": str(port)},
            "--roles",
            roles,
            "--instance",
            name,
            *fast_flags(),
            log_path=self.tmp_path / f"{name}.log",
        )
        self.processes.append(process)
        return process, f"http://127.0.0.1:{port}"

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def sidecars(station_db: str, redis_url: str, tmp_path: Path) -> Iterator[Sidecars]:
    running = Sidecars(station_db, redis_url, tmp_path)
    yield running
    for process in running.processes:
        stop_process(process)


def _bridge_detail(base: str) -> str | None:
    try:
        body = httpx.get(f"{base}/readyz", timeout=2).json()
    except httpx.HTTPError:
        return None
    return body["checks"].get("bridge", {}).get("detail")


def test_health_endpoints_and_graceful_sigterm(sidecars: Sidecars) -> None:
    process, base = sidecars.start("solo", "bridge,eventlog")
    poll(lambda: _bridge_detail(base) == "leader, listening", what="readiness")
    health = httpx.get(f"{base}/healthz", timeout=2)
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    ready = httpx.get(f"{base}/readyz", timeout=2).json()
    assert ready["ready"] is True
    assert set(ready["checks"]) == {"postgres", "redis", "bridge", "eventlog"}
    metrics = httpx.get(f"{base}/metrics", timeout=2).text
    assert "wx_cdc_bridge_leader 1.0" in metrics
    assert "wx_consumer_batch_seconds_bucket" in metrics or "wx_cdc_catchup_rows_total" in metrics
    process.send_signal(signal.SIGTERM)
    assert process.wait(12) == 0, sidecars.log("solo")
    assert "stopped" in sidecars.log("solo")


def test_leader_killed_a_standby_takes_over_and_nothing_is_lost(
    sidecars: Sidecars, station_db: str, redis_url: str
) -> None:
    leader, leader_url = sidecars.start("leader", "bridge")
    poll(lambda: _bridge_detail(leader_url) == "leader, listening", what="the first leader")
    _, standby_url = sidecars.start("standby", "bridge")
    poll(lambda: _bridge_detail(standby_url) == "standby", what="the standby")

    written: list[int] = []
    done = threading.Event()

    def keep_writing() -> None:
        with connect(station_db) as writer:
            while not done.is_set():
                written.extend(insert_tracks(writer, 2))

    thread = threading.Thread(target=keep_writing)
    thread.start()
    try:
        poll(lambda: len(written) > 50, what="writes before the kill")
        leader.send_signal(signal.SIGKILL)
        leader.wait(5)
        poll(lambda: _bridge_detail(standby_url) == "leader, listening", what="the takeover")
        count_at_takeover = len(written)
        poll(lambda: len(written) > count_at_takeover + 50, what="writes after the takeover")
    finally:
        done.set()
        thread.join(10)

    client = redis.Redis.from_url(redis_url)

    def missing() -> set[int]:
        return set(written) - {e.flowsheet_id for e in stream_events(client)}

    poll(lambda: not missing(), timeout=20, what="every written row in wx:cdc")


def test_enrich_role_without_lml_url_is_refused_clearly() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LIBRARY_METADATA_URL"}
    env.update(DATABASE_URL="postgresql://x@127.0.0.1:1/x", REDIS_URL="redis://127.0.0.1:1/0")
    done = subprocess.run(
        [sys.executable, "-m", "wx_orchestration.sidecar", "--roles", "enrich"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "LIBRARY_METADATA_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_start_that_breaks_the_claim_timing_rule_is_refused_in_one_line() -> None:
    env = dict(os.environ)
    env.update(
        DATABASE_URL="postgresql://wx:pw-never-shown@127.0.0.1:1/x",
        REDIS_URL="redis://127.0.0.1:1/0",
        LIBRARY_METADATA_URL="http://127.0.0.1:1",
        LML_API_KEY="key-never-shown",
        WX_ENRICH_MAX_BUDGET_WAIT_S="50",
    )
    done = subprocess.run(
        [sys.executable, "-m", "wx_orchestration.sidecar", "--roles", "enrich"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("wx-sidecar: the reclaim idle (60 s) must be longer than")
    assert "WX_ENRICH_MAX_BUDGET_WAIT_S (50 s)" in lines[0]
    assert "never-shown" not in done.stderr
