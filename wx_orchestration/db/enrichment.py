"""SQL for flowsheet enrichment: claim, finalize, release, and the backlog's day finder.

Statements name tables unqualified and rely on the connection's `search_path` being the station
schema, then `wx_orchestration` (`PostgresResource.connection` sets it; so do the sidecar and the
tests), exactly as `db/identity.py` does; our own table is always written schema-qualified.

Transactions: every `flowsheet` write takes the station's watermark row lock until commit, so
DJs' inserts wait on whatever transaction holds it (DESIGN.md §2), and moves the station's
`Last-Modified` a second. Claims run their own short paced transaction on an autocommit
connection (`db.paced_writes`). `finalize_rows` and `release_rows` issue plain statements: the
caller wraps them in one short `flowsheet_transaction(conn)` *after* the LML call.

Every claim repeats the whole predicate of the pending partial index, adds `btrim(artist_name,
<all whitespace>) <> ''` and skips rows still in retry backoff. A whitespace-only artist is thus
never claimed, so never sent to LML: it stays `pending` (the stale sweep reports such rows) and
is enriched normally once someone corrects the name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, LiteralString

import psycopg

from wx_orchestration.contracts.station import RESULT_COLUMNS
from wx_orchestration.core.enrichment import (
    SEARCH_URL_PREFIXES,
    ClaimedRow,
    FinalizePlan,
)
from wx_orchestration.db.paced_writes import flowsheet_transaction

# Every character Python's str.strip() removes, so SQL and `core.enrichment` agree on what a
# blank artist is (plain btrim() strips only spaces; a tab-only name would reach LML).
_WHITESPACE = (
    r"U&'\0009\000A\000B\000C\000D\001C\001D\001E\001F\0020\0085\00A0\1680\2000\2001"
    r"\2002\2003\2004\2005\2006\2007\2008\2009\200A\2028\2029\202F\205F\3000'"
)
_PENDING_PREDICATE = """f.entry_type = 'track' AND f.artist_name IS NOT NULL
  AND f.metadata_status = 'pending'"""
CLAIMABLE = f"""{_PENDING_PREDICATE}
  AND btrim(f.artist_name, {_WHITESPACE}) <> ''
  AND NOT EXISTS (
      SELECT 1 FROM wx_orchestration.enrichment_attempts AS a
      WHERE a.flowsheet_id = f.id AND a.next_attempt_at > now())"""
# Track rows still owed a verdict: claimable now, waiting out a backoff, or claimed.
UNFINISHED = f"""(f.metadata_status = 'enriching' OR ({_PENDING_PREDICATE}
  AND btrim(f.artist_name, {_WHITESPACE}) <> ''))"""
_RETURNING = """RETURNING f.id, f.enriching_since, f.album_id, f.artist_name, f.album_title,
    f.track_title,
    COALESCE((SELECT a.attempts FROM wx_orchestration.enrichment_attempts AS a
              WHERE a.flowsheet_id = f.id), 0),
    COALESCE((SELECT a.faults FROM wx_orchestration.enrichment_attempts AS a
              WHERE a.flowsheet_id = f.id), 0)"""

# Claims pick their rows first and write only when they found some: production's watermark
# trigger moves `Last-Modified` a second for every statement that writes `flowsheet`, even one
# that changes nothing (DESIGN.md §2).
_PICK_BY_IDS = f"""
SELECT f.id FROM flowsheet AS f
WHERE f.id = ANY(%(ids)s) AND {CLAIMABLE}
FOR UPDATE SKIP LOCKED
"""

# `ORDER BY … LIMIT` in its own statement: inside `UPDATE … WHERE id IN (SELECT … LIMIT n)` the
# planner may re-run the subquery and claim far more than n rows (DESIGN.md §6).
_PICK_BATCH = f"""
SELECT f.id FROM flowsheet AS f
WHERE {CLAIMABLE}
  AND f.add_time >= %(start)s AND f.add_time < %(end)s
  AND f.add_time < now() - make_interval(secs => %(grace_s)s)
  AND f.id < COALESCE(%(below_id)s::bigint, 2147483648)
ORDER BY f.id DESC
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

# The picked rows are locked: the predicate holds until the UPDATE.
_CLAIM_PICKED = f"""
UPDATE flowsheet AS f
SET metadata_status = 'enriching', enriching_since = now()
WHERE f.id = ANY(%s)
{_RETURNING}
"""


def _claimed(rows: list[tuple[Any, ...]]) -> list[ClaimedRow]:
    return [ClaimedRow(*row) for row in rows]


