"""SQL for the enrichment lifecycle: pages of a pass, the re-ask's writes, cursors, run records.

Search path and transactions as in `db/enrichment.py`: every statement that writes `flowsheet`
runs in a short `flowsheet_transaction` after the LML call, never across it. Reads take no
locks: a row that changed between the read and the write is left alone by the write's guard
(status, and `updated_at` as read).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

import psycopg

from wx_orchestration.core.enrichment import ClaimedRow, FinalizePlan
from wx_orchestration.core.lifecycle import (
    COHORT_CURSOR_PREFIX,
    LINK_COLUMNS,
    STREAMING_REASK_ATTEMPT_CAP,
    STREAMING_SERVICES,
    CohortSpec,
    PassCursor,
)
from wx_orchestration.db.enrichment import finalize_rows, kept_value

# The whole predicate of production's `flowsheet_no_match_recheck_id_desc_idx`, repeated so a
# plan may use that partial index to find the cohort.
NO_MATCH_COHORT = """f.metadata_status = 'enriched_no_match' AND f.entry_type = 'track'
  AND f.artist_name IS NOT NULL"""
_DUE = """(f.no_match_recheck_attempted_at IS NULL
  OR f.no_match_recheck_attempted_at <= now() - make_interval(secs => %(ttl_s)s))"""
_BELOW_CURSOR = """(%(after_time)s::timestamptz IS NULL
  OR (f.add_time, f.id) < (%(after_time)s::timestamptz, %(after_id)s::int))"""
_ROW = """f.id, f.add_time, f.updated_at, f.album_id, f.artist_name, f.album_title,
  f.track_title"""


@dataclass(frozen=True)
class LifecycleRow:
    """A row as a lifecycle page read it; `updated_at` is the version its write is guarded on."""

    flowsheet_id: int
    add_time: datetime
    updated_at: datetime
    album_id: int | None
    artist_name: str | None
    album_title: str | None
    track_title: str | None
    links: Mapping[str, str | None] | None = None

    def as_claimed(self, enriching_since: datetime) -> ClaimedRow:
        return ClaimedRow(
            self.flowsheet_id,
            enriching_since,
            self.album_id,
            self.artist_name,
            self.album_title,
            self.track_title,
        )


def _cursor_params(cursor: PassCursor) -> dict[str, Any]:
    return {"after_time": cursor.add_time, "after_id": cursor.flowsheet_id}


_DUE_NO_MATCHES = f"""
SELECT {_ROW} FROM flowsheet AS f
WHERE {NO_MATCH_COHORT} AND {_DUE} AND {_BELOW_CURSOR}
  AND f.add_time < now() - make_interval(secs => %(min_age_s)s)
ORDER BY f.add_time DESC, f.id DESC
LIMIT %(limit)s
"""


def due_no_matches(
    conn: psycopg.Connection, cursor: PassCursor, *, ttl_s: float, min_age_s: float, limit: int
) -> list[LifecycleRow]:
    """The next page of no-match rows due a re-ask, below `cursor`, newest play first."""
    params = {**_cursor_params(cursor), "ttl_s": ttl_s, "min_age_s": min_age_s, "limit": limit}
    return [LifecycleRow(*row) for row in conn.execute(_DUE_NO_MATCHES, params).fetchall()]


def _json(value: object) -> str:
    return json.dumps(value, default=datetime.isoformat)


# Both statements in one transaction: nobody ever reads the row `enriching`, and the claim
# time the finalize's guard compares is this transaction's.
_CLAIM_NO_MATCHES = """
UPDATE flowsheet AS f
SET metadata_status = 'enriching', enriching_since = now()
FROM json_to_recordset(%s::json) AS v(id int, updated_at timestamptz)
WHERE f.id = v.id AND f.metadata_status = 'enriched_no_match' AND f.updated_at = v.updated_at
RETURNING f.id, f.enriching_since
"""


def finalize_reask_matches(
    conn: psycopg.Connection, rows: Sequence[LifecycleRow], plans: Sequence[FinalizePlan]
) -> set[int]:
    """Turn still-unchanged no-match rows into their match plans through the live path's
    finalize (trust gate already applied, fill-only). Run inside the caller's transaction;
    returns the ids written."""
    if not plans:
        return set()
    wanted = {row.flowsheet_id: row.updated_at for row in rows}
    records = [{"id": p.flowsheet_id, "updated_at": wanted[p.flowsheet_id]} for p in plans]
    claimed = dict(conn.execute(_CLAIM_NO_MATCHES, (_json(records),)).fetchall())
    held = [
        dataclasses.replace(plan, enriching_since=claimed[plan.flowsheet_id])
        for plan in plans
        if plan.flowsheet_id in claimed
    ]
    return finalize_rows(conn, held)


_STAMP = """
UPDATE flowsheet AS f
SET no_match_recheck_attempted_at = now()
FROM json_to_recordset(%s::json) AS v(id int, updated_at timestamptz)
WHERE f.id = v.id AND f.metadata_status = 'enriched_no_match' AND f.updated_at = v.updated_at
RETURNING f.id
"""


def stamp_rechecked(conn: psycopg.Connection, rows: Sequence[LifecycleRow]) -> set[int]:
    """Stamp definitive no-match answers; run inside the caller's transaction."""
    if not rows:
        return set()
    records = [{"id": row.flowsheet_id, "updated_at": row.updated_at} for row in rows]
    return {row[0] for row in conn.execute(_STAMP, (_json(records),)).fetchall()}


