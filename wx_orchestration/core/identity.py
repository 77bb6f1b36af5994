"""Library identity verdict rules and totals (DESIGN.md §6, §7). Pure: no I/O, no Dagster.

Every library row sent to LML ends in exactly one outcome bucket, so `scanned` always equals
the sum of the buckets. Results are matched to inputs by `library_id`: a result for an id that
was not sent, or a second result for an id already answered, is not written and takes the
place of the input it displaced (`lml_untrusted_library_id`); inputs left without an answer
beyond those are `lml_cardinality_mismatch`. Results beyond the number of inputs have no input
to displace; they are counted in `lml_extra_results`, outside the identity.
"""

from __future__ import annotations

import statistics
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wx_orchestration.contracts.lml import BulkResolveResponse, BulkResolveResult, BulkResolveTrack

WRITER_NOTE = "written by wx_orchestration library_identity refresh"
SKIP_REASONS = (
    "compilation",
    "lml_error",
    "writer_error",
    "lml_cardinality_mismatch",
    "lml_untrusted_library_id",
)
MAIN_DIFF_FIELDS = ("method", "confidence", "wikidata_qid", "spotify_id", "apple_music_id")
SOURCE_DIFF_FIELDS = ("external_id", "method", "confidence")
# Per-track credit counters, named as the station's consumer names them; they count
# `compilation_track_artist` rows, not library ids, so they stay outside the identity.
TRACK_COUNTERS = (
    "compilation_track_rows_written",
    "compilation_track_rows_skipped_unchanged",
    "compilation_track_rows_skipped_librarian",
    "compilation_track_rows_skipped_no_cta_match",
    "compilation_track_rows_skipped_no_catalog_artist",
    "compilation_track_position_rows_written",
    "compilation_track_position_rows_skipped_ambiguous",
)
TRACK_LINK_METHOD = "lml_backfill"
LIBRARIAN_LINK_METHOD = "librarian"
# `compilation_track_artist.track_position` is varchar(20); LML's is unbounded text.
TRACK_POSITION_MAX_CHARS = 20


@dataclass(frozen=True)
class LibraryRow:
    library_id: int
    artist_name: str
    album_title: str
    legacy_release_id: int

    def as_input(self) -> dict[str, Any]:
        return {
            "library_id": self.library_id,
            "artist_name": self.artist_name,
            "album_title": self.album_title,
            "legacy_release_id": self.legacy_release_id,
        }


@dataclass(frozen=True)
class SourceRow:
    library_id: int
    source: str
    external_id: str
    method: str
    confidence: float


@dataclass(frozen=True)
class IdentityWrite:
    """Everything written for one `single_artist` library id, all or nothing."""

    library_id: int
    method: str
    confidence: float
    wikidata_qid: str | None
    spotify_id: str | None
    apple_music_id: str | None
    sources: tuple[SourceRow, ...]


@dataclass(frozen=True)
class CompilationWrite:
    """A resolved compilation: its track credits and its stamp, all or nothing."""

    library_id: int
    tracks: tuple[BulkResolveTrack, ...]


def _track_counts() -> dict[str, int]:
    return dict.fromkeys(TRACK_COUNTERS, 0)


