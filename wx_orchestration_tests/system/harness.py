"""Scenario harness: the whole station as separate processes, with faults injected on cue.

What runs (each its own process, stopped in `close()` even when a scenario fails):
- embedded PostgreSQL and Valkey (`devstack.servers`) in a private directory — restartable on
  the same port and data directory (`restart_postgres`), or Valkey started fresh and EMPTY on
  the same port (`restart_redis_empty`);
- the LML emulator (`python -m wx_orchestration.devstack.lml_emulator`), its faults switched at
  runtime over HTTP (`set_faults` / `clear_faults`) and its request log read at the end;
- two `wx-sidecar` processes with every role, distinct `--instance` and `WX_SIDECAR_PORT`; one
  can be killed with SIGKILL (the sidecar itself, not its lifeline wrapper) and restarted;
- Dagster as the daemon would drive it: `dagster job execute -m wx_orchestration.definitions`
  subprocesses against a DAGSTER_HOME of our own; `enrichment_backlog_sensor` is evaluated with
  `build_sensor_context` on that real instance (cursor kept between ticks, run keys never
  launched twice) and each RunRequest executed with its partition tag.

A scenario drives a `PlayWriter` (plays inserted at a steady rate, one INSERT per play like a
DJ's client) and a `LiveSubscriber` (an SSE listener that disconnects and reconnects with
`Last-Event-ID`), then `drain()`s and hands over to `invariants.py`.

Nothing here sleeps to wait for something: conditions are polled with deadlines
(`processes.wait_until`); the only timed waits are the writer's pacing and retry back-offs, all
on `threading.Event.wait` so that a stop interrupts them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from psycopg import sql

from wx_orchestration.contracts.cdc import CDC_STREAM, GroupStats, heartbeat_key
from wx_orchestration.contracts.live import LIVE_STREAM
from wx_orchestration.db.migrations import apply_migrations
from wx_orchestration.devstack.demo_data import load_demo_data
from wx_orchestration.devstack.processes import (
    ManagedProcess,
    free_port,
    start_process,
    wait_until,
)
from wx_orchestration.devstack.servers import EmbeddedPostgres, EmbeddedValkey
from wx_orchestration_tests.system.station_day import Entry, LibraryRow, unique_play

log = logging.getLogger("wx_orchestration_tests.system")

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = "wxyc_schema"
DATABASE = "wxyc"
DEFINITIONS_MODULE = "wx_orchestration.definitions"
BIN = Path(sys.executable).parent
# Variables a developer's shell may carry that must not leak into our children.
_OURS = (
    "DATABASE_URL",
    "REDIS_URL",
    "LIBRARY_METADATA_URL",
    "DAGSTER_HOME",
    "DAGSTER_PG_URL",
    "WX_SIDECAR_PORT",
    "WXYC_SCHEMA_NAME",
    "SENTRY_DSN",
    # The suite turns pacing off for its own fixtures; the station day runs as production does.
    "WX_FLOWSHEET_MAX_LEAD_S",
)


@dataclass(frozen=True)
class HarnessConfig:
    # Generous, so the budget never becomes the bottleneck of a scenario (issue #8 tests it).
    lml_rate_per_second: float = 200.0
    lml_max_concurrent: int = 8
    # The fast path's LML timeout; the emulator's `latency_ms` above it produces timeouts.
    lml_timeout_s: float = 2.0
    # Backlog and sweep runs get the same LML timeout (the sweep refuses a lease not longer
    # than the timeout plus 10 s).
    dagster_lml_timeout_s: float = 2.0
    # Shorter than production's 60 s so a scenario ends sooner, but longer than the shared
    # breaker's 30 s cool-down: the fast path holds its claims while it waits out an open
    # breaker, and a lease shorter than that wait would take healthy claims from under it.
    sweep_lease_s: float = 40.0
    sweep_backoff_base_s: float = 2.0
    claim_idle_ms: int = 3000
    sidecars: tuple[str, ...] = ("sidecar-a", "sidecar-b")
    emulator_seed: int = 9


# --- small helpers -------------------------------------------------------------------------------


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OURS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (after the parenthesised command, which may hold spaces) is the parent pid.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def station_connect(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    conn.execute(sql.SQL("SET search_path TO {}, wx_orchestration").format(sql.Identifier(SCHEMA)))
    return conn


# --- the LML emulator ------------------------------------------------------------------------


# The emulator's fault switches at rest (`lml_emulator.Faults` defaults).
FAULT_DEFAULTS: dict[str, Any] = {
    "latency_ms": 0,
    "error_rate": 0,
    "rate_limit": 0,
    "rate_limit_rate": 0,
    "retry_after": 1,
    "degraded": False,
    "breaker_state": "closed",
    "malformed": 0,
    "short_results": False,
    "foreign_results": False,
    "duplicate_results": False,
}


@dataclass
class Window:
    """A time range (epoch seconds) during which a fault was switched on."""

    fault: str
    started: float
    ended: float | None = None


class Emulator:
    def __init__(self, root: Path, env: dict[str, str], seed: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: ManagedProcess = start_process(
            "lml-emulator",
            [
                sys.executable,
                "-m",
                "wx_orchestration.devstack.lml_emulator",
                "--port",
                str(self.port),
                "--seed",
                str(seed),
            ],
            log_path=root / "logs" / "lml-emulator.log",
            env=env,
            cwd=REPO_ROOT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.windows: list[Window] = []
        wait_until(lambda: _answers(f"{self.url}/health"), timeout=30, what="the LML emulator")

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Switch faults; a value other than the fault's default opens a window for it and a
        default value closes the open one."""
        if any(FAULT_DEFAULTS.get(name) == value for name, value in faults.items()):
            # Closed before the request goes out: anything answered later saw no fault.
            ended = time.time()
            for window in self.windows:
                if window.ended is None and FAULT_DEFAULTS.get(window.fault) == faults.get(
                    window.fault, object()
                ):
                    window.ended = ended
        response = self.http.post("/_emulator/faults", json=faults)
        response.raise_for_status()
        # Opened once the emulator has acknowledged: every request after this sees the fault.
        started = time.time()
        for name, value in faults.items():
            if FAULT_DEFAULTS.get(name) != value and name not in ("retry_after", "seed"):
                self.windows.append(Window(name, started))
        return response.json()

    def clear_faults(self) -> None:
        ended = time.time()
        for window in self.windows:
            if window.ended is None:
                window.ended = ended
        self.http.delete("/_emulator/faults").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        response = self.http.get("/_emulator/requests")
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        self.http.close()
        self.process.stop()


