"""The lifecycle's pure rules: what a re-ask does with an answer, how a pass advances, which
links are upgraded, what a streaming re-ask writes, what a cohort may be, and the lane's
allowance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from wx_orchestration.contracts.lml import Artwork, StreamingStatus, StreamingVerdict
from wx_orchestration.core.album_record import STREAMING_VERDICT_SERVICES
from wx_orchestration.core.budget import BudgetLimits, lane_family, lifecycle_calls
from wx_orchestration.core.enrichment import LookupKey, Verdict, search_columns
from wx_orchestration.core.lifecycle import (
    STREAMING_SERVICES,
    CohortSpec,
    PassCursor,
    advanced,
    pass_runs,
    reask_action,
    streaming_changes,
    streaming_reask_key,
    upgraded_links,
)
from wx_orchestration.core.report import (
    Report,
    chart_markdown,
    lifecycle_yield,
    match_rate_by_day,
    match_rate_png,
    report_html,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_only_a_definitive_answer_is_written_or_stamped() -> None:
    assert reask_action(Verdict("match", artwork=Artwork())) == "match"
    assert reask_action(Verdict("no_match")) == "stamp"
    assert reask_action(Verdict("not_a_verdict", reason="shed_limiter_saturated")) == "leave"
    assert reask_action(Verdict("error", reason="x", row_fault=True)) == "leave"


def test_a_full_page_moves_the_cursor_and_a_short_one_starts_a_new_pass() -> None:
    started = PassCursor(pass_started_at=NOW)
    moved = advanced(started, (NOW, 42), page_full=True, now=NOW + timedelta(hours=2))
    assert (moved.add_time, moved.flowsheet_id, moved.pass_number) == (NOW, 42, 1)
    wrapped = advanced(moved, (NOW, 7), page_full=False, now=NOW + timedelta(hours=4))
    assert wrapped.at_top
    assert (wrapped.pass_number, wrapped.passes_done) == (2, 1)
    assert wrapped.last_pass_s == 4 * 3600
    assert wrapped.pass_started_at == NOW + timedelta(hours=4)
    assert advanced(wrapped, None, page_full=False, now=NOW).pass_number == 3


def test_only_placeholders_are_upgraded_and_only_by_real_links() -> None:
    placeholders = search_columns(LookupKey("Stereolab", "Dots and Loops", None))
    current = {**placeholders, "bandcamp_url": "https://stereolab.bandcamp.com/album/x"}
    artwork = Artwork(
        spotify_url="https://open.spotify.com/album/1",
        bandcamp_url="https://other.bandcamp.com",
        soundcloud_url="https://soundcloud.com/search?q=still+a+search",
    )
    assert upgraded_links(current, Verdict("match", artwork=artwork)) == {
        "spotify_url": "https://open.spotify.com/album/1"
    }
    assert upgraded_links(current, Verdict("no_match")) == {}


KEY = LookupKey("Stereolab", "Dots and Loops", None)
SPOTIFY = "https://open.spotify.com/album/4hJ1aYz9WrP0nPEYFO3bO3"
APPLE = "https://music.apple.com/us/album/dots-and-loops/1"
SEARCH = search_columns(KEY)


def answer(**status: StreamingVerdict | None) -> Verdict:
    return Verdict(
        "match",
        artwork=Artwork(
            spotify_url=SPOTIFY if status.get("spotify") == "verified" else None,
            apple_music_url=APPLE if status.get("apple_music") == "verified" else None,
            streaming_status=StreamingStatus(**status),
        ),
    )


def test_the_streaming_services_are_the_album_records() -> None:
    assert STREAMING_SERVICES == STREAMING_VERDICT_SERVICES
    # Album-level: asked by the library's artist and title, with no track.
    assert streaming_reask_key(" Stereolab ", "Dots and Loops") == KEY


def test_a_streaming_answer_writes_only_what_lml_said_and_never_a_verified_field() -> None:
    current = {
        "spotify_status": "unresolved",
        "spotify_url": SEARCH["spotify_url"],
        "apple_music_status": "verified",
        "apple_music_url": "https://music.apple.com/us/album/by-a-librarian/9",
        "bandcamp_status": "unresolved",
        "bandcamp_url": SEARCH["bandcamp_url"],
    }
    changes = streaming_changes(
        current, answer(spotify="verified", apple_music="verified", bandcamp=None), KEY
    )
    # Spotify verified: link and verdict; Apple Music already verified: untouched; Bandcamp
    # not consulted: untouched.
    assert changes == {"spotify_status": "verified", "spotify_url": SPOTIFY}


def test_absent_is_kept_until_verified_and_unresolved_fills_only_a_missing_link() -> None:
    current = {
        "spotify_status": "absent",
        "spotify_url": SEARCH["spotify_url"],
        "apple_music_status": "unresolved",
        "apple_music_url": None,
        "bandcamp_status": None,  # the frozen shape: a search link, no verdict
        "bandcamp_url": SEARCH["bandcamp_url"],
    }
    changes = streaming_changes(
        current, answer(spotify="unresolved", apple_music="absent", bandcamp="unresolved"), KEY
    )
    assert changes == {"apple_music_status": "absent", "bandcamp_status": "unresolved"}
    missing = {**current, "spotify_status": "unresolved", "spotify_url": None}
    assert streaming_changes(missing, answer(spotify="unresolved"), KEY) == {
        "spotify_url": SEARCH["spotify_url"]
    }


def test_a_verified_verdict_without_a_link_to_keep_writes_nothing() -> None:
    current = {"spotify_status": "unresolved", "spotify_url": SEARCH["spotify_url"]}
    search_page = Verdict(
        "match",
        artwork=Artwork(
            spotify_url=SEARCH["spotify_url"],
            streaming_status=StreamingStatus(spotify="verified"),
        ),
    )
    assert streaming_changes(current, search_page, KEY) == {}


def test_only_a_definitive_streaming_answer_spends_an_attempt() -> None:
    current = {"spotify_status": "unresolved", "spotify_url": SEARCH["spotify_url"]}
    assert streaming_changes(current, Verdict("no_match"), KEY) == {}  # spent, nothing written
    for transient in (
        Verdict("not_a_verdict", reason="shed_limiter_saturated"),
        Verdict("not_a_verdict", reason="degraded: upstream_unavailable"),
        Verdict("error", reason="lml call failed (server, status 503)"),
    ):
        assert streaming_changes(current, transient, KEY) is None


def test_a_cohort_refuses_unknown_statuses_and_empty_windows() -> None:
    with pytest.raises(ValueError, match="cohort statuses"):
        CohortSpec(statuses=("pending",))
    with pytest.raises(ValueError, match="add_time window is empty"):
        CohortSpec(added_from=NOW, added_to=NOW)
    assert CohortSpec(ids=(1, 2)).describe()["ids"] == 2


def test_the_lifecycle_lane_is_a_share_of_the_batch_rate() -> None:
    assert lane_family("lifecycle") == "lookup"
    assert lifecycle_calls(BudgetLimits(), 7200.0) == 720  # 0.5/s batch, a 0.2 share, 2 h
    assert lifecycle_calls(BudgetLimits(rate_per_second=0.001), 60.0) == 1  # always progress
    with pytest.raises(ValueError, match="share"):
        lifecycle_calls(BudgetLimits(), 60.0, share=0)
    assert pass_runs(300_000, 72_000) == 5


REPORT_PLAYS = pd.DataFrame(
    [
        ("2026-01-01", 1, "enriched_match", 3),
        ("2026-01-01", 2, "enriched_no_match", 1),
        ("2026-01-02", 1, "pending", 2),
    ],
    columns=["day", "show_id", "status", "rows"],
)


def test_report_rates_and_yield() -> None:
    plays = REPORT_PLAYS
    by_day = match_rate_by_day(plays).set_index("day")
    assert by_day.loc["2026-01-01", "match_rate"] == 0.75
    assert by_day.loc["2026-01-02", "tracks"] == 2
    assert pd.isna(by_day.loc["2026-01-02", "match_rate"])
    runs = pd.DataFrame(
        [("no_match_reask", 100, 5, 90, 5, 0, 2)],
        columns=["kind", "asked", "matched", "stamped", "not_a_verdict", "upgraded", "lml_calls"],
    )
    (row,) = lifecycle_yield(runs).to_dict("records")
    assert (row["yield"], row["lml_calls_per_enriched_row"]) == (0.05, round(2 / 95, 3))


@pytest.mark.parametrize("plays", [REPORT_PLAYS, REPORT_PLAYS.iloc[:0]], ids=["days", "empty"])
def test_the_report_chart_is_a_png_even_for_an_empty_window(plays: pd.DataFrame) -> None:
    png = match_rate_png(match_rate_by_day(plays))
    assert png.startswith(PNG_MAGIC)
    assert chart_markdown(png).startswith("![match rate by day](data:image/png;base64,iVBORw0KGgo")


def test_the_report_page_shows_the_chart_file_and_fetches_nothing() -> None:
    empty = pd.DataFrame()
    report = Report(match_rate_by_day(REPORT_PLAYS), empty, empty, empty, empty, empty)
    page = report_html(report, "report <today>", "enrichment_report_2026-01-02.png")
    assert '<img src="enrichment_report_2026-01-02.png"' in page
    assert "<title>report &lt;today&gt;</title>" in page
    assert "<script" not in page
    assert "http" not in page