@dataclass
class IdentityTotals:
    scanned: int = 0
    rows_resolved: int = 0
    rows_resolved_compilation: int = 0
    rows_unresolved: int = 0
    rows_skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    source_rows_skipped_null_confidence: int = 0
    source_rows_skipped_null_external_id: int = 0
    lml_total_calls: int = 0
    lml_total_latency_ms: float = 0.0
    lml_extra_results: int = 0
    track_rows: dict[str, int] = field(default_factory=_track_counts)
    lml_latencies_ms: list[float] = field(default_factory=list)

    def skip(self, reason: str, count: int = 1) -> None:
        self.rows_skipped[reason] += count

    def record(self, latency_ms: float) -> None:
        """Called by the LML client for every HTTP attempt (it is an `LmlCallRecorder`)."""
        self.lml_total_calls += 1
        self.lml_total_latency_ms += latency_ms
        self.lml_latencies_ms.append(latency_ms)

    def outcome_sum(self) -> int:
        return (
            self.rows_resolved
            + self.rows_resolved_compilation
            + self.rows_unresolved
            + sum(self.rows_skipped.values())
        )

    def balanced(self) -> bool:
        return self.scanned == self.outcome_sum()

    def lml_error_rate(self) -> float:
        return self.rows_skipped["lml_error"] / self.scanned if self.scanned else 0.0

    def latency_percentiles(self) -> dict[str, float]:
        samples = sorted(self.lml_latencies_ms)
        if not samples:
            return {"p50": 0.0, "p95": 0.0}
        if len(samples) == 1:
            return {"p50": samples[0], "p95": samples[0]}
        cuts = statistics.quantiles(samples, n=100, method="inclusive")
        return {"p50": round(cuts[49], 2), "p95": round(cuts[94], 2)}

    def as_dict(self) -> dict[str, Any]:
        """The `totals` metadata exactly as DESIGN.md §7 names it, plus `lml_extra_results` and
        the per-track credit counters."""
        return {
            "scanned": self.scanned,
            "rows_resolved": self.rows_resolved,
            "rows_resolved_compilation": self.rows_resolved_compilation,
            "rows_unresolved": self.rows_unresolved,
            "rows_skipped": dict(self.rows_skipped),
            "source_rows_skipped_null_confidence": self.source_rows_skipped_null_confidence,
            "source_rows_skipped_null_external_id": self.source_rows_skipped_null_external_id,
            "lml_total_calls": self.lml_total_calls,
            "lml_total_latency_ms": round(self.lml_total_latency_ms, 3),
            "lml_extra_results": self.lml_extra_results,
            **self.track_rows,
        }


@dataclass
class BatchPlan:
    """What one bulk-resolve answer means for the batch that was sent."""

    writes: list[IdentityWrite] = field(default_factory=list)
    compilations: list[CompilationWrite] = field(default_factory=list)
    unresolved_ids: list[int] = field(default_factory=list)
    # Compilations LML answered without visiting their tracks: skipped, yet stamped like
    # unresolved rows so they wait out the retry window instead of being re-sent every run.
    unvisited_compilation_ids: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    source_rows_skipped_null_confidence: int = 0
    source_rows_skipped_null_external_id: int = 0
    extra_results: int = 0

    @property
    def stamp_only_ids(self) -> list[int]:
        """Ids whose only write is the `unresolved_attempted_at` stamp."""
        return [*self.unresolved_ids, *self.unvisited_compilation_ids]

    def apply_to(
        self,
        totals: IdentityTotals,
        *,
        written: int,
        compilations_written: int,
        writer_errors: int,
        track_rows: Mapping[str, int] | None = None,
    ) -> None:
        """Fold this plan into the run totals once its writes succeeded or failed."""
        totals.rows_resolved += written
        totals.rows_unresolved += len(self.unresolved_ids)
        totals.rows_resolved_compilation += compilations_written
        for name, count in (track_rows or {}).items():
            totals.track_rows[name] += count
        for reason, count in self.skipped.items():
            totals.skip(reason, count)
        totals.skip("writer_error", writer_errors)
        totals.source_rows_skipped_null_confidence += self.source_rows_skipped_null_confidence
        totals.source_rows_skipped_null_external_id += self.source_rows_skipped_null_external_id
        totals.lml_extra_results += self.extra_results


def compilation_resolved(result: BulkResolveResult) -> bool:
    """LML's per-track matcher visited this compilation: it says so, or it listed tracks.

    The station's consumer also demands `tracks_contract_version == 1`, which a current LML
    answers null even when asked for tracks, so there no compilation ever resolves. An LML that
    predates the tracks contract sends neither field, so it still cannot resolve one here.
    """
    return result.tracks_attempted is True or bool(result.tracks)


def _source_rows(result: BulkResolveResult, plan: BatchPlan) -> tuple[SourceRow, ...]:
    best: dict[str, SourceRow] = {}
    for entry in result.provenance:
        if entry.confidence is None:
            plan.source_rows_skipped_null_confidence += 1
            continue
        if entry.external_id is None:
            plan.source_rows_skipped_null_external_id += 1
            continue
        row = SourceRow(
            result.library_id, entry.source, entry.external_id, entry.method, entry.confidence
        )
        # One row per (library_id, source): LML naming a source twice keeps its surest claim.
        if entry.source not in best or row.confidence > best[entry.source].confidence:
            best[entry.source] = row
    return tuple(best.values())


