"""The station mirror in `sql/station/` matches DESIGN.md §2, column for column.

Production's own facts (indexes, NOT NULLs, trigger bodies) are held in test_production_facts.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import LiteralString

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from wx_orchestration.devstack.station_rows import insert_artists, insert_library
from wx_orchestration_tests.servers import STATION_SCHEMA

TIMESTAMPTZ = "timestamp with time zone"
VARCHAR = "character varying"


@dataclass(frozen=True)
class Col:
    """One documented column. `nullable` None: DESIGN.md does not say."""

    type: str
    length: int | None = None
    nullable: bool | None = None
    default: str | None = None  # prefix of the deparsed default; None: not checked
    no_default: bool = False


SERIAL = Col("integer", nullable=False, default="nextval(")
URL = Col(VARCHAR, 512)
TEXT = Col("text")
TITLE = Col(VARCHAR, 128)

RESULT_COLUMNS = {
    "artwork_url": URL,
    "discogs_url": URL,
    "spotify_url": URL,
    "apple_music_url": URL,
    "youtube_music_url": URL,
    "bandcamp_url": URL,
    "soundcloud_url": URL,
    "artist_wikipedia_url": URL,
    "release_year": Col("smallint"),
    "artist_bio": TEXT,
}

DOCUMENTED: dict[str, dict[str, Col]] = {
    "flowsheet": {
        "id": SERIAL,
        "show_id": Col("integer"),
        "album_id": Col("integer"),
        "entry_type": Col("flowsheet_entry_type", nullable=False, default="'track'::"),
        "artist_name": Col(VARCHAR, 128, nullable=True),
        "album_title": TITLE,
        "track_title": TITLE,
        "record_label": TITLE,
        "play_order": Col("integer", nullable=False, no_default=True),
        "request_flag": Col("boolean", nullable=False, default="false"),
        "segue": Col("boolean", nullable=False, default="false"),
        "message": Col(VARCHAR, 250),
        "add_time": Col(TIMESTAMPTZ, nullable=False, default="now()"),
        "updated_at": Col(TIMESTAMPTZ),
        "dj_name": TEXT,
        **RESULT_COLUMNS,
        "composer": TEXT,
        "composer_source": TEXT,
        "metadata_status": Col("metadata_status_enum", default="'pending'::"),
        "enriching_since": Col(TIMESTAMPTZ),
    },
    "album_metadata": {
        "album_id": Col("integer", nullable=False),
        **RESULT_COLUMNS,
        "updated_at": Col(TIMESTAMPTZ),
    },
    "library": {
        "id": SERIAL,
        "artist_id": Col("integer"),
        "artist_name": Col(VARCHAR, 128, nullable=True),
        "album_title": Col(VARCHAR, 128, nullable=False),
        "legacy_release_id": Col("integer", nullable=False),
        "code_volume_letters": Col(VARCHAR, 4),
        "canonical_entity_id": Col("text", nullable=True),
        "unresolved_attempted_at": Col(TIMESTAMPTZ, nullable=True),
    },
    "artists": {
        "id": SERIAL,
        "artist_name": Col(VARCHAR, 128),
    },
    "library_identity": {
        "library_id": Col("integer", nullable=False),
        "discogs_master_id": Col("integer"),
        "discogs_release_id": Col("integer"),
        "musicbrainz_release_group_mbid": Col("uuid"),
        "musicbrainz_release_mbid": Col("uuid"),
        "musicbrainz_recording_mbid": Col("uuid"),
        "wikidata_qid": TEXT,
        "spotify_id": TEXT,
        "apple_music_id": TEXT,
        "last_verified_at": Col(TIMESTAMPTZ, nullable=False),
        "method": Col("text", nullable=False),
        "confidence": Col("real", nullable=False),
        "agreement_sources": TEXT,
        "notes": TEXT,
    },
    "library_identity_source": {
        "library_id": Col("integer", nullable=False),
        "source": Col("text", nullable=False),
        "external_id": Col("text", nullable=False),
        "method": Col("text", nullable=False),
        "confidence": Col("real", nullable=False),
        "last_verified_at": Col(TIMESTAMPTZ, nullable=False),
        "boost_sources": TEXT,
        "notes": TEXT,
    },
}

PRIMARY_KEYS = {
    "flowsheet": ["id"],
    "album_metadata": ["album_id"],
    "library": ["id"],
    "artists": ["id"],
    "library_identity": ["library_id"],
    "library_identity_source": ["library_id", "source"],
}

FOREIGN_KEYS = {
    ("flowsheet", "album_id", "library"),
    ("album_metadata", "album_id", "library"),
    ("library", "artist_id", "artists"),
    ("library_identity", "library_id", "library"),
    ("library_identity_source", "library_id", "library"),
}


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    # Deparsed defaults and predicates then name the station's types unqualified.
    with psycopg.connect(
        station_db, autocommit=True, options=f"-c search_path={STATION_SCHEMA}"
    ) as c:
        yield c


def _columns(conn: psycopg.Connection, table: str) -> dict[str, dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            SELECT column_name, is_nullable = 'YES' AS nullable, column_default,
                   is_generated = 'ALWAYS' AS generated, character_maximum_length AS length,
                   CASE WHEN data_type = 'USER-DEFINED' THEN udt_name ELSE data_type END AS type
            FROM information_schema.columns
            WHERE table_schema = %s AND table_name = %s
            """,
            (STATION_SCHEMA, table),
        )
        return {row["column_name"]: row for row in cur.fetchall()}


