"""What must hold after a station day, checked from the outside at rest.

Sources: the station's tables, `wx_orchestration.flowsheet_events` (one row per row version the
event log saw), `wx_orchestration.enrichment_attempts` and `dead_letters`, Redis (XINFO GROUPS),
the LML emulator's request log, Dagster's materializations and what the SSE listener received.
Each check returns a `Check` that names the offending rows and why, so a failing scenario says
exactly what went wrong.

"Degraded" verdicts are checked soundly rather than by guesswork: while the emulator answers
degraded, the writer gives every play a lookup key never used before (`unique_play`), so no
cached verdict can answer it. Such a play was inserted after the window opened, hence claimed
and looked up after it opened; if its `enriched_no_match` version was written (`updated_at`,
the finalize transaction's start, which follows the LML reply) before the window closed, that
verdict can only have come from a degraded reply. Plays with repeated keys are left out: a
no-match cached from a healthy reply earlier is a legitimate verdict.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from wx_orchestration.core.events import event_key
from wx_orchestration_tests.system.harness import LiveSubscriber, StationHarness, Window
from wx_orchestration_tests.system.station_day import TERMINAL_STATUSES

SHOW = 12  # ids quoted per failure message
# Frames of rows finalized shortly before the listener's last frame may still have been on
# their way (projector lag) when it lost the stream.
GAP_MARGIN_MS = 5000


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"[{'PASS' if self.ok else 'FAIL'}] {self.name}: {self.detail}"


def _ids(ids: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in list(ids)[:SHOW])
    return f"{shown}{' …' if len(ids) > SHOW else ''}"


@dataclass(frozen=True)
class TrackRow:
    id: int
    status: str
    artist: str | None
    add_time: datetime
    updated_at: datetime
    enriching_since: datetime | None
    attempts: int | None
    last_error: str | None
    parked_reason: str | None


def track_rows(conn: psycopg.Connection) -> list[TrackRow]:
    rows = conn.execute(
        """SELECT f.id, f.metadata_status::text, f.artist_name, f.add_time, f.updated_at,
                  f.enriching_since, a.attempts, a.last_error, a.parked_reason
           FROM flowsheet AS f
           LEFT JOIN wx_orchestration.enrichment_attempts AS a ON a.flowsheet_id = f.id
           WHERE f.entry_type = 'track' ORDER BY f.id"""
    ).fetchall()
    return [TrackRow(*row) for row in rows]


def event_versions(conn: psycopg.Connection) -> dict[int, list[tuple[datetime, str, str]]]:
    """flowsheet id → [(updated_at, metadata_status, action)] the event log holds."""
    out: dict[int, list[tuple[datetime, str, str]]] = {}
    for row_id, updated_at, status, action in conn.execute(
        """SELECT flowsheet_id, updated_at, metadata_status, action
           FROM wx_orchestration.flowsheet_events ORDER BY flowsheet_id, updated_at"""
    ):
        out.setdefault(row_id, []).append((updated_at, status, action))
    return out


def _blank(artist: str | None) -> bool:
    return artist is None or not artist.strip()


# --- the invariants ------------------------------------------------------------------------


def terminal_or_reasoned(rows: Sequence[TrackRow]) -> Check:
    """Every track row with an artist is terminal, or `pending` with a recorded reason."""
    stuck = [r.id for r in rows if not _blank(r.artist) and r.status == "enriching"]
    silent = [
        r.id for r in rows if not _blank(r.artist) and r.status == "pending" and not r.last_error
    ]
    unexplained = [r.id for r in rows if r.status == "failed_no_retry" and not r.parked_reason]
    problems = []
    if stuck:
        problems.append(f"{len(stuck)} stuck `enriching` ({_ids(stuck)})")
    if silent:
        problems.append(
            f"{len(silent)} `pending` with no attempt recorded — nothing is retrying them "
            f"and nobody was told ({_ids(silent)})"
        )
    if unexplained:
        problems.append(f"{len(unexplained)} parked without a reason ({_ids(unexplained)})")
    with_artist = [r for r in rows if not _blank(r.artist)]
    return Check(
        "terminal_or_pending_with_reason",
        not problems,
        "; ".join(problems) or f"{len(with_artist)} track rows with an artist accounted for",
        {"stuck": stuck, "silent_pending": silent, "unexplained_parked": unexplained},
    )


def blank_artists_untouched(
    rows: Sequence[TrackRow], versions: dict[int, list[tuple[datetime, str, str]]]
) -> Check:
    blank = [r for r in rows if _blank(r.artist)]
    touched = [
        r.id
        for r in blank
        if r.status != "pending"
        or r.attempts
        or any(status == "enriching" for _, status, _ in versions.get(r.id, []))
    ]
    return Check(
        "blank_artists_never_claimed",
        not touched,
        f"{len(touched)} blank-artist rows were claimed or changed ({_ids(touched)})"
        if touched
        else f"{len(blank)} blank-artist rows left pending, never claimed",
    )


def finalized_once(versions: dict[int, list[tuple[datetime, str, str]]]) -> Check:
    """No row reached a terminal status twice (no requeue runs in these scenarios)."""
    twice = {
        row_id: [
            f"{status}@{at:%H:%M:%S.%f}" for at, status, _ in found if status in TERMINAL_STATUSES
        ]
        for row_id, found in versions.items()
        if len({at for at, status, _ in found if status in TERMINAL_STATUSES}) > 1
    }
    detail = "; ".join(f"row {k}: {', '.join(v)}" for k, v in list(twice.items())[:SHOW])
    return Check(
        "finalized_once",
        not twice,
        f"{len(twice)} rows finalized more than once: {detail}"
        if twice
        else "no row has two terminal versions",
    )


def no_degraded_no_match(
    windows: Sequence[Window],
    unique_plays: Sequence[tuple[int, float]],
    versions: dict[int, list[tuple[datetime, str, str]]],
    requests: Sequence[dict[str, Any]],
) -> Check:
    degraded = [w for w in windows if w.fault == "degraded"]
    if not degraded:
        return Check("no_no_match_from_degraded_replies", True, "no degraded window in this run")
    offenders = []
    probed = 0
    for window in degraded:
        end = window.ended if window.ended is not None else float("inf")
        for row_id, inserted in unique_plays:
            if inserted < window.started or inserted > end:
                continue
            probed += 1
            for at, status, _ in versions.get(row_id, []):
                if status == "enriched_no_match" and at.timestamp() <= end:
                    offenders.append(row_id)
    lookups_in_window = sum(
        1
        for r in requests
        if "lookup" in r["path"]
        and any(w.started <= r["ts"] <= (w.ended or float("inf")) for w in degraded)
    )
    return Check(
        "no_no_match_from_degraded_replies",
        not offenders,
        f"{len(offenders)} rows written enriched_no_match from a degraded reply ({_ids(offenders)})"
        if offenders
        else f"{probed} fresh plays looked up while degraded ({lookups_in_window} lookup calls); "
        "none written as no-match",
        {"probed": probed, "lookup_calls_degraded": lookups_in_window},
    )


def streams_drained(harness: StationHarness, groups: Sequence[str]) -> Check:
    stats = {g.name: g for g in harness.group_stats()}
    problems = []
    for name in groups:
        group = stats.get(name)
        if group is None:
            problems.append(f"group {name} missing on wx:cdc")
        elif group.pending or group.lag:
            summary: Any = harness.redis().xpending("wx:cdc", name)
            problems.append(
                f"group {name}: pending {group.pending}, lag {group.lag} "
                f"(oldest pending {summary.get('min')}, consumers {summary.get('consumers')})"
            )
    return Check(
        "every_stream_entry_processed",
        not problems,
        "; ".join(problems) or ", ".join(f"{n}: pending 0, lag 0" for n in groups),
    )


def event_log_complete(
    conn: psycopg.Connection, versions: dict[int, list[tuple[datetime, str, str]]]
) -> Check:
    """Every row's current version reached the event log (nothing lost across restarts)."""
    logged = {
        key for (key,) in conn.execute("SELECT event_key FROM wx_orchestration.flowsheet_events")
    }
    missing = []
    for row_id, updated_at, status in conn.execute(
        "SELECT id, updated_at, metadata_status::text FROM flowsheet"
    ):
        if event_key(row_id, updated_at, status) not in logged:
            missing.append(row_id)
    return Check(
        "event_log_has_every_row_version",
        not missing,
        f"{len(missing)} rows' current version never reached the event log ({_ids(missing)})"
        if missing
        else f"{len(versions)} rows, current version of each logged",
    )