# --- cursors and run records -----------------------------------------------------------------

_LOAD_CURSOR = """
SELECT add_time, flowsheet_id, pass, pass_started_at, passes_done, last_pass_s
FROM wx_orchestration.lifecycle_cursors WHERE name = %s
"""

_SAVE_CURSOR = """
INSERT INTO wx_orchestration.lifecycle_cursors AS c
    (name, add_time, flowsheet_id, pass, pass_started_at, passes_done, last_pass_s, counters)
VALUES (%(name)s, %(add_time)s, %(flowsheet_id)s, %(pass)s, %(pass_started_at)s,
        %(passes_done)s, %(last_pass_s)s, %(counters)s::jsonb)
ON CONFLICT (name) DO UPDATE SET
    add_time = EXCLUDED.add_time, flowsheet_id = EXCLUDED.flowsheet_id, pass = EXCLUDED.pass,
    pass_started_at = EXCLUDED.pass_started_at, passes_done = EXCLUDED.passes_done,
    last_pass_s = EXCLUDED.last_pass_s, saved_at = now(),
    counters = (SELECT coalesce(jsonb_object_agg(key, coalesce((c.counters ->> key)::bigint, 0)
                                + value::bigint), '{}')
                FROM jsonb_each_text(EXCLUDED.counters))
               || (c.counters - ARRAY(SELECT jsonb_object_keys(EXCLUDED.counters)))
"""


def load_cursor(conn: psycopg.Connection, name: str) -> PassCursor:
    row = conn.execute(_LOAD_CURSOR, (name,)).fetchone()
    return PassCursor(*row) if row is not None else PassCursor()


def save_cursor(
    conn: psycopg.Connection,
    name: str,
    cursor: PassCursor,
    counters: Mapping[str, int] | None = None,
) -> None:
    """Save `cursor` and add `counters` to the ones kept with it (a cohort's running totals)."""
    conn.execute(
        _SAVE_CURSOR,
        {
            "name": name,
            "add_time": cursor.add_time,
            "flowsheet_id": cursor.flowsheet_id,
            "pass": cursor.pass_number,
            "pass_started_at": cursor.pass_started_at or datetime.now().astimezone(),
            "passes_done": cursor.passes_done,
            "last_pass_s": cursor.last_pass_s,
            "counters": json.dumps(dict(counters or {})),
        },
    )


def cursor_counters(conn: psycopg.Connection, name: str) -> dict[str, int]:
    row = conn.execute(
        "SELECT counters FROM wx_orchestration.lifecycle_cursors WHERE name = %s", (name,)
    ).fetchone()
    return dict(row[0]) if row is not None else {}


def forget_cursor(conn: psycopg.Connection, name: str) -> None:
    conn.execute("DELETE FROM wx_orchestration.lifecycle_cursors WHERE name = %s", (name,))


def record_run(conn: psycopg.Connection, kind: str, counts: Mapping[str, int]) -> None:
    conn.execute(
        """INSERT INTO wx_orchestration.lifecycle_runs
               (kind, asked, matched, stamped, not_a_verdict, upgraded, lml_calls)
           VALUES (%s, %s, %s, %s, %s, %s, %s)""",
        (
            kind,
            counts.get("asked", 0),
            counts.get("matched", 0),
            counts.get("stamped", 0),
            counts.get("not_a_verdict", 0),
            counts.get("upgraded", 0),
            counts.get("lml_calls", 0),
        ),
    )


