"""`wx demo-data` on a production-shaped database (the mirror refuses what production refuses)."""

from __future__ import annotations

import psycopg
import pytest

from wx_orchestration.cli import main
from wx_orchestration_tests.servers import STATION_SCHEMA


def test_demo_data_loads_production_shaped_rows_in_few_statements(
    station_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", station_db)
    monkeypatch.setenv("WXYC_SCHEMA_NAME", STATION_SCHEMA)
    assert main(["demo-data"]) == 0
    assert "library" in capsys.readouterr().out
    with psycopg.connect(
        station_db, autocommit=True, options=f"-c search_path={STATION_SCHEMA}"
    ) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM library), (SELECT count(*) FROM flowsheet),"
            " (SELECT count(*) FROM artists WHERE code_letters <> '' AND alphabetical_name <> ''),"
            " (SELECT count(*) FROM shows)"
        ).fetchone()
        newest_track = conn.execute(
            "SELECT artist_name FROM flowsheet WHERE entry_type = 'track'"
            " ORDER BY play_order DESC LIMIT 1"
        ).fetchone()
        blank_artists = conn.execute(
            "SELECT count(*) FROM flowsheet WHERE entry_type = 'track' AND btrim(artist_name) = ''"
        ).fetchone()
        lead = conn.execute(
            "SELECT extract(epoch FROM last_modified_at - clock_timestamp())"
            " FROM flowsheet_watermark"
        ).fetchone()
    assert counts is not None
    library, flowsheet, artists, shows = counts
    assert library == 320
    assert flowsheet > 100
    assert artists > 10
    assert shows > 0
    # The demo page's top card is a real play; the blank artists LML must never see are mid-show.
    assert newest_track is not None
    assert newest_track[0].strip()
    assert blank_artists is not None
    assert blank_artists[0] > 0
    # All the plays in one statement: the station's Last-Modified moved once, not per play.
    assert lead is not None
    assert float(lead[0]) < 3
    # A second load is skipped: the library has rows.
    assert main(["demo-data"]) == 0