# --- sidecars --------------------------------------------------------------------------------


@dataclass
class SidecarProcess:
    instance: str
    port: int
    process: ManagedProcess | None = None
    kills: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def readyz(self) -> dict[str, Any] | None:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def bridge_detail(self) -> str | None:
        body = self.readyz()
        return None if body is None else body["checks"].get("bridge", {}).get("detail")


# --- Dagster, as its daemon would run it -----------------------------------------------------


@dataclass
class RunRecord:
    job: str
    partition: str | None
    tags: dict[str, str]
    returncode: int
    seconds: float
    output_tail: str


class DagsterDriver:
    """`dagster job execute` subprocesses and in-process sensor ticks on one DAGSTER_HOME."""

    def __init__(self, home: Path, env: Callable[[], dict[str, str]], config: HarnessConfig):
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        # Default instance: SQLite storage under DAGSTER_HOME, nothing else to run.
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.env = env
        self.config = config
        self.runs: list[RunRecord] = []
        self.sensor_cursor: str | None = None
        self.sensor_ticks: list[str] = []
        self.launched_run_keys: set[str] = set()
        self._instance: Any = None

    def instance(self) -> Any:
        import dagster as dg

        if self._instance is None:
            self._instance = dg.DagsterInstance.from_config(str(self.home))
        return self._instance

    def _lml_resource(self) -> dict[str, Any]:
        return {
            "config": {
                "base_url": {"env": "LIBRARY_METADATA_URL"},
                "total_timeout_s": self.config.dagster_lml_timeout_s,
            }
        }

    def execute(
        self,
        job: str,
        *,
        partition: str | None = None,
        run_config: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> RunRecord:
        all_tags = dict(tags or {})
        if partition is not None:
            all_tags["dagster/partition"] = partition
        command = [str(BIN / "dagster"), "job", "execute", "-m", DEFINITIONS_MODULE, "-j", job]
        if all_tags:
            command += ["--tags", json.dumps(all_tags)]
        config_path = None
        if run_config:
            config_path = self.home / f"run-config-{len(self.runs)}-{job}.json"
            config_path.write_text(json.dumps(run_config))
            command += ["-c", str(config_path)]
        started = time.monotonic()
        result = subprocess.run(
            command,
            env={**self.env(), "DAGSTER_HOME": str(self.home)},
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        record = RunRecord(
            job,
            partition,
            all_tags,
            result.returncode,
            time.monotonic() - started,
            (result.stdout + result.stderr)[-4000:],
        )
        self.runs.append(record)
        log.info("%s %s → %s in %.1fs", job, partition or "", result.returncode, record.seconds)
        return record

    def run_sweep(self) -> RunRecord:
        """`stale_sweep_job` as `stale_sweep_schedule` launches it, with a short lease."""
        cfg = self.config
        return self.execute(
            "stale_sweep_job",
            run_config={
                "ops": {
                    "sweep_stale_claims": {
                        "config": {
                            "lease_s": cfg.sweep_lease_s,
                            "backoff_base_s": cfg.sweep_backoff_base_s,
                        }
                    }
                },
                "resources": {"lml": self._lml_resource()},
            },
            tags={"dagster/schedule_name": "stale_sweep_schedule"},
        )

    def run_backlog(
        self,
        partition: str,
        *,
        grace_period_s: float | None = None,
        tags: dict[str, str] | None = None,
    ) -> RunRecord:
        op_config: dict[str, Any] = {}
        if grace_period_s is not None:
            op_config["grace_period_s"] = grace_period_s
        return self.execute(
            "enrichment_backlog_job",
            partition=partition,
            run_config={
                "ops": {"flowsheet_enrichment": {"config": op_config}},
                "resources": {"lml": self._lml_resource()},
            },
            tags=tags,
        )

    def tick_backlog_sensor(self, database_url: str) -> list[RunRecord]:
        """One daemon tick of `enrichment_backlog_sensor`, its requests executed in turn."""
        import dagster as dg

        from wx_orchestration.defs.enrichment.sensors import enrichment_backlog_sensor
        from wx_orchestration.defs.resources import PostgresResource

        context = dg.build_sensor_context(
            instance=self.instance(),
            cursor=self.sensor_cursor,
            resources={"postgres": PostgresResource(database_url=database_url)},
        )
        result = enrichment_backlog_sensor(context)
        if isinstance(result, dg.SkipReason):
            self.sensor_ticks.append(f"skip: {result.skip_message}")
            return []
        assert isinstance(result, dg.SensorResult), result
        if result.cursor is not None:
            self.sensor_cursor = result.cursor
        records = []
        requests = list(result.run_requests or [])
        self.sensor_ticks.append(f"{len(requests)} run request(s)")
        for request in requests:
            # The daemon never launches a run key twice.
            if request.run_key in self.launched_run_keys:
                continue
            if request.run_key:
                self.launched_run_keys.add(request.run_key)
            tags = {
                **dict(request.tags or {}),
                "dagster/sensor_name": "enrichment_backlog_sensor",
                **({"dagster/run_key": request.run_key} if request.run_key else {}),
            }
            partition = request.partition_key
            assert partition is not None, request
            records.append(self.run_backlog(partition, tags=tags))
        return records

    def identity_totals(self) -> list[dict[str, Any]]:
        """`totals` of every `library_identity` materialization, with its partition."""
        import dagster as dg

        instance = self.instance()
        found = instance.fetch_materializations(dg.AssetKey("library_identity"), limit=1000)
        out = []
        for record in found.records:
            mat = record.asset_materialization
            if mat is None:
                continue
            totals = mat.metadata.get("totals")
            out.append(
                {
                    "partition": mat.partition,
                    "totals": getattr(totals, "value", totals),
                }
            )
        return out

    def close(self) -> None:
        if self._instance is not None:
            with contextlib.suppress(Exception):
                self._instance.dispose()


# --- the live-feed listener ------------------------------------------------------------------


@dataclass
class Received:
    entry_id: str | None
    type: str
    payload: dict[str, Any]
    received_ms: int
    via: str
    # Sent as part of a Last-Event-ID replay (published before this connection opened): its
    # receipt time measures the listener's absence, not the system's latency.
    replayed: bool = False


class LiveSubscriber:
    """One listener's app: reads `/events/stream`, resumes with `Last-Event-ID` after any
    disconnect (its own, a killed sidecar, a Redis outage), and on `refetch` reloads the list
    from `/flowsheet/recent` as the station's apps do."""

    def __init__(self, bases: Callable[[], list[str]]) -> None:
        self.bases = bases
        self.frames: list[Received] = []
        # flowsheet id → first receipt of an `update` with a terminal status / of an `insert`
        self.updates: dict[int, Received] = {}
        self.inserts: dict[int, Received] = {}
        # (taken at, receipt of the last frame before the refetch, the rows): a refetch
        # stands for what the listener missed since that last frame.
        self.snapshots: list[tuple[int, int, list[dict[str, Any]]]] = []
        self.refetches = 0
        self.duplicate_ids = 0
        self.connects = 0
        self.resumes = 0
        self.errors: list[str] = []
        self.last_event_id: str | None = None
        self._seen_ids: set[str] = set()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._resume = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-subscriber", daemon=True)
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=10.0))
        self.available = True

    def start(self) -> None:
        self._thread.start()
        wait_until(
            lambda: self._connected.is_set() or not self.available,
            timeout=30,
            what="the live subscriber to connect",
        )

    def disconnect(self) -> None:
        """Drop the connection and stay away until `reconnect()`."""
        self._resume.clear()
        self._paused.set()
        wait_until(
            lambda: not self._connected.is_set(), timeout=15, what="the subscriber to disconnect"
        )

    def reconnect(self) -> None:
        self._paused.clear()
        self._resume.set()
        wait_until(lambda: self._connected.is_set(), timeout=30, what="the subscriber to return")

    def stop(self) -> None:
        self._stop.set()
        self._resume.set()
        self._thread.join(20)
        self._client.close()

    def _run(self) -> None:
        rotation = 0
        while not self._stop.is_set():
            if self._paused.is_set():
                self._resume.wait(0.5)
                continue
            bases = self.bases()
            if not bases:
                self._stop.wait(0.2)
                continue
            base = bases[rotation % len(bases)]
            try:
                self._listen(base)
            except (httpx.HTTPError, OSError) as err:
                self.errors.append(f"{base}: {type(err).__name__}: {err}")
            finally:
                self._connected.clear()
            if not self._paused.is_set() and not self._stop.is_set():
                # Another instance next: any sidecar serves any client.
                rotation += 1
                self._stop.wait(0.2)

    def _listen(self, base: str) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
            self.resumes += 1
        url = f"{base}/events/stream?topics=live-fs-topic"
        with self._client.stream("GET", url, headers=headers) as response:
            if response.status_code == 404:
                # No live role on this sidecar (yet): nothing to listen to.
                self.available = False
                self._stop.set()
                return
            if response.status_code != 200:
                self.errors.append(f"{base}: HTTP {response.status_code}")
                return
            self.connects += 1
            opened_ms = now_ms()
            self._connected.set()
            entry_id: str | None = None
            data: list[str] = []
            for line in response.iter_lines():
                if self._stop.is_set() or self._paused.is_set():
                    return
                if line == "":
                    if data:
                        self._dispatch(base, entry_id, "\n".join(data), opened_ms)
                    entry_id, data = None, []
                elif line.startswith("id:"):
                    entry_id = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())

    def _dispatch(self, base: str, entry_id: str | None, data: str, opened_ms: int) -> None:
        received = now_ms()
        try:
            frame = json.loads(data)
        except ValueError:
            self.errors.append(f"undecodable frame from {base}: {data[:200]}")
            return
        kind = frame.get("type")
        payload = frame.get("payload") or {}
        published_ms = _id_tuple(entry_id)[0]
        item = Received(entry_id, str(kind), payload, received, base, 0 < published_ms < opened_ms)
        # The last stream entry received before this frame (not this connection's greeting).
        previous = next(
            (f.received_ms for f in reversed(self.frames) if f.entry_id and f.type != "refetch"),
            0,
        )
        self.frames.append(item)
        if entry_id is not None:
            if entry_id in self._seen_ids and kind != "refetch":
                self.duplicate_ids += 1
            self._seen_ids.add(entry_id)
            self.last_event_id = entry_id
        row_id = payload.get("id")
        if kind == "update" and isinstance(row_id, int):
            if payload.get("metadata_status") in (
                "enriched_match",
                "enriched_no_match",
                "failed_no_retry",
            ):
                self.updates.setdefault(row_id, item)
        elif kind == "insert" and isinstance(row_id, int):
            self.inserts.setdefault(row_id, item)
        elif kind == "refetch":
            self.refetches += 1
            self._refetch(base, previous)

    def _refetch(self, base: str, gap_from_ms: int) -> None:
        try:
            body = self._client.get(f"{base}/flowsheet/recent", params={"limit": 200}).json()
        except (httpx.HTTPError, ValueError) as err:
            self.errors.append(f"refetch from {base} failed: {err}")
            return
        self.snapshots.append((now_ms(), gap_from_ms, list(body.get("entries") or [])))