@dataclass(frozen=True)
class NoMatchBacklog:
    cohort: int
    due: int
    never_asked: int
    past_ttl: int  # stamped more than two TTLs ago: due for longer than a whole TTL


_NO_MATCH_BACKLOG = f"""
SELECT count(*),
       count(*) FILTER (WHERE {_DUE}),
       count(*) FILTER (WHERE f.no_match_recheck_attempted_at IS NULL),
       count(*) FILTER (WHERE f.no_match_recheck_attempted_at
                              <= now() - make_interval(secs => 2 * %(ttl_s)s))
FROM flowsheet AS f
WHERE {NO_MATCH_COHORT}
"""


def no_match_backlog(conn: psycopg.Connection, *, ttl_s: float) -> NoMatchBacklog:
    row = conn.execute(_NO_MATCH_BACKLOG, {"ttl_s": ttl_s}).fetchone()
    assert row is not None
    return NoMatchBacklog(*row)


# --- link upgrade ----------------------------------------------------------------------------


def _placeholder_any(table: LiteralString) -> LiteralString:
    # kept_value is NULL exactly when the column holds a placeholder.
    return " OR ".join(
        f"({table}.{c} IS NOT NULL AND {kept_value(table, c)} IS NULL)" for c in LINK_COLUMNS
    )


# A linked row's links are its album's; its own columns are not what listeners see.
_LINKS = ", ".join(f"CASE WHEN f.album_id IS NULL THEN f.{c} ELSE am.{c} END" for c in LINK_COLUMNS)
# Matched rows only: a no-match's placeholders are the re-ask's to replace, with its status.
_LINK_COHORT_FROM = f"""
FROM flowsheet AS f
LEFT JOIN album_metadata AS am ON am.album_id = f.album_id
LEFT JOIN wx_orchestration.link_upgrade_attempts AS a ON a.flowsheet_id = f.id
WHERE f.entry_type = 'track' AND f.metadata_status = 'enriched_match'
  AND f.artist_name IS NOT NULL
  AND (CASE WHEN f.album_id IS NULL THEN ({_placeholder_any("f")})
            ELSE ({_placeholder_any("am")}) END)"""
_LINK_CANDIDATES = f"""
SELECT {_ROW}, {_LINKS}
{_LINK_COHORT_FROM}
  AND (a.attempted_at IS NULL OR a.attempted_at <= now() - make_interval(secs => %(ttl_s)s))
  AND {_BELOW_CURSOR}
ORDER BY f.add_time DESC, f.id DESC
LIMIT %(limit)s
"""


def link_candidates(
    conn: psycopg.Connection, cursor: PassCursor, *, ttl_s: float, limit: int
) -> list[LifecycleRow]:
    """Matched rows holding a search placeholder (theirs, or their album's when linked) not asked
    about within `ttl_s`, below `cursor`, newest play first."""
    params = {**_cursor_params(cursor), "ttl_s": ttl_s, "limit": limit}
    rows = conn.execute(_LINK_CANDIDATES, params).fetchall()
    width = len(LINK_COLUMNS)
    return [
        LifecycleRow(*row[:-width], links=dict(zip(LINK_COLUMNS, row[-width:], strict=True)))
        for row in rows
    ]


def _replaces(table: LiteralString, column: LiteralString) -> LiteralString:
    return (
        f"v.{column} IS NOT NULL AND {table}.{column} IS NOT NULL "
        f"AND {kept_value(table, column)} IS NULL"
    )


def _upgrade_sets(table: LiteralString) -> LiteralString:
    return ", ".join(
        f"{c} = CASE WHEN {_replaces(table, c)} THEN v.{c} ELSE {table}.{c} END"
        for c in LINK_COLUMNS
    )


# An album's link that LML verified carries the verdict too, as the album record writer's merge
# would write it: left `unresolved` beside a verified link, the streaming re-ask would ask again.
_VERIFIED_ALONG = ", ".join(
    f"{service}_status = CASE WHEN {_replaces('am', url)} THEN 'verified' "
    f"ELSE am.{service}_status END"
    for service in STREAMING_SERVICES
    if (url := f"{service}_url") in LINK_COLUMNS
)