def _claim(
    conn: psycopg.Connection, pick: LiteralString, params: dict[str, Any]
) -> list[ClaimedRow]:
    with flowsheet_transaction(conn, statements=1):
        ids = [row[0] for row in conn.execute(pick, params).fetchall()]
        if not ids:
            return []
        rows = conn.execute(_CLAIM_PICKED, (ids,)).fetchall()
    position = {row_id: n for n, row_id in enumerate(ids)}
    return _claimed(sorted(rows, key=lambda row: position[row[0]]))


def claim_rows_by_ids(conn: psycopg.Connection, ids: Sequence[int]) -> list[ClaimedRow]:
    """Claim those of `ids` that are still claimable, in one paced transaction on autocommit
    `conn`."""
    if not ids:
        return []
    return _claim(conn, _PICK_BY_IDS, {"ids": list(ids)})


def claim_backlog_batch(
    conn: psycopg.Connection,
    *,
    start: datetime,
    end: datetime,
    grace_s: float,
    limit: int,
    below_id: int | None = None,
) -> list[ClaimedRow]:
    """Claim up to `limit` claimable rows added in [start, end) and at least `grace_s` ago,
    newest id first, skipping rows another claimer holds.

    `below_id` resumes a run under its previous batch: the rows it already claimed leave dead
    entries at the top of the pending index until vacuum, and walking past them made each
    batch slower than the last (35 ms → 175 ms per 500 over 50,000 rows)."""
    params = {
        "start": start,
        "end": end,
        "grace_s": grace_s,
        "limit": limit,
        "below_id": below_id,
    }
    return _claim(conn, _PICK_BATCH, params)


def _recordset_columns() -> LiteralString:
    return ", ".join(
        f"{name} {'smallint' if name == 'release_year' else 'text'}" for name in RESULT_COLUMNS
    )


def kept_value(table: LiteralString, name: LiteralString) -> LiteralString:
    """`table.name` as a fill sees it: NULL when it holds a search-URL placeholder, which a
    no-match wrote and any link LML gives later must replace."""
    prefix = SEARCH_URL_PREFIXES.get(name)
    if prefix is None:
        return f"{table}.{name}"
    # The prefixes are our own constants (no quotes): safe to inline.
    return f"CASE WHEN starts_with({table}.{name}, '{prefix}') THEN NULL ELSE {table}.{name} END"


def _flowsheet_column(name: LiteralString) -> LiteralString:
    # Linked rows keep their own columns (results go to album_metadata); a fill never replaces
    # a value, except a search placeholder.
    return (
        f"{name} = CASE WHEN v.album_id IS NOT NULL THEN f.{name} "
        f"WHEN v.fill_only THEN COALESCE({kept_value('f', name)}, v.{name}) ELSE v.{name} END"
    )


# The guard (still `enriching`, same claim time) is what makes a raced row a no-op. A finalized
# row's retry bookkeeping goes in the same statement: a fresh play has none, and a statement of
# its own would cost a round trip per call for nothing.
_FINALIZE = f"""
WITH written AS (
UPDATE flowsheet AS f
SET metadata_status = v.status::metadata_status_enum,
    enriching_since = NULL,
    composer = v.composer,
    composer_source = v.composer_source,
    {", ".join(_flowsheet_column(name) for name in RESULT_COLUMNS)}
FROM json_to_recordset(%s::json) AS v(
    id int, enriching_since timestamptz, status text, album_id int, fill_only boolean,
    composer text, composer_source text, {_recordset_columns()})
WHERE f.id = v.id AND f.metadata_status = 'enriching' AND f.enriching_since = v.enriching_since
RETURNING f.id
), forgotten AS (
    DELETE FROM wx_orchestration.enrichment_attempts AS a
    USING written WHERE a.flowsheet_id = written.id
)
SELECT id FROM written
"""


# A no-match fills: an existing value (an earlier LML URL) wins over its search links; an
# existing search link does not win over a link.
_ALBUM_FILL = f"""
INSERT INTO album_metadata AS am (album_id, {", ".join(RESULT_COLUMNS)}, updated_at)
SELECT v.album_id, {", ".join(f"v.{name}" for name in RESULT_COLUMNS)}, now()
FROM json_to_recordset(%s::json) AS v(album_id int, {_recordset_columns()})
ON CONFLICT (album_id) DO UPDATE SET
    {", ".join(f"{n} = COALESCE({kept_value('am', n)}, EXCLUDED.{n})" for n in RESULT_COLUMNS)},
    updated_at = EXCLUDED.updated_at
"""

