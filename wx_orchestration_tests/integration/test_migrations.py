"""The migration runner against a real PostgreSQL: once-only, concurrent-safe, immutable files."""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from wx_orchestration.db.migrations import (
    REPOSITORY_SQL_ROOT,
    MigrationError,
    apply_migrations,
    migration_status,
)


def _all_names(sql_root: Path = REPOSITORY_SQL_ROOT) -> list[str]:
    station = sorted(p.name for p in (sql_root / "station").glob("[0-9]*.sql"))
    ours = sorted(p.name for p in (sql_root / "migrations").glob("[0-9]*.sql"))
    return [f"station/{n}" for n in station] + [f"wx_orchestration/{n}" for n in ours]


def _records(url: str) -> list[tuple[str, str, str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT kind, schema_name, name, checksum FROM wx_orchestration.schema_migrations"
            " ORDER BY kind, schema_name, name"
        ).fetchall()


def _schemas(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace").fetchall()
    return {name for (name,) in rows}


def _tables(url: str, schema: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {name for (name,) in rows}


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    """A private copy of `sql/` that a test may edit."""
    root = tmp_path / "sql"
    shutil.copytree(REPOSITORY_SQL_ROOT, root)
    return root


def test_applies_everything_then_nothing(fresh_database: str) -> None:
    first = apply_migrations(fresh_database, with_station_schema=True)
    records = _records(fresh_database)

    second = apply_migrations(fresh_database, with_station_schema=True)

    assert first == _all_names()
    assert second == []
    assert _records(fresh_database) == records
    assert len(records) == len(first)


def test_concurrent_runners_apply_each_file_once(fresh_database: str) -> None:
    runners = 4
    start = threading.Barrier(runners)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            results.append(apply_migrations(fresh_database, with_station_schema=True))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(_all_names())
    assert len(_records(fresh_database)) == len(_all_names())


def test_changed_applied_file_is_refused_and_nothing_else_runs(
    fresh_database: str, sql_copy: Path
) -> None:
    apply_migrations(fresh_database, sql_root=sql_copy)
    before = _records(fresh_database)
    core = sql_copy / "migrations" / "0001_core.sql"
    core.write_text(core.read_text() + "\n-- an edit after the fact\n")
    (sql_copy / "migrations" / "9999_later.sql").write_text(
        "CREATE TABLE wx_orchestration.later (id int);"
    )

    with pytest.raises(
        MigrationError, match=re.escape("wx_orchestration/0001_core.sql")
    ) as refused:
        apply_migrations(fresh_database, sql_root=sql_copy)

    assert "new numbered file" in str(refused.value)
    assert _records(fresh_database) == before
    assert "later" not in _tables(fresh_database, "wx_orchestration")


def test_a_new_numbered_file_is_applied_alone(fresh_database: str, sql_copy: Path) -> None:
    apply_migrations(fresh_database, sql_root=sql_copy)
    (sql_copy / "migrations" / "9999_later.sql").write_text(
        "CREATE TABLE wx_orchestration.later (id int);"
    )

    assert apply_migrations(fresh_database, sql_root=sql_copy) == [
        "wx_orchestration/9999_later.sql"
    ]
    assert "later" in _tables(fresh_database, "wx_orchestration")


def test_a_failing_file_is_rolled_back_and_not_recorded(
    fresh_database: str, sql_copy: Path
) -> None:
    (sql_copy / "migrations" / "9999_broken.sql").write_text(
        "CREATE TABLE wx_orchestration.half (id int);\nSELECT no_such_function();"
    )

    with pytest.raises(MigrationError, match=re.escape("wx_orchestration/9999_broken.sql")):
        apply_migrations(fresh_database, sql_root=sql_copy)

    assert "half" not in _tables(fresh_database, "wx_orchestration")
    assert "9999_broken.sql" not in {name for _, _, name, _ in _records(fresh_database)}


def test_station_schema_is_untouched_without_the_flag(fresh_database: str) -> None:
    with psycopg.connect(fresh_database) as conn:
        conn.execute("CREATE SCHEMA wxyc_schema")
        conn.execute("CREATE TABLE wxyc_schema.flowsheet (id int)")

    applied = apply_migrations(fresh_database)

    assert all(name.startswith("wx_orchestration/") for name in applied)
    assert _tables(fresh_database, "wxyc_schema") == {"flowsheet"}
    assert {kind for kind, _, _, _ in _records(fresh_database)} == {"wx_orchestration"}


def test_without_the_flag_no_station_schema_is_created(fresh_database: str) -> None:
    apply_migrations(fresh_database)

    assert "wxyc_schema" not in _schemas(fresh_database)
    assert {"cdc_watermark", "dead_letters", "flowsheet_events", "enrichment_attempts"} <= (
        _tables(fresh_database, "wx_orchestration")
    )


def test_custom_station_schema_name(fresh_database: str) -> None:
    apply_migrations(fresh_database, with_station_schema=True, station_schema="station_x")

    assert "wxyc_schema" not in _schemas(fresh_database)
    assert {"flowsheet", "flowsheet_watermark", "library"} <= _tables(fresh_database, "station_x")
    # The writer's session does not have station_x on its search_path; the triggers still
    # find their tables.
    with psycopg.connect(fresh_database) as conn:
        conn.execute("SET search_path TO public")
        row = conn.execute(
            "INSERT INTO station_x.flowsheet (play_order, artist_name) VALUES (1, 'Stereolab')"
            " RETURNING updated_at = now()"
        ).fetchone()
        mark = conn.execute("SELECT last_modified_at FROM station_x.flowsheet_watermark").fetchone()
        started = conn.execute("SELECT now()").fetchone()
    assert row == (True,)
    assert mark is not None
    assert started is not None
    # GREATEST(now(), last_modified_at + 1 s): the writer's statement moved it.
    assert mark[0] >= started[0]


def test_two_station_schemas_live_side_by_side(fresh_database: str) -> None:
    apply_migrations(fresh_database, with_station_schema=True, station_schema="station_a")
    second = apply_migrations(fresh_database, with_station_schema=True, station_schema="station_b")

    assert second == [name for name in _all_names() if name.startswith("station/")]
    assert _tables(fresh_database, "station_a") == _tables(fresh_database, "station_b")


@pytest.mark.parametrize(
    "name", ["", "WXYC", "1station", "wxyc-schema", "x; DROP SCHEMA public", "a" * 64, 'we"ird']
)
def test_invalid_station_schema_name_is_refused(fresh_database: str, name: str) -> None:
    with pytest.raises(MigrationError, match="identifier"):
        apply_migrations(fresh_database, with_station_schema=True, station_schema=name)

    assert "wx_orchestration" not in _schemas(fresh_database)


def test_status_lists_pending_then_applied(fresh_database: str) -> None:
    pending = migration_status(fresh_database, with_station_schema=True)
    apply_migrations(fresh_database, with_station_schema=True)
    done = migration_status(fresh_database, with_station_schema=True)

    assert [name for name, _ in pending] == _all_names()
    assert all(applied_at is None for _, applied_at in pending)
    assert [name for name, _ in done] == _all_names()
    assert all(applied_at is not None for _, applied_at in done)


def test_the_mirror_never_goes_over_the_stations_own_tables(
    fresh_database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from wx_orchestration.cli import main

    with psycopg.connect(fresh_database, autocommit=True) as conn:
        # A database built by the station's own migrations: its flowsheet, not our mirror's.
        conn.execute("CREATE SCHEMA wxyc_schema")
        conn.execute("CREATE TABLE wxyc_schema.flowsheet (id serial PRIMARY KEY)")
    monkeypatch.setenv("DATABASE_URL", fresh_database)
    monkeypatch.delenv("WXYC_SCHEMA_NAME", raising=False)

    assert main(["migrate", "--with-station-schema"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "already holds the station's tables" in err
    assert "without --with-station-schema" in err
    assert "wx_orchestration" not in _schemas(fresh_database) - {"public"} or not _records(
        fresh_database
    )
    # Our own schema alone goes in as usual.
    assert main(["migrate"]) == 0