_LINK_RECORD = ", ".join(f"{c} text" for c in LINK_COLUMNS)
# Each column is replaced only while it still holds a placeholder: a verified link written by
# anyone since the read is never touched.
_UPGRADE_FLOWSHEET = f"""
UPDATE flowsheet AS f SET {_upgrade_sets("f")}
FROM json_to_recordset(%s::json) AS v(id int, {_LINK_RECORD})
WHERE f.id = v.id AND f.album_id IS NULL AND f.metadata_status = 'enriched_match'
RETURNING f.id
"""
_UPGRADE_ALBUMS = f"""
UPDATE album_metadata AS am SET {_upgrade_sets("am")}, {_VERIFIED_ALONG}, updated_at = now()
FROM json_to_recordset(%s::json) AS v(album_id int, {_LINK_RECORD})
WHERE am.album_id = v.album_id
RETURNING am.album_id
"""
_MARK_ASKED = """
INSERT INTO wx_orchestration.link_upgrade_attempts (flowsheet_id, attempted_at)
SELECT unnest(%s::int[]), now()
ON CONFLICT (flowsheet_id) DO UPDATE SET attempted_at = EXCLUDED.attempted_at
"""


def write_link_upgrades(
    conn: psycopg.Connection,
    rows: Sequence[LifecycleRow],
    upgrades: Mapping[int, Mapping[str, str]],
    asked: Sequence[int],
) -> int:
    """Replace placeholders column by column and mark `asked` rows; returns rows upgraded.
    Run inside the caller's transaction."""
    by_id = {row.flowsheet_id: row for row in rows}
    unlinked = [
        {"id": i, **links} for i, links in upgrades.items() if by_id[i].album_id is None and links
    ]
    albums: dict[int, Mapping[str, str]] = {}
    for i, links in upgrades.items():
        album_id = by_id[i].album_id
        if album_id is not None and links:
            albums.setdefault(album_id, links)
    upgraded = 0
    if unlinked:
        upgraded += len(conn.execute(_UPGRADE_FLOWSHEET, (_json(unlinked),)).fetchall())
    if albums:
        records = [{"album_id": a, **links} for a, links in albums.items()]
        upgraded += len(conn.execute(_UPGRADE_ALBUMS, (_json(records),)).fetchall())
    if asked:
        conn.execute(_MARK_ASKED, (list(asked),))
    return upgraded


@dataclass(frozen=True)
class LinkBacklog:
    rows: int
    never_asked: int
    past_ttl: int  # asked more than two TTLs ago: due for longer than a whole TTL


_LINK_BACKLOG = f"""
SELECT count(*), count(*) FILTER (WHERE a.attempted_at IS NULL),
       count(*) FILTER (WHERE a.attempted_at <= now() - make_interval(secs => 2 * %(ttl_s)s))
{_LINK_COHORT_FROM}
"""


def link_backlog(conn: psycopg.Connection, *, ttl_s: float) -> LinkBacklog:
    row = conn.execute(_LINK_BACKLOG, {"ttl_s": ttl_s}).fetchone()
    assert row is not None
    return LinkBacklog(*row)


# --- streaming re-ask ------------------------------------------------------------------------

# The station's `findUnresolvedStreamingCandidates` (`core.lifecycle` says why each part).
_STREAMING_UNRESOLVED = """(am.spotify_status = 'unresolved'
  OR am.apple_music_status = 'unresolved'
  OR am.bandcamp_status = 'unresolved'
  OR (am.bandcamp_status IS NULL AND am.bandcamp_url LIKE '%%bandcamp.com/search%%'))"""
_MATCHED_ALBUM = """l.artist_name IS NOT NULL
  AND (am.artwork_url IS NOT NULL OR am.discogs_url IS NOT NULL)"""
_UNDER_CAP = "am.streaming_reask_attempts < %(cap)s"
_STREAMING_COHORT = f"{_MATCHED_ALBUM} AND {_UNDER_CAP} AND {_STREAMING_UNRESOLVED}"
_ALBUM_DUE = "am.updated_at <= now() - make_interval(secs => %(retry_after_s)s)"
_ABOVE_ALBUM_CURSOR = """(%(after_time)s::timestamptz IS NULL
  OR (am.updated_at, am.album_id) < (%(after_time)s::timestamptz, %(after_id)s::int))"""
_STREAMING_COLUMNS: tuple[LiteralString, ...] = tuple(
    column for service in STREAMING_SERVICES for column in (f"{service}_status", f"{service}_url")
)
_STREAMING_SELECT = ", ".join(f"am.{c}" for c in _STREAMING_COLUMNS)

