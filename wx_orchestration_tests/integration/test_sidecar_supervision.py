"""Supervised roles: nothing stops silently.

A role whose run fails is logged with its cause and started again after a backoff, `/readyz`
names it meanwhile, and one that cannot stay up stops the process with a non-zero exit. Redis
losing or mangling our streams under traffic (deleted, flushed, overwritten with another type)
costs nothing: every row is enriched, logged once and heard by a listener.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg
import pytest
import redis
from psycopg import sql

from wx_orchestration.contracts.cdc import CDC_STREAM
from wx_orchestration.contracts.live import LIVE_STREAM
from wx_orchestration.core.supervision import RestartPolicy
from wx_orchestration.devstack.lml_emulator import EmulatorHandle
from wx_orchestration.devstack.processes import free_port
from wx_orchestration.settings import Settings
from wx_orchestration.sidecar.roles import ROLE_MODULES
from wx_orchestration.sidecar.runtime import Sidecar
from wx_orchestration_tests.integration import flaky_role
from wx_orchestration_tests.integration.sidecar_support import (
    FAST,
    REPO_ROOT,
    connect,
    current_keys,
    insert_tracks,
    logged_keys,
    poll,
    running_sidecar,
    settings_for,
    stream_events,
    wait_listening,
)
from wx_orchestration_tests.integration.test_live_feed import SseClient
from wx_orchestration_tests.servers import STATION_SCHEMA

TERMINAL = ("enriched_match", "enriched_no_match")


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    monkeypatch.setitem(ROLE_MODULES, "flaky", "wx_orchestration_tests.integration.flaky_role")
    flaky_role.FAILING.set()
    yield flaky_role.FAILING
    flaky_role.FAILING.clear()


@contextmanager
def sidecar_with_http(
    settings: Settings, roles: tuple[str, ...], restart: RestartPolicy | None = None
) -> Iterator[tuple[Sidecar, str]]:
    sidecar = Sidecar(settings, FAST, roles, "supervised", restart=restart)
    sidecar.start()
    base = f"http://127.0.0.1:{settings.sidecar.port}"
    try:
        yield sidecar, base
    finally:
        assert sidecar.stop(), "the sidecar did not stop within its deadline"


def readyz(base: str) -> tuple[int, dict[str, object]]:
    answer = httpx.get(f"{base}/readyz", timeout=5)
    return answer.status_code, answer.json()


def test_a_failing_role_is_restarted_logged_with_its_cause_and_named_by_readyz(
    station_db: str,
    redis_url: str,
    flaky: threading.Event,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(station_db, redis_url, free_port())
    restart = RestartPolicy(max_failures=1000, base_s=0.2, cap_s=0.5)
    with (
        caplog.at_level(logging.INFO, logger="wx_orchestration.sidecar"),
        sidecar_with_http(settings, ("flaky",), restart) as (sidecar, base),
    ):

        def named_down() -> bool:
            status, body = readyz(base)
            checks: dict[str, dict[str, object]] = body["checks"]  # type: ignore[assignment]
            return status == 503 and str(checks["flaky"]["detail"]).startswith("down")

        poll(named_down, what="/readyz to name the failing role")
        (role,) = sidecar.roles
        runs = poll(lambda: role.runs >= 3 and role.runs, what="restarts")  # type: ignore[attr-defined]
        flaky.clear()
        poll(lambda: readyz(base)[0] == 200, what="the role back up")
        assert role.runs > runs  # type: ignore[attr-defined]
        assert sidecar.gave_up is None
        assert not sidecar.stop_event.is_set()
    failures = [r.getMessage() for r in caplog.records if "role flaky failed" in r.getMessage()]
    assert failures
    assert "RuntimeError: run 1 failed <- ConnectionResetError: the peer went away" in failures[0]
    assert "restarting in" in failures[0]


def test_a_role_that_cannot_stay_up_stops_the_sidecar(
    station_db: str, redis_url: str, flaky: threading.Event
) -> None:
    restart = RestartPolicy(max_failures=3, window_s=60, base_s=0.05, cap_s=0.1)
    sidecar = Sidecar(settings_for(station_db, redis_url), FAST, ("flaky",), "t", restart=restart)
    sidecar.start(serve_http=False)
    try:
        poll(sidecar.stop_event.is_set, what="the sidecar to give up")
    finally:
        sidecar.stop()
    assert sidecar.gave_up is not None
    assert sidecar.gave_up.startswith("role flaky failed 3 times within 60s (last: RuntimeError")


def run_sidecar(
    env: dict[str, str], *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wx_orchestration.sidecar", *args],
        env={"PATH": "/usr/bin:/bin", "WXYC_SCHEMA_NAME": STATION_SCHEMA, **env},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_the_process_exits_non_zero_when_a_role_cannot_stay_up(
    fresh_database: str, redis_url: str
) -> None:
    # No migrations: the bridge stops on every start, and restarting cannot help.
    env = {
        "DATABASE_URL": fresh_database,
        "REDIS_URL": redis_url,
        "WX_SIDECAR_PORT": str(free_port()),
    }
    done = run_sidecar(env, "--roles", "bridge", "--instance", "doomed", timeout=60)
    assert done.returncode == 1, done.stderr
    assert "role bridge failed 5 times within 300s" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_taken_port_is_fatal_at_start(station_db: str, redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"DATABASE_URL": station_db, "REDIS_URL": redis_url, "WX_SIDECAR_PORT": str(port)}
        started = time.monotonic()
        done = run_sidecar(env, "--roles", "bridge", timeout=60)
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    errors = [line for line in done.stderr.splitlines() if line.startswith("wx-sidecar:")]
    assert errors == [
        f"wx-sidecar: cannot listen on 127.0.0.1:{port} (taken by another process):"
        " Address already in use; set WX_SIDECAR_PORT to a free port"
    ]
    assert "Traceback" not in done.stderr
    # It never ran a role (a bridge could have taken the lead).
    assert "running roles" not in done.stderr


def test_a_bridge_alone_gets_its_stream_back_from_a_key_of_another_type(
    station_db: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(redis_url)
    restart = RestartPolicy(base_s=0.1, cap_s=0.2)
    with (
        caplog.at_level(logging.INFO, logger="wx_orchestration.sidecar"),
        running_sidecar(station_db, redis_url, ("bridge",)) as sidecar,
        connect(station_db) as conn,
    ):
        sidecar.restart = restart
        wait_listening(sidecar)
        client.set(CDC_STREAM, "not a stream")
        # No consumer here to notice: the bridge's XADD fails, and its supervisor frees the key.
        ids = insert_tracks(conn, 3)
        poll(lambda: set(ids) <= bridged_ids(client), what="the rows on a stream again")
        assert sidecar.gave_up is None
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("role bridge failed: ResponseError: WRONGTYPE") for m in messages)
    assert "wx:cdc held a string, not a stream: deleted it" in messages


def bridged_ids(client: redis.Redis) -> set[int]:
    if client.type(CDC_STREAM) != b"stream":
        return set()
    return {event.flowsheet_id for event in stream_events(client)}


# --- chaos -------------------------------------------------------------------------------------


def statuses(conn: psycopg.Connection, ids: list[int]) -> dict[int, str]:
    rows = conn.execute(
        sql.SQL("SELECT id, metadata_status::text FROM {}.flowsheet WHERE id = ANY(%s)").format(
            sql.Identifier(STATION_SCHEMA)
        ),
        (ids,),
    ).fetchall()
    return dict(rows)


def overwrite_with_list(client: redis.Redis, key: str) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.rpush(key, "not", "a", "stream")
    pipe.execute()


def chaos_settings(station_db: str, redis_url: str, lml_url: str) -> Settings:
    return Settings.from_env(
        {
            "DATABASE_URL": station_db,
            "REDIS_URL": redis_url,
            "WXYC_SCHEMA_NAME": STATION_SCHEMA,
            "LIBRARY_METADATA_URL": lml_url,
            "LML_RATE_PER_SECOND": "200",
            "LML_MAX_CONCURRENT": "10",
            "WX_SIDECAR_PORT": str(free_port()),
        }
    )


def test_streams_deleted_flushed_and_overwritten_under_traffic_lose_nothing(
    station_db: str,
    redis_url: str,
    lml_emulator: EmulatorHandle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis.Redis.from_url(redis_url)
    roles = ("bridge", "eventlog", "enrich", "live")
    settings = chaos_settings(station_db, redis_url, lml_emulator.url)
    written: list[int] = []
    done = threading.Event()

    def keep_writing() -> None:
        pace = threading.Event()
        with connect(station_db) as writer:
            while not done.is_set() and len(written) < 400:
                written.extend(insert_tracks(writer, 1, artist=f"Artist {len(written) % 40}"))
                pace.wait(0.02)

    def after_more_rows(count: int = 15) -> None:
        seen = len(written)
        poll(lambda: len(written) >= seen + count, what="traffic between faults")

    with (
        caplog.at_level(logging.INFO, logger="wx_orchestration"),
        sidecar_with_http(settings, roles) as (sidecar, base),
        connect(station_db) as conn,
    ):
        wait_listening(sidecar)
        listener = SseClient(f"{base}/events/stream")
        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            poll(lambda: listener.frames(), what="the listener to connect")
            faults = [
                lambda: client.delete(CDC_STREAM),
                client.flushdb,
                lambda: client.set(CDC_STREAM, "not a stream"),
                lambda: client.delete(LIVE_STREAM),
                lambda: client.set(LIVE_STREAM, "not a stream"),
                lambda: client.delete(CDC_STREAM, LIVE_STREAM),
                lambda: overwrite_with_list(client, CDC_STREAM),
                client.flushdb,
            ]
            for fault in faults:
                after_more_rows()
                fault()
            after_more_rows()
        finally:
            done.set()
            writer.join(30)
        ids = list(written)

        def all_terminal() -> bool:
            return set(statuses(conn, ids).values()) <= set(TERMINAL)

        poll(all_terminal, timeout=90, what="every row enriched")
        expected = set(current_keys(conn).values())
        poll(lambda: expected <= set(logged_keys(conn)), timeout=60, what="every version logged")

        def heard() -> set[int]:
            return {e.frame.payload["id"] for e in listener.feed() if e.frame.type == "update"}

        poll(lambda: set(ids) <= heard(), timeout=60, what="every row's update at the listener")
        assert not listener.ended.is_set()
        # A role hit by the last fault may still be in its restart backoff: ready must return.
        poll(lambda: readyz(base)[0] == 200, timeout=60, what="/readyz back to 200")
        assert sidecar.gave_up is None
        listener.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("held a string, not a stream" in m for m in messages)
    assert any("held a list, not a stream" in m for m in messages)