def dead_letters_reasoned(conn: psycopg.Connection) -> Check:
    rows = conn.execute(
        "SELECT id, source, reason FROM wx_orchestration.dead_letters ORDER BY id"
    ).fetchall()
    blank = [row[0] for row in rows if not (row[2] or "").strip()]
    reasons = Counter(_reason_class(row[2] or "") for row in rows)
    return Check(
        "dead_letters_have_reasons",
        not blank,
        f"{len(blank)} dead letters without a reason ({_ids(blank)})"
        if blank
        else f"{len(rows)} dead letters, each with a reason",
        {"dead_letters": len(rows), "by_reason": dict(reasons)},
    )


def identity_totals_balance(
    materializations: Sequence[dict[str, Any]], expected_shards: Sequence[str]
) -> Check:
    problems = []
    found = {m["partition"] for m in materializations}
    missing = sorted(set(expected_shards) - found)
    if missing:
        problems.append(f"no materialization for shard(s) {', '.join(missing)}")
    for m in materializations:
        totals = m["totals"] or {}
        skipped = totals.get("rows_skipped") or {}
        outcome = (
            totals.get("rows_resolved", 0)
            + totals.get("rows_resolved_compilation", 0)
            + totals.get("rows_unresolved", 0)
            + sum(skipped.values())
        )
        if totals.get("scanned") != outcome:
            problems.append(
                f"shard {m['partition']}: scanned {totals.get('scanned')} ≠ sum of outcomes "
                f"{outcome} ({totals})"
            )
    scanned = sum((m["totals"] or {}).get("scanned", 0) for m in materializations)
    return Check(
        "identity_totals_balance",
        not problems,
        "; ".join(problems)
        or f"{len(materializations)} shard refresh(es), {scanned} rows scanned, all balanced",
        {"materializations": list(materializations)},
    )


