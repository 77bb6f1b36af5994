"""The sidecar's public port bounds what a request may cost and what an answer tells.

Heads over 64 KiB are refused (431) as they arrive, so six 50 MB headers at once neither grow
the process nor stall its event loop; a head not complete within 10 s is closed (408);
`/readyz` names failing checks only, its details (database errors name hosts and users) going
to loopback clients alone unless `WX_SIDECAR_READYZ_DETAILS=1`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from wx_orchestration.devstack.processes import free_port
from wx_orchestration.sidecar.http import HEAD_TIMEOUT_S, build_app
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.runtime import Sidecar
from wx_orchestration_tests.integration.sidecar_support import FAST, poll, settings_for

MB = 1024 * 1024


@pytest.fixture
def http_port(station_db: str, redis_url: str) -> Iterator[int]:
    port = free_port()
    sidecar = Sidecar(settings_for(station_db, redis_url, port), FAST, (), "http-limits")
    sidecar.start()
    try:
        poll(lambda: _healthz(port) is not None, what="the HTTP server")
        yield port
    finally:
        assert sidecar.stop()


def _healthz(port: int) -> float | None:
    """Seconds /healthz took to answer, or None if it did not."""
    started = time.monotonic()
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).raise_for_status()
    except httpx.HTTPError:
        return None
    return time.monotonic() - started


def _huge_header(port: int, answers: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"a" * MB
            for _ in range(50):
                sock.sendall(chunk)
        except OSError:
            pass  # refused and closed while we were still sending
        try:
            answers.append(sock.recv(4096))
        except OSError:
            answers.append(b"")


def test_six_50_mb_headers_at_once_are_refused_and_do_not_stall_the_server(
    http_port: int,
) -> None:
    answers: list[bytes] = []
    senders = [threading.Thread(target=_huge_header, args=(http_port, answers)) for _ in range(6)]
    for sender in senders:
        sender.start()
    try:
        latencies = [_healthz(http_port) for _ in range(20)]
    finally:
        for sender in senders:
            sender.join(30)
    assert all(latency is not None and latency < 1.0 for latency in latencies), latencies
    assert len(answers) == 6
    # Each got the refusal, or (refused while its bytes were still in flight) a reset.
    assert all(a.startswith(b"HTTP/1.1 431") or a == b"" for a in answers), answers
    assert any(a.startswith(b"HTTP/1.1 431") for a in answers)


def test_a_head_not_finished_in_time_is_closed(http_port: int) -> None:
    with (
        socket.create_connection(("127.0.0.1", http_port)) as silent,
        socket.create_connection(("127.0.0.1", http_port)) as half_open,
    ):
        half_open.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for sock in (silent, half_open):
            sock.settimeout(HEAD_TIMEOUT_S + 10)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert sock.recv(4096) == b""  # and closed
        assert time.monotonic() - started < HEAD_TIMEOUT_S + 5


def test_a_complete_request_on_a_kept_alive_connection_is_not_cut(http_port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=5) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200


def _readyz(app_details: bool, client_host: str) -> dict[str, object]:
    def postgres() -> tuple[bool, str]:
        with psycopg.connect("postgresql://wx_secret_user@127.0.0.1:1/wx_secret_db"):
            return True, "ok"

    app = build_app(
        metrics=SidecarMetrics(),
        alive=lambda: (True, "running"),
        readiness={"postgres": postgres, "redis": lambda: (True, "ok")},
        readyz_details=app_details,
    )

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            return await client.get("/readyz")

    answer = asyncio.run(get())
    assert answer.status_code == 503
    return answer.json()


def test_readyz_details_go_to_loopback_clients_only() -> None:
    remote = _readyz(app_details=False, client_host="203.0.113.7")
    assert remote == {"ready": False, "failing": ["postgres"]}
    local = _readyz(app_details=False, client_host="127.0.0.1")
    assert "127.0.0.1" in str(local["checks"])
    flagged = _readyz(app_details=True, client_host="203.0.113.7")
    assert flagged["checks"] == local["checks"]
