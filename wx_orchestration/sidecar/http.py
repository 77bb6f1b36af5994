"""The sidecar's HTTP face: `/healthz`, `/readyz`, `/metrics`, plus whatever routes roles add.

Endpoints are plain functions, so Starlette runs them in its thread pool and a slow database
check never stalls the event loop (nor, later, the live feed's streams).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from wx_orchestration.sidecar.metrics import SidecarMetrics

log = logging.getLogger("wx_orchestration.sidecar.http")

# name → (ok, detail); run on every /readyz request.
ReadinessCheck = Callable[[], tuple[bool, str]]


def build_app(
    *,
    metrics: SidecarMetrics,
    alive: Callable[[], tuple[bool, str]],
    readiness: dict[str, ReadinessCheck],
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    def healthz(_request: Request) -> Response:
        ok, detail = alive()
        return JSONResponse(
            {"status": "ok" if ok else "failing", "detail": detail}, status_code=200 if ok else 503
        )

    def readyz(_request: Request) -> Response:
        checks: dict[str, dict[str, object]] = {}
        for name, check in readiness.items():
            try:
                ok, detail = check()
            except Exception as err:  # a readiness probe reports, it does not crash
                ok, detail = False, f"{type(err).__name__}: {err}"
            checks[name] = {"ok": ok, "detail": detail}
        ready = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    def metrics_text(_request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_text),
        *extra_routes,
    ]
    return Starlette(routes=routes)


class HttpServer:
    """uvicorn in a thread of its own; the process's signal handling stays with the runtime."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self.address = f"http://{host}:{port}"

    def start(self) -> None:
        self.thread.start()
        log.info("HTTP on %s", self.address)

    def stop(self, timeout: float) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
