"""The mirror is never kinder than production (DESIGN.md §2).

Production's facts are written down here, read from the station's migrations in
`WXYC/Backend-Service` (final state, Drizzle snapshot 0191; trigger bodies from 0084 and 0096).
A mirror with an index production lacks, a default or NULL it refuses, or a trigger that fires
differently fails here, because a test that passes only on a kinder mirror hides a production
failure. Run against a database built from the station's real migrations, these tests pass too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

from wx_orchestration.devstack.station_rows import insert_library
from wx_orchestration_tests.servers import STATION_SCHEMA

# Every index production has on the tables this project reads or writes, by definition
# (`pg_get_indexdef` with the schema prefix dropped). The mirror may leave one out only when
# it is listed in OMITTED with the reason; it may never have one that is not here.
PRODUCTION_INDEXES: dict[str, set[str]] = {
    "flowsheet": {
        "CREATE UNIQUE INDEX flowsheet_pkey ON flowsheet USING btree (id)",
        "CREATE UNIQUE INDEX flowsheet_legacy_entry_id_idx ON flowsheet USING btree"
        " (legacy_entry_id)",
        "CREATE INDEX flowsheet_legacy_release_id_idx ON flowsheet USING btree (legacy_release_id)",
        "CREATE INDEX flowsheet_artist_name_trgm_idx ON flowsheet USING gin"
        " (artist_name gin_trgm_ops)",
        "CREATE INDEX flowsheet_track_title_trgm_idx ON flowsheet USING gin"
        " (track_title gin_trgm_ops)",
        "CREATE INDEX flowsheet_album_title_trgm_idx ON flowsheet USING gin"
        " (album_title gin_trgm_ops)",
        "CREATE INDEX flowsheet_record_label_trgm_idx ON flowsheet USING gin"
        " (record_label gin_trgm_ops)",
        "CREATE INDEX flowsheet_track_add_time_idx ON flowsheet USING btree (add_time DESC)"
        " WHERE (entry_type = 'track'::flowsheet_entry_type)",
        "CREATE INDEX flowsheet_add_time_idx ON flowsheet USING btree (add_time)",
        "CREATE INDEX flowsheet_search_doc_idx ON flowsheet USING gin (search_doc)",
        "CREATE INDEX flowsheet_album_link_lookup_idx ON flowsheet USING btree"
        " ((((lower(TRIM(BOTH FROM artist_name)) || '-'::text) ||"
        " lower(TRIM(BOTH FROM COALESCE(album_title, ''::character varying))))))"
        " WHERE (album_id IS NOT NULL)",
        "CREATE INDEX flowsheet_show_id_idx ON flowsheet USING btree (show_id)",
        "CREATE UNIQUE INDEX flowsheet_show_radio_hour_breakpoint_idx ON flowsheet USING btree"
        " (show_id, radio_hour) WHERE ((entry_type = 'breakpoint'::flowsheet_entry_type)"
        " AND (radio_hour IS NOT NULL))",
        "CREATE INDEX flowsheet_show_id_play_order_idx ON flowsheet USING btree"
        " (show_id, play_order DESC)",
        "CREATE INDEX flowsheet_updated_at_idx ON flowsheet USING btree (updated_at DESC)",
        "CREATE INDEX flowsheet_metadata_status_pending_idx ON flowsheet USING btree (id)"
        " WHERE ((entry_type = 'track'::flowsheet_entry_type) AND (artist_name IS NOT NULL)"
        " AND (metadata_status = 'pending'::metadata_status_enum))",
        "CREATE INDEX flowsheet_metadata_status_enriching_stale_idx ON flowsheet USING btree"
        " (enriching_since) WHERE (metadata_status = 'enriching'::metadata_status_enum)",
        "CREATE INDEX flowsheet_album_id_linked_idx ON flowsheet USING btree"
        " (album_id, metadata_attempt_at) WHERE (album_id IS NOT NULL)",
        "CREATE INDEX flowsheet_rotation_no_match_idx ON flowsheet USING btree (rotation_id)"
        " WHERE ((metadata_status = 'enriched_no_match'::metadata_status_enum)"
        " AND (rotation_id IS NOT NULL))",
        "CREATE INDEX flowsheet_rotation_id_idx ON flowsheet USING btree (rotation_id)"
        " WHERE (rotation_id IS NOT NULL)",
        "CREATE INDEX flowsheet_no_match_recheck_id_desc_idx ON flowsheet USING btree"
        " (no_match_recheck_attempted_at NULLS FIRST, id DESC)"
        " WHERE ((metadata_status = 'enriched_no_match'::metadata_status_enum)"
        " AND (entry_type = 'track'::flowsheet_entry_type) AND (artist_name IS NOT NULL))",
    },
    "library": {
        "CREATE UNIQUE INDEX library_pkey ON library USING btree (id)",
        "CREATE INDEX title_trgm_idx ON library USING gin (album_title gin_trgm_ops)",
        "CREATE INDEX library_norm_album_title_idx ON library USING btree"
        " (lower(TRIM(BOTH FROM COALESCE(album_title, ''::character varying))))",
        "CREATE INDEX genre_id_idx ON library USING btree (genre_id)",
        "CREATE INDEX format_id_idx ON library USING btree (format_id)",
        "CREATE INDEX artist_id_idx ON library USING btree (artist_id)",
        "CREATE UNIQUE INDEX library_legacy_release_id_idx ON library USING btree"
        " (legacy_release_id)",
        "CREATE INDEX album_artist_trgm_idx ON library USING gin (album_artist gin_trgm_ops)",
        "CREATE INDEX library_artist_name_trgm_idx ON library USING gin (artist_name gin_trgm_ops)",
        "CREATE INDEX library_search_doc_idx ON library USING gin (search_doc)",
        "CREATE INDEX library_canonical_entity_id_idx ON library USING btree (canonical_entity_id)",
        "CREATE INDEX library_discogs_unavailable_idx ON library USING btree"
        " (discogs_unavailable) WHERE (discogs_unavailable = true)",
    },
    "artists": {
        "CREATE UNIQUE INDEX artists_pkey ON artists USING btree (id)",
        "CREATE INDEX artist_name_trgm_idx ON artists USING gin (artist_name gin_trgm_ops)",
        "CREATE INDEX code_letters_idx ON artists USING btree (code_letters)",
        "CREATE INDEX artists_normalized_name_idx ON artists USING btree"
        " (normalize_artist_name((artist_name)::text))",
        "CREATE INDEX artists_fold_name_idx ON artists USING btree"
        " (fold_artist_name((artist_name)::text))",
    },
    "album_metadata": {
        "CREATE UNIQUE INDEX album_metadata_pkey ON album_metadata USING btree (album_id)"
    },
    "flowsheet_watermark": {
        "CREATE UNIQUE INDEX flowsheet_watermark_pkey ON flowsheet_watermark USING btree (id)"
    },
    "library_identity_history": {
        "CREATE UNIQUE INDEX library_identity_history_pkey ON library_identity_history"
        " USING btree (history_id)"
    },
}

# Production indexes the mirror leaves out: read paths this project never takes, on columns
# it never writes. Leaving one out makes writes cheaper than production's, so each is named.
OMITTED = {
    "library_norm_album_title_idx",  # librarians' title search
    "album_artist_trgm_idx",  # album_artist is NULL on every production row
    "library_search_doc_idx",  # catalog search; the mirror has no library.search_doc
    "library_discogs_unavailable_idx",  # the mirror has no discogs_unavailable_note
    "artists_normalized_name_idx",  # catalog de-duplication
}

# (table, column) NOT NULL in production, and whether production gives it a default.
PRODUCTION_NOT_NULL: dict[tuple[str, str], bool] = {
    ("flowsheet", "play_order"): False,
    ("flowsheet", "entry_type"): True,
    ("flowsheet", "request_flag"): True,
    ("flowsheet", "segue"): True,
    ("flowsheet", "add_time"): True,
    ("flowsheet", "updated_at"): True,
    ("flowsheet", "metadata_status"): True,
    ("artists", "artist_name"): False,
    ("artists", "alphabetical_name"): False,
    ("artists", "code_letters"): False,
    ("library", "artist_id"): False,
    ("library", "genre_id"): False,
    ("library", "format_id"): False,
    ("library", "album_title"): False,
    ("library", "code_number"): False,
    ("library", "legacy_release_id"): True,
    ("album_metadata", "streaming_reask_attempts"): True,
    ("library_identity", "last_verified_at"): False,
    ("library_identity", "method"): False,
    ("library_identity", "confidence"): False,
    ("library_identity_source", "external_id"): False,
    ("library_identity_history", "library_id"): False,
    ("library_identity_history", "superseded_reason"): False,
    ("compilation_track_artist", "library_id"): False,
    ("compilation_track_artist", "artist_name"): False,
}

# Columns production has that this project reads, writes or projects (issues 13 and 15).
PRODUCTION_COLUMNS = {
    "flowsheet": {
        "rotation_id", "track_position", "label_id", "radio_hour", "metadata_attempt_at",
        "no_match_recheck_attempted_at", "legacy_entry_id", "linkage_source",
        "linkage_confidence", "linked_at", "search_doc",
    },
    "album_metadata": {
        "discogs_artist_id", "label", "full_release_date", "genres", "styles", "tracklist",
        "artist_image_url", "bio_tokens", "spotify_status", "apple_music_status",
        "bandcamp_status", "streaming_reask_attempts",
    },
    "shows": {"show_name", "start_time", "end_time"},
}  # fmt: skip

# Triggers on flowsheet: (name, timing, level, events, function).
FLOWSHEET_TRIGGERS = {
    ("bump_flowsheet_updated_at", "BEFORE", "ROW", "DELETE=0 INSERT=1 UPDATE=1",
     "bump_flowsheet_updated_at"),
    ("cdc_flowsheet", "AFTER", "ROW", "DELETE=1 INSERT=1 UPDATE=1", "cdc_notify"),
    ("touch_flowsheet_watermark", "AFTER", "STATEMENT", "DELETE=1 INSERT=1 UPDATE=1",
     "touch_flowsheet_watermark"),
}  # fmt: skip


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(
        station_db, autocommit=True, options=f"-c search_path={STATION_SCHEMA},public"
    ) as c:
        yield c


def _indexes(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
        (STATION_SCHEMA, table),
    ).fetchall()
    strip = re.compile(rf"\b(?:{STATION_SCHEMA}|public)\.")
    return {strip.sub("", definition) for (definition,) in rows}


def _name(definition: str) -> str:
    return definition.split(" INDEX ", 1)[1].split(" ", 1)[0]


@pytest.mark.parametrize("table", sorted(PRODUCTION_INDEXES))
def test_no_index_production_lacks_and_none_missing_unsaid(
    conn: psycopg.Connection, table: str
) -> None:
    ours = _indexes(conn, table)
    production = PRODUCTION_INDEXES[table]
    assert ours - production == set(), "indexes production does not have"
    missing = {_name(d) for d in production - ours} - OMITTED
    assert missing == set(), "production indexes missing from the mirror"


@pytest.mark.parametrize(("table", "column"), sorted(PRODUCTION_NOT_NULL))
def test_not_nulls_and_their_defaults(conn: psycopg.Connection, table: str, column: str) -> None:
    row = conn.execute(
        "SELECT is_nullable, column_default FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s AND column_name = %s",
        (STATION_SCHEMA, table, column),
    ).fetchone()
    assert row is not None, f"{table}.{column} is missing"
    assert row[0] == "NO", f"{table}.{column} must be NOT NULL as in production"
    has_default = PRODUCTION_NOT_NULL[(table, column)]
    assert (row[1] is not None) is has_default, f"{table}.{column} default differs"


@pytest.mark.parametrize("table", sorted(PRODUCTION_COLUMNS))
def test_production_columns_are_there(conn: psycopg.Connection, table: str) -> None:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s",
        (STATION_SCHEMA, table),
    ).fetchall()
    assert PRODUCTION_COLUMNS[table] <= {name for (name,) in rows}


def test_shows_have_no_dj_name(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = 'shows' AND column_name = 'dj_name'",
        (STATION_SCHEMA,),
    ).fetchone()
    assert row == (0,)


def test_flowsheet_triggers_as_production_names_and_fires_them(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        """
        SELECT t.tgname,
               CASE WHEN t.tgtype & 2 = 2 THEN 'BEFORE' ELSE 'AFTER' END,
               CASE WHEN t.tgtype & 1 = 1 THEN 'ROW' ELSE 'STATEMENT' END,
               format('DELETE=%s INSERT=%s UPDATE=%s', (t.tgtype & 8 <> 0)::int,
                      (t.tgtype & 4 <> 0)::int, (t.tgtype & 16 <> 0)::int),
               p.proname
        FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
        WHERE t.tgrelid = 'flowsheet'::regclass AND NOT t.tgisinternal
        """
    ).fetchall()
    assert set(rows) == FLOWSHEET_TRIGGERS


def test_cdc_notify_lives_in_public(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "SELECT n.nspname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE t.tgrelid = 'flowsheet'::regclass AND t.tgname = 'cdc_flowsheet'"
    ).fetchone()
    assert row == ("public",)


def test_every_statement_moves_the_watermark_a_second_even_an_empty_one(
    conn: psycopg.Connection,
) -> None:
    with conn.transaction():
        before = conn.execute("SELECT last_modified_at FROM flowsheet_watermark").fetchone()
        for _ in range(3):
            conn.execute("UPDATE flowsheet SET segue = segue WHERE false")
        after = conn.execute("SELECT last_modified_at, now() FROM flowsheet_watermark").fetchone()
    assert before is not None
    assert after is not None
    # GREATEST(now(), last + 1 s) three times from a watermark at or before now().
    assert (after[0] - max(before[0], after[1])).total_seconds() >= 2.0


def test_oversized_pointer_carries_production_reason(conn: psycopg.Connection) -> None:
    (library_id,) = insert_library(conn, [{"album_title": "x"}])
    conn.execute("LISTEN cdc_oversized")
    conn.execute(
        "INSERT INTO flowsheet (play_order, album_id, artist_bio) VALUES (1, %s, %s)",
        (library_id, "la " * 4000),
    )
    notes = list(conn.notifies(timeout=5, stop_after=1))
    assert notes
    assert '"reason": "payload_too_large"' in notes[0].payload
