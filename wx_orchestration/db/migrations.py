"""Apply the numbered SQL files under `sql/` once each, under an advisory lock.

Two kinds of files: `sql/station/` is the dev/test mirror of the station's tables, applied
only on request into a schema of the caller's choosing; `sql/migrations/` is our own schema
`wx_orchestration`. Each file runs in its own transaction together with its bookkeeping row,
so a failure leaves no half-applied file behind. An applied file is immutable: its sha256 is
recorded and a later edit is refused.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from wx_orchestration.settings import DatabaseSettings, SettingsError, validate_schema_name

log = logging.getLogger("wx_orchestration.db")

OUR_SCHEMA = "wx_orchestration"
STATION_KIND = "station"
# The repository's `sql/` next to the package; an installed package (the Docker image) is told
# where the files are with WX_SQL_DIR.
REPOSITORY_SQL_ROOT = Path(__file__).resolve().parents[2] / "sql"

# Fixed, arbitrary key shared by every runner ("wxmigr" in ASCII), so that concurrent runners
# (several sidecars starting at once, a `wx migrate` during a deploy) apply each file once.
_ADVISORY_LOCK_KEY = 0x77_78_6D_69_67_72

_BOOKKEEPING = (
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(OUR_SCHEMA)),
    sql.SQL(
        """
        CREATE TABLE IF NOT EXISTS {}.schema_migrations (
            kind        text NOT NULL,
            schema_name text NOT NULL,
            name        text NOT NULL,
            checksum    text NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (kind, schema_name, name)
        )
        """
    ).format(sql.Identifier(OUR_SCHEMA)),
)


class MigrationError(RuntimeError):
    """A migration cannot be applied; the message names the file and what to do."""


class InvalidSchemaName(MigrationError, ValueError):
    """The station schema name is not a plain identifier."""


@dataclass(frozen=True)
class MigrationFile:
    kind: str
    schema_name: str
    path: Path

    @property
    def display_name(self) -> str:
        return f"{self.kind}/{self.path.name}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.schema_name, self.path.name)

    def body(self) -> bytes:
        return self.path.read_bytes()

    def checksum(self) -> str:
        return _sha256(self.body())


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def apply_migrations(
    conninfo: str,
    *,
    with_station_schema: bool = False,
    station_schema: str = "wxyc_schema",
    sql_root: Path | None = None,
) -> list[str]:
    """Apply every pending file; return the display names applied by this call, in order.

    The station mirror is touched only when `with_station_schema` is set.
    """
    files = _plan(sql_root or _sql_root(), with_station_schema, station_schema)
    applied: list[str] = []
    with _locked_connection(conninfo) as conn:
        _ensure_bookkeeping(conn)
        recorded = _recorded_checksums(conn)
        _refuse_changed_files(files, recorded)
        _refuse_foreign_station_schema(conn, files, recorded)
        for migration in files:
            if migration.key not in recorded:
                _apply_one(conn, migration)
                applied.append(migration.display_name)
    return applied


def migration_status(
    conninfo: str,
    *,
    with_station_schema: bool = False,
    station_schema: str = "wxyc_schema",
    sql_root: Path | None = None,
) -> list[tuple[str, datetime | None]]:
    """Each known file's display name and when it was applied (None: pending). Read-only."""
    files = _plan(sql_root or _sql_root(), with_station_schema, station_schema)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        applied_at = _recorded_times(conn)
    return [(f.display_name, applied_at.get(f.key)) for f in files]


def _sql_root() -> Path:
    root = Path(DatabaseSettings.from_env().sql_dir or REPOSITORY_SQL_ROOT)
    if not (root / "migrations").is_dir():
        raise MigrationError(
            f"no migrations found under {root}; set WX_SQL_DIR to the repository's sql/ directory"
        )
    return root


def _plan(sql_root: Path, with_station_schema: bool, station_schema: str) -> list[MigrationFile]:
    files: list[MigrationFile] = []
    if with_station_schema:
        schema = _valid_schema_name(station_schema)
        files += _numbered_files(sql_root / "station", STATION_KIND, schema)
    files += _numbered_files(sql_root / "migrations", OUR_SCHEMA, OUR_SCHEMA)
    return files


def _valid_schema_name(name: str) -> str:
    try:
        return validate_schema_name(name)
    except SettingsError as err:
        raise InvalidSchemaName(str(err)) from err