# --- the DJ's client -----------------------------------------------------------------------


class PlayWriter:
    """Inserts planned entries one per statement at `rate` per second, reconnecting across a
    Postgres restart. `unique_token` (set during a degraded window) makes each play's lookup
    key new, so no cached verdict can stand in for the degraded answer."""

    def __init__(self, database_url: str, entries: Sequence[Entry], rate: float) -> None:
        self.url = database_url
        self.entries = list(entries)
        self.rate = rate
        self.tracks_written = 0
        self.entries_written = 0
        self.write_errors: list[str] = []
        self.unique_token: str | None = None
        self.unique_ids: list[tuple[int, float]] = []  # (flowsheet id, wall time of the insert)
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="play-writer", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_tracks(self, count: int, timeout: float) -> None:
        wait_until(
            lambda: self.tracks_written >= count or self.done.is_set(),
            timeout=timeout,
            what=f"{count} plays written (at {self.tracks_written})",
        )

    def _run(self) -> None:
        try:
            self._write_all()
        except BaseException as err:  # reported by the scenario, never swallowed
            self.error = err
        finally:
            self.done.set()

    def _write_all(self) -> None:
        conn: psycopg.Connection | None = None
        started = time.monotonic()
        try:
            for index, entry in enumerate(self.entries):
                due = started + index / self.rate
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                token = self.unique_token
                if token is not None and entry.is_track and not entry.blank_artist:
                    entry = unique_play(entry, f"{token}-{index}")
                conn, row_id = self._insert(conn, entry)
                self.entries_written += 1
                if entry.is_track:
                    self.tracks_written += 1
                    if token is not None and not entry.blank_artist:
                        self.unique_ids.append((row_id, time.time()))
        finally:
            if conn is not None:
                conn.close()

    def _insert(
        self, conn: psycopg.Connection | None, entry: Entry
    ) -> tuple[psycopg.Connection, int]:
        columns = list(entry.columns)
        statement = sql.SQL("INSERT INTO flowsheet ({}) VALUES ({}) RETURNING id").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                if conn is None or conn.closed:
                    conn = station_connect(self.url)
                row = conn.execute(statement, [entry.columns[c] for c in columns]).fetchone()
                assert row is not None
                return conn, int(row[0])
            except psycopg.OperationalError as err:
                # Postgres restarting: a fast shutdown rolled the statement back, so retrying
                # it writes the play once.
                self.write_errors.append(f"{type(err).__name__}: {str(err).strip()[:120]}")
                if conn is not None:
                    conn.close()
                conn = None
                if time.monotonic() > deadline or self._stop.wait(0.2):
                    raise