# The album record's other columns, as `json_to_recordset` types them.
_RECORD_TYPES: dict[LiteralString, LiteralString] = {
    "discogs_artist_id": "int",
    "label": "text",
    "full_release_date": "text",
    "genres": "text[]",
    "styles": "text[]",
    "tracklist": "jsonb",
    "artist_image_url": "text",
    "bio_tokens": "jsonb",
    "spotify_status": "text",
    "apple_music_status": "text",
    "bandcamp_status": "text",
    "spotify_search": "text",
    "bandcamp_search": "text",
}
_PLAIN: tuple[LiteralString, ...] = tuple(
    name
    for name in (*RESULT_COLUMNS, *_RECORD_TYPES)
    if not name.endswith(("_status", "_search"))
    and name not in ("spotify_url", "apple_music_url", "bandcamp_url")
)


def _streaming(service: LiteralString, fallback: bool) -> tuple[LiteralString, LiteralString]:
    """The INSERT values and the ON CONFLICT assignment of `<service>_status, <service>_url`:
    the station's `mergeStreamingField`, evaluated against the row as it stands when written.

    Inserted, the verdict is this answer's and the link is its verified link, else the search
    fallback (Apple Music has none: NULL). On conflict, a verified link is never replaced,
    `absent` yields only to `verified`, and no verdict keeps what is there (for Apple Music an
    `unresolved` too: it has no fallback to put there instead)."""
    new, link = f"v.{service}_status", f"v.{service}_url"
    other = f"v.{service}_search" if fallback else "NULL"
    inserted = f"{new}, CASE WHEN {new} = 'verified' THEN {link} ELSE {other} END"
    held, held_link = f"am.{service}_status", f"am.{service}_url"
    status = f"""CASE WHEN EXCLUDED.{service}_status IS NULL THEN {held}
        WHEN EXCLUDED.{service}_status = 'verified' THEN 'verified'
        WHEN {held} IN ('verified', 'absent') THEN {held}
        ELSE EXCLUDED.{service}_status END"""
    replaced = "" if fallback else f" AND EXCLUDED.{service}_status IN ('verified', 'absent')"
    url = f"""CASE WHEN {held} IS DISTINCT FROM 'verified'{replaced}
        THEN EXCLUDED.{service}_url ELSE {held_link} END"""
    return inserted, f"{service}_status = {status}, {service}_url = {url}"


# Each service with a verdict, and whether a link not verified falls back to a search link.
_VERDICT_SERVICES: tuple[tuple[LiteralString, bool], ...] = (
    ("spotify", True),
    ("apple_music", False),
    ("bandcamp", True),
)
_STREAMING = [_streaming(service, fallback) for service, fallback in _VERDICT_SERVICES]


def _album_record_upsert() -> LiteralString:
    extra = ", ".join(f"{name} {kind}" for name, kind in _RECORD_TYPES.items())
    merged_columns = ", ".join(f"{s}_status, {s}_url" for s, _ in _VERDICT_SERVICES)
    return f"""
INSERT INTO album_metadata AS am (album_id, {", ".join(_PLAIN)}, {merged_columns}, updated_at)
SELECT v.album_id, {", ".join(f"v.{name}" for name in _PLAIN)},
    {", ".join(inserted for inserted, _ in _STREAMING)}, now()
FROM json_to_recordset(%s::json) AS v(album_id int, {_recordset_columns()}, {extra})
ON CONFLICT (album_id) DO UPDATE SET
    {", ".join(f"{name} = EXCLUDED.{name}" for name in _PLAIN)},
    {", ".join(assigned for _, assigned in _STREAMING)},
    -- A re-ask of an album already matched counts towards the station's re-ask cap; a first
    -- match (a no-match's search-link shell included) does not.
    streaming_reask_attempts = am.streaming_reask_attempts
        + (am.artwork_url IS NOT NULL OR am.discogs_url IS NOT NULL)::int,
    updated_at = EXCLUDED.updated_at
"""


_ALBUM_REPLACE = _album_record_upsert()


def _json(value: object) -> str:
    # Claim times travel as ISO text with microseconds and offset: equal on the way back.
    return json.dumps(value, default=datetime.isoformat)