def _numbered_files(directory: Path, kind: str, schema_name: str) -> list[MigrationFile]:
    if not directory.is_dir():
        raise MigrationError(f"migration directory {directory} is missing")
    return [MigrationFile(kind, schema_name, path) for path in sorted(directory.glob("[0-9]*.sql"))]


@contextmanager
def _locked_connection(conninfo: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection holding the runner's session advisory lock until closed."""
    with psycopg.connect(
        conninfo, autocommit=True, application_name="wx_orchestration migrations"
    ) as conn:
        got_it = conn.execute("SELECT pg_try_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,)).fetchone()
        if not (got_it and got_it[0]):
            log.info("another migration runner holds the lock; waiting for it")
            conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        # Closing the connection releases the lock even if an unlock never runs.
        yield conn


def _ensure_bookkeeping(conn: psycopg.Connection) -> None:
    with conn.transaction():
        for statement in _BOOKKEEPING:
            conn.execute(statement)


def _recorded_checksums(conn: psycopg.Connection) -> dict[tuple[str, str, str], str]:
    rows = conn.execute(
        sql.SQL("SELECT kind, schema_name, name, checksum FROM {}.schema_migrations").format(
            sql.Identifier(OUR_SCHEMA)
        )
    ).fetchall()
    return {(kind, schema, name): checksum for kind, schema, name, checksum in rows}


def _recorded_times(conn: psycopg.Connection) -> dict[tuple[str, str, str], datetime]:
    table = f"{OUR_SCHEMA}.schema_migrations"
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    if not (exists and exists[0]):
        return {}
    rows = conn.execute(
        sql.SQL("SELECT kind, schema_name, name, applied_at FROM {}.schema_migrations").format(
            sql.Identifier(OUR_SCHEMA)
        )
    ).fetchall()
    return {(kind, schema, name): applied_at for kind, schema, name, applied_at in rows}


def _refuse_changed_files(
    files: list[MigrationFile], recorded: dict[tuple[str, str, str], str]
) -> None:
    """Check every applied file before applying anything, so a refusal changes nothing."""
    for migration in files:
        recorded_checksum = recorded.get(migration.key)
        if recorded_checksum is None:
            continue
        checksum = migration.checksum()
        if checksum != recorded_checksum:
            raise MigrationError(
                f"{migration.display_name} ({migration.path}) was changed after it was applied "
                f"to schema {migration.schema_name!r}: recorded sha256 {recorded_checksum[:12]}…, "
                f"file now {checksum[:12]}…. Applied migrations are immutable: "
                "restore the file and put the change in a new numbered file instead."
            )


def _refuse_foreign_station_schema(
    conn: psycopg.Connection,
    files: list[MigrationFile],
    recorded: dict[tuple[str, str, str], str],
) -> None:
    """The mirror goes only where we made it: never over the station's real tables."""
    schemas = {
        f.schema_name
        for f in files
        if f.kind == STATION_KIND
        and f.key not in recorded
        and not any(k[:2] == (STATION_KIND, f.schema_name) for k in recorded)
    }
    for schema in sorted(schemas):
        row = conn.execute("SELECT to_regclass(%s)", (f"{schema}.flowsheet",)).fetchone()
        if row is not None and row[0] is not None:
            raise MigrationError(
                f"schema {schema!r} already holds the station's tables (not created by wx"
                " migrate): run `wx migrate` without --with-station-schema to add only our own"
                " schema"
            )


def _apply_one(conn: psycopg.Connection, migration: MigrationFile) -> None:
    body = migration.body()
    try:
        with conn.transaction():
            _enter_schema(conn, migration)
            conn.execute(body)
            _record(conn, migration, _sha256(body))
    except psycopg.Error as err:
        raise MigrationError(
            f"{migration.display_name} failed in schema {migration.schema_name!r} and was "
            f"rolled back: {err}"
        ) from err
    log.info("applied %s to schema %s", migration.display_name, migration.schema_name)


def _enter_schema(conn: psycopg.Connection, migration: MigrationFile) -> None:
    """Create the target schema and make it the only one unqualified names resolve to.

    Station files name no schema, which is what lets tests build a mirror under any name.
    """
    schema = sql.Identifier(migration.schema_name)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
    conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))


def _record(conn: psycopg.Connection, migration: MigrationFile, checksum: str) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {}.schema_migrations (kind, schema_name, name, checksum)"
            " VALUES (%s, %s, %s, %s)"
        ).format(sql.Identifier(OUR_SCHEMA)),
        (migration.kind, migration.schema_name, migration.path.name, checksum),
    )
