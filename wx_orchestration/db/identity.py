"""SQL for the library identity refresh: select stale rows, write verdicts set-based.

Each batch is written in one transaction, one statement per table (~20x the
one-statement-per-row writer; bench/identity_refresh.py). If that transaction fails, the batch
is redone one library id per transaction, so a bad id costs only itself. A library id's main row
and source rows, or a compilation's track credits and its `unresolved_attempted_at` stamp, are
always in the same transaction: never half-written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from wx_orchestration.core.identity import (
    TRACK_LINK_METHOD,
    WRITER_NOTE,
    BatchPlan,
    CompilationWrite,
    CtaRow,
    IdentityWrite,
    LibraryRow,
    credited_artist_names,
    plan_track_credits,
)

log = logging.getLogger("wx_orchestration.identity")

SHARD_COUNT = 16

_SELECT_STALE = """
SELECT l.id, btrim(COALESCE(l.artist_name, a.artist_name)), l.album_title, l.legacy_release_id
FROM library AS l
LEFT JOIN artists AS a ON a.id = l.artist_id
LEFT JOIN library_identity AS li ON li.library_id = l.id
WHERE l.id > %(after_id)s
  AND l.id %% %(shards)s = %(shard)s
  AND btrim(COALESCE(l.artist_name, a.artist_name, '')) <> ''
  AND (%(include_null_canonical)s OR l.canonical_entity_id IS NOT NULL)
  AND (li.library_id IS NULL
       OR li.last_verified_at < now() - make_interval(days => %(stale_threshold_days)s))
  AND (l.unresolved_attempted_at IS NULL
       OR l.unresolved_attempted_at < now() - make_interval(days => %(unresolved_retry_days)s))
ORDER BY l.id
LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Selection:
    shard: int
    stale_threshold_days: float
    unresolved_retry_days: float
    include_null_canonical: bool


def select_stale_batch(
    conn: psycopg.Connection, selection: Selection, *, after_id: int, limit: int
) -> list[LibraryRow]:
    """The next `limit` rows of the shard needing identity, keyset-paged by id."""
    rows = conn.execute(
        _SELECT_STALE,
        {
            "after_id": after_id,
            "shard": selection.shard,
            "include_null_canonical": selection.include_null_canonical,
            "stale_threshold_days": selection.stale_threshold_days,
            "unresolved_retry_days": selection.unresolved_retry_days,
            "limit": limit,
            "shards": SHARD_COUNT,
        },
    ).fetchall()
    return [LibraryRow(*row) for row in rows]


_MAIN_COLUMNS = (
    "library_id",
    "method",
    "confidence",
    "wikidata_qid",
    "spotify_id",
    "apple_music_id",
)
_SOURCE_COLUMNS = ("library_id", "source", "external_id", "method", "confidence")

# A main row whose verdict changes is kept in the station's supersedure log first, so the
# verdict it replaced stays on record.
_ARCHIVE_SUPERSEDED = """
INSERT INTO library_identity_history
    (library_id, discogs_master_id, discogs_release_id, musicbrainz_release_group_mbid,
     musicbrainz_release_mbid, musicbrainz_recording_mbid, wikidata_qid, spotify_id,
     apple_music_id, last_verified_at, method, confidence, agreement_sources, notes,
     superseded_reason)
SELECT li.library_id, li.discogs_master_id, li.discogs_release_id,
       li.musicbrainz_release_group_mbid, li.musicbrainz_release_mbid,
       li.musicbrainz_recording_mbid, li.wikidata_qid, li.spotify_id, li.apple_music_id,
       li.last_verified_at, li.method, li.confidence, li.agreement_sources, li.notes, 'rerun'
FROM library_identity AS li
JOIN json_to_recordset(%s::json) AS m(
    library_id int, method text, confidence real, wikidata_qid text, spotify_id text,
    apple_music_id text) USING (library_id)
WHERE (li.method, li.confidence, li.wikidata_qid, li.spotify_id, li.apple_music_id)
      IS DISTINCT FROM (m.method, m.confidence, m.wikidata_qid, m.spotify_id, m.apple_music_id)
"""