@pytest.mark.parametrize("table", sorted(DOCUMENTED))
def test_documented_columns(conn: psycopg.Connection, table: str) -> None:
    actual = _columns(conn, table)
    for name, col in DOCUMENTED[table].items():
        assert name in actual, f"{table}.{name} is missing"
        found = actual[name]
        assert (found["type"], found["length"]) == (col.type, col.length), f"{table}.{name}"
        if col.nullable is not None:
            assert found["nullable"] is col.nullable, f"{table}.{name} nullability"
        if col.default is not None:
            assert (found["column_default"] or "").startswith(col.default), f"{table}.{name}"
        if col.no_default:
            assert found["column_default"] is None, f"{table}.{name} must have no default"


@pytest.mark.parametrize("table", sorted(PRIMARY_KEYS))
def test_primary_keys(conn: psycopg.Connection, table: str) -> None:
    rows = conn.execute(
        """
        SELECT a.attname
        FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = %s::regclass AND i.indisprimary
        ORDER BY array_position(i.indkey::int2[], a.attnum)
        """,
        (table,),
    ).fetchall()
    assert [name for (name,) in rows] == PRIMARY_KEYS[table]


def test_foreign_keys(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        """
        SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.contype = 'f' AND c.connamespace = %s::regnamespace
        """,
        (STATION_SCHEMA,),
    ).fetchall()
    assert set(rows) >= FOREIGN_KEYS


def test_enum_labels_in_order(conn: psycopg.Connection) -> None:
    def labels(type_name: str) -> list[str]:
        rows = conn.execute(
            "SELECT enumlabel FROM pg_enum WHERE enumtypid = %s::regtype ORDER BY enumsortorder",
            (f"{STATION_SCHEMA}.{type_name}",),
        ).fetchall()
        return [label for (label,) in rows]

    assert labels("metadata_status_enum") == [
        "pending",
        "enriching",
        "enriched_match",
        "enriched_no_match",
        "failed_no_retry",
    ]
    assert labels("flowsheet_entry_type") == [
        "track",
        "show_start",
        "show_end",
        "dj_join",
        "dj_leave",
        "talkset",
        "breakpoint",
        "message",
    ]


def test_partial_indexes(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        """
        SELECT pg_get_indexdef(i.indexrelid, 1, true), pg_get_expr(i.indpred, i.indrelid, true)
        FROM pg_index i
        WHERE i.indrelid = 'flowsheet'::regclass AND i.indpred IS NOT NULL
        """
    ).fetchall()
    assert set(rows) >= {
        (
            "id",
            "entry_type = 'track'::flowsheet_entry_type AND artist_name IS NOT NULL"
            " AND metadata_status = 'pending'::metadata_status_enum",
        ),
        ("enriching_since", "metadata_status = 'enriching'::metadata_status_enum"),
    }


def _plan(conn: psycopg.Connection, query: LiteralString) -> str:
    with conn.transaction():
        # On an empty table a sequential scan and a sort always win; ask instead whether an
        # index can deliver the rows in the wanted order at all.
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            conn.execute(sql.SQL("SET LOCAL {} = off").format(sql.Identifier(setting)))
        rows = conn.execute("EXPLAIN " + query).fetchall()
    return "\n".join(line for (line,) in rows)


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (
            "SELECT id FROM flowsheet WHERE entry_type = 'track' AND artist_name IS NOT NULL"
            " AND metadata_status = 'pending' ORDER BY id LIMIT 100",
            "flowsheet_metadata_status_pending_idx",
        ),
        (
            "SELECT id FROM flowsheet WHERE metadata_status = 'enriching'"
            " AND enriching_since < now() - interval '60 seconds'",
            "flowsheet_metadata_status_enriching_stale_idx",
        ),
    ],
)
def test_hot_queries_are_served_by_an_index(
    conn: psycopg.Connection, query: LiteralString, index: str | None
) -> None:
    plan = _plan(conn, query)
    assert "Index" in plan
    assert "Sort" not in plan
    if index is not None:
        assert index in plan