def live_updates_delivered(
    subscriber: LiveSubscriber | None,
    rows: Sequence[TrackRow],
    versions: dict[int, list[tuple[datetime, str, str]]],
    run_started: datetime,
) -> Check:
    if subscriber is None or not subscriber.available:
        return Check(
            "live_feed_update_for_every_terminal_row",
            True,
            "SKIPPED: the sidecar serves no /events/stream (live role absent)",
            {"skipped": True},
        )
    now = datetime.now(UTC)
    window_start = now - timedelta(hours=23, minutes=50)  # a margin inside the 24 h window
    expected = [
        r
        for r in rows
        if r.status in TERMINAL_STATUSES
        and r.add_time >= window_start
        # Reached its terminal status during the run (not inserted already terminal).
        and any(s in ("pending", "enriching") for _, s, _ in versions.get(r.id, []))
        and r.updated_at >= run_started
    ]
    # A `refetch` tells the client its list is stale: it reloads `/flowsheet/recent` (the
    # newest 200 rows) and what was finalized since its last frame (less a margin for frames
    # still in flight then) up to the reload is covered by it — rows
    # beyond the snapshot are outside what the app shows. What the snapshot does list must
    # be current: a row finalized a second or more before it, still shown unfinished, is a
    # stale snapshot.
    gaps = [(gap_from - GAP_MARGIN_MS, taken) for taken, gap_from, _ in subscriber.snapshots]
    by_id = {r.id: r for r in rows}
    stale = sorted(
        {
            entry["id"]
            for taken_ms, _, entries in subscriber.snapshots
            for entry in entries
            if isinstance(entry.get("id"), int)
            and entry.get("metadata_status") not in TERMINAL_STATUSES
            and (row := by_id.get(entry["id"])) is not None
            and row.status in TERMINAL_STATUSES
            and row.updated_at.timestamp() * 1000 < taken_ms - 1000
        }
    )
    missed = [r for r in expected if r.id not in subscriber.updates]
    covered = [
        r.id
        for r in missed
        if any(start <= r.updated_at.timestamp() * 1000 <= end for start, end in gaps)
    ]
    lost = [r.id for r in missed if r.id not in set(covered)]
    too_old = sorted(
        r.id
        for r in rows
        if r.add_time < now - timedelta(hours=24, minutes=10)
        and (r.id in subscriber.updates or r.id in subscriber.inserts)
    )
    problems = []
    if lost:
        problems.append(
            f"{len(lost)} terminal rows never reached the listener as `update`, nor were "
            f"finalized before a `refetch` told it to reload ({_ids(lost)})"
        )
    if stale:
        problems.append(
            f"{len(stale)} rows shown unfinished by a refetched snapshot ({_ids(stale)})"
        )
    if too_old:
        problems.append(
            f"{len(too_old)} rows older than 24 h were sent to listeners ({_ids(too_old)})"
        )
    if subscriber.duplicate_ids:
        problems.append(f"{subscriber.duplicate_ids} stream entries delivered twice across resumes")
    detail = (
        f"{len(expected) - len(missed)}/{len(expected)} as `update`, {len(covered)} by refetch; "
        f"{subscriber.connects} connections, {subscriber.resumes} Last-Event-ID resumes, "
        f"{subscriber.refetches} refetches"
    )
    return Check(
        "live_feed_update_for_every_terminal_row",
        not problems,
        "; ".join(problems) + f" ({detail})" if problems else detail,
        {
            "expected": len(expected),
            "by_update": len(expected) - len(missed),
            "by_refetch": len(covered),
            "lost": lost,
        },
    )


def _reason_class(reason: str) -> str:
    """A reason without its numbers, so that counts group by kind."""
    return re.sub(r"\d+(\.\d+)?", "N", reason)[:120]