# Newest write first from the cursor: an album answered since moves above it (its `updated_at`
# is now) and waits for the next pass; one never answered stays below and is read once a pass.
_STREAMING_CANDIDATES = f"""
SELECT am.album_id, am.updated_at, l.artist_name, l.album_title, {_STREAMING_SELECT}
FROM album_metadata AS am JOIN library AS l ON l.id = am.album_id
WHERE {_STREAMING_COHORT} AND {_ALBUM_DUE} AND {_ABOVE_ALBUM_CURSOR}
ORDER BY am.updated_at DESC, am.album_id DESC
LIMIT %(limit)s
"""


@dataclass(frozen=True)
class StreamingAlbum:
    """An album as the streaming re-ask read it; `updated_at` is the version its write is
    guarded on, `streaming` its six streaming columns."""

    album_id: int
    updated_at: datetime
    artist_name: str | None
    album_title: str | None
    streaming: Mapping[str, str | None]


def streaming_candidates(
    conn: psycopg.Connection, cursor: PassCursor, *, retry_after_s: float, limit: int
) -> list[StreamingAlbum]:
    """The next page of albums due a streaming re-ask below `cursor`, newest write first."""
    params = {
        **_cursor_params(cursor),
        "cap": STREAMING_REASK_ATTEMPT_CAP,
        "retry_after_s": retry_after_s,
        "limit": limit,
    }
    rows = conn.execute(_STREAMING_CANDIDATES, params).fetchall()
    return [
        StreamingAlbum(
            album_id,
            updated_at,
            artist,
            title,
            dict(zip(_STREAMING_COLUMNS, streaming, strict=True)),
        )
        for album_id, updated_at, artist, title, *streaming in rows
    ]


_STREAMING_RECORD = ", ".join(f"{c} text" for c in _STREAMING_COLUMNS)


def _streaming_sets() -> LiteralString:
    # Each service's pair is decided on its status as it stands now, not as read: a link
    # verified by anyone since is never touched. A NULL in the record changes nothing.
    return ", ".join(
        f"{column} = CASE WHEN am.{service}_status = 'verified' THEN am.{column} "
        f"ELSE coalesce(v.{column}, am.{column}) END"
        for service in STREAMING_SERVICES
        for column in (f"{service}_status", f"{service}_url")
    )


# A definitive answer spends one attempt and bumps `updated_at`, as the station's
# `upsertMatchedAlbumMetadata` and `bumpStreamingReaskAttempts` do, and changes only the
# streaming columns LML gave a verdict for. An album written since the read is left alone.
_WRITE_STREAMING = f"""
UPDATE album_metadata AS am
SET {_streaming_sets()},
    streaming_reask_attempts = am.streaming_reask_attempts + 1,
    updated_at = now()
FROM json_to_recordset(%s::json) AS v(album_id int, updated_at timestamptz, {_STREAMING_RECORD})
WHERE am.album_id = v.album_id AND am.updated_at = v.updated_at
RETURNING am.album_id
"""


def write_streaming_answers(
    conn: psycopg.Connection,
    albums: Sequence[StreamingAlbum],
    changes: Mapping[int, Mapping[str, str]],
) -> set[int]:
    """Write each answered album's changes (perhaps none) and spend its attempt; returns the
    album ids written. Run inside the caller's transaction."""
    if not changes:
        return set()
    read = {album.album_id: album.updated_at for album in albums}
    records = [
        {"album_id": album_id, "updated_at": read[album_id], **columns}
        for album_id, columns in changes.items()
    ]
    return {row[0] for row in conn.execute(_WRITE_STREAMING, (_json(records),)).fetchall()}


@dataclass(frozen=True)
class StreamingBacklog:
    eligible: int  # under the cap with an unresolved verdict
    due: int  # of those, not written within `retry_after`
    past_ttl: int  # due for longer than a whole TTL
    at_cap: int  # unresolved with every attempt spent: the re-ask has given up on them


_STREAMING_BACKLOG = f"""
SELECT count(*) FILTER (WHERE {_UNDER_CAP}),
       count(*) FILTER (WHERE {_UNDER_CAP} AND {_ALBUM_DUE}),
       count(*) FILTER (WHERE {_UNDER_CAP} AND am.updated_at
                        <= now() - make_interval(secs => %(retry_after_s)s + %(ttl_s)s)),
       count(*) FILTER (WHERE NOT {_UNDER_CAP})
FROM album_metadata AS am JOIN library AS l ON l.id = am.album_id
WHERE {_MATCHED_ALBUM} AND {_STREAMING_UNRESOLVED}
"""


