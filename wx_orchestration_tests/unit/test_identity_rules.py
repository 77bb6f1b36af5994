from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wx_orchestration.contracts.lml import BulkResolveResponse
from wx_orchestration.core.identity import (
    IdentityDiff,
    IdentityTotals,
    LibraryRow,
    diff_writes,
    plan_batch,
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
    plan.apply_to(totals, written=len(plan.writes), writer_errors=0)
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


@pytest.mark.parametrize(
    ("version_field", "attempted", "resolved"),
    [
        ({"tracks_contract_version": 1}, True, True),
        ({"tracks_contract_version": 1}, False, False),
        ({"tracks_contract_version": None}, True, False),  # key present, value null
        ({}, True, False),  # key absent
        ({"tracks_contract_version": 2}, True, False),
    ],
)
def test_compilation_counts_as_resolved_only_under_contract_v1_with_tracks(
    version_field: dict[str, Any], attempted: bool, resolved: bool
) -> None:
    result = {"kind": "compilation", "library_id": 1, "tracks_attempted": attempted}
    totals = totals_of(rows(1), response([result], **version_field))
    assert totals.rows_resolved_compilation == (1 if resolved else 0)
    assert totals.rows_skipped["compilation"] == (0 if resolved else 1)


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
