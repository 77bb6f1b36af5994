"""The now-playing page in headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import base64
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from wx_orchestration.contracts.live import LIVE_STREAM
from wx_orchestration_tests.chromium import ARTIFACTS, chromium
from wx_orchestration_tests.integration.sidecar_support import connect, poll
from wx_orchestration_tests.integration.test_live_feed import (
    LiveServer,
    insert_play,
    serving_live,
    set_status,
)

pytestmark = pytest.mark.browser


def png_data_url(size: int, rgb: tuple[int, int, int]) -> str:
    """A solid square PNG as a data: URL: artwork with no network involved."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rows = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def live(station_db: str, redis_url: str) -> Iterator[LiveServer]:
    with serving_live(station_db, redis_url) as server:
        yield server


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 720, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert not errors, errors


def test_the_page_shows_new_plays_and_their_artwork(live: LiveServer, page: Page) -> None:
    with connect(live.database_url) as conn:
        earlier = insert_play(conn, "Jenny Ondioline")
        page.goto(f"{live.base}/")
        expect(page.locator(f'li.play[data-id="{earlier}"]')).to_contain_text("Jenny Ondioline")
        expect(page.locator("#status")).to_have_attribute("data-state", "live")

        started = time.monotonic()
        row_id = insert_play(
            conn, "Miss Modular", album_title="Dots and Loops", record_label="Duophonic"
        )
        play = page.locator(f'li.play[data-id="{row_id}"]')
        expect(play).to_contain_text("Miss Modular", timeout=2000)
        assert time.monotonic() - started < 2.0
        expect(play).to_contain_text("Stereolab")
        expect(play).to_contain_text("Dots and Loops")
        expect(page.locator("li.play").first).to_have_attribute("data-id", str(row_id))

        artwork = png_data_url(96, (214, 92, 36))
        set_status(
            conn,
            row_id,
            "enriched_match",
            artwork_url=artwork,
            discogs_url="https://www.discogs.com/master/5550",
        )
        expect(play.locator("img.art")).to_have_attribute("src", artwork, timeout=2000)
        expect(play).to_have_attribute("data-status", "enriched_match")
        link = play.locator('a[data-kind="discogs_url"]')
        expect(link).to_have_attribute("href", "https://www.discogs.com/master/5550")
        loaded = play.locator("img.art").evaluate("img => img.complete && img.naturalWidth")
        assert loaded == 96
        # Updated in place: still one entry for the row.
        expect(page.locator(f'li.play[data-id="{row_id}"]')).to_have_count(1)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "now_playing.png"), full_page=True)
    assert Path(ARTIFACTS / "now_playing.png").stat().st_size > 0


def test_the_page_recovers_from_a_refetch(live: LiveServer, page: Page) -> None:
    page.goto(f"{live.base}/")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    with connect(live.database_url) as conn:
        seen = insert_play(conn, "Jenny Ondioline")
        expect(page.locator(f'li.play[data-id="{seen}"]')).to_be_visible()
        page.evaluate("source.close()")
        row_id = insert_play(conn, "Cybele's Reverie")
    poll(lambda: live.redis.xlen(LIVE_STREAM) == 2, what="the play to be published")
    # The stream is reset while the page is away: nothing can be replayed, so the server
    # answers its reconnect with `refetch` and the page reloads the list.
    live.redis.delete(LIVE_STREAM)
    page.evaluate("subscribe()")
    expect(page.locator(f'li.play[data-id="{row_id}"]')).to_contain_text(
        "Cybele's Reverie", timeout=2000
    )
    assert live.metric('wx_live_refetches_total{reason="reset"}') == 1