# --- the whole stack -------------------------------------------------------------------------


class StationHarness:
    def __init__(self, root: Path, config: HarnessConfig | None = None) -> None:
        self.root = root
        self.config = config or HarnessConfig()
        self.pg: EmbeddedPostgres | None = None
        self.valkey: EmbeddedValkey | None = None
        self.redis_port: int | None = None
        self.redis_generation = 0
        self.emulator: Emulator | None = None
        self.sidecars: dict[str, SidecarProcess] = {}
        self.dagster: DagsterDriver | None = None
        self.database_url = ""
        self.events: list[tuple[float, str]] = []  # (wall time, what the harness did)
        self._redis: redis.Redis | None = None

    # lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> StationHarness:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def note(self, what: str) -> None:
        self.events.append((time.time(), what))
        log.info("harness: %s", what)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # PostgreSQL runs as `nobody` when we are root: it must reach its directory.
        self.root.chmod(0o755)
        for parent in self.root.parents:
            if parent in (Path(tempfile.gettempdir()), Path("/")):
                break
            parent.chmod(parent.stat().st_mode | 0o711)
        self.pg = EmbeddedPostgres(self.root / "pg")
        admin = self.pg.start()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        self.database_url = self.pg.url_for(DATABASE)
        apply_migrations(self.database_url, with_station_schema=True, station_schema=SCHEMA)
        self._start_valkey()
        self.emulator = Emulator(self.root, _base_env(), self.config.emulator_seed)
        self.dagster = DagsterDriver(self.root / "dagster_home", self.env, self.config)
        self.note("stack started (postgres, valkey, emulator)")

    def close(self) -> None:
        """Stop everything we started, in reverse order; never raises."""
        for sidecar in self.sidecars.values():
            with contextlib.suppress(Exception):
                if sidecar.process is not None:
                    sidecar.process.stop()
        if self.dagster is not None:
            self.dagster.close()
        if self.emulator is not None:
            with contextlib.suppress(Exception):
                self.emulator.stop()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                self._redis.close()
        for server in (self.valkey, self.pg):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()

    # environment -------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        assert self.emulator is not None
        cfg = self.config
        return {
            **_base_env(),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "WXYC_SCHEMA_NAME": SCHEMA,
            "LIBRARY_METADATA_URL": self.emulator.url,
            "LML_RATE_PER_SECOND": str(cfg.lml_rate_per_second),
            "LML_MAX_CONCURRENT": str(cfg.lml_max_concurrent),
            "LML_TIMEOUT_S": str(cfg.lml_timeout_s),
            # Frequent keepalives let the listener notice a dead connection quickly.
            "WX_LIVE_KEEPALIVE_S": "1",
        }

    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.redis_url, socket_timeout=5, socket_connect_timeout=2
            )
        return self._redis

    def connect(self) -> psycopg.Connection:
        return station_connect(self.database_url)

    # Postgres and Redis -------------------------------------------------------------------

    def restart_postgres(self) -> None:
        """Fast shutdown (clients cut off, open transactions rolled back), then start again on
        the same port and data directory."""
        assert self.pg is not None
        self.note("postgres: stopping")
        self.pg.stop()
        self.pg.start()
        self.note("postgres: back")

    def _start_valkey(self) -> None:
        self.redis_generation += 1
        # A new directory each time: nothing of the old server's can come back.
        server = EmbeddedValkey(self.root / f"valkey-{self.redis_generation}", port=self.redis_port)
        server.start()
        self.valkey = server
        self.redis_port = server.port

    def restart_redis_empty(self) -> None:
        assert self.valkey is not None
        self.note("redis: stopping")
        self.valkey.stop()
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        self._start_valkey()
        self.note("redis: back, empty")

    # LML faults -----------------------------------------------------------------------------

    def set_faults(self, **faults: Any) -> None:
        assert self.emulator is not None
        self.note(f"lml faults: {faults}")
        self.emulator.set_faults(**faults)

    def fault_off(self, *names: str) -> None:
        self.set_faults(**{name: FAULT_DEFAULTS[name] for name in names})

    def clear_faults(self) -> None:
        assert self.emulator is not None
        self.note("lml faults cleared")
        self.emulator.clear_faults()

    # sidecars ----------------------------------------------------------------------------

    def start_sidecar(self, instance: str) -> SidecarProcess:
        sidecar = self.sidecars.get(instance) or SidecarProcess(instance, free_port())
        self.sidecars[instance] = sidecar
        flags = [
            "--instance",
            instance,
            "--ping-interval-s",
            "0.5",
            "--ping-timeout-s",
            "3",
            "--standby-poll-s",
            "0.2",
            "--read-block-ms",
            "200",
            "--claim-idle-ms",
            str(self.config.claim_idle_ms),
            "--heartbeat-interval-s",
            "0.5",
            "--shutdown-deadline-s",
            "8",
        ]
        sidecar.process = start_process(
            instance,
            [str(BIN / "wx-sidecar"), *flags],
            log_path=self.root / "logs" / f"{instance}.log",
            env={**self.env(), "WX_SIDECAR_PORT": str(sidecar.port)},
            cwd=REPO_ROOT,
        )
        process = sidecar.process
        wait_until(
            lambda: not process.alive() or sidecar.readyz() is not None,
            timeout=60,
            what=f"{instance} to answer /readyz",
        )
        if not process.alive():
            raise RuntimeError(f"{instance} exited at start:\n{process.log_tail()}")
        self.note(f"{instance} started on {sidecar.url}")
        return sidecar

    def start_sidecars(self) -> None:
        for name in self.config.sidecars:
            self.start_sidecar(name)
        self.wait_bridge_leader()

    def kill_sidecar(self, instance: str) -> None:
        """SIGKILL the sidecar process itself (its lifeline wrapper then exits too)."""
        sidecar = self.sidecars[instance]
        assert sidecar.process is not None
        wrapper = sidecar.process.pid
        children = _children_of(wrapper)
        if not children:
            raise RuntimeError(f"{instance}: no sidecar process under wrapper {wrapper}")
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process = sidecar.process
        wait_until(lambda: not process.alive(), timeout=15, what=f"{instance} to die")
        process.stop()
        sidecar.kills += 1
        self.note(f"{instance} killed with SIGKILL (pid {children})")

    def restart_sidecar(self, instance: str) -> None:
        sidecar = self.sidecars[instance]
        if sidecar.alive():
            return
        self.start_sidecar(instance)

    def live_sidecar_urls(self) -> list[str]:
        return [s.url for s in self.sidecars.values() if s.alive()]

    def bridge_leader(self) -> str | None:
        """The instance whose bridge leads: its /readyz, or else its heartbeat hash."""
        for name, sidecar in self.sidecars.items():
            if not sidecar.alive():
                continue
            detail = sidecar.bridge_detail()
            if detail is not None and detail.startswith("leader"):
                return name
        with contextlib.suppress(redis.RedisError):
            for name in self.sidecars:
                state = self.redis().hget(heartbeat_key(name), "bridge_state")
                if state in (b"leader", "leader"):
                    return name
        return None

    def wait_bridge_leader(self, timeout: float = 60) -> str:
        found: list[str] = []

        def leading() -> bool:
            for name, sidecar in self.sidecars.items():
                if sidecar.alive() and sidecar.bridge_detail() == "leader, listening":
                    found.append(name)
                    return True
            return False

        wait_until(leading, timeout=timeout, what="a bridge leader that listens")
        return found[-1]

    def busy_sidecar(self, exclude: str | None = None) -> str:
        """A live sidecar other than `exclude` (for 'kill a sidecar mid-batch')."""
        names = [n for n, s in self.sidecars.items() if s.alive() and n != exclude]
        if not names:
            raise RuntimeError("no live sidecar to pick")
        return names[0]

    # data --------------------------------------------------------------------------------

    def load_station(self) -> tuple[list[LibraryRow], dict[str, int]]:
        counts = load_demo_data(self.database_url, station_schema=SCHEMA)
        with self.connect() as conn:
            rows = conn.execute(
                """SELECT l.id, COALESCE(l.artist_name, a.artist_name, ''), l.album_title,
                          COALESCE(l.code_volume_letters LIKE 'Z%%', false)
                   FROM library AS l LEFT JOIN artists AS a ON a.id = l.artist_id
                   ORDER BY l.id"""
            ).fetchall()
        return [LibraryRow(*row) for row in rows], counts

    def add_shows(self, count: int) -> list[int]:
        from wx_orchestration_tests.system.station_day import SHOW_NAMES

        ids = []
        with self.connect() as conn:
            for n in range(count):
                name, _dj = SHOW_NAMES[n % len(SHOW_NAMES)]
                # Production's shows have no dj_name; the DJ is on each flowsheet row.
                row = conn.execute(
                    "INSERT INTO shows (show_name, start_time) VALUES (%s, now()) RETURNING id",
                    (name,),
                ).fetchone()
                assert row is not None
                ids.append(int(row[0]))
        return ids

    def insert_batch(self, entries: Sequence[Entry]) -> list[int]:
        """A bulk import: one statement for the lot (the station's watermark lock once)."""
        if not entries:
            return []
        columns = sorted({c for e in entries for c in e.columns})
        values = sql.SQL(", ").join(
            sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(columns)))
            for _ in entries
        )
        statement = sql.SQL("INSERT INTO flowsheet ({}) VALUES {} RETURNING id").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), values
        )
        params = [e.columns.get(c) for e in entries for c in columns]
        # Defaults the table would give: request_flag / segue / entry_type are NOT NULL.
        with self.connect() as conn:
            return [int(r[0]) for r in conn.execute(statement, params).fetchall()]

    # waiting for quiet ---------------------------------------------------------------------

    def group_stats(self) -> list[GroupStats]:
        try:
            groups: Any = self.redis().xinfo_groups(CDC_STREAM)
        except redis.ResponseError:
            return []
        return [GroupStats.from_xinfo(g) for g in groups]

    def streams_drained(self, groups: Sequence[str]) -> bool:
        try:
            stats = {g.name: g for g in self.group_stats()}
        except redis.RedisError:
            return False
        return all(
            name in stats and stats[name].pending == 0 and stats[name].lag == 0 for name in groups
        )

    def enriching_claims(self) -> list[tuple[int, datetime]]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT id, enriching_since FROM flowsheet WHERE metadata_status = 'enriching'"
            ).fetchall()
        return [(int(r[0]), r[1]) for r in rows]

    def live_newest_id(self) -> str | None:
        try:
            info: Any = self.redis().xinfo_stream(LIVE_STREAM)
        except redis.ResponseError:
            return None
        newest = info.get("last-generated-id")
        return newest.decode() if isinstance(newest, bytes) else newest


