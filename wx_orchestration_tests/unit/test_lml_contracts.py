from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from wx_orchestration.contracts.lml import (
    LIVE_LOOKUPS,
    BulkLookupRequest,
    BulkLookupResponse,
    BulkResolveInput,
    BulkResolveResponse,
    HealthResponse,
    LookupItem,
    LookupResponse,
    normalize_lml_url,
)
from wx_orchestration.settings import Settings, SettingsError


def _single_artist(**overrides: object) -> dict[str, object]:
    result: dict[str, object] = {
        "kind": "single_artist",
        "library_id": 7,
        "provenance": [
            {"source": "discogs", "method": "exact_match", "confidence": 0.9, "external_id": "12"}
        ],
        "main": {"discogs_artist_id": 12, "wikidata_qid": "Q42"},
        "method": "cross_source_agreement",
        "confidence": 0.95,
    }
    result.update(overrides)
    return result


def test_bulk_resolve_response_ignores_unknown_keys_at_every_level() -> None:
    body = {
        "results": [
            {
                **_single_artist(),
                "future_field": {"nested": True},
                "provenance": [
                    {
                        "source": "musicbrainz",
                        "method": "trigram",
                        "confidence": 0.7,
                        "external_id": "abc",
                        "boost_sources": ["x"],
                    }
                ],
                "main": {"discogs_artist_id": 3, "new_catalog_id": "zz"},
            }
        ],
        "cache_stats": {"hits": 1},
        "tracks_contract_version": 1,
        "server_version": "9.9",
    }

    parsed = BulkResolveResponse.model_validate(body)

    result = parsed.results[0]
    assert result.kind == "single_artist"
    assert result.provenance[0].source == "musicbrainz"
    assert result.main is not None
    assert result.main.discogs_artist_id == 3
    assert result.main.spotify_artist_id is None
    assert parsed.tracks_contract_version == 1
    assert "future_field" not in result.model_dump()


def test_bulk_resolve_result_accepts_nulls_and_missing_optionals() -> None:
    body = {
        "results": [
            {
                "kind": "unresolved",
                "library_id": 1,
                "provenance": [
                    {"source": "wikidata", "method": "llm", "confidence": None, "external_id": None}
                ],
                "main": None,
            },
            {"kind": "compilation", "library_id": 2, "provenance": None, "tracks_attempted": True},
        ],
        "cache_stats": None,
    }

    parsed = BulkResolveResponse.model_validate(body)

    unresolved, compilation = parsed.results
    assert unresolved.provenance[0].confidence is None
    assert unresolved.provenance[0].external_id is None
    assert unresolved.main is None
    assert unresolved.method is None
    assert compilation.provenance == []
    assert compilation.tracks_attempted is True
    assert parsed.cache_stats is None
    assert parsed.tracks_contract_version is None


