"""`wx up`'s emulator serves the artwork its answers name, so the offline demo shows covers;
the tests' emulator keeps a placeholder domain that never resolves."""

from __future__ import annotations

import httpx

from wx_orchestration.contracts.lml import LOOKUP_PATH
from wx_orchestration.devstack.lml_emulator import ART_PLACEHOLDER, start_in_thread
from wx_orchestration_tests.integration.test_enrichment_flow import emulated_artist


def _lookup(url: str, artist: str) -> dict:
    answer = httpx.post(url + LOOKUP_PATH, json={"artist": artist, "album": "Some Album"})
    answer.raise_for_status()
    (result,) = answer.json()["results"]
    return result["artwork"]


def test_an_emulator_serving_art_answers_with_covers_it_serves() -> None:
    handle = start_in_thread(serve_art=True)
    try:
        artwork = _lookup(handle.url, emulated_artist(True, song=None))
        assert artwork["artwork_url"].startswith(f"{handle.url}/art/")
        cover = httpx.get(artwork["artwork_url"])
        assert cover.status_code == 200
        assert cover.headers["content-type"].startswith("image/svg+xml")
        assert cover.text.startswith("<svg")
        # Stable per release, distinct between releases.
        assert httpx.get(artwork["artwork_url"]).text == cover.text
        assert httpx.get(f"{handle.url}/art/another.jpg").text != cover.text
    finally:
        handle.stop()


def test_the_tests_emulator_keeps_the_placeholder(lml_emulator) -> None:
    artwork = _lookup(lml_emulator.url, emulated_artist(True, song=None))
    assert artwork["artwork_url"].startswith(ART_PLACEHOLDER)