def streaming_backlog(
    conn: psycopg.Connection, *, retry_after_s: float, ttl_s: float
) -> StreamingBacklog:
    params = {"cap": STREAMING_REASK_ATTEMPT_CAP, "retry_after_s": retry_after_s, "ttl_s": ttl_s}
    row = conn.execute(_STREAMING_BACKLOG, params).fetchone()
    assert row is not None
    return StreamingBacklog(*row)


# --- cohorts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnfinishedCohort:
    name: str
    idle_s: float  # since its last run saved its position
    counters: dict[str, int]


_UNFINISHED_COHORTS = """
SELECT substr(name, length(%(prefix)s) + 1), extract(epoch FROM now() - saved_at)::float8,
       counters
FROM wx_orchestration.lifecycle_cursors
WHERE starts_with(name, %(prefix)s) AND passes_done = 0
ORDER BY saved_at
"""


def unfinished_cohorts(conn: psycopg.Connection) -> list[UnfinishedCohort]:
    """Cohorts a real run started and none finished, longest idle first."""
    rows = conn.execute(_UNFINISHED_COHORTS, {"prefix": COHORT_CURSOR_PREFIX}).fetchall()
    return [UnfinishedCohort(name, idle, dict(counters)) for name, idle, counters in rows]


def _cohort_where(spec: CohortSpec) -> tuple[LiteralString, dict[str, Any]]:
    clauses: list[LiteralString] = [
        "f.entry_type = 'track'",
        "f.artist_name IS NOT NULL",
        "f.metadata_status::text = ANY(%(statuses)s)",
    ]
    params: dict[str, Any] = {"statuses": list(spec.statuses)}
    if spec.linked == "linked":
        clauses.append("f.album_id IS NOT NULL")
    elif spec.linked == "unlinked":
        clauses.append("f.album_id IS NULL")
    windows: tuple[tuple[LiteralString, str, datetime | None], ...] = (
        ("f.add_time >= %(added_from)s", "added_from", spec.added_from),
        ("f.add_time < %(added_to)s", "added_to", spec.added_to),
        ("f.updated_at >= %(updated_from)s", "updated_from", spec.updated_from),
        ("f.updated_at < %(updated_to)s", "updated_to", spec.updated_to),
    )
    for clause, key, value in windows:
        if value is not None:
            clauses.append(clause)
            params[key] = value
    if spec.missing_artwork:
        clauses.append(
            "(CASE WHEN f.album_id IS NULL THEN f.artwork_url ELSE "
            "(SELECT am.artwork_url FROM album_metadata AS am WHERE am.album_id = f.album_id)"
            " END) IS NULL"
        )
    if spec.ids:
        clauses.append("f.id = ANY(%(ids)s)")
        params["ids"] = list(spec.ids)
    return " AND ".join(clauses), params


@dataclass(frozen=True)
class CohortPreview:
    rows: int
    by_status: dict[str, int]
    linked: int
    sample: list[tuple[int, str, str | None, str | None, str]]


def preview_cohort(
    conn: psycopg.Connection, spec: CohortSpec, cursor: PassCursor, *, sample: int = 20
) -> CohortPreview:
    """What a run of `spec` would take from `cursor` on: counts and the first rows it would
    ask about. Reads only."""
    where, params = _cohort_where(spec)
    params = {**params, **_cursor_params(cursor), "sample": sample}
    counts = conn.execute(
        f"""SELECT f.metadata_status::text, count(*), count(*) FILTER (WHERE f.album_id IS NOT NULL)
            FROM flowsheet AS f WHERE {where} AND {_BELOW_CURSOR} GROUP BY 1""",
        params,
    ).fetchall()
    rows = conn.execute(
        f"""SELECT f.id, f.metadata_status::text, f.artist_name, f.album_title, f.add_time::text
            FROM flowsheet AS f WHERE {where} AND {_BELOW_CURSOR}
            ORDER BY f.add_time DESC, f.id DESC LIMIT %(sample)s""",
        params,
    ).fetchall()
    return CohortPreview(
        rows=sum(count for _, count, _ in counts),
        by_status={status: count for status, count, _ in counts},
        linked=sum(linked for _, _, linked in counts),
        sample=[tuple(row) for row in rows],
    )


