from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wx_orchestration.contracts.lml import BulkResolveResponse, BulkResolveTrack
from wx_orchestration.core.identity import (
    CompilationWrite,
    CtaRow,
    CtaUpdate,
    IdentityDiff,
    IdentityTotals,
    LibraryRow,
    diff_writes,
    plan_batch,
    plan_track_credits,
)


def rows(*ids: int) -> list[LibraryRow]:
    return [LibraryRow(i, f"Artist {i}", f"Album {i}", 1000 + i) for i in ids]


def single(library_id: int, **overrides: Any) -> dict[str, Any]:
    result = {
        "kind": "single_artist",
        "library_id": library_id,
        "method": "exact_match",
        "confidence": 0.9,
        "main": {
            "wikidata_qid": "Q1",
            "spotify_artist_id": "sp1",
            "apple_music_artist_id": "am1",
            "discogs_artist_id": 7,
        },
        "provenance": [
            {"source": "discogs", "method": "exact_match", "confidence": 0.9, "external_id": "7"}
        ],
    }
    result.update(overrides)
    return result


def response(results: list[dict[str, Any]], **extra: Any) -> BulkResolveResponse:
    return BulkResolveResponse.model_validate({"results": results, **extra})


def totals_of(sent: list[LibraryRow], resp: BulkResolveResponse) -> IdentityTotals:
    plan = plan_batch(sent, resp)
    totals = IdentityTotals(scanned=len(sent))
    plan.apply_to(
        totals,
        written=len(plan.writes),
        compilations_written=len(plan.compilations),
        writer_errors=0,
    )
    return totals


def test_single_artist_maps_main_ids_and_sources() -> None:
    plan = plan_batch(rows(1), response([single(1)]))
    (write,) = plan.writes
    assert (write.method, write.confidence) == ("exact_match", 0.9)
    assert (write.wikidata_qid, write.spotify_id, write.apple_music_id) == ("Q1", "sp1", "am1")
    assert [(s.source, s.external_id) for s in write.sources] == [("discogs", "7")]


def test_null_confidence_and_null_external_id_sources_are_skipped_and_counted() -> None:
    provenance = [
        {"source": "discogs", "method": "exact_match", "confidence": None, "external_id": "1"},
        {"source": "spotify", "method": "exact_match", "confidence": 0.7, "external_id": None},
        {"source": "wikidata", "method": "trigram", "confidence": 0.6, "external_id": "Q9"},
    ]
    plan = plan_batch(rows(1), response([single(1, provenance=provenance)]))
    assert [s.source for s in plan.writes[0].sources] == ["wikidata"]
    assert plan.source_rows_skipped_null_confidence == 1
    assert plan.source_rows_skipped_null_external_id == 1


def test_a_source_named_twice_keeps_the_surest_claim() -> None:
    provenance = [
        {"source": "discogs", "method": "trigram", "confidence": 0.5, "external_id": "a"},
        {"source": "discogs", "method": "exact_match", "confidence": 0.8, "external_id": "b"},
    ]
    plan = plan_batch(rows(1), response([single(1, provenance=provenance)]))
    assert [(s.external_id, s.confidence) for s in plan.writes[0].sources] == [("b", 0.8)]


@pytest.mark.parametrize("missing", ["method", "confidence"])
def test_verdict_without_method_or_confidence_is_a_writer_error(missing: str) -> None:
    totals = totals_of(rows(1), response([single(1, **{missing: None})]))
    assert totals.rows_skipped["writer_error"] == 1
    assert totals.rows_resolved == 0


def test_unresolved_is_counted_for_stamping() -> None:
    plan = plan_batch(rows(1, 2), response([single(1), {"kind": "unresolved", "library_id": 2}]))
    assert plan.unresolved_ids == [2]


TRACK = {"artist_name": "A", "track_title": "T", "resolved_artist_name": "A", "confidence": 0.8}


