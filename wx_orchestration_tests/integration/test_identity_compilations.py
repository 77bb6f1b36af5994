"""Compilations resolved as the station's consumer resolves them, and an LML without the
identity endpoint (issue 15), against real Postgres and the LML emulator."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from wx_orchestration.contracts.lml import BULK_RESOLVE_PATH, BulkResolveInput
from wx_orchestration.devstack.lml_emulator import emulated_track_credits, resolve_library
from wx_orchestration.devstack.station_rows import insert_artists
from wx_orchestration.flows.identity import refresh_shard
from wx_orchestration_tests.integration.test_identity_asset import run_shard
from wx_orchestration_tests.integration.test_identity_refresh import (
    conn,  # noqa: F401 (fixture)
    count,
    fake,  # noqa: F401 (fixture)
    options,
    seed_library,
)

VA = "Various Artists"


def emulated_compilation(*, attempted: bool, min_tracks: int = 1) -> str:
    """An album title the emulator answers as a compilation with (or without) its tracks."""
    for n in range(200):
        title = f"Compilation {n}"
        item = BulkResolveInput(
            library_id=1, artist_name=VA, album_title=title, legacy_release_id=1
        )
        answer = resolve_library(item, include_tracks=True)
        if answer["tracks_attempted"] == attempted and (
            not attempted or len(answer["tracks"]) >= min_tracks
        ):
            return title
    raise AssertionError("the emulator answered no such compilation")


def seed_credits(db: psycopg.Connection, library_id: int, album_title: str) -> list[int]:
    """The station's (unlinked) track rows for the compilation the emulator credits."""
    credits = emulated_track_credits(album_title)
    rows = db.execute(
        "INSERT INTO compilation_track_artist (library_id, artist_name, track_title) "
        "SELECT %s, a, t FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS v(a, t, n) "
        "ORDER BY n RETURNING id",
        (library_id, [c["artist_name"] for c in credits], [c["track_title"] for c in credits]),
    ).fetchall()
    return [row[0] for row in rows]


def credit_rows(db: psycopg.Connection, library_id: int) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT cta.artist_name, a.artist_name, cta.track_artist_link_method, "
        "cta.track_artist_link_confidence, cta.track_position "
        "FROM compilation_track_artist AS cta LEFT JOIN artists AS a ON a.id = cta.track_artist_id "
        "WHERE cta.library_id = %s ORDER BY cta.id",
        (library_id,),
    ).fetchall()


def bulk_resolve_calls(emulator: Any) -> int:
    return sum(1 for r in emulator.requests() if r["path"] == BULK_RESOLVE_PATH)


def test_a_va_row_resolves_writes_its_credits_and_is_not_sent_again(
    conn,  # noqa: F811
    lml_emulator,
    lml_client,
) -> None:
    album = emulated_compilation(attempted=True, min_tracks=4)
    unvisited = emulated_compilation(attempted=False)
    seed_library(conn, 1, start_id=16, artist_name=VA, album_title=album, code_volume_letters="Z")
    seed_library(conn, 1, start_id=32, artist_name=VA, album_title=unvisited)
    cta_ids = seed_credits(conn, 16, album)
    insert_artists(conn, [c["artist_name"] for c in emulated_track_credits(album)])
    # A librarian's link outranks LML's.
    conn.execute(
        "UPDATE compilation_track_artist SET track_artist_link_method = 'librarian' WHERE id = %s",
        (cta_ids[1],),
    )

    totals = refresh_shard(conn, lml_client, options(0)).totals
    assert totals.scanned == 2
    assert totals.rows_resolved_compilation == 1
    assert totals.rows_skipped["compilation"] == 1
    assert totals.balanced()
    credits = credit_rows(conn, 16)
    # Track 1 linked to its catalog artist; 2 is the librarian's; 4 is a miss (the emulator
    # leaves every fourth track unresolved); the rest linked.
    for n, (artist, linked, method, confidence, position) in enumerate(credits, start=1):
        if n == 2:
            assert (linked, method, position) == (None, "librarian", None)
        elif n % 4 == 0:
            assert (linked, method, confidence, position) == (None, None, None, None)
        else:
            assert (linked, method, position) == (artist, "lml_backfill", str(n))
            assert 0.5 <= confidence <= 1.0
    written = len(credits) - 1 - len(credits) // 4
    assert totals.track_rows["compilation_track_rows_written"] == written
    assert totals.track_rows["compilation_track_rows_skipped_librarian"] == 1
    assert (
        count(conn, "SELECT count(*) FROM library WHERE unresolved_attempted_at IS NOT NULL") == 2
    )
    assert bulk_resolve_calls(lml_emulator) == 1

    again = refresh_shard(conn, lml_client, options(0)).totals
    assert again.scanned == 0
    assert bulk_resolve_calls(lml_emulator) == 1


