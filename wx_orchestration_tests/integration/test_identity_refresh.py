"""The identity refresh against real Postgres and real HTTP (scripted fake LML and emulator)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql

from wx_orchestration.clients.lml import LmlClient
from wx_orchestration.db.identity import Selection
from wx_orchestration.devstack.station_rows import insert_artists, library_defaults
from wx_orchestration.flows.identity import LmlAuthError, RefreshOptions, refresh_shard
from wx_orchestration_tests.scripted_lml import ScriptedLml, echo_single_artist


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(station_db, autocommit=True) as connection:
        connection.execute("SET search_path TO wxyc_schema, wx_orchestration")
        yield connection


def seed_library(
    conn: psycopg.Connection, count: int, *, start_id: int = 1, **overrides: Any
) -> list[int]:
    """Library rows with ids start_id.. (explicit ids make shard membership predictable)."""
    ids = list(range(start_id, start_id + count))
    defaults = library_defaults(conn)
    for library_id in ids:
        values = {
            **defaults,
            "id": library_id,
            "artist_name": f"Artist {library_id}",
            "album_title": f"Album {library_id}",
            "legacy_release_id": 50_000 + library_id,
            "canonical_entity_id": f"wxyc:{library_id}",
            **overrides,
        }
        statement = sql.SQL("INSERT INTO library ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
        )
        conn.execute(statement, list(values.values()))
    return ids


def options(shard: int = 0, *, batch_size: int = 500, dry_run: bool = False, **selection: Any):
    return RefreshOptions(
        selection=Selection(
            shard=shard,
            stale_threshold_days=selection.get("stale_threshold_days", 7),
            unresolved_retry_days=selection.get("unresolved_retry_days", 30),
            include_null_canonical=selection.get("include_null_canonical", False),
        ),
        batch_size=batch_size,
        dry_run=dry_run,
    )


@pytest.fixture
def fake(scripted_lml: tuple[ScriptedLml, str]) -> Iterator[tuple[ScriptedLml, LmlClient]]:
    server, url = scripted_lml
    client = LmlClient(url, api_key="sk-identity-test", total_timeout=5, max_retries=0)
    yield server, client
    client.close()


def count(conn: psycopg.Connection, query: LiteralString) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def test_single_artist_writes_main_and_source_rows(conn, fake) -> None:
    server, client = fake
    seed_library(conn, 3, start_id=16)  # ids 16, 17, 18: only 16 is in shard 0
    result = refresh_shard(conn, client, options(0))
    totals = result.totals.as_dict()
    assert totals["scanned"] == 1
    assert totals["rows_resolved"] == 1
    assert [i["library_id"] for i in server.bodies[0]["inputs"]] == [16]
    assert server.bodies[0]["include_tracks"] is True
    assert server.auth_headers[0] == "Bearer sk-identity-test"
    main = conn.execute(
        "SELECT method, confidence, wikidata_qid, spotify_id, notes, last_verified_at > now() - "
        "interval '1 minute' FROM library_identity WHERE library_id = 16"
    ).fetchone()
    assert main is not None
    assert main[0] == "exact_match"
    assert main[2] == "Q16"
    assert main[3] == "sp"
    assert "wx_orchestration" in main[4]
    assert main[5] is True
    assert count(conn, "SELECT count(*) FROM library_identity_source WHERE library_id = 16") == 2


def test_request_body_uses_artists_fallback_and_skips_blank_artists(conn, fake) -> None:
    server, client = fake
    (artist_id,) = insert_artists(conn, ["Björk"])
    seed_library(conn, 1, start_id=16, artist_name=None, artist_id=artist_id)
    seed_library(conn, 1, start_id=32, artist_name="   ")
    seed_library(conn, 1, start_id=48, canonical_entity_id=None)
    refresh_shard(conn, client, options(0))
    (body,) = server.bodies
    assert body["inputs"] == [
        {
            "library_id": 16,
            "artist_name": "Björk",
            "album_title": "Album 16",
            "legacy_release_id": 50_016,
        }
    ]
    server.bodies.clear()
    refresh_shard(conn, client, options(0, include_null_canonical=True))
    assert [i["library_id"] for i in server.bodies[0]["inputs"]] == [48]


def test_rerun_selects_only_stale_rows(conn, fake) -> None:
    server, client = fake
    seed_library(conn, 2, start_id=16)  # 16 in shard 0, 17 in shard 1
    seed_library(conn, 1, start_id=32)
    assert refresh_shard(conn, client, options(0)).totals.scanned == 2
    assert refresh_shard(conn, client, options(0)).totals.scanned == 0
    conn.execute(
        "UPDATE library_identity SET last_verified_at = now() - interval '8 days' "
        "WHERE library_id = 32"
    )
    again = refresh_shard(conn, client, options(0))
    assert again.totals.scanned == 1
    assert [i["library_id"] for i in server.bodies[-1]["inputs"]] == [32]


def test_keyset_paging_covers_the_shard_in_batches(conn, fake) -> None:
    server, client = fake
    seed_library(conn, 5 * 16, start_id=16)  # 5 rows per shard
    result = refresh_shard(conn, client, options(3, batch_size=2))
    assert result.batches == 3
    assert result.totals.scanned == 5
    sent = [i["library_id"] for body in server.bodies for i in body["inputs"]]
    assert sent == sorted(sent)
    assert all(i % 16 == 3 for i in sent)


def test_unresolved_is_stamped_and_not_retried_before_the_retry_window(conn, fake) -> None:
    server, client = fake
    seed_library(conn, 1, start_id=16)
    server.answer = lambda body: (
        200,
        {
            "results": [
                {"kind": "unresolved", "library_id": i["library_id"]} for i in body["inputs"]
            ]
        },
    )
    assert refresh_shard(conn, client, options(0)).totals.rows_unresolved == 1
    assert (
        count(conn, "SELECT count(*) FROM library WHERE unresolved_attempted_at IS NOT NULL") == 1
    )
    assert refresh_shard(conn, client, options(0)).totals.scanned == 0
    assert refresh_shard(conn, client, options(0, unresolved_retry_days=0)).totals.scanned == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, {"detail": "entity store down"}),
        (413, {"detail": "too many"}),
        (422, {"detail": "invalid"}),
        (200, {"unexpected": True}),
    ],
)
def test_failed_batch_counts_lml_error_and_rows_stay_selectable(conn, fake, status, body) -> None:
    server, client = fake
    seed_library(conn, 2, start_id=16)
    seed_library(conn, 1, start_id=32)
    server.answer = lambda _body: (status, body)
    totals = refresh_shard(conn, client, options(0)).totals
    assert totals.rows_skipped["lml_error"] == 2
    assert totals.balanced()
    assert count(conn, "SELECT count(*) FROM library_identity") == 0
    server.answer = echo_single_artist
    assert refresh_shard(conn, client, options(0)).totals.rows_resolved == 2


def test_401_stops_the_run_at_the_first_batch(conn, fake) -> None:
    server, client = fake
    seed_library(conn, 3 * 16, start_id=16)
    server.answer = lambda _body: (401, {"detail": "bad key"})
    with pytest.raises(LmlAuthError, match="LML_API_KEY") as info:
        refresh_shard(conn, client, options(0, batch_size=1))
    assert len(server.bodies) == 1
    assert "sk-identity-test" not in str(info.value)


def test_one_bad_library_id_costs_only_itself(conn, fake) -> None:
    server, client = fake
    seed_library(conn, 3, start_id=16, artist_name="x")
    conn.execute("UPDATE library SET id = id * 16 - 240 WHERE id > 16")  # 16, 32, 48

    def poisoned(body: dict[str, Any]) -> tuple[int, Any]:
        status, payload = echo_single_artist(body)
        # A NUL byte cannot be stored in a text column: this id's write fails in Postgres.
        payload["results"][1]["provenance"][0]["external_id"] = "bad\x00id"
        return status, payload

    server.answer = poisoned
    totals = refresh_shard(conn, client, options(0)).totals
    assert totals.rows_resolved == 2
    assert totals.rows_skipped["writer_error"] == 1
    assert totals.balanced()
    written = conn.execute("SELECT library_id FROM library_identity ORDER BY 1").fetchall()
    assert written == [(16,), (48,)]
    # All or nothing: the failed id has neither a main row nor any source row.
    assert count(conn, "SELECT count(*) FROM library_identity_source WHERE library_id = 32") == 0


def test_dry_run_writes_nothing_and_reports_the_diff(conn, fake) -> None:
    server, client = fake
    seed_library(conn, 2, start_id=16)
    seed_library(conn, 1, start_id=32)
    refresh_shard(conn, client, options(0, batch_size=1))  # writes 16 and 32
    conn.execute(
        "UPDATE library_identity SET method = 'trigram', last_verified_at = now() - "
        "interval '30 days' WHERE library_id = 16"
    )
    seed_library(conn, 1, start_id=48)
    seed_library(conn, 1, start_id=64)

    def mixed(body: dict[str, Any]) -> tuple[int, Any]:
        status, payload = echo_single_artist(body)
        for result in payload["results"]:
            if result["library_id"] == 64:
                result.clear()
                result.update(kind="unresolved", library_id=64)
        return status, payload

    server.answer = mixed
    before = conn.execute(
        "SELECT (SELECT count(*) FROM library_identity), (SELECT count(*) FROM "
        "library_identity_source), (SELECT max(last_verified_at) FROM library_identity), "
        "(SELECT count(*) FROM library WHERE unresolved_attempted_at IS NOT NULL)"
    ).fetchone()
    result = refresh_shard(conn, client, options(0, dry_run=True))
    after = conn.execute(
        "SELECT (SELECT count(*) FROM library_identity), (SELECT count(*) FROM "
        "library_identity_source), (SELECT max(last_verified_at) FROM library_identity), "
        "(SELECT count(*) FROM library WHERE unresolved_attempted_at IS NOT NULL)"
    ).fetchone()
    assert before == after
    assert result.diff is not None
    assert result.diff.counts["main_insert"] == 1  # 48
    assert result.diff.counts["main_update"] == 1  # 16: method changes back
    assert result.diff.counts["source_unchanged"] == 2
    assert result.totals.rows_unresolved == 1
    assert result.totals.balanced()
    changed = {(c.library_id, c.target, c.action, c.fields) for c in result.diff.changes}
    assert (16, "main", "update", ("method",)) in changed


def test_against_the_emulator_every_row_lands_in_one_bucket(conn, lml_client) -> None:
    seed_library(conn, 40 * 16, start_id=16)
    seed_library(conn, 4, start_id=1000, artist_name="Various Artists")
    result = refresh_shard(conn, lml_client, options(8, batch_size=7))
    totals = result.totals
    assert totals.scanned == 40 + 1  # 1000 % 16 == 8
    assert totals.balanced()
    assert totals.lml_total_calls == result.batches
    assert totals.rows_resolved > 0
    assert count(conn, "SELECT count(*) FROM library_identity") == totals.rows_resolved


def test_a_changed_verdict_keeps_the_one_it_replaced_in_history(conn, fake) -> None:
    server, client = fake
    seed_library(conn, 2, start_id=16)
    seed_library(conn, 1, start_id=32)
    refresh_shard(conn, client, options(0))
    assert count(conn, "SELECT count(*) FROM library_identity_history") == 0

    def llm_for_16(body: dict[str, Any]) -> tuple[int, Any]:
        status, payload = echo_single_artist(body)
        for result in payload["results"]:
            if result["library_id"] == 16:
                result.update(method="llm", confidence=0.4)
        return status, payload

    server.answer = llm_for_16
    conn.execute("UPDATE library_identity SET last_verified_at = now() - interval '8 days'")
    assert refresh_shard(conn, client, options(0)).totals.rows_resolved == 2
    history = conn.execute(
        "SELECT library_id, method, confidence, superseded_reason FROM library_identity_history"
    ).fetchall()
    # 32 was re-verified unchanged: only 16's replaced verdict is history.
    assert history == [(16, "exact_match", pytest.approx(0.9), "rerun")]
