"""Session servers for the tests: embedded PostgreSQL and Valkey, or the ones the env names.

`DATABASE_URL` / `REDIS_URL`, when set, point the suite at existing servers (the role must be
allowed to CREATE DATABASE). Otherwise the same code as `wx up` starts embedded servers: the
PostgreSQL of the pip wheel, or the install `WX_EMBEDDED_PG_DIR` names (`.ci/pg14`).
Every test gets its own database and its own Redis logical database, so no test sees another's
leftovers.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

from wx_orchestration.db.migrations import apply_migrations
from wx_orchestration.devstack.servers import (
    EmbeddedPostgres,
    EmbeddedServerError,
    EmbeddedValkey,
    postgres_install_dir,
)

STATION_SCHEMA = "wxyc_schema"


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _create_database(admin_url: str, name: str, template: str | None = None) -> None:
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def pytest_report_header() -> str:
    """Which PostgreSQL the run is against (CI runs the integration tests on two)."""
    if os.environ.get("DATABASE_URL"):
        return "PostgreSQL: DATABASE_URL"
    try:
        install = postgres_install_dir()
        version = subprocess.run(
            [str(install / "bin" / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (EmbeddedServerError, OSError, subprocess.CalledProcessError) as error:
        return f"PostgreSQL: embedded, not runnable ({error})"
    return f"PostgreSQL: embedded {version} from {install}"


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    # Not under pytest's basetemp: a later pytest session of the same user prunes old basetemps,
    # which would delete a running server's data directory from under it.
    path = Path(tempfile.mkdtemp(prefix="wx-test-servers-"))
    # PostgreSQL runs as `nobody` when we are root; let it reach its data directory.
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(servers_dir: Path) -> Iterator[str]:
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(servers_dir)
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> Iterator[str]:
    """A database with the station mirror and our migrations, cloned for each test."""
    name = f"wxt_template_{uuid.uuid4().hex[:10]}"
    _create_database(pg_server_url, name)
    apply_migrations(
        with_database(pg_server_url, name), with_station_schema=True, station_schema=STATION_SCHEMA
    )
    yield name
    _drop_database(pg_server_url, name)


@pytest.fixture
def fresh_database(pg_server_url: str) -> Iterator[str]:
    """URL of a new, empty database."""
    name = f"wxt_{uuid.uuid4().hex[:12]}"
    _create_database(pg_server_url, name)
    yield with_database(pg_server_url, name)
    _drop_database(pg_server_url, name)


@pytest.fixture
def station_db(pg_server_url: str, template_database: str) -> Iterator[str]:
    """URL of a new database holding the station mirror (`wxyc_schema`) and our schema."""
    name = f"wxt_{uuid.uuid4().hex[:12]}"
    _create_database(pg_server_url, name, template=template_database)
    yield with_database(pg_server_url, name)
    _drop_database(pg_server_url, name)


@pytest.fixture(scope="session")
def redis_server_url(servers_dir: Path) -> Iterator[str]:
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    server = EmbeddedValkey(servers_dir)
    yield server.start()
    server.stop()


_redis_databases = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """URL of an emptied Redis logical database (1..15; 0 is left to whoever else uses it)."""
    url = urlunsplit(urlsplit(redis_server_url)._replace(path=f"/{next(_redis_databases)}"))
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
