"""Library identity refresh at station scale (issue #3).

A 65,000-row library refreshed against the zero-latency LML emulator, run in its own process so
that its CPU is not counted as ours. Reports the whole refresh excluding LML time, and the write
path alone against a naive writer (one statement per row, one transaction per library) measured
in the same run on the same verdicts.

    python -m bench.identity_refresh [--rows 65000] [--baseline-rows 10000]
"""

from __future__ import annotations

import argparse
import time

import psycopg

from bench.common import bench_database, emulator_process, station_connection
from wx_orchestration.clients.lml import LmlClient
from wx_orchestration.core.identity import WRITER_NOTE, BatchPlan, IdentityWrite, plan_batch
from wx_orchestration.db.identity import SHARD_COUNT, Selection, select_stale_batch, write_batch
from wx_orchestration.devstack.station_rows import library_defaults
from wx_orchestration.flows.identity import RefreshOptions, refresh_shard


def seed(conn: psycopg.Connection, rows: int) -> None:
    required = library_defaults(conn)
    with conn.cursor() as cur:
        with cur.copy(
            "COPY library (artist_name, album_title, legacy_release_id, canonical_entity_id,"
            " artist_id, genre_id, format_id, code_number) FROM STDIN"
        ) as copy:
            for i in range(rows):
                artist = "Various Artists" if i % 40 == 0 else f"Artist {i % 9000}"
                copy.write_row(
                    (
                        artist,
                        f"Album {i}",
                        100_000 + i,
                        f"wxyc:{i}",
                        required["artist_id"],
                        required["genre_id"],
                        required["format_id"],
                        1 + i % 999,
                    )
                )
        cur.execute("ANALYZE library")


def reset(conn: psycopg.Connection) -> None:
    conn.execute("TRUNCATE library_identity_source, library_identity")
    conn.execute("UPDATE library SET unresolved_attempted_at = NULL")
    conn.execute("VACUUM ANALYZE library")


def naive_write(conn: psycopg.Connection, writes: list[IdentityWrite]) -> None:
    """The station's one-shot job's shape: a transaction and a statement per row."""
    for w in writes:
        with conn.transaction():
            conn.execute(
                """INSERT INTO library_identity (library_id, method, confidence, wikidata_qid,
                       spotify_id, apple_music_id, last_verified_at, notes)
                   VALUES (%s, %s, %s, %s, %s, %s, now(), %s)
                   ON CONFLICT (library_id) DO UPDATE SET method = EXCLUDED.method,
                       confidence = EXCLUDED.confidence, wikidata_qid = EXCLUDED.wikidata_qid,
                       spotify_id = EXCLUDED.spotify_id, apple_music_id = EXCLUDED.apple_music_id,
                       last_verified_at = EXCLUDED.last_verified_at, notes = EXCLUDED.notes""",
                (
                    w.library_id,
                    w.method,
                    w.confidence,
                    w.wikidata_qid,
                    w.spotify_id,
                    w.apple_music_id,
                    WRITER_NOTE,
                ),
            )
            for s in w.sources:
                conn.execute(
                    """INSERT INTO library_identity_source (library_id, source, external_id,
                           method, confidence, last_verified_at, notes)
                       VALUES (%s, %s, %s, %s, %s, now(), %s)
                       ON CONFLICT (library_id, source) DO UPDATE SET
                           external_id = EXCLUDED.external_id, method = EXCLUDED.method,
                           confidence = EXCLUDED.confidence,
                           last_verified_at = EXCLUDED.last_verified_at""",
                    (s.library_id, s.source, s.external_id, s.method, s.confidence, WRITER_NOTE),
                )


def collect_plans(conn: psycopg.Connection, lml: LmlClient, limit: int) -> list[IdentityWrite]:
    writes: list[IdentityWrite] = []
    for shard in range(SHARD_COUNT):
        selection = Selection(shard, 7, 30, include_null_canonical=False)
        after = 0
        while len(writes) < limit:
            batch = select_stale_batch(conn, selection, after_id=after, limit=500)
            if not batch:
                break
            after = batch[-1].library_id
            writes += plan_batch(
                batch,
                lml.bulk_resolve_libraries([r.as_input() for r in batch], include_tracks=True),
            ).writes
    return writes[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=65_000)
    parser.add_argument("--baseline-rows", type=int, default=10_000)
    args = parser.parse_args()

    with bench_database() as url, emulator_process() as lml_url, station_connection(url) as conn:
        lml = LmlClient(lml_url, total_timeout=120, max_retries=0)
        seed(conn, args.rows)

        started = time.perf_counter()
        lml_ms = 0.0
        resolved = 0
        for shard in range(SHARD_COUNT):
            result = refresh_shard(
                conn, lml, RefreshOptions(Selection(shard, 7, 30, False)), progress=lambda _m: None
            )
            assert result.totals.balanced()
            lml_ms += result.totals.lml_total_latency_ms
            resolved += result.totals.rows_resolved
        whole = time.perf_counter() - started
        refresh_excl_lml = whole - lml_ms / 1000

        reset(conn)
        writes = collect_plans(conn, lml, args.baseline_rows)
        started = time.perf_counter()
        for i in range(0, len(writes), 500):
            write_batch(conn, BatchPlan(writes=writes[i : i + 500]))
        set_based = time.perf_counter() - started
        reset(conn)
        started = time.perf_counter()
        naive_write(conn, writes)
        naive = time.perf_counter() - started
        lml.close()

    sources = sum(len(w.sources) for w in writes)
    print(f"library rows: {args.rows}; resolved single_artist: {resolved}")
    print(
        f"whole refresh: {whole:.2f} s wall, {lml_ms / 1000:.2f} s in LML calls, "
        f"{refresh_excl_lml:.2f} s excluding LML (goal <= 5 s)"
    )
    print(f"write path on {len(writes)} libraries ({sources} source rows):")
    print(
        f"  set-based (json_to_recordset + upsert, 500 per transaction): {set_based:.3f} s = "
        f"{len(writes) / set_based:,.0f} libraries/s"
    )
    print(
        f"  naive (statement per row, transaction per library): {naive:.3f} s = "
        f"{len(writes) / naive:,.0f} libraries/s"
    )
    print(f"  ratio: {naive / set_based:.1f}x (goal >= 15x)")


if __name__ == "__main__":
    main()
