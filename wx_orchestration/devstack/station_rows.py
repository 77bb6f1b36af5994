"""Station rows in production's shape, for demo data, test fixtures and benchmarks.

Production refuses what a kinder mirror would take (DESIGN.md §2): an artist needs
`alphabetical_name` and `code_letters`; a library row needs an artist, a genre, a format and a
`code_number`. Everything here works on the mirror and on a database built from the station's
own migrations alike. Catalog rows only: flowsheet rows need no more than `play_order`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

VARIOUS_ARTISTS = "Various Artists"
_ARTICLE = re.compile(r"^(the|a|an)\s+(.+)$", re.IGNORECASE)


def alphabetical_name(artist_name: str) -> str:
    """How the station files an artist: "The Clean" → "Clean, The"."""
    match = _ARTICLE.match(artist_name.strip())
    return f"{match[2]}, {match[1]}" if match else artist_name.strip()


def code_letters(artist_name: str) -> str:
    """The shelf letters of an artist (at most 4): "Stereolab" → "ST"; V/A → "VA"."""
    if artist_name == VARIOUS_ARTISTS:
        return "VA"
    letters = [c for c in alphabetical_name(artist_name).upper() if c.isalnum()]
    return "".join(letters[:2]) or "XX"


def _first_id(conn: psycopg.Connection, table: str, name_column: str, name: str) -> int:
    found = conn.execute(
        sql.SQL("SELECT id FROM {} ORDER BY id LIMIT 1").format(sql.Identifier(table))
    ).fetchone()
    if found is not None:
        return found[0]
    created = conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES (%s) RETURNING id").format(
            sql.Identifier(table), sql.Identifier(name_column)
        ),
        (name,),
    ).fetchone()
    assert created is not None
    return created[0]


def insert_artists(conn: psycopg.Connection, names: Sequence[str]) -> list[int]:
    """Insert artists (one statement); their ids in the order of `names`."""
    if not names:
        return []
    rows = conn.execute(
        """
        INSERT INTO artists (artist_name, alphabetical_name, code_letters)
        SELECT n, a, c FROM unnest(%s::text[], %s::text[], %s::text[])
            WITH ORDINALITY AS v(n, a, c, ord)
        ORDER BY ord
        RETURNING id
        """,
        (list(names), [alphabetical_name(n) for n in names], [code_letters(n) for n in names]),
    ).fetchall()
    return [row[0] for row in rows]


def library_defaults(conn: psycopg.Connection) -> dict[str, Any]:
    """Values for the library columns production requires and a fixture may not care about:
    a genre, a format, a code number and an artist (created on first use)."""
    artist = conn.execute(
        "SELECT id FROM artists WHERE artist_name = %s ORDER BY id LIMIT 1", (VARIOUS_ARTISTS,)
    ).fetchone()
    return {
        "genre_id": _first_id(conn, "genres", "genre_name", "Rock"),
        "format_id": _first_id(conn, "format", "format_name", "CD"),
        "code_number": 1,
        "artist_id": artist[0] if artist else insert_artists(conn, [VARIOUS_ARTISTS])[0],
    }


def insert_library(conn: psycopg.Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert library rows given any of their columns; the rest of what production requires
    comes from `library_defaults`. Returns the ids in order."""
    if not rows:
        return []
    defaults = library_defaults(conn)
    ids = []
    for row in rows:
        values = {**defaults, **{k: v for k, v in row.items() if v is not None or k != "artist_id"}}
        columns = list(values)
        statement = sql.SQL("INSERT INTO library ({}) VALUES ({}) RETURNING id").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        )
        created = conn.execute(statement, [values[c] for c in columns]).fetchone()
        assert created is not None
        ids.append(created[0])
    return ids