def single_artist_write(result: BulkResolveResult, plan: BatchPlan) -> IdentityWrite | None:
    """The write for a `single_artist` verdict, or None when it lacks method or confidence."""
    if not result.method or result.confidence is None:
        return None
    main = result.main
    return IdentityWrite(
        library_id=result.library_id,
        method=result.method,
        confidence=result.confidence,
        wikidata_qid=main.wikidata_qid if main else None,
        spotify_id=main.spotify_artist_id if main else None,
        apple_music_id=main.apple_music_artist_id if main else None,
        sources=_source_rows(result, plan),
    )


def plan_batch(sent: Sequence[LibraryRow], response: BulkResolveResponse) -> BatchPlan:
    plan = BatchPlan()
    sent_ids = {row.library_id for row in sent}
    answered: set[int] = set()
    untrusted = 0
    for result in response.results:
        if result.library_id not in sent_ids or result.library_id in answered:
            untrusted += 1
            continue
        answered.add(result.library_id)
        if result.kind == "unresolved":
            plan.unresolved_ids.append(result.library_id)
        elif result.kind == "compilation":
            if compilation_resolved(result):
                plan.compilations.append(
                    CompilationWrite(result.library_id, tuple(result.tracks or ()))
                )
            else:
                plan.skipped["compilation"] += 1
                plan.unvisited_compilation_ids.append(result.library_id)
        else:
            write = single_artist_write(result, plan)
            if write is None:
                plan.skipped["writer_error"] += 1
            else:
                plan.writes.append(write)
    missing = len(sent_ids) - len(answered)
    displaced = min(missing, untrusted)
    plan.skipped["lml_untrusted_library_id"] += displaced
    plan.skipped["lml_cardinality_mismatch"] += missing - displaced
    plan.extra_results = untrusted - displaced
    return plan


@dataclass(frozen=True)
class CtaRow:
    """The `compilation_track_artist` columns the credit plan reads."""

    id: int
    library_id: int
    artist_name: str
    track_title: str | None
    track_position: str | None
    track_artist_id: int | None
    track_artist_link_confidence: float | None
    track_artist_link_method: str | None


@dataclass(frozen=True)
class CtaUpdate:
    cta_id: int
    track_artist_id: int | None
    confidence: float | None
    # None leaves the row's position as it is.
    position: str | None


@dataclass
class TrackPlan:
    updates: list[CtaUpdate] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=_track_counts)


def credited_artist_names(compilations: Iterable[CompilationWrite]) -> set[str]:
    """The names LML credited, to be matched against the station's `artists`."""
    return {
        track.resolved_artist_name
        for compilation in compilations
        for track in compilation.tracks
        if track.resolved_artist_name is not None
    }


def _float4(value: float | None) -> float | None:
    # `real` columns hold float4: compare a wire double at the precision it will be stored in.
    return None if value is None else struct.unpack("f", struct.pack("f", value))[0]


def _offered_position(
    row: CtaRow, tracks: Sequence[BulkResolveTrack], counts: dict[str, int]
) -> str | None:
    """The one position to write into an empty `track_position`, if LML offered exactly one."""
    if row.track_position is not None:
        return None
    offered = {t.track_position for t in tracks if t.track_position is not None}
    if len(offered) > 1:
        counts["compilation_track_position_rows_skipped_ambiguous"] += 1
        return None
    position = next(iter(offered), None)
    if position is not None and len(position) > TRACK_POSITION_MAX_CHARS:
        # Too long for the column: writing it would fail every credit in the transaction.
        return None
    return position


