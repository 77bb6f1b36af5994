"""A fake LML whose answers each test scripts, for verdict shapes the emulator never produces.

It is a real HTTP server (uvicorn in a thread) speaking LML's paths; a test sets `answer` to a
function from the request body to `(status, json_body)`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from wx_orchestration.devstack.processes import free_port, wait_until

Answer = Callable[[dict[str, Any]], tuple[int, Any]]


def echo_single_artist(body: dict[str, Any]) -> tuple[int, Any]:
    """Every input resolved as a single artist with two sources."""
    return 200, {
        "results": [
            {
                "kind": "single_artist",
                "library_id": item["library_id"],
                "method": "exact_match",
                "confidence": 0.9,
                "main": {"wikidata_qid": f"Q{item['library_id']}", "spotify_artist_id": "sp"},
                "provenance": [
                    {
                        "source": "discogs",
                        "method": "exact_match",
                        "confidence": 0.9,
                        "external_id": f"d{item['library_id']}",
                    },
                    {
                        "source": "wikidata",
                        "method": "exact_match",
                        "confidence": 0.8,
                        "external_id": f"Q{item['library_id']}",
                    },
                ],
            }
            for item in body["inputs"]
        ]
    }


class ScriptedLml:
    def __init__(self) -> None:
        self.answer: Answer = echo_single_artist
        self.bodies: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []

    async def _handle(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.bodies.append(body)
        self.auth_headers.append(request.headers.get("authorization"))
        status, payload = self.answer(body)
        return JSONResponse(payload, status_code=status)

    async def _health(self, _request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "discogs_breaker_state": "closed"})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v1/identity/bulk-resolve-libraries", self._handle, methods=["POST"]),
                Route("/api/v1/lookup/bulk", self._handle, methods=["POST"]),
                Route("/health", self._health),
            ]
        )


@pytest.fixture
def scripted_lml() -> Iterator[tuple[ScriptedLml, str]]:
    fake = ScriptedLml()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10, what="the scripted fake LML")
    yield fake, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