def test_numeric_external_ids_become_strings() -> None:
    parsed = BulkResolveResponse.model_validate(
        {
            "results": [
                _single_artist(
                    provenance=[
                        {"source": "discogs", "method": "m", "confidence": 1, "external_id": 99}
                    ]
                )
            ]
        }
    )

    assert parsed.results[0].provenance[0].external_id == "99"


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "duo"},
        {"library_id": "not-a-number"},
        {"confidence": 1.5},
        {"provenance": [{"source": "discogs", "method": "m", "confidence": -0.1}]},
    ],
)
def test_bulk_resolve_result_rejects_contract_violations(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BulkResolveResponse.model_validate({"results": [_single_artist(**bad)]})


def test_bulk_resolve_response_requires_results() -> None:
    with pytest.raises(ValidationError):
        BulkResolveResponse.model_validate({"cache_stats": {}})


@given(st.floats(min_value=0.0, max_value=1.0))
def test_any_confidence_in_range_is_kept(confidence: float) -> None:
    parsed = BulkResolveResponse.model_validate(
        {"results": [_single_artist(confidence=confidence)]}
    )

    assert parsed.results[0].confidence == confidence


def test_bulk_resolve_input_allows_a_null_artist_name() -> None:
    item = BulkResolveInput.model_validate(
        {"library_id": 1, "artist_name": None, "album_title": "A", "legacy_release_id": 5}
    )

    assert item.model_dump() == {
        "library_id": 1,
        "artist_name": None,
        "album_title": "A",
        "legacy_release_id": 5,
    }


def test_lookup_response_defaults_and_full_artwork() -> None:
    body = {
        "results": [
            {
                "library_item": {"id": 0, "title": "T", "artist": "A", "code": "Z 1"},
                "artwork": {
                    "release_id": 1,
                    "release_url": "https://www.discogs.com/release/1",
                    "artwork_url": "https://img.example/1.jpg",
                    "release_year": 1999,
                    "writer_credits": {"names": ["X", "Y"], "provenance": "discogs"},
                    "palette": ["#fff"],
                },
            },
            {"library_item": {"id": 5}},
        ],
        "search_type": "fallback",
    }

    parsed = LookupResponse.model_validate(body)

    assert parsed.degraded is False
    assert parsed.timeout is False
    assert parsed.degraded_reason is None
    first, second = parsed.results
    assert first.library_item.id == 0
    assert first.artwork is not None
    assert first.artwork.writer_credits is not None
    assert first.artwork.writer_credits.names == ["X", "Y"]
    assert first.artwork.spotify_url is None
    assert second.artwork is None
    assert second.library_item.title is None


def test_degraded_lookup_response() -> None:
    parsed = LookupResponse.model_validate(
        {
            "results": [],
            "search_type": "none",
            "degraded": True,
            "degraded_reason": "upstream_unavailable",
        }
    )

    assert parsed.degraded is True
    assert parsed.degraded_reason == "upstream_unavailable"


def test_unknown_search_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        LookupResponse.model_validate({"results": [], "search_type": "guess"})


@pytest.mark.parametrize(
    "status", ["match", "no_match", "error", "shed_limiter_saturated", "shed_breaker_open"]
)
def test_bulk_lookup_statuses(status: str) -> None:
    parsed = BulkLookupResponse.model_validate(
        {"results": [{"index": 3, "status": status, "lookup": None, "extra": 1}]}
    )

    assert parsed.results[0].status == status
    assert parsed.results[0].lookup is None
    assert parsed.results[0].message is None


def test_bulk_lookup_rejects_unknown_status() -> None:
    with pytest.raises(ValidationError):
        BulkLookupResponse.model_validate({"results": [{"index": 0, "status": "maybe"}]})


def test_lookup_item_request_omits_absent_optionals() -> None:
    request = BulkLookupRequest(items=[LookupItem(artist="Can", song="Vitamin C")])

    assert request.model_dump(exclude_none=True) == {
        "items": [{"artist": "Can", "song": "Vitamin C"}]
    }


@pytest.mark.parametrize("state", ["closed", "open", "half_open", None])
def test_health_breaker_state(state: str | None) -> None:
    parsed = HealthResponse.model_validate(
        {"status": "ok", "discogs_breaker_state": state, "uptime_s": 5}
    )

    assert parsed.discogs_breaker_state == state


def test_health_tolerates_missing_fields() -> None:
    assert HealthResponse.model_validate({}).discogs_breaker_state is None


@pytest.mark.parametrize(
    "configured",
    [
        "https://lml.example.org",
        "https://lml.example.org/",
        "https://lml.example.org/api/v1",
        "https://lml.example.org/api/v1/",
        " https://lml.example.org/api/v1 ",
    ],
)
def test_lml_url_is_read_as_the_station_reads_it(configured: str) -> None:
    assert normalize_lml_url(configured) == "https://lml.example.org"
    settings = Settings.from_env({"LIBRARY_METADATA_URL": configured})
    assert settings.lml.url == "https://lml.example.org"


def test_only_a_trailing_api_prefix_is_dropped() -> None:
    assert normalize_lml_url("https://x.org/lml/api/v1") == "https://x.org/lml"
    assert normalize_lml_url("https://x.org/api/v1/lml") == "https://x.org/api/v1/lml"


def test_the_live_caller_is_labelled_as_the_stations_enrichment_worker() -> None:
    assert LIVE_LOOKUPS.headers() == {
        "X-Caller-Class": "5",
        "X-Caller-Reason": "enrichment-worker",
    }
    assert LIVE_LOOKUPS.params() == {"allow_release_resolution_fallback": "true"}


def test_retry_after_cap_is_configurable() -> None:
    assert Settings.from_env({}).lml.retry_after_cap_s == 300
    assert Settings.from_env({"LML_RETRY_AFTER_CAP_S": "30"}).lml.retry_after_cap_s == 30
    with pytest.raises(SettingsError, match="LML_RETRY_AFTER_CAP_S"):
        Settings.from_env({"LML_RETRY_AFTER_CAP_S": "-1"})


def test_older_lmls_health_keeps_its_services() -> None:
    health = HealthResponse.model_validate(
        {"status": "ok", "services": {"discogs_api": "unavailable", "database": "ok"}}
    )
    assert health.services == {"discogs_api": "unavailable", "database": "ok"}
    assert health.discogs_breaker_state is None