def claim_cohort_page(
    conn: psycopg.Connection, spec: CohortSpec, cursor: PassCursor, *, limit: int
) -> tuple[list[ClaimedRow], tuple[datetime, int] | None, int]:
    """Claim (→ `enriching`) the next page of `spec` below `cursor`; returns the rows claimed,
    the last row of the page (the cursor's next position) and the page's size. Rows another
    claimer holds are skipped, and stay below the cursor: a later run of the same cohort does
    not take them again (resumable and idempotent by position). Run inside the caller's
    transaction."""
    where, params = _cohort_where(spec)
    params = {**params, **_cursor_params(cursor), "limit": limit}
    page = conn.execute(
        f"""SELECT f.id, f.add_time FROM flowsheet AS f
            WHERE {where} AND {_BELOW_CURSOR}
            ORDER BY f.add_time DESC, f.id DESC LIMIT %(limit)s""",
        params,
    ).fetchall()
    if not page:
        return [], None, 0
    ids = [row[0] for row in page]
    claimed = conn.execute(
        f"""WITH picked AS MATERIALIZED (
                SELECT f.id FROM flowsheet AS f
                WHERE f.id = ANY(%(ids)s) AND {where}
                FOR UPDATE SKIP LOCKED)
            UPDATE flowsheet AS f SET metadata_status = 'enriching', enriching_since = now()
            FROM picked WHERE f.id = picked.id
            RETURNING f.id, f.enriching_since, f.album_id, f.artist_name, f.album_title,
                      f.track_title""",
        {**params, "ids": ids},
    ).fetchall()
    position = {row_id: n for n, row_id in enumerate(ids)}
    rows = [ClaimedRow(*row) for row in sorted(claimed, key=lambda row: position[row[0]])]
    last = page[-1]
    return rows, (last[1], last[0]), len(page)


# --- the report ------------------------------------------------------------------------------

_PLAYS = """
SELECT (f.add_time AT TIME ZONE %(tz)s)::date AS day, f.show_id, f.metadata_status::text, count(*)
FROM flowsheet AS f
WHERE f.entry_type = 'track' AND f.add_time >= now() - make_interval(days => %(days)s)
GROUP BY 1, 2, 3
"""

_NO_MATCH_STATES = f"""
SELECT CASE WHEN f.no_match_recheck_attempted_at IS NULL THEN 'never re-asked'
            WHEN {_DUE} THEN 're-asked, due again'
            ELSE 're-asked: no match within the TTL' END AS state,
       count(*)
FROM flowsheet AS f
WHERE {NO_MATCH_COHORT} AND f.add_time >= now() - make_interval(days => %(days)s)
GROUP BY 1 ORDER BY 2 DESC
"""

_PARKED = """
SELECT coalesce(left(a.parked_reason, 120), '(no reason recorded)'), count(*)
FROM flowsheet AS f
LEFT JOIN wx_orchestration.enrichment_attempts AS a ON a.flowsheet_id = f.id
WHERE f.entry_type = 'track' AND f.metadata_status = 'failed_no_retry'
  AND f.add_time >= now() - make_interval(days => %(days)s)
GROUP BY 1 ORDER BY 2 DESC
"""

_RUNS = """
SELECT kind, asked, matched, stamped, not_a_verdict, upgraded, lml_calls
FROM wx_orchestration.lifecycle_runs
WHERE ran_at >= now() - make_interval(days => %(days)s)
"""

_TOP_UNMATCHED = f"""
SELECT f.artist_name, count(*) AS plays, max(f.add_time)::text AS last_played
FROM flowsheet AS f
WHERE {NO_MATCH_COHORT} AND f.add_time >= now() - make_interval(days => %(days)s)
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %(top)s
"""


def report_rows(
    conn: psycopg.Connection, *, days: int, tz: str, top: int, ttl_s: float
) -> dict[str, list[tuple[Any, ...]]]:
    """The raw rows of the enrichment report over the last `days` days."""
    params = {"days": days, "tz": tz, "top": top, "ttl_s": ttl_s}
    queries: tuple[tuple[str, LiteralString], ...] = (
        ("plays", _PLAYS),
        ("no_match_states", _NO_MATCH_STATES),
        ("parked", _PARKED),
        ("runs", _RUNS),
        ("top_unmatched", _TOP_UNMATCHED),
    )
    return {name: conn.execute(query, params).fetchall() for name, query in queries}