def check_all(
    harness: StationHarness,
    subscriber: LiveSubscriber | None,
    *,
    groups: Sequence[str],
    unique_plays: Sequence[tuple[int, float]],
    identity_shards: Sequence[str],
    run_started: datetime,
) -> tuple[list[Check], dict[str, Any]]:
    assert harness.emulator is not None
    assert harness.dagster is not None
    requests = harness.emulator.requests()
    with harness.connect() as conn:
        rows = track_rows(conn)
        versions = event_versions(conn)
        checks = [
            terminal_or_reasoned(rows),
            blank_artists_untouched(rows, versions),
            finalized_once(versions),
            no_degraded_no_match(harness.emulator.windows, unique_plays, versions, requests),
            streams_drained(harness, groups),
            event_log_complete(conn, versions),
            dead_letters_reasoned(conn),
        ]
    checks.append(identity_totals_balance(harness.dagster.identity_totals(), identity_shards))
    checks.append(live_updates_delivered(subscriber, rows, versions, run_started))
    figures = _figures(rows, versions, requests, subscriber, checks, run_started)
    figures["fault_windows"] = fault_window_traffic(harness.emulator.windows, requests)
    identity = next(c for c in checks if c.name == "identity_totals_balance")
    figures["identity_totals"] = identity.figures.get("materializations", [])
    return checks, figures


def fault_window_traffic(
    windows: Sequence[Window], requests: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What LML was asked while each fault was on (shows that the fault was exercised: an open
    shared breaker, for one, means no call at all)."""
    out = []
    for w in windows:
        end = w.ended if w.ended is not None else float("inf")
        seen = Counter(
            f"{r['path'].rsplit('/', 1)[-1]} {r['status']}"
            for r in requests
            if w.started <= r["ts"] <= end and r["path"].startswith("/api/")
        )
        out.append(
            {
                "fault": w.fault,
                "seconds": round(end - w.started, 1) if w.ended is not None else None,
                "requests": dict(seen),
            }
        )
    return out


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def play_to_listener_ms(subscriber: LiveSubscriber | None, run_started: datetime) -> list[float]:
    """Receipt of a row's first terminal `update` - the play's add_time, per play written
    during the run; frames replayed after the listener's own absence are left out."""
    if subscriber is None:
        return []
    out = []
    for received in subscriber.updates.values():
        raw = received.payload.get("add_time")
        if not isinstance(raw, str) or received.replayed:
            continue
        added = datetime.fromisoformat(raw)
        if added >= run_started:
            out.append(received.received_ms - added.timestamp() * 1000)
    return out


def _figures(
    rows: Sequence[TrackRow],
    versions: dict[int, list[tuple[datetime, str, str]]],
    requests: Sequence[dict[str, Any]],
    subscriber: LiveSubscriber | None,
    checks: Sequence[Check],
    run_started: datetime,
) -> dict[str, Any]:
    statuses = Counter(r.status for r in rows)
    finalized_in_run = [
        r
        for r in rows
        if r.status in ("enriched_match", "enriched_no_match")
        and r.updated_at >= run_started
        and any(s in ("pending", "enriching") for _, s, _ in versions.get(r.id, []))
    ]
    lookups = [r for r in requests if r["path"].startswith("/api/v1/lookup")]
    resolves = [r for r in requests if r["path"].endswith("bulk-resolve-libraries")]
    pending_reasons = Counter(
        _reason_class(r.last_error or "") for r in rows if r.status == "pending" and r.last_error
    )
    parked = Counter(
        _reason_class(r.parked_reason or "") for r in rows if r.status == "failed_no_retry"
    )
    latencies = play_to_listener_ms(subscriber, run_started)
    dead = next((c.figures for c in checks if c.name == "dead_letters_have_reasons"), {})
    return {
        "plays": len(rows),
        "plays_with_artist": sum(1 for r in rows if not _blank(r.artist)),
        "statuses": dict(statuses),
        "enriched_in_run": len(finalized_in_run),
        "enriched_match": statuses.get("enriched_match", 0),
        "enriched_no_match": statuses.get("enriched_no_match", 0),
        "parked": dict(parked),
        "pending_with_reason": dict(pending_reasons),
        "dead_letters": dead.get("dead_letters", 0),
        "dead_letter_reasons": dead.get("by_reason", {}),
        "lml_lookup_calls": len(lookups),
        "lml_lookup_status": dict(Counter(str(r["status"]) for r in lookups)),
        "lml_resolve_calls": len(resolves),
        "lml_calls_per_enriched_row": round(len(lookups) / len(finalized_in_run), 3)
        if finalized_in_run
        else None,
        "latency_ms": sorted(round(v, 1) for v in latencies),
        "latency_p50_ms": _percentile(latencies, 0.5),
        "latency_p99_ms": _percentile(latencies, 0.99),
    }
