"""`wx up`: the whole system on one machine, supervised until Ctrl-C or SIGTERM.

Order of start: Postgres → Valkey → migrations → demo data → LML emulator → Dagster webserver
and daemon → sidecar. Order of stop: the reverse. Every child runs under the lifeline wrapper,
so a supervisor killed with SIGKILL still takes its children down; the pid files let the next
`wx up` (or `wx down`) clean up anything left anyway.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from wx_orchestration.db.migrations import apply_migrations
from wx_orchestration.devstack.demo_data import load_demo_data
from wx_orchestration.devstack.processes import (
    ManagedProcess,
    free_port,
    port_is_free,
    reap_stale,
    start_process,
    wait_until,
)
from wx_orchestration.devstack.servers import EmbeddedPostgres, EmbeddedValkey
from wx_orchestration.settings import Settings, redact_url

log = logging.getLogger("wx_orchestration.devstack")

REPO_ROOT = Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    return Path(os.environ.get("WX_STATE_DIR") or REPO_ROOT / ".wx").resolve()


def stack_file(root: Path) -> Path:
    return root / "stack.json"


def env_file(root: Path) -> Path:
    return root / "env"


# What a shell needs to reach the running stack: `dagster job execute`, `wx migrate`, psql.
STACK_ENV_NAMES = (
    "DATABASE_URL",
    "REDIS_URL",
    "LIBRARY_METADATA_URL",
    "WXYC_SCHEMA_NAME",
    "DAGSTER_HOME",
    "DAGSTER_PG_URL",
)


def shell_exports(env: dict[str, str]) -> str:
    """`export NAME=value` lines for `eval "$(wx env)"`, values quoted for POSIX shells."""
    return "".join(
        f"export {name}={shlex.quote(env[name])}\n" for name in STACK_ENV_NAMES if name in env
    )


def write_env_file(root: Path, env: dict[str, str]) -> None:
    # Unredacted URLs (they may carry a password the user gave us): readable by the owner only.
    path = env_file(root)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(shell_exports(env))


def read_stack(root: Path) -> dict[str, str]:
    try:
        return json.loads(stack_file(root).read_text())
    except (OSError, ValueError):
        return {}


def _ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _dagster_url(database_url: str) -> str:
    # dagster-postgres speaks psycopg2; with SQLAlchemy 2.1 and psycopg 3 installed together a
    # bare postgresql:// URL would pick psycopg 3.
    scheme, rest = database_url.split("://", 1)
    return f"postgresql+psycopg2://{rest}" if scheme in ("postgresql", "postgres") else database_url


@dataclass
class UpOptions:
    ui_host: str = "127.0.0.1"
    ui_port: int = 3000
    demo_data: bool = True
    with_sidecar: bool = True


@dataclass
class Stack:
    """The running children, stopped in reverse order of start."""

    root: Path
    options: UpOptions
    children: list[ManagedProcess] = field(default_factory=list)
    servers: list[EmbeddedPostgres | EmbeddedValkey] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)

    @property
    def pid_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        left = reap_stale(self.pid_dir)
        if left:
            print(f"stopped processes left by an earlier run: {', '.join(left)}")
        if not port_is_free(self.options.ui_port, self.options.ui_host):
            raise SystemExit(
                f"port {self.options.ui_port} on {self.options.ui_host} is taken; stop whatever "
                "holds it or pass --ui-port"
            )
        settings = Settings.from_env()
        env = dict(os.environ)
        database_url, dagster_url = self._postgres(settings)
        redis_url = self._redis(settings)
        env.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
        env["WXYC_SCHEMA_NAME"] = settings.database.station_schema

        applied = apply_migrations(
            database_url,
            with_station_schema=not settings.database.url,
            station_schema=settings.database.station_schema,
        )
        print(f"migrations: {len(applied)} applied")
        if self.options.demo_data:
            counts = load_demo_data(database_url, station_schema=settings.database.station_schema)
            print(f"demo data: {counts}" if any(counts.values()) else "demo data: already loaded")

        env["LIBRARY_METADATA_URL"] = settings.lml.url or self._emulator(env)
        dagster_home = self._dagster_home(env)
        env.update(DAGSTER_HOME=str(dagster_home), DAGSTER_PG_URL=dagster_url)
        self._dagster(env)
        if self.options.with_sidecar and _sidecar_available():
            self._sidecar(env)
        self.info.update(
            database_url=redact_url(database_url),
            redis_url=redact_url(redis_url),
            lml_url=env["LIBRARY_METADATA_URL"],
            dagster_home=str(dagster_home),
            supervisor_pid=str(os.getpid()),
        )
        stack_file(self.root).write_text(json.dumps(self.info, indent=2))
        write_env_file(self.root, env)

    def _postgres(self, settings: Settings) -> tuple[str, str]:
        if settings.database.url:
            dagster_url = os.environ.get("DAGSTER_PG_URL") or _dagster_url(settings.database.url)
            return settings.database.url, dagster_url
        server = EmbeddedPostgres(self.root, pid_dir=self.pid_dir)
        admin = server.start()
        self.servers.append(server)
        for name in ("wxyc", "dagster"):
            _ensure_database(admin, name)
        print(f"postgres: embedded on {server.host}:{server.port} (databases wxyc, dagster)")
        return server.url_for("wxyc"), _dagster_url(server.url_for("dagster"))

    def _redis(self, settings: Settings) -> str:
        if settings.redis.url:
            return settings.redis.url
        server = EmbeddedValkey(self.root, pid_dir=self.pid_dir)
        url = server.start()
        self.servers.append(server)
        print(f"redis: embedded Valkey on {server.host}:{server.port}")
        return url

    def _emulator(self, env: dict[str, str]) -> str:
        port = free_port()
        self._spawn(
            "lml-emulator",
            [sys.executable, "-m", "wx_orchestration.devstack.lml_emulator", "--port", str(port)],
            env,
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{url}/health"), timeout=30, what="the LML emulator")
        print(f"lml: EMULATOR (not the real service) on {url}")
        return url

    def _dagster_home(self, env: dict[str, str]) -> Path:
        if os.environ.get("DAGSTER_HOME"):
            return Path(os.environ["DAGSTER_HOME"])
        home = self.root / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
        return home

    def _dagster(self, env: dict[str, str]) -> None:
        bin_dir = Path(sys.executable).parent
        workspace = str(REPO_ROOT / "workspace.yaml")
        self._spawn(
            "dagster-webserver",
            [
                str(bin_dir / "dagster-webserver"),
                "-h",
                self.options.ui_host,
                "-p",
                str(self.options.ui_port),
                "-w",
                workspace,
            ],
            env,
        )
        self._spawn(
            "dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", workspace], env
        )
        url = f"http://{self.options.ui_host}:{self.options.ui_port}"
        wait_until(
            lambda: _answers(f"{url}/server_info"), timeout=180, what="the Dagster webserver"
        )
        self.info["dagster_ui"] = url
        print(f"dagster: UI on {url} (webserver + daemon; storage in Postgres)")

    def _sidecar(self, env: dict[str, str]) -> None:
        bin_dir = Path(sys.executable).parent
        self._spawn("sidecar", [str(bin_dir / "wx-sidecar")], env)
        port = env.get("WX_SIDECAR_PORT", "8686")
        self.info["sidecar"] = f"http://127.0.0.1:{port}"
        print(f"sidecar: http://127.0.0.1:{port}")

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> ManagedProcess:
        process = start_process(
            name,
            command,
            log_path=self.log_dir / f"{name}.log",
            env=env,
            cwd=REPO_ROOT,
            pid_dir=self.pid_dir,
        )
        self.children.append(process)
        return process

    def dead_children(self) -> list[ManagedProcess]:
        return [child for child in self.children if not child.alive()]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()
        stack_file(self.root).unlink(missing_ok=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def _sidecar_available() -> bool:
    return importlib.util.find_spec("wx_orchestration.sidecar.__main__") is not None


def run_up(options: UpOptions) -> int:
    """Start everything, then wait for Ctrl-C / SIGTERM or a child's death; stop everything."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    # Set before anything starts so a signal during start-up still stops cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, request_stop)

    root = state_dir()
    stack = Stack(root=root, options=options)
    (root / "run").mkdir(parents=True, exist_ok=True)
    supervisor_pid = root / "run" / "supervisor.pid"
    supervisor_pid.write_text(str(os.getpid()))
    code = 0
    try:
        stack.start()
        print("wx_orchestration is up. Ctrl-C stops everything.", flush=True)
        while not stop.wait(0.5):
            dead = stack.dead_children()
            if dead:
                for child in dead:
                    print(f"{child.name} exited; last log lines:\n{child.log_tail()}", flush=True)
                code = 1
                break
    except BaseException:
        code = 1
        raise
    finally:
        print("stopping...", flush=True)
        stack.stop()
        supervisor_pid.unlink(missing_ok=True)
        print("stopped.", flush=True)
    return code


def run_down(timeout: float = 60.0) -> list[str]:
    root = state_dir()
    supervisor = root / "run" / "supervisor.pid"
    stopped: list[str] = []
    try:
        pid = int(supervisor.read_text())
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=timeout, what="wx up")
        stopped.append("supervisor")
    except (OSError, ValueError):
        pass
    stopped += reap_stale(root / "run")
    supervisor.unlink(missing_ok=True)
    stack_file(root).unlink(missing_ok=True)
    env_file(root).unlink(missing_ok=True)
    return stopped