@pytest.mark.parametrize(
    ("version_field", "fields", "resolved"),
    [
        # A current LML answers the contract version null even when asked for tracks.
        ({"tracks_contract_version": None}, {"tracks_attempted": True}, True),
        ({}, {"tracks_attempted": True, "tracks": []}, True),  # visited, matched nothing
        ({"tracks_contract_version": 1}, {"tracks_attempted": True}, True),
        ({}, {"tracks_attempted": False, "tracks": [TRACK]}, True),  # listed tracks win
        ({}, {"tracks": [TRACK]}, True),
        ({"tracks_contract_version": 1}, {"tracks_attempted": False}, False),
        ({}, {"tracks_attempted": None}, False),
        ({}, {}, False),  # an LML that predates tracks says nothing of them
    ],
)
def test_compilation_resolves_when_lml_attempted_or_listed_its_tracks(
    version_field: dict[str, Any], fields: dict[str, Any], resolved: bool
) -> None:
    result = {"kind": "compilation", "library_id": 1, **fields}
    plan = plan_batch(rows(1), response([result], **version_field))
    totals = totals_of(rows(1), response([result], **version_field))
    assert totals.rows_resolved_compilation == (1 if resolved else 0)
    assert totals.rows_skipped["compilation"] == (0 if resolved else 1)
    # Resolved or not, a compilation LML answered is stamped so the next run waits.
    assert len(plan.compilations) + len(plan.unvisited_compilation_ids) == 1


def test_short_response_counts_missing_inputs_as_cardinality_mismatch() -> None:
    totals = totals_of(rows(1, 2, 3), response([single(1), single(2)]))
    assert totals.rows_skipped["lml_cardinality_mismatch"] == 1
    assert totals.rows_resolved == 2
    assert totals.balanced()


def test_foreign_id_is_untrusted_and_not_written() -> None:
    plan = plan_batch(rows(1, 2), response([single(1), single(99)]))
    assert [w.library_id for w in plan.writes] == [1]
    assert plan.skipped["lml_untrusted_library_id"] == 1
    assert plan.skipped["lml_cardinality_mismatch"] == 0


def test_duplicate_id_keeps_the_first_verdict_and_counts_the_second_as_untrusted() -> None:
    second = single(1, method="llm", confidence=0.3)
    plan = plan_batch(rows(1, 2), response([single(1), second]))
    assert [(w.library_id, w.method) for w in plan.writes] == [(1, "exact_match")]
    assert plan.skipped["lml_untrusted_library_id"] == 1


def test_over_long_response_keeps_the_identity_and_reports_extra_results() -> None:
    totals = totals_of(rows(1, 2), response([single(1), single(2), single(2), single(5)]))
    assert totals.rows_resolved == 2
    assert totals.lml_extra_results == 2
    assert totals.balanced()


result_strategy = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["single_artist", "compilation", "unresolved"]),
        "library_id": st.integers(1, 12),
        "method": st.one_of(st.none(), st.just("exact_match")),
        "confidence": st.one_of(st.none(), st.floats(0, 1)),
        "tracks_attempted": st.booleans(),
    }
)


@given(
    sent_ids=st.sets(st.integers(1, 10), min_size=1, max_size=8),
    results=st.lists(result_strategy, max_size=14),
    version=st.sampled_from([None, 1, 2]),
)
def test_scanned_always_equals_the_sum_of_the_buckets(
    sent_ids: set[int], results: list[dict[str, Any]], version: int | None
) -> None:
    sent = rows(*sorted(sent_ids))
    totals = totals_of(sent, response(results, tracks_contract_version=version))
    assert totals.balanced(), totals.as_dict()


def test_diff_reports_insert_update_and_unchanged() -> None:
    plan = plan_batch(rows(1, 2, 3), response([single(1), single(2), single(3)]))
    current_main = {
        2: {
            "method": "exact_match",
            "confidence": 0.9,
            "wikidata_qid": "Q1",
            "spotify_id": "sp1",
            "apple_music_id": "am1",
        },
        3: {
            "method": "trigram",
            "confidence": 0.9,
            "wikidata_qid": "Q1",
            "spotify_id": "sp1",
            "apple_music_id": "am1",
        },
    }
    current_sources = {
        (2, "discogs"): {"external_id": "7", "method": "exact_match", "confidence": 0.9},
    }
    diff = IdentityDiff()
    diff_writes(plan.writes, current_main, current_sources, diff)
    assert diff.counts == {
        "main_insert": 1,
        "main_update": 1,
        "main_unchanged": 1,
        "source_insert": 2,
        "source_update": 0,
        "source_unchanged": 1,
    }
    update = next(c for c in diff.changes if c.action == "update")
    assert (update.library_id, update.fields) == (3, ("method",))


