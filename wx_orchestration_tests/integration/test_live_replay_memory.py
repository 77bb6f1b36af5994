"""Replays cost one page per connection: clients that ask for the whole of `wx:live` and never
read it do not grow the sidecar by the stream's size each.

The sidecar runs as a process of its own, so its resident memory is what is measured.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from wx_orchestration.devstack.processes import free_port
from wx_orchestration_tests.integration.sidecar_support import (
    fast_flags,
    poll,
    sidecar_process,
    stop_process,
)
from wx_orchestration_tests.integration.test_live_feed import add_frames
from wx_orchestration_tests.servers import STATION_SCHEMA

CLIENTS = 50
FRAMES = 5000
PADDING = 2048  # bytes per frame: a 10 MB stream


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def never_reading_replay(port: int, last_event_id: str) -> socket.socket:
    client = socket.socket()
    # A small window, so the kernel takes little of the replay on the client's behalf.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(
        b"GET /events/stream?topics=live-fs-topic HTTP/1.1\r\nHost: x\r\n"
        b"Last-Event-ID: %s\r\n\r\n" % last_event_id.encode()
    )
    return client


@pytest.fixture
def live_process(station_db: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    env = {
        "DATABASE_URL": station_db,
        "REDIS_URL": redis_url,
        "WXYC_SCHEMA_NAME": STATION_SCHEMA,
        "WX_SIDECAR_PORT": str(port),
    }
    process = sidecar_process(
        env, "--roles", "live", *fast_flags(), log_path=tmp_path / "sidecar.log"
    )
    try:
        yield process.pid, f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def test_fifty_never_reading_replays_of_the_whole_stream_stay_under_50_mb(
    live_process: tuple[int, str], redis_url: str
) -> None:
    pid, base = live_process
    client = redis.Redis.from_url(redis_url)
    ids = add_frames(client, FRAMES, padding=PADDING)

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    poll(answers, timeout=30, what="the sidecar's HTTP server")
    # One replay that reads it all, so the reader, pools and buffers are warm before measuring.
    with httpx.stream(
        "GET",
        f"{base}/events/stream",
        params={"topics": "live-fs-topic", "lastEventId": ids[0]},
        timeout=httpx.Timeout(10.0, read=30.0),
    ) as warm:
        for line in warm.iter_lines():
            if line.startswith(f"id: {ids[-1]}"):
                break
    before = rss_bytes(pid)

    port = int(base.rsplit(":", 1)[1])
    sockets = [never_reading_replay(port, ids[0]) for _ in range(CLIENTS)]
    try:
        poll(
            lambda: metric(base, "wx_live_connections") == CLIENTS,
            timeout=30,
            what="every replaying client connected",
        )
        replayed = metric(base, "wx_live_replayed_entries_total")

        def stalled() -> bool:
            # Every replay has started and is waiting for a client that does not read.
            nonlocal replayed
            now = metric(base, "wx_live_replayed_entries_total")
            settled = now == replayed and now >= FRAMES - 1 + CLIENTS
            replayed = now
            return settled and rss_bytes(pid) > 0

        poll(stalled, timeout=60, what="the replays to stall on their clients")
        growth = rss_bytes(pid) - before
        # The whole stream once per client would be 500 MB and more.
        assert growth < 50 * 1024 * 1024, f"grew {growth / 2**20:.0f} MB"
        # They did stall: beyond the warm-up's, no replay got through half the stream.
        assert replayed - FRAMES < CLIENTS * FRAMES / 2
    finally:
        for sock in sockets:
            sock.close()
