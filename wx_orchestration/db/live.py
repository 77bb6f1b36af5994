"""SQL of the live feed: the `/flowsheet/recent` snapshot and album metadata for linked rows.

Both return raw columns; `core.live.project_row` turns them into what listeners see, the same
way for the snapshot and for the events that follow it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from wx_orchestration.contracts.live import CLIENT_COLUMNS
from wx_orchestration.contracts.station import RESULT_COLUMNS
from wx_orchestration.core.live import project_row

MAX_RECENT = 200


def recent_plays(conn: psycopg.Connection, schema: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` (≤ 200) track rows, newest first, projected for listeners.

    Only tracks, like the feed: a client merging events into this list sees one kind of row.
    The ORDER BY is the `(add_time DESC, id DESC)` index, so this reads `limit` index entries
    (plus the non-track rows between them) whatever the table's size.
    """
    album_columns = [sql.SQL("am.{}").format(sql.Identifier(c)) for c in RESULT_COLUMNS]
    query = sql.SQL(
        """
        SELECT {row_columns}, am.album_id IS NOT NULL AS has_album, {album_columns}
        FROM {flowsheet} AS f
        LEFT JOIN {album_metadata} AS am ON am.album_id = f.album_id
        WHERE f.entry_type = 'track'
        ORDER BY f.add_time DESC, f.id DESC
        LIMIT %s
        """
    ).format(
        row_columns=sql.SQL(", ").join(
            sql.SQL("f.{}").format(sql.Identifier(c)) for c in CLIENT_COLUMNS
        ),
        album_columns=sql.SQL(", ").join(album_columns),
        flowsheet=sql.Identifier(schema, "flowsheet"),
        album_metadata=sql.Identifier(schema, "album_metadata"),
    )
    # Positional: the row and its album share the enrichment column names.
    rows = conn.execute(query, (min(limit, MAX_RECENT),)).fetchall()
    width = len(CLIENT_COLUMNS)
    plays = []
    for values in rows:
        row = dict(zip(CLIENT_COLUMNS, values[:width], strict=True))
        album: dict[str, Any] = dict(zip(RESULT_COLUMNS, values[width + 1 :], strict=True))
        plays.append(project_row(row, album if values[width] else None))
    return plays


def album_metadata(
    conn: psycopg.Connection, schema: str, album_ids: Collection[int]
) -> dict[int, dict[str, Any]]:
    """Enrichment results by album id for the linked rows of a batch; absent ids have none."""
    if not album_ids:
        return {}
    query = sql.SQL(
        "SELECT album_id, {columns} FROM {album_metadata} WHERE album_id = ANY(%s)"
    ).format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in RESULT_COLUMNS),
        album_metadata=sql.Identifier(schema, "album_metadata"),
    )
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, (list(album_ids),)).fetchall()
    return {row.pop("album_id"): row for row in rows}