def _trigger_shapes(conn: psycopg.Connection, table: str) -> set[tuple[str, str, frozenset]]:
    rows = conn.execute(
        """
        SELECT trigger_name, action_timing, action_orientation,
               array_agg(event_manipulation::text)
        FROM information_schema.triggers
        WHERE event_object_schema = %s AND event_object_table = %s
        GROUP BY trigger_name, action_timing, action_orientation
        """,
        (STATION_SCHEMA, table),
    ).fetchall()
    return {(timing, orientation, frozenset(events)) for _, timing, orientation, events in rows}


def test_flowsheet_triggers(conn: psycopg.Connection) -> None:
    assert _trigger_shapes(conn, "flowsheet") >= {
        ("BEFORE", "ROW", frozenset({"INSERT", "UPDATE"})),
        ("AFTER", "ROW", frozenset({"INSERT", "UPDATE", "DELETE"})),
        ("AFTER", "STATEMENT", frozenset({"INSERT", "UPDATE", "DELETE"})),
    }


@pytest.mark.parametrize("table", ["library", "artists"])
def test_cdc_trigger_on_other_tables(conn: psycopg.Connection, table: str) -> None:
    assert ("AFTER", "ROW", frozenset({"INSERT", "UPDATE", "DELETE"})) in _trigger_shapes(
        conn, table
    )


def test_a_fixture_can_insert_production_shaped_rows(conn: psycopg.Connection) -> None:
    (artist_id,) = insert_artists(conn, ["Broadcast"])
    (library_id,) = insert_library(
        conn, [{"artist_id": artist_id, "album_title": "Tender Buttons"}]
    )
    library = conn.execute(
        "SELECT id, legacy_release_id FROM library WHERE id = %s", (library_id,)
    ).fetchone()
    assert library is not None
    minimal = conn.execute(
        "INSERT INTO flowsheet (play_order) VALUES (1)"
        " RETURNING entry_type, request_flag, segue, metadata_status, add_time IS NOT NULL"
    ).fetchone()
    full = conn.execute(
        """
        INSERT INTO flowsheet (show_id, album_id, entry_type, artist_name, album_title,
                               track_title, record_label, play_order, request_flag, segue,
                               message, add_time, dj_name)
        VALUES (7, %s, 'track', 'Broadcast', 'Tender Buttons', 'America''s Boy', 'Warp', 2,
                true, false, NULL, now() - interval '1 hour', 'DJ Tess')
        RETURNING metadata_status
        """,
        (library[0],),
    ).fetchone()
    conn.execute(
        "INSERT INTO library_identity (library_id, last_verified_at, method, confidence)"
        " VALUES (%s, now(), 'exact_match', 0.9)",
        (library[0],),
    )
    conn.execute(
        "INSERT INTO library_identity_source"
        " (library_id, source, external_id, method, confidence, last_verified_at)"
        " VALUES (%s, 'discogs', '12345', 'exact_match', 1, now())",
        (library[0],),
    )
    conn.execute("INSERT INTO album_metadata (album_id) VALUES (%s)", (library[0],))

    assert library[1] is not None
    assert minimal == ("track", False, False, "pending", True)
    assert full == ("pending",)


CONFIDENCE_WRITES: dict[str, LiteralString] = {
    "library_identity": "INSERT INTO library_identity"
    " (library_id, last_verified_at, method, confidence) VALUES (%s, now(), 'manual', %s)",
    "library_identity_source": "INSERT INTO library_identity_source"
    " (library_id, source, external_id, method, confidence, last_verified_at)"
    " VALUES (%s, 'spotify', 'abc', 'manual', %s, now())",
}


@pytest.mark.parametrize("table", sorted(CONFIDENCE_WRITES))
@pytest.mark.parametrize("confidence", [-0.01, 1.01])
def test_confidence_is_between_zero_and_one(
    conn: psycopg.Connection, table: str, confidence: float
) -> None:
    (library_id,) = insert_library(conn, [{"album_title": "x"}])
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(CONFIDENCE_WRITES[table], (library_id, confidence))


def test_watermark_is_a_single_row(conn: psycopg.Connection) -> None:
    assert conn.execute("SELECT count(*) FROM flowsheet_watermark").fetchone() == (1,)
    with pytest.raises(psycopg.errors.IntegrityError):
        conn.execute("INSERT INTO flowsheet_watermark (id) VALUES (false)")