@dataclass
class DrainReport:
    sweeps: int = 0
    sensor_ticks: int = 0
    sensor_runs: int = 0
    operator_runs: int = 0
    failed_runs: list[str] = field(default_factory=list)
    stranded_before_sweep: int = 0
    seconds: float = 0.0


def _id_tuple(entry_id: str | None) -> tuple[int, int]:
    if not entry_id:
        return (0, 0)
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def drain(
    harness: StationHarness,
    subscriber: LiveSubscriber | None,
    *,
    groups: Sequence[str],
    operator_backfill: bool,
    backoff_wait_s: float,
) -> DrainReport:
    """Bring the system to rest the way production would: restart dead sidecars, let the
    streams drain, sweep stranded claims once their lease is over, tick the backlog sensor
    until it has nothing to request, optionally backfill (grace 0) what is claimable, and wait
    until the listener has the newest live entry."""
    assert harness.dagster is not None
    report = DrainReport()
    began = time.monotonic()
    for name in harness.config.sidecars:
        harness.restart_sidecar(name)
    harness.wait_bridge_leader()
    wait_until(
        lambda: harness.streams_drained(groups),
        timeout=120,
        what=f"consumer groups {list(groups)} to drain: {harness.group_stats()}",
    )
    lease = harness.config.sweep_lease_s

    def claims_settled() -> bool:
        claims = harness.enriching_claims()
        cutoff = datetime.now(UTC).timestamp() - lease - 0.5
        return all(since.timestamp() < cutoff for _, since in claims)

    wait_until(claims_settled, timeout=lease + 60, what="in-flight claims to finish or expire")
    report.stranded_before_sweep = len(harness.enriching_claims())
    for record in [harness.dagster.run_sweep()]:
        report.sweeps += 1
        if record.returncode != 0:
            report.failed_runs.append(f"stale_sweep_job: {record.output_tail[-800:]}")
    if backoff_wait_s > 0:
        # Rows released with back-off become claimable again; wait (bounded) for the last one.
        def backoff_over() -> bool:
            with harness.connect() as conn:
                row = conn.execute(
                    """SELECT count(*) FROM flowsheet f
                       JOIN wx_orchestration.enrichment_attempts a ON a.flowsheet_id = f.id
                       WHERE f.metadata_status = 'pending' AND a.next_attempt_at > now()"""
                ).fetchone()
            return row is not None and row[0] == 0

        with contextlib.suppress(TimeoutError):
            wait_until(backoff_over, timeout=backoff_wait_s, interval=0.5, what="back-off")
    for _ in range(5):
        records = harness.dagster.tick_backlog_sensor(harness.database_url)
        report.sensor_ticks += 1
        report.sensor_runs += len(records)
        report.failed_runs += [
            f"{r.job} {r.partition}: {r.output_tail[-800:]}" for r in records if r.returncode
        ]
        if not records:
            break
    if operator_backfill:
        from wx_orchestration.db.enrichment import pending_days
        from wx_orchestration.defs.enrichment.partitions import STATION_TIMEZONE

        with harness.connect() as conn:
            days = pending_days(conn, tz=STATION_TIMEZONE, grace_s=0, limit=10)
        for day in days:
            record = harness.dagster.run_backlog(
                day.day.isoformat(), grace_period_s=0, tags={"wx/scenario": "operator-backfill"}
            )
            report.operator_runs += 1
            if record.returncode:
                report.failed_runs.append(f"backfill {day.day}: {record.output_tail[-800:]}")
    wait_until(
        lambda: harness.streams_drained(groups),
        timeout=120,
        what=f"consumer groups {list(groups)} to drain after the backlog",
    )
    if subscriber is not None and subscriber.available:
        # The listener is done when it holds the newest entry of wx:live.
        wait_until(
            lambda: _id_tuple(subscriber.last_event_id) >= _id_tuple(harness.live_newest_id()),
            timeout=60,
            what="the live subscriber to receive the newest wx:live entry",
        )
    report.seconds = time.monotonic() - began
    return report


@contextlib.contextmanager
def running(root: Path, config: HarnessConfig | None = None) -> Iterator[StationHarness]:
    harness = StationHarness(root, config)
    with harness:
        yield harness
