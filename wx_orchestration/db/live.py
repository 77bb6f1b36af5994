"""SQL of the live feed: the `/flowsheet/recent` snapshot and what the library holds for linked
rows (the album record, the "not on Discogs" flag).

Both return raw columns; `core.live.project_row` turns them into what listeners see, the same
way for the snapshot and for the events that follow it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import psycopg
from psycopg import sql

from wx_orchestration.contracts.live import CLIENT_COLUMNS
from wx_orchestration.contracts.station import RESULT_COLUMNS
from wx_orchestration.core.live import project_row

MAX_RECENT = 200


# What a linked row's library entry adds to it: the flag and note, then its album record.
_LINKED_COLUMNS: tuple[str, ...] = (
    "discogs_unavailable",
    "discogs_unavailable_note",
    *RESULT_COLUMNS,
)


def _linked_select() -> sql.Composable:
    return sql.SQL(", ").join(
        [
            sql.SQL("l.discogs_unavailable"),
            sql.SQL("l.discogs_unavailable_note"),
            *(sql.SQL("am.{}").format(sql.Identifier(c)) for c in RESULT_COLUMNS),
        ]
    )


def recent_plays(conn: psycopg.Connection, schema: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` (≤ 200) track rows, newest first, projected for listeners.

    Only tracks, like the feed: a client merging events into this list sees one kind of row.
    The ORDER BY is the `(add_time DESC, id DESC)` index, so this reads `limit` index entries
    (plus the non-track rows between them) whatever the table's size.
    """
    query = sql.SQL(
        """
        SELECT {row_columns}, l.id IS NOT NULL AS linked, {linked_columns}
        FROM {flowsheet} AS f
        LEFT JOIN {library} AS l ON l.id = f.album_id
        LEFT JOIN {album_metadata} AS am ON am.album_id = f.album_id
        WHERE f.entry_type = 'track'
        ORDER BY f.add_time DESC, f.id DESC
        LIMIT %s
        """
    ).format(
        row_columns=sql.SQL(", ").join(
            sql.SQL("f.{}").format(sql.Identifier(c)) for c in CLIENT_COLUMNS
        ),
        linked_columns=_linked_select(),
        flowsheet=sql.Identifier(schema, "flowsheet"),
        library=sql.Identifier(schema, "library"),
        album_metadata=sql.Identifier(schema, "album_metadata"),
    )
    # Positional: the row and its album share the enrichment column names.
    rows = conn.execute(query, (min(limit, MAX_RECENT),)).fetchall()
    width = len(CLIENT_COLUMNS)
    plays = []
    for values in rows:
        row = dict(zip(CLIENT_COLUMNS, values[:width], strict=True))
        linked = dict(zip(_LINKED_COLUMNS, values[width + 1 :], strict=True))
        plays.append(project_row(row, linked if values[width] else None))
    return plays


def linked_albums(
    conn: psycopg.Connection, schema: str, album_ids: Collection[int]
) -> dict[int, dict[str, Any]]:
    """What the library holds for the linked rows of a batch, by album id: the Discogs flag
    and note and the album record (NULLs without one); ids not in the library are absent."""
    if not album_ids:
        return {}
    query = sql.SQL(
        """
        SELECT l.id, {linked_columns}
        FROM {library} AS l LEFT JOIN {album_metadata} AS am ON am.album_id = l.id
        WHERE l.id = ANY(%s)
        """
    ).format(
        linked_columns=_linked_select(),
        library=sql.Identifier(schema, "library"),
        album_metadata=sql.Identifier(schema, "album_metadata"),
    )
    rows = conn.execute(query, (list(album_ids),)).fetchall()
    return {row[0]: dict(zip(_LINKED_COLUMNS, row[1:], strict=True)) for row in rows}