# One JSON document per table per batch, expanded server-side by `json_to_recordset`: one
# statement per table, no temp-table catalog churn, and json.dumps is C-fast where per-element
# array dumping is not.
# `now()` is the transaction start: every row of a batch carries the same verification time.
_UPSERT_MAIN = """
INSERT INTO library_identity AS li
    (library_id, method, confidence, wikidata_qid, spotify_id, apple_music_id,
     last_verified_at, notes)
SELECT m.*, now(), %s
FROM json_to_recordset(%s::json) AS m(
    library_id int, method text, confidence real, wikidata_qid text, spotify_id text,
    apple_music_id text)
ON CONFLICT (library_id) DO UPDATE SET
    method = EXCLUDED.method,
    confidence = EXCLUDED.confidence,
    wikidata_qid = EXCLUDED.wikidata_qid,
    spotify_id = EXCLUDED.spotify_id,
    apple_music_id = EXCLUDED.apple_music_id,
    last_verified_at = EXCLUDED.last_verified_at,
    notes = EXCLUDED.notes
"""

_UPSERT_SOURCES = """
INSERT INTO library_identity_source AS s
    (library_id, source, external_id, method, confidence, last_verified_at, notes)
SELECT v.*, now(), %s
FROM json_to_recordset(%s::json) AS v(
    library_id int, source text, external_id text, method text, confidence real)
ON CONFLICT (library_id, source) DO UPDATE SET
    external_id = EXCLUDED.external_id,
    method = EXCLUDED.method,
    confidence = EXCLUDED.confidence,
    last_verified_at = EXCLUDED.last_verified_at,
    notes = EXCLUDED.notes
"""

_STAMP_UNRESOLVED = "UPDATE library SET unresolved_attempted_at = now() WHERE id = ANY(%s)"

# Locked until the credits are written, so the librarian and unchanged checks made on what this
# read still hold when the UPDATE lands.
_CTA_ROWS = """
SELECT id, library_id, artist_name, track_title, track_position, track_artist_id,
       track_artist_link_confidence, track_artist_link_method
FROM compilation_track_artist WHERE library_id = ANY(%s)
ORDER BY id
FOR UPDATE
"""

# The catalog's folded-name match, as the station's consumer does it; a name shared by several
# artists links none of them.
_CATALOG_ARTISTS = """
SELECT v.name, CASE WHEN count(DISTINCT a.id) = 1 THEN min(a.id) END
FROM unnest(%s::text[]) AS v(name)
JOIN artists AS a ON fold_artist_name(a.artist_name) = fold_artist_name(v.name)
GROUP BY v.name
"""

_UPDATE_CREDITS = """
UPDATE compilation_track_artist AS cta SET
    track_artist_id = v.track_artist_id,
    track_artist_link_confidence = v.confidence,
    track_artist_link_method = %s,
    track_position = COALESCE(v.position, cta.track_position)
FROM json_to_recordset(%s::json) AS v(
    cta_id int, track_artist_id int, confidence real, position text)
WHERE cta.id = v.cta_id
RETURNING cta.id, v.position IS NOT NULL
"""


def _write_set(conn: psycopg.Connection, writes: Sequence[IdentityWrite]) -> None:
    main = [
        {
            "library_id": w.library_id,
            "method": w.method,
            "confidence": w.confidence,
            "wikidata_qid": w.wikidata_qid,
            "spotify_id": w.spotify_id,
            "apple_music_id": w.apple_music_id,
        }
        for w in writes
    ]
    sources = [
        {
            "library_id": s.library_id,
            "source": s.source,
            "external_id": s.external_id,
            "method": s.method,
            "confidence": s.confidence,
        }
        for w in writes
        for s in w.sources
    ]
    main_json = json.dumps(main)
    conn.execute(_ARCHIVE_SUPERSEDED, (main_json,))
    conn.execute(_UPSERT_MAIN, (WRITER_NOTE, main_json))
    if sources:
        conn.execute(_UPSERT_SOURCES, (WRITER_NOTE, json.dumps(sources)))


def _write_credits(
    conn: psycopg.Connection, compilations: Sequence[CompilationWrite]
) -> dict[str, int]:
    """Write resolved compilations' track credits; the per-track counters of what happened."""
    ids = [c.library_id for c in compilations]
    cta_rows = [CtaRow(*row) for row in conn.execute(_CTA_ROWS, (ids,))]
    names = sorted(credited_artist_names(compilations))
    artist_ids: dict[str, int | None] = (
        dict(conn.execute(_CATALOG_ARTISTS, (names,)).fetchall()) if names else {}
    )
    plan = plan_track_credits(compilations, cta_rows, artist_ids)
    if plan.updates:
        updates = json.dumps(
            [
                {
                    "cta_id": u.cta_id,
                    "track_artist_id": u.track_artist_id,
                    "confidence": u.confidence,
                    "position": u.position,
                }
                for u in plan.updates
            ]
        )
        written = conn.execute(_UPDATE_CREDITS, (TRACK_LINK_METHOD, updates)).fetchall()
        plan.counts["compilation_track_rows_written"] += len(written)
        plan.counts["compilation_track_position_rows_written"] += sum(
            1 for _, positioned in written if positioned
        )
    return plan.counts