def plan_track_credits(
    compilations: Iterable[CompilationWrite],
    cta_rows: Iterable[CtaRow],
    artist_ids: Mapping[str, int | None],
) -> TrackPlan:
    """What to write to `compilation_track_artist` for resolved compilations.

    The station's rules: a credit updates the row LML echoed back by (library_id, artist_name,
    track_title), never one a librarian linked; a miss (no resolved name) writes nothing; a name
    matching no single catalog artist links NULL; an out-of-range confidence is written NULL; a
    row already holding this verdict is not written at all (every statement on the table moves
    the catalog's Last-Modified, even one that changes nothing).
    """
    plan = TrackPlan()
    counts = plan.counts
    rows = {(r.library_id, r.artist_name, r.track_title): r for r in cta_rows}
    offered: dict[tuple[int, str, str | None], list[BulkResolveTrack]] = {}
    for compilation in compilations:
        for track in compilation.tracks:
            if track.resolved_artist_name is None or track.artist_name is None:
                continue
            key = (compilation.library_id, track.artist_name, track.track_title)
            offered.setdefault(key, []).append(track)
    for key, tracks in offered.items():
        row = rows.get(key)
        if row is None:
            counts["compilation_track_rows_skipped_no_cta_match"] += 1
            continue
        if row.track_artist_link_method == LIBRARIAN_LINK_METHOD:
            counts["compilation_track_rows_skipped_librarian"] += 1
            continue
        # LML echoing one key twice is its data problem; the last credit stands.
        track = tracks[-1]
        artist_id = artist_ids.get(track.resolved_artist_name or "")
        if artist_id is None:
            counts["compilation_track_rows_skipped_no_catalog_artist"] += 1
        confidence = track.confidence
        if confidence is not None and not 0.0 <= confidence <= 1.0:
            confidence = None
        position = _offered_position(row, tracks, counts)
        if (
            row.track_artist_id == artist_id
            and _float4(row.track_artist_link_confidence) == _float4(confidence)
            and row.track_artist_link_method == TRACK_LINK_METHOD
            and position is None
        ):
            counts["compilation_track_rows_skipped_unchanged"] += 1
            continue
        plan.updates.append(CtaUpdate(row.id, artist_id, confidence, position))
    return plan


@dataclass(frozen=True)
class Change:
    library_id: int
    target: str  # "main" or "source:<name>"
    action: str  # "insert" | "update"
    fields: tuple[str, ...]


@dataclass
class IdentityDiff:
    """What a real run would do to rows that exist now (DRY_RUN)."""

    counts: dict[str, int] = field(
        default_factory=lambda: {
            "main_insert": 0,
            "main_update": 0,
            "main_unchanged": 0,
            "source_insert": 0,
            "source_update": 0,
            "source_unchanged": 0,
        }
    )
    changes: list[Change] = field(default_factory=list)

    def record(self, kind: str, library_id: int, target: str, fields: Iterable[str]) -> None:
        fields = tuple(fields)
        if kind == "insert":
            action = "insert"
        elif fields:
            action = "update"
        else:
            self.counts[f"{target.split(':')[0]}_unchanged"] += 1
            return
        self.counts[f"{target.split(':')[0]}_{action}"] += 1
        self.changes.append(Change(library_id, target, action, fields))


def _changed(current: dict[str, Any], proposed: dict[str, Any], names: Iterable[str]) -> list[str]:
    changed = []
    for name in names:
        old, new = current.get(name), proposed.get(name)
        if isinstance(old, float) or isinstance(new, float):
            # `real` columns round-trip through float4; compare at its precision.
            if old is None or new is None or abs(float(old) - float(new)) > 1e-6:
                changed.append(name)
        elif old != new:
            changed.append(name)
    return changed


def diff_writes(
    writes: Iterable[IdentityWrite],
    current_main: dict[int, dict[str, Any]],
    current_sources: dict[tuple[int, str], dict[str, Any]],
    diff: IdentityDiff,
) -> None:
    """Add to `diff` what writing `writes` would change, given the rows that exist now."""
    for write in writes:
        proposed = {name: getattr(write, name) for name in MAIN_DIFF_FIELDS}
        existing = current_main.get(write.library_id)
        if existing is None:
            diff.record("insert", write.library_id, "main", MAIN_DIFF_FIELDS)
        else:
            diff.record(
                "update", write.library_id, "main", _changed(existing, proposed, MAIN_DIFF_FIELDS)
            )
        for source in write.sources:
            target = f"source:{source.source}"
            proposed_source = {name: getattr(source, name) for name in SOURCE_DIFF_FIELDS}
            existing_source = current_sources.get((write.library_id, source.source))
            if existing_source is None:
                diff.record("insert", write.library_id, target, SOURCE_DIFF_FIELDS)
            else:
                diff.record(
                    "update",
                    write.library_id,
                    target,
                    _changed(existing_source, proposed_source, SOURCE_DIFF_FIELDS),
                )