def finalize_rows(conn: psycopg.Connection, plans: Sequence[FinalizePlan]) -> set[int]:
    """Write terminal verdicts; returns the ids written. The rest raced (swept or finalized
    by someone else since the claim) and were not touched. Run inside the caller's transaction.
    """
    if not plans:
        return set()
    records = [
        {
            "id": p.flowsheet_id,
            "enriching_since": p.enriching_since,
            "status": p.status,
            "album_id": p.album_id,
            "fill_only": p.fill_only,
            "composer": p.composer,
            "composer_source": p.composer_source,
            **p.columns,
        }
        for p in plans
    ]
    written = {row[0] for row in conn.execute(_FINALIZE, (_json(records),)).fetchall()}
    # One album_metadata row per album: ON CONFLICT may not touch a row twice in a statement,
    # and a match for the album beats a no-match's search links.
    albums: dict[int, FinalizePlan] = {}
    for plan in plans:
        if plan.album_id is None or plan.flowsheet_id not in written:
            continue
        held = albums.get(plan.album_id)
        if held is None or (held.fill_only and not plan.fill_only):
            albums[plan.album_id] = plan
    replace = [{"album_id": a, **p.columns} for a, p in albums.items() if not p.fill_only]
    fill = [{"album_id": a, **p.columns} for a, p in albums.items() if p.fill_only]
    if replace:
        conn.execute(_ALBUM_REPLACE, (_json(replace),))
    if fill:
        conn.execute(_ALBUM_FILL, (_json(fill),))
    return written


@dataclass(frozen=True)
class Release:
    """A claimed row going back to `pending` after `delay_s`, or parked (`failed_no_retry`).
    `fault`: the failure was the row's own (it counts towards parking)."""

    flowsheet_id: int
    enriching_since: datetime
    error: str
    delay_s: float
    park: bool = False
    fault: bool = False


_RELEASE = """
WITH released AS (
    UPDATE flowsheet AS f
    SET metadata_status = (CASE WHEN v.park THEN 'failed_no_retry' ELSE 'pending' END)
            ::metadata_status_enum,
        enriching_since = NULL
    FROM json_to_recordset(%s::json) AS v(
        id int, enriching_since timestamptz, error text, delay_s float8, park boolean,
        fault boolean)
    WHERE f.id = v.id AND f.metadata_status = 'enriching'
      AND f.enriching_since = v.enriching_since
    RETURNING f.id, v.error, v.delay_s, v.park, v.fault
)
INSERT INTO wx_orchestration.enrichment_attempts AS a
    (flowsheet_id, attempts, faults, last_error, last_attempt_at, next_attempt_at,
     parked_reason)
SELECT id, 1, fault::int, error, now(), now() + make_interval(secs => delay_s),
       CASE WHEN park THEN error END
FROM released
ON CONFLICT (flowsheet_id) DO UPDATE SET
    attempts = a.attempts + 1,
    faults = a.faults + EXCLUDED.faults,
    last_error = EXCLUDED.last_error,
    last_attempt_at = EXCLUDED.last_attempt_at,
    next_attempt_at = EXCLUDED.next_attempt_at,
    parked_reason = EXCLUDED.parked_reason
RETURNING flowsheet_id
"""


def release_rows(conn: psycopg.Connection, releases: Sequence[Release]) -> set[int]:
    """Return claimed rows to `pending` (or park them), recording the attempt; guarded like
    `finalize_rows`. Returns the ids released. Run inside the caller's transaction."""
    if not releases:
        return set()
    records = [
        {
            "id": r.flowsheet_id,
            "enriching_since": r.enriching_since,
            "error": r.error,
            "delay_s": r.delay_s,
            "park": r.park,
            "fault": r.fault,
        }
        for r in releases
    ]
    return {row[0] for row in conn.execute(_RELEASE, (_json(records),)).fetchall()}


@dataclass(frozen=True)
class PendingDay:
    day: date
    rows: int
    max_id: int


# Walks the pending partial index (the whole predicate is repeated), so its cost follows the
# size of the backlog, not of the flowsheet.
_PENDING_DAYS = f"""
SELECT (f.add_time AT TIME ZONE %(tz)s)::date AS day, count(*), max(f.id)
FROM flowsheet AS f
WHERE {CLAIMABLE}
  AND f.add_time < now() - make_interval(secs => %(grace_s)s)
GROUP BY day
ORDER BY day DESC
LIMIT %(limit)s
"""


def pending_days(
    conn: psycopg.Connection, *, tz: str, grace_s: float, limit: int
) -> list[PendingDay]:
    """The newest `limit` days (in `tz`) holding claimable rows added at least `grace_s` ago."""
    rows = conn.execute(_PENDING_DAYS, {"tz": tz, "grace_s": grace_s, "limit": limit}).fetchall()
    return [PendingDay(*row) for row in rows]
