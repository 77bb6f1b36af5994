"""Servers and databases for benchmarks: embedded by default, or DATABASE_URL / REDIS_URL."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from wx_orchestration.db.migrations import apply_migrations
from wx_orchestration.devstack.servers import EmbeddedPostgres, EmbeddedValkey

STATION_SCHEMA = "wxyc_schema"


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@contextmanager
def bench_database(settings: tuple[str, ...] = ()) -> Iterator[str]:
    """A new database with the station mirror and our schema, dropped afterwards; `settings`
    apply to the embedded server only."""
    with tempfile.TemporaryDirectory(prefix="wx-bench-") as tmp:
        Path(tmp).chmod(0o755)
        server = None
        admin = os.environ.get("DATABASE_URL")
        if not admin:
            server = EmbeddedPostgres(Path(tmp), durable=True, settings=settings)
            admin = server.start()
        name = f"wxbench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _with_database(admin, name)
        apply_migrations(url, with_station_schema=True, station_schema=STATION_SCHEMA)
        try:
            yield url
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            if server is not None:
                server.stop()


@contextmanager
def bench_redis() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="wx-bench-") as tmp:
        server = EmbeddedValkey(Path(tmp))
        try:
            yield server.start()
        finally:
            server.stop()


def station_connection(url: str, *, autocommit: bool = True) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=autocommit)
    conn.execute(f"SET search_path TO {STATION_SCHEMA}, wx_orchestration")
    return conn


@contextmanager
def emulator_process(*args: str) -> Iterator[str]:
    """The LML emulator in its own process, so its CPU is not counted as ours; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wx_orchestration.devstack.lml_emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)


def copy_plays(
    conn: psycopg.Connection, plays: Iterable[tuple[str, str, str]], *, start: datetime
) -> None:
    """Pending track rows (artist, album, track), spread evenly over the day from `start`,
    loaded with one COPY; then VACUUM ANALYZE so the planner sees the table as it is."""
    rows = list(plays)
    step = timedelta(days=1) / max(len(rows), 1)
    with conn.cursor() as cur:
        with cur.copy(
            "COPY flowsheet (artist_name, album_title, track_title, play_order, add_time) "
            "FROM STDIN"
        ) as copy:
            for i, (artist, album, track) in enumerate(rows):
                copy.write_row((artist, album, track, i, start + i * step))
        cur.execute("VACUUM ANALYZE flowsheet")