@dataclass
class WriteOutcome:
    written: int = 0
    compilations_written: int = 0
    writer_errors: int = 0
    stamped: int = 0
    unstamped: int = 0
    track_rows: dict[str, int] = field(default_factory=dict)

    def add_tracks(self, counts: dict[str, int]) -> None:
        for name, count in counts.items():
            self.track_rows[name] = self.track_rows.get(name, 0) + count


def _write_all(
    conn: psycopg.Connection,
    writes: Sequence[IdentityWrite],
    compilations: Sequence[CompilationWrite],
    stamp_ids: Sequence[int],
) -> dict[str, int]:
    if writes:
        _write_set(conn, writes)
    counts = _write_credits(conn, compilations) if compilations else {}
    # A resolved compilation writes no identity row: its stamp is what keeps the next run from
    # sending it again.
    stamped = [*stamp_ids, *(c.library_id for c in compilations)]
    if stamped:
        conn.execute(_STAMP_UNRESOLVED, (stamped,))
    return counts


def write_batch(conn: psycopg.Connection, plan: BatchPlan) -> WriteOutcome:
    """Write a batch's verdicts; on failure redo it one library id per transaction."""
    stamp_ids = plan.stamp_only_ids
    try:
        with conn.transaction():
            counts = _write_all(conn, plan.writes, plan.compilations, stamp_ids)
        outcome = WriteOutcome(
            written=len(plan.writes),
            compilations_written=len(plan.compilations),
            stamped=len(stamp_ids),
        )
        outcome.add_tracks(counts)
        return outcome
    except psycopg.Error as exc:
        log.warning(
            "batch write of %d verdicts failed (%s); redoing one library id at a time",
            len(plan.writes) + len(plan.compilations) + len(stamp_ids),
            type(exc).__name__,
        )
    return _write_one_by_one(conn, plan.writes, plan.compilations, stamp_ids)


def _write_one_by_one(
    conn: psycopg.Connection,
    writes: Sequence[IdentityWrite],
    compilations: Sequence[CompilationWrite],
    stamp_ids: Sequence[int],
) -> WriteOutcome:
    outcome = WriteOutcome()
    for write in writes:
        try:
            with conn.transaction():
                _write_set(conn, [write])
            outcome.written += 1
        except psycopg.Error as exc:
            outcome.writer_errors += 1
            log.error(
                "library %s: identity not written: %s", write.library_id, exc.diag.message_primary
            )
    for compilation in compilations:
        try:
            with conn.transaction():
                counts = _write_all(conn, (), [compilation], ())
            outcome.compilations_written += 1
            outcome.add_tracks(counts)
        except psycopg.Error as exc:
            # Not stamped either, so the next run asks again.
            outcome.writer_errors += 1
            log.error(
                "library %s: compilation track credits not written: %s",
                compilation.library_id,
                exc.diag.message_primary,
            )
    for library_id in stamp_ids:
        try:
            with conn.transaction():
                conn.execute(_STAMP_UNRESOLVED, ([library_id],))
            outcome.stamped += 1
        except psycopg.Error as exc:
            # The verdict stands (unresolved); only the retry stamp is missing, so the row is
            # simply offered to LML again next run.
            outcome.unstamped += 1
            log.error(
                "library %s: unresolved stamp not written: %s", library_id, exc.diag.message_primary
            )
    return outcome


_CURRENT_MAIN = """
SELECT library_id, method, confidence, wikidata_qid, spotify_id, apple_music_id
FROM library_identity WHERE library_id = ANY(%s)
"""
_CURRENT_SOURCES = """
SELECT library_id, source, external_id, method, confidence
FROM library_identity_source WHERE library_id = ANY(%s)
"""


def current_rows(
    conn: psycopg.Connection, library_ids: Sequence[int]
) -> tuple[dict[int, dict[str, Any]], dict[tuple[int, str], dict[str, Any]]]:
    """Existing main and source rows for `library_ids`, for the DRY_RUN diff."""
    ids = list(library_ids)
    main: dict[int, dict[str, Any]] = {}
    for row in conn.execute(_CURRENT_MAIN, (ids,)):
        main[row[0]] = dict(zip(_MAIN_COLUMNS, row, strict=True))
    sources: dict[tuple[int, str], dict[str, Any]] = {}
    for row in conn.execute(_CURRENT_SOURCES, (ids,)):
        sources[(row[0], row[1])] = dict(zip(_SOURCE_COLUMNS, row, strict=True))
    return main, sources