def test_totals_use_the_documented_names() -> None:
    names = IdentityTotals().as_dict()
    assert set(names) >= {
        "scanned",
        "rows_resolved",
        "rows_resolved_compilation",
        "rows_unresolved",
        "rows_skipped",
        "source_rows_skipped_null_confidence",
        "source_rows_skipped_null_external_id",
        "lml_total_calls",
        "lml_total_latency_ms",
    }
    assert set(names["rows_skipped"]) == {
        "compilation",
        "lml_error",
        "writer_error",
        "lml_cardinality_mismatch",
        "lml_untrusted_library_id",
    }


def cta(row_id: int, artist: str, title: str | None = "T", **overrides: Any) -> CtaRow:
    values: dict[str, Any] = {
        "id": row_id,
        "library_id": 1,
        "artist_name": artist,
        "track_title": title,
        "track_position": None,
        "track_artist_id": None,
        "track_artist_link_confidence": None,
        "track_artist_link_method": None,
        **overrides,
    }
    return CtaRow(**values)


def credit(artist: str, title: str | None = "T", **overrides: Any) -> BulkResolveTrack:
    values = {
        "artist_name": artist,
        "track_title": title,
        "resolved_artist_name": artist,
        "confidence": 0.8,
        **overrides,
    }
    return BulkResolveTrack.model_validate(values)


def track_plan(rows_: list[CtaRow], tracks: list[BulkResolveTrack], ids: dict[str, int | None]):
    return plan_track_credits([CompilationWrite(1, tuple(tracks))], rows_, ids)


def test_track_credit_links_the_echoed_row_to_its_catalog_artist() -> None:
    plan = track_plan([cta(10, "A")], [credit("A", track_position="B2")], {"A": 7})
    assert plan.updates == [CtaUpdate(10, 7, 0.8, "B2")]


def test_track_credits_keep_librarian_links_and_skip_misses_and_strangers() -> None:
    rows_ = [cta(10, "A", track_artist_link_method="librarian"), cta(11, "B")]
    tracks = [credit("A"), credit("B", resolved_artist_name=None), credit("Nobody")]
    plan = track_plan(rows_, tracks, {"A": 7})
    assert plan.updates == []
    assert plan.counts["compilation_track_rows_skipped_librarian"] == 1
    assert plan.counts["compilation_track_rows_skipped_no_cta_match"] == 1


def test_track_credit_without_a_single_catalog_artist_links_null() -> None:
    plan = track_plan([cta(10, "A")], [credit("A", confidence=1.5)], {"A": None})
    assert plan.updates == [CtaUpdate(10, None, None, None)]
    assert plan.counts["compilation_track_rows_skipped_no_catalog_artist"] == 1


def test_unchanged_track_credit_is_not_written() -> None:
    # 0.1 is not a float4: the stored value reads back as 0.10000000149.
    row = cta(
        10,
        "A",
        track_artist_id=7,
        track_artist_link_confidence=0.10000000149011612,
        track_artist_link_method="lml_backfill",
        track_position="3",
    )
    plan = track_plan([row], [credit("A", confidence=0.1, track_position="4")], {"A": 7})
    assert plan.updates == []
    assert plan.counts["compilation_track_rows_skipped_unchanged"] == 1


def test_track_position_is_written_only_when_one_fits() -> None:
    rows_ = [cta(10, "A"), cta(11, "B")]
    tracks = [
        credit("A", track_position="1"),
        credit("A", track_position="2"),
        credit("B", track_position="x" * 21),
    ]
    plan = track_plan(rows_, tracks, {"A": 7, "B": 8})
    assert [(u.cta_id, u.position) for u in plan.updates] == [(10, None), (11, None)]
    assert plan.counts["compilation_track_position_rows_skipped_ambiguous"] == 1