def test_a_failing_compilation_costs_only_itself(conn, fake) -> None:  # noqa: F811
    server, client = fake
    seed_library(conn, 1, start_id=16, artist_name=VA, album_title="Good")
    seed_library(conn, 1, start_id=32, artist_name=VA, album_title="Poisoned")
    for library_id in (16, 32):
        seed_credits(conn, library_id, "Shared tracklist")
    credits = emulated_track_credits("Shared tracklist")
    insert_artists(conn, [c["artist_name"] for c in credits])

    def compilations(body: dict[str, Any]) -> tuple[int, Any]:
        results = []
        for item in body["inputs"]:
            # A NUL byte cannot be sent to Postgres as text: this id's write fails there.
            suffix = "\x00" if item["album_title"] == "Poisoned" else ""
            tracks = [
                {**c, "resolved_artist_name": c["artist_name"] + suffix, "confidence": 0.9}
                for c in credits
            ]
            results.append(
                {"kind": "compilation", "library_id": item["library_id"], "tracks": tracks}
            )
        return 200, {"results": results, "tracks_contract_version": None}

    server.answer = compilations
    totals = refresh_shard(conn, client, options(0)).totals
    assert server.bodies[0]["include_tracks"] is True
    assert totals.rows_resolved_compilation == 1
    assert totals.rows_skipped["writer_error"] == 1
    assert totals.balanced()
    assert all(
        (linked, method) == (artist, "lml_backfill")
        for artist, linked, method, _, _ in credit_rows(conn, 16)
    )
    # All or nothing: neither a credit nor the stamp for the failed id.
    assert all(row[2] is None for row in credit_rows(conn, 32))
    stamped = conn.execute(
        "SELECT id FROM library WHERE unresolved_attempted_at IS NOT NULL ORDER BY id"
    ).fetchall()
    assert stamped == [(16,)]


@pytest.fixture
def seeded(station_db: str) -> str:
    with psycopg.connect(station_db, autocommit=True) as connection:
        connection.execute("SET search_path TO wxyc_schema")
        seed_library(connection, 3 * 16, start_id=16)
        seed_library(connection, 1, start_id=16 * 4 + 5, artist_name=VA)
    return station_db


def test_an_lml_without_the_identity_endpoint_fails_once_and_writes_nothing(
    seeded, lml_emulator, redis_url
) -> None:
    lml_emulator.set_faults(mode="feb2026")  # an LML from before the bulk-resolve endpoint
    result = run_shard(seeded, lml_emulator.url, "05", redis_url, batch_size=1)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = str(failure.step_failure_data.error)
    assert f"POST {lml_emulator.url}{BULK_RESOLVE_PATH}" in message
    assert "404" in message
    assert "sk-asset-secret" not in message
    # One call, no retry of the step, no further batches.
    assert bulk_resolve_calls(lml_emulator) == 1
    with psycopg.connect(seeded) as connection:
        written = connection.execute(
            "SELECT (SELECT count(*) FROM wxyc_schema.library_identity), "
            "(SELECT count(*) FROM wxyc_schema.library WHERE unresolved_attempted_at IS NOT NULL)"
        ).fetchone()
    assert written == (0, 0)
