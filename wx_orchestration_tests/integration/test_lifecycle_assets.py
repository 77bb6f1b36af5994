"""The lifecycle's Dagster objects as Dagster runs them: `no_match_reask`, `link_upgrade`,
`streaming_reask`, `enrichment_report`, their checks and `cohort_reenrichment_job`."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from wx_orchestration.core.enrichment import LookupKey, search_columns
from wx_orchestration.defs.lifecycle.assets import (
    enrichment_report,
    link_upgrade,
    no_match_reask,
    streaming_reask,
)
from wx_orchestration.defs.lifecycle.checks import LIFECYCLE_CHECKS, cohort_reenrichment_finished
from wx_orchestration.defs.lifecycle.jobs import cohort_reenrichment_job, enrichment_lifecycle_job
from wx_orchestration.defs.resources import PostgresResource
from wx_orchestration.defs.station.assets import STATION_ASSETS
from wx_orchestration.devstack.demo_data import load_demo_data
from wx_orchestration_tests.dagster_support import asset_resources, materialization_metadata
from wx_orchestration_tests.integration.test_enrichment_flow import SCHEMA, add_album, add_play
from wx_orchestration_tests.integration.test_lifecycle import (
    ALBUM,
    SONG,
    add_matched_album,
    add_no_match,
    album,
    emulated_albums,
    emulated_artists,
    row,
)
from wx_orchestration_tests.unit.test_lifecycle_rules import PNG_MAGIC


@pytest.fixture
def conn(station_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(station_db, autocommit=True) as connection:
        connection.execute(f"SET search_path TO {SCHEMA}, wx_orchestration")
        yield connection


def materialize(
    assets: list[Any], station_db: str, lml_url: str, redis_url: str, config: dict[str, Any]
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*assets, *LIFECYCLE_CHECKS],
        resources=asset_resources(station_db, lml_url, redis_url),
        run_config={"ops": config},
        raise_on_error=False,
    )


def snapshot(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, metadata_status::text, updated_at, no_match_recheck_attempted_at"
        " FROM flowsheet ORDER BY id"
    ).fetchall()


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_no_match_reask_materializes_with_progress_and_its_check(
    station_db, conn, lml_emulator, redis_url
) -> None:
    matches = emulated_artists(matches=True)
    ids = [add_no_match(conn, next(matches)) for _ in range(3)]
    config = {"no_match_reask": {"config": {"min_age_s": 0, "max_calls": 2}}}
    result = materialize([no_match_reask], station_db, lml_emulator.url, redis_url, config)
    assert result.success
    metadata = materialization_metadata(result)
    assert metadata["outcomes"]["matched"] == 3  # type: ignore[index]
    assert metadata["lml_call_allowance"] == 2
    assert metadata["stopped"] == "pass_done"
    assert metadata["passes_done"] == 1
    assert metadata["cohort"] == 0
    assert {row(conn, i)["metadata_status"] for i in ids} == {"enriched_match"}
    assert check_results(result) == {"no_match_reask_within_ttl": True}


def test_the_reask_check_fails_when_a_row_is_past_its_ttl(
    station_db, conn, lml_emulator, redis_url
) -> None:
    add_no_match(
        conn,
        next(emulated_artists(matches=False)),
        no_match_recheck_attempted_at="2020-01-01T00:00:00Z",
    )
    # No call allowed to reach it: the pass has not got there yet.
    config = {"no_match_reask": {"config": {"min_age_s": 1e9, "max_calls": 1}}}
    result = materialize([no_match_reask], station_db, lml_emulator.url, redis_url, config)
    assert result.success
    assert check_results(result) == {"no_match_reask_within_ttl": False}


def test_a_search_url_is_upgraded_and_a_verified_one_never_touched(
    station_db, conn, lml_emulator, redis_url
) -> None:
    artists = emulated_artists(matches=True)
    placeholders = search_columns(LookupKey(next(artists), ALBUM, SONG))
    verified = "https://open.spotify.com/album/verified-by-a-librarian"
    upgraded = add_play(
        conn,
        (artist := next(artists)),
        metadata_status="enriched_match",
        **search_columns(LookupKey(artist, ALBUM, SONG)),
    )
    kept = add_play(
        conn,
        next(artists),
        metadata_status="enriched_match",
        spotify_url=verified,
        bandcamp_url=placeholders["bandcamp_url"],
    )
    album_id = add_album(conn)
    conn.execute(
        "INSERT INTO album_metadata (album_id, spotify_url, bandcamp_url, updated_at)"
        " VALUES (%s, %s, %s, now())",
        (album_id, placeholders["spotify_url"], verified),
    )
    linked = add_play(conn, next(artists), metadata_status="enriched_match", album_id=album_id)
    config = {"link_upgrade": {"config": {"max_calls": 2}}}
    result = materialize([link_upgrade], station_db, lml_emulator.url, redis_url, config)
    assert result.success
    metadata = materialization_metadata(result)
    assert metadata["outcomes"]["read"] == 3  # type: ignore[index]

    after = row(conn, upgraded)
    assert after["spotify_url"].startswith("https://open.spotify.com/album/")
    assert after["youtube_music_url"].startswith("https://music.youtube.com/channel/")
    kept_row = row(conn, kept)
    assert kept_row["spotify_url"] == verified
    record = album(conn, album_id)
    assert record["spotify_url"].startswith("https://open.spotify.com/album/")
    assert record["spotify_status"] == "verified"  # the verdict goes with the verified link
    assert (record["bandcamp_url"], record["bandcamp_status"]) == (verified, None)
    assert row(conn, linked)["spotify_url"] is None  # linked rows' links live on the album
    # Asked within the TTL: a second run reads nothing.
    again = materialize([link_upgrade], station_db, lml_emulator.url, redis_url, config)
    assert materialization_metadata(again)["outcomes"]["read"] == 0  # type: ignore[index]
    assert check_results(again) == {"link_upgrade_within_ttl": True}


def test_the_link_check_fails_when_a_placeholder_is_past_its_ttl(
    station_db, conn, lml_emulator, redis_url
) -> None:
    artist = next(emulated_artists(matches=True))
    stale = add_play(
        conn,
        artist,
        metadata_status="enriched_match",
        **search_columns(LookupKey(artist, ALBUM, SONG)),
    )
    conn.execute(
        "INSERT INTO wx_orchestration.link_upgrade_attempts VALUES (%s, '2020-01-01T00:00:00Z')",
        (stale,),
    )
    config = {"link_upgrade": {"config": {"max_calls": 1}}}
    lml_emulator.set_faults(degraded=True)  # read, but LML says nothing: still past its TTL
    behind = materialize([link_upgrade], station_db, lml_emulator.url, redis_url, config)
    assert behind.success
    assert check_results(behind) == {"link_upgrade_within_ttl": False}
    lml_emulator.reset()
    caught_up = materialize([link_upgrade], station_db, lml_emulator.url, redis_url, config)
    assert materialization_metadata(caught_up)["outcomes"]["upgraded"] == 1  # type: ignore[index]
    assert check_results(caught_up) == {"link_upgrade_within_ttl": True}


def test_streaming_reask_materializes_with_counts_and_its_check(
    station_db, conn, lml_emulator, redis_url
) -> None:
    healed = add_matched_album(conn, *next(emulated_albums(spotify="verified")))
    config = {"streaming_reask": {"config": {"max_calls": 2}}}
    result = materialize([streaming_reask], station_db, lml_emulator.url, redis_url, config)
    assert result.success
    metadata = materialization_metadata(result)
    outcomes = metadata["outcomes"]
    assert isinstance(outcomes, dict)
    assert (outcomes["read"], outcomes["matched"], outcomes["upgraded"]) == (1, 1, 1)
    written = metadata["written"]
    assert isinstance(written, dict)
    assert written["spotify_status=verified"] == 1
    assert metadata["stopped"] == "pass_done"
    assert metadata["cursor"] == {"updated_at": None, "album_id": None}  # a new pass: the top
    assert album(conn, healed)["spotify_status"] == "verified"
    assert check_results(result) == {"streaming_reask_within_ttl": True}


def test_the_streaming_check_fails_when_an_album_is_past_its_ttl(
    station_db, conn, lml_emulator, redis_url
) -> None:
    stale = add_matched_album(
        conn, *next(emulated_albums(spotify="verified")), updated_at="2020-01-01T00:00:00Z"
    )
    config = {"streaming_reask": {"config": {"max_calls": 1}}}
    lml_emulator.set_faults(degraded=True)  # asked, never answered: nothing stamped
    behind = materialize([streaming_reask], station_db, lml_emulator.url, redis_url, config)
    assert behind.success
    assert materialization_metadata(behind)["past_ttl"] == 1
    assert check_results(behind) == {"streaming_reask_within_ttl": False}
    assert album(conn, stale)["streaming_reask_attempts"] == 0
    lml_emulator.reset()
    caught_up = materialize([streaming_reask], station_db, lml_emulator.url, redis_url, config)
    assert check_results(caught_up) == {"streaming_reask_within_ttl": True}


def test_the_lifecycle_job_runs_the_three_passes_and_the_cohort_check(
    station_db, lml_emulator, redis_url
) -> None:
    defs = dg.Definitions(
        assets=[*STATION_ASSETS, no_match_reask, link_upgrade, streaming_reask],
        asset_checks=LIFECYCLE_CHECKS,
        jobs=[enrichment_lifecycle_job],
        resources=asset_resources(station_db, lml_emulator.url, redis_url),
    )
    result = defs.resolve_job_def("enrichment_lifecycle_job").execute_in_process(
        run_config={
            "ops": {
                name: {"config": {"max_calls": 1}}
                for name in ("no_match_reask", "link_upgrade", "streaming_reask")
            }
        },
    )
    assert result.success
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    assert materialized == {no_match_reask.key, link_upgrade.key, streaming_reask.key}
    assert check_results(result) == {
        "no_match_reask_within_ttl": True,
        "link_upgrade_within_ttl": True,
        "streaming_reask_within_ttl": True,
        "cohort_reenrichment_finished": True,
    }


def run_cohort(station_db: str, lml_url: str, redis_url: str, **config: Any) -> dict[str, Any]:
    result = cohort_reenrichment_job.execute_in_process(
        run_config={"ops": {"reenrich_cohort_rows": {"config": config}}},
        resources=asset_resources(station_db, lml_url, redis_url),
    )
    assert result.success
    (event,) = [
        e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"
    ]  # the op's one output
    metadata = event.event_specific_data.metadata  # type: ignore[union-attr]
    return {key: value.value for key, value in metadata.items()}


def test_cohort_dry_run_writes_nothing_and_the_real_run_does_what_it_said(
    station_db, conn, lml_emulator, redis_url
) -> None:
    matches, misses = emulated_artists(matches=True), emulated_artists(matches=False)
    cohort = [add_no_match(conn, next(matches)) for _ in range(4)]
    cohort += [add_no_match(conn, next(misses)) for _ in range(3)]
    outside = add_play(conn, next(matches), metadata_status="enriched_match")
    linked_outside = add_no_match(conn, next(matches), album_id=add_album(conn))
    config = {"name": "breaker-incident", "linked": "unlinked", "page_rows": 3}
    before = snapshot(conn)

    preview = run_cohort(station_db, lml_emulator.url, redis_url, **config)
    assert preview["dry_run"] is True
    assert preview["scope_rows"] == 7
    assert preview["scope_by_status"] == {"enriched_no_match": 7}
    assert snapshot(conn) == before
    assert lml_emulator.requests() == []

    done = run_cohort(station_db, lml_emulator.url, redis_url, dry_run=False, **config)
    assert done["rows"] == preview["scope_rows"]
    assert done["done"] is True
    assert (done["verdicts"], done["shed"]) == (7, 0)
    assert done["outcomes"]["match"] == 4
    assert done["cohort_totals"]["rows"] == 7
    statuses = {i: row(conn, i)["metadata_status"] for i in cohort}
    assert sorted(statuses.values()) == ["enriched_match"] * 4 + ["enriched_no_match"] * 3
    # Outside the cohort: untouched.
    assert row(conn, outside)["updated_at"] == dict((r[0], r[2]) for r in before)[outside]
    assert row(conn, linked_outside)["metadata_status"] == "enriched_no_match"

    # Idempotent: the cohort is done; running it again asks LML nothing.
    lml_emulator.clear_requests()
    again = run_cohort(station_db, lml_emulator.url, redis_url, dry_run=False, **config)
    assert again["done"] is True
    assert lml_emulator.requests() == []


def test_cohort_run_resumes_where_it_stopped_and_counts_shed_apart(
    station_db, conn, lml_emulator, redis_url
) -> None:
    matches = emulated_artists(matches=True)
    ids = [add_no_match(conn, next(matches)) for _ in range(5)]
    config = {"name": "resumable", "page_rows": 2, "max_calls": 1, "dry_run": False}
    lml_emulator.set_faults(degraded=True)
    shed = run_cohort(station_db, lml_emulator.url, redis_url, **config)
    assert (shed["rows"], shed["shed"], shed["verdicts"]) == (2, 2, 0)
    assert shed["done"] is False
    lml_emulator.reset()
    rest = run_cohort(station_db, lml_emulator.url, redis_url, **{**config, "max_calls": 5})
    assert rest["rows"] == 3  # the two shed rows are the backlog's now (pending, backing off)
    assert rest["done"] is True
    assert rest["cohort_totals"]["rows"] == 5
    assert [row(conn, i)["metadata_status"] for i in ids].count("pending") == 2


def test_the_report_materializes_with_tables_and_chart_on_demo_data(
    station_db, conn, lml_emulator, redis_url, tmp_path: Path
) -> None:
    load_demo_data(station_db, station_schema=SCHEMA)
    reask = {"no_match_reask": {"config": {"min_age_s": 0, "max_calls": 1}}}
    assert materialize([no_match_reask], station_db, lml_emulator.url, redis_url, reask).success
    config = {"enrichment_report": {"config": {"output_dir": str(tmp_path)}}}
    result = materialize([enrichment_report], station_db, lml_emulator.url, redis_url, config)
    assert result.success
    metadata = materialization_metadata(result)
    tables: dict[str, list[dict[str, Any]]] = {
        name: [dict(record.data) for record in value.records]
        for name, value in metadata.items()
        if isinstance(value, dg.TableMetadataValue)
    }
    assert set(tables) == {
        "match_rate_by_day",
        "match_rate_by_show",
        "no_match_by_reask_state",
        "parked_by_reason",
        "lifecycle_yield",
        "top_unmatched_artists",
    }
    assert {"day", "tracks", "match_rate"} <= set(tables["match_rate_by_day"][0])
    assert sum(r["tracks"] for r in tables["match_rate_by_day"]) == metadata["dagster/row_count"]
    (reask,) = tables["lifecycle_yield"]
    assert reask["kind"] == "no_match_reask"
    assert reask["asked"] > 0
    assert reask["yield"] == round(reask["matched"] / reask["asked"], 3)
    assert tables["top_unmatched_artists"]
    chart = metadata["chart"]
    assert isinstance(chart, str)
    match = re.fullmatch(
        r"!\[match rate by day\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", chart
    )
    assert match, chart[:80]
    png = base64.b64decode(match[1])
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 10_000  # a drawn chart, not an empty canvas
    chart_file = Path(str(metadata["chart_file"]))
    assert chart_file.read_bytes() == png
    page = Path(str(metadata["report_file"]))
    assert page.parent == chart_file.parent == tmp_path
    text = page.read_text()
    assert "top unmatched artists" in text
    # Readable offline: the chart is the PNG beside the page, and nothing is fetched.
    assert f'<img src="{chart_file.name}"' in text
    assert "<script" not in text
    assert not re.search(r"(src|href)=\"?https?://", text)


def test_the_cohort_check_fails_when_a_started_cohort_is_left_unfinished(
    station_db, conn, lml_emulator, redis_url
) -> None:
    def check() -> dg.AssetCheckResult:
        result = cohort_reenrichment_finished(postgres=PostgresResource(database_url=station_db))
        assert isinstance(result, dg.AssetCheckResult)
        return result

    matches = emulated_artists(matches=True)
    for _ in range(3):
        add_no_match(conn, next(matches))
    config = {"name": "left-behind", "page_rows": 1, "max_calls": 1}
    run_cohort(station_db, lml_emulator.url, redis_url, **config)  # a dry run starts nothing
    assert check().passed
    started = run_cohort(station_db, lml_emulator.url, redis_url, dry_run=False, **config)
    assert started["done"] is False
    assert check().passed  # unfinished, but its last run was a moment ago
    conn.execute(
        "UPDATE wx_orchestration.lifecycle_cursors SET saved_at = now() - interval '2 days'"
        " WHERE name = 'cohort:left-behind'"
    )
    behind = check()
    assert not behind.passed
    assert behind.metadata["stalled"].value == {  # type: ignore[union-attr]
        "left-behind": {"idle_days": 2.0, "rows_so_far": 1}
    }
    finished = run_cohort(
        station_db, lml_emulator.url, redis_url, dry_run=False, **{**config, "max_calls": 5}
    )
    assert finished["done"] is True
    assert check().passed
