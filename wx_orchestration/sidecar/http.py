"""The sidecar's HTTP face: `/healthz`, `/readyz`, `/metrics`, plus whatever routes roles add.

Endpoints are plain functions, so Starlette runs them in its thread pool and a slow database
check never stalls the event loop (nor, later, the live feed's streams).

The port is public (listeners' apps read the live feed on it), so what a request may cost is
bounded before the app sees it: its head (request line and headers) at most 64 KiB, read within
10 s (uvicorn's own limits cover only h11 and idle keep-alive connections). `/readyz` gives each
check's detail only to loopback clients, or to all with `WX_SIDECAR_READYZ_DETAILS=1`: a
database error names its host, user and database. Elsewhere it names the failing checks only.

The port is bound before anything else starts: a sidecar that cannot serve it exits at once
(`PortUnavailable`) rather than run, healthy by heartbeat, without HTTP.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Sequence

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wx_orchestration.sidecar.metrics import SidecarMetrics

log = logging.getLogger("wx_orchestration.sidecar.http")

# name → (ok, detail); run on every /readyz request.
ReadinessCheck = Callable[[], tuple[bool, str]]

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 10.0


class PortUnavailable(RuntimeError):
    pass


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(
    *,
    metrics: SidecarMetrics,
    alive: Callable[[], tuple[bool, str]],
    readiness: dict[str, ReadinessCheck],
    extra_routes: Sequence[BaseRoute] = (),
    readyz_details: bool = False,
) -> Starlette:
    def healthz(_request: Request) -> Response:
        ok, detail = alive()
        return JSONResponse(
            {"status": "ok" if ok else "failing", "detail": detail}, status_code=200 if ok else 503
        )

    def readyz(request: Request) -> Response:
        checks: dict[str, dict[str, object]] = {}
        for name, check in readiness.items():
            try:
                ok, detail = check()
            except Exception as err:  # a readiness probe reports, it does not crash
                ok, detail = False, f"{type(err).__name__}: {err}"
            checks[name] = {"ok": ok, "detail": detail}
        ready = all(c["ok"] for c in checks.values())
        if readyz_details or _loopback(request):
            body: dict[str, object] = {"ready": ready, "checks": checks}
        else:
            body = {"ready": ready, "failing": sorted(n for n, c in checks.items() if not c["ok"])}
        return JSONResponse(body, status_code=200 if ready else 503)

    def metrics_text(_request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_text),
        *extra_routes,
    ]
    return Starlette(routes=routes)


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over `MAX_HEAD_BYTES` (431) or not
    complete within `HEAD_TIMEOUT_S` of its first byte or of the connection (408)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_body = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            HEAD_TIMEOUT_S, self._head_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            # Counted by the chunk: a body arriving with its head may count towards it, which
            # only a request far bigger than any this server takes can notice.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(b"431 Request Header Fields Too Large", b"request header too large")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._refuse(b"408 Request Timeout", b"request header not received in time")

    def _refuse(self, status: bytes, message: bytes) -> None:
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, len(message), message)
        )
        self.transport.close()


class HttpServer:
    """uvicorn in a thread of its own; the process's signal handling stays with the runtime."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http=BoundedHttpProtocol,
        )
        self.server = uvicorn.Server(config)
        self.host, self.port = host, port
        self.thread: threading.Thread | None = None
        self.address = f"http://{host}:{port}"

    def start(self) -> None:
        """Bind the port here, in the caller's thread, so that failing to is the caller's error."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as err:
            sock.close()
            taken = " (taken by another process)" if err.errno == errno.EADDRINUSE else ""
            raise PortUnavailable(
                f"cannot listen on {self.host}:{self.port}{taken}: {err.strerror};"
                " set WX_SIDECAR_PORT to a free port"
            ) from None
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self.thread.start()
        log.info("HTTP on %s", self.address)

    def stop(self, timeout: float) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
