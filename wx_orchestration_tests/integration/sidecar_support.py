"""Helpers shared by the sidecar tests: settings, a running sidecar, rows, stream and log reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from wx_orchestration.contracts.cdc import CDC_STREAM
from wx_orchestration.core.events import FlowsheetEvent, decode_stream_entry, event_key
from wx_orchestration.settings import Settings
from wx_orchestration.sidecar.roles import Role, SidecarConfig
from wx_orchestration.sidecar.runtime import Sidecar
from wx_orchestration_tests.servers import STATION_SCHEMA

# Short intervals so failures and recoveries happen within a test's time.
FAST = SidecarConfig(
    ping_interval_s=0.3,
    ping_timeout_s=2.0,
    standby_poll_s=0.1,
    read_block_ms=100,
    claim_idle_ms=300,
    heartbeat_interval_s=0.3,
    shutdown_deadline_s=5.0,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def poll(predicate: Callable[[], Any], *, timeout: float = 15.0, what: str) -> Any:
    """Call `predicate` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def settings_for(
    database_url: str, redis_url: str, port: int = 0, env: dict[str, str] | None = None
) -> Settings:
    return Settings.from_env(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "WXYC_SCHEMA_NAME": STATION_SCHEMA,
            "WX_SIDECAR_PORT": str(port or 1),
            **(env or {}),
        }
    )


@contextmanager
def running_sidecar(
    database_url: str, redis_url: str, roles: tuple[str, ...], config: SidecarConfig = FAST
) -> Iterator[Sidecar]:
    sidecar = Sidecar(settings_for(database_url, redis_url), config, roles, "test-sidecar")
    sidecar.start(serve_http=False)
    try:
        yield sidecar
    finally:
        assert sidecar.stop(), "the sidecar did not stop within its deadline"


def wait_listening(sidecar: Sidecar) -> None:
    """Until the bridge leads and its LISTEN connection has echoed a ping."""
    (bridge,) = [role for role in sidecar.roles if role.name == "bridge"]
    poll(lambda: bridge.readiness() == (True, "leader, listening"), what="the bridge to listen")


@contextmanager
def listening_bridge(
    database_url: str, redis_url: str, config: SidecarConfig = FAST
) -> Iterator[Sidecar]:
    """A sidecar with the bridge alone, once it leads and listens."""
    with running_sidecar(database_url, redis_url, ("bridge",), config) as sidecar:
        wait_listening(sidecar)
        yield sidecar


@contextmanager
def running_role(role: Role) -> Iterator[None]:
    """One role in a thread for the block, apart from a whole sidecar; stopped (work in hand
    finished) after."""
    stop = threading.Event()
    worker = threading.Thread(target=role.run, args=(stop,))
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()


def connect(database_url: str) -> psycopg.Connection:
    return psycopg.connect(database_url, autocommit=True)


def insert_tracks(conn: psycopg.Connection, count: int, *, artist: str = "Stereolab") -> list[int]:
    rows = conn.execute(
        sql.SQL(
            "INSERT INTO {}.flowsheet (artist_name, track_title, play_order)"
            " SELECT %s, 'track ' || n, n FROM generate_series(1, %s) AS n RETURNING id"
        ).format(sql.Identifier(STATION_SCHEMA)),
        (artist, count),
    ).fetchall()
    return [row[0] for row in rows]


def current_keys(conn: psycopg.Connection) -> dict[int, str]:
    """Each flowsheet row's current version as an event key."""
    rows = conn.execute(
        sql.SQL("SELECT id, updated_at, metadata_status::text FROM {}.flowsheet").format(
            sql.Identifier(STATION_SCHEMA)
        )
    ).fetchall()
    return {row_id: event_key(row_id, updated_at, status) for row_id, updated_at, status in rows}


def logged_keys(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute(
        "SELECT event_key, flowsheet_id FROM wx_orchestration.flowsheet_events"
    ).fetchall()
    return dict(rows)


def dead_letters(conn: psycopg.Connection) -> list[tuple[str, str | None, str, str]]:
    return conn.execute(
        "SELECT source, entry_id, payload, reason FROM wx_orchestration.dead_letters ORDER BY id"
    ).fetchall()


def stream_events(client: redis.Redis) -> list[FlowsheetEvent]:
    events = []
    entries: Any = client.xrange(CDC_STREAM)
    for entry_id, fields in entries:
        decoded = decode_stream_entry(entry_id.decode(), fields)
        assert isinstance(decoded, FlowsheetEvent), decoded
        events.append(decoded)
    return events


def sidecar_process(env: dict[str, str], *args: str, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "wx_orchestration.sidecar", *args],
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(10)


def fast_flags(config: SidecarConfig = FAST) -> list[str]:
    flags = []
    for name in (
        "ping_interval_s",
        "ping_timeout_s",
        "standby_poll_s",
        "read_block_ms",
        "claim_idle_ms",
        "heartbeat_interval_s",
        "shutdown_deadline_s",
    ):
        flags += [f"--{name.replace('_', '-')}", str(getattr(config, name))]
    return flags


def payload_json(fields: dict[str, Any]) -> dict[bytes, bytes]:
    return {b"payload": json.dumps(fields).encode()}
