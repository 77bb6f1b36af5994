"""Live-feed benchmark: many SSE subscribers on one sidecar; XADD → receipt latency and memory.

    python -m bench live_feed [--subscribers N] [--events N] [--rate PER_S]

A real `wx-sidecar --roles live` process serves `/events/stream`; this process holds the
subscribers (asyncio protocols on uvloop over raw sockets: no client library between the bytes
and the clock, and little CPU taken from the server, which shares the same cores). Each
frame written to `wx:live` carries the wall-clock time of its XADD; a subscriber's latency is
its receipt time minus that. Baseline in the same run: the same events to one subscriber.
Memory per subscriber is the server's RSS growth over the subscribers' connection, divided by N.
CPU per frame: the server's and this process's CPU time over the publishing, divided by frames.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import httpx
import psutil
import redis
import uvloop

from bench.common import STATION_SCHEMA, bench_database, bench_redis
from wx_orchestration.contracts.live import FRAME_FIELD, LIVE_STREAM, LiveFrame
from wx_orchestration.devstack.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
# The last key of a bench frame's payload: its XADD time in wall-clock nanoseconds.
_MARK = b'"xadd_ns":'


@contextmanager
def live_sidecar(
    database_url: str, redis_url: str, max_connections: int
) -> Iterator[tuple[int, psutil.Process]]:
    """A `wx-sidecar --roles live` process: its port on 127.0.0.1, and the process."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WXYC_SCHEMA_NAME": STATION_SCHEMA,
        "WX_SIDECAR_PORT": str(port),
        "WX_LIVE_MAX_CONNECTIONS": str(max_connections),
        "WX_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wx_orchestration.sidecar",
            "--roles",
            "live",
            "--instance",
            "bench",
        ],
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the sidecar did not come up")
            time.sleep(0.05)
        yield port, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(15)


_REQUEST = b"GET /events/stream?topics=live-fs-topic HTTP/1.1\r\nHost: bench\r\n\r\n"


class Subscriber(asyncio.Protocol):
    """One SSE connection, read in the transport's callback: no stream reader, no task
    wake-up per read, so as little as possible of the shared two cores goes to the clients."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.established: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""  # None once the response head is read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.write(_REQUEST)

    def data_received(self, data: bytes) -> None:
        received_ns = time.time_ns()
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200"):
                self.established.set_exception(RuntimeError(self.head.decode(errors="replace")))
                return
            data = self.head[end + 4 :]
            self.head = None
        # Scan raw bytes rather than parse JSON: what is measured is the server. A frame never
        # spans two reads here (the server writes whole events, each far under a read's size).
        start = data.find(_MARK)
        if start < 0 and data and not self.established.done():
            self.established.set_result(None)  # `connection-established`
        while start >= 0:
            end = data.index(b"}", start)
            self.latencies_ms.append((received_ns - int(data[start + len(_MARK) : end])) / 1e6)
            start = data.find(_MARK, end)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def publish(client: redis.Redis, events: int, rate: float) -> None:
    for n in range(events):
        payload = {"id": n, "track_title": f"bench {n}", "xadd_ns": time.time_ns()}
        text = LiveFrame("insert", payload, 0).to_json()
        client.xadd(LIVE_STREAM, {FRAME_FIELD: text}, maxlen=10_000, approximate=True)
        await asyncio.sleep(1 / rate)


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


async def measure(
    port: int, client: redis.Redis, count: int, events: int, rate: float, server: psutil.Process
) -> dict[str, float]:
    subscribers = [Subscriber() for _ in range(count)]
    rss_before = server.memory_info().rss
    connecting = time.perf_counter()
    gate = asyncio.Semaphore(200)  # do not overrun the listen backlog

    async def connect(subscriber: Subscriber) -> None:
        async with gate:
            await loop.create_connection(lambda: subscriber, "127.0.0.1", port)
            await subscriber.established

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(60):
        await asyncio.gather(*(connect(s) for s in subscribers))
    connect_s = time.perf_counter() - connecting
    rss_after = server.memory_info().rss
    # The subscribers' thousands of long-lived objects would otherwise be rescanned by this
    # process's full collections in the middle of the measurement.
    gc.collect()
    gc.freeze()
    server_cpu = _cpu_s(server)
    own_cpu = time.process_time()
    await publish(client, events, rate)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(len(s.latencies_ms) < events for s in subscribers):
        await asyncio.sleep(0.05)
    server_cpu = _cpu_s(server) - server_cpu
    own_cpu = time.process_time() - own_cpu
    for subscriber in subscribers:
        subscriber.close()
    gc.unfreeze()
    latencies = [ms for s in subscribers for ms in s.latencies_ms]
    return {
        "subscribers": count,
        "connect_s": connect_s,
        "deliveries": len(latencies),
        "missing": count * events - len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "rss_per_subscriber_kib": (rss_after - rss_before) / count / 1024,
        "server_cpu_ms_per_frame": server_cpu / events * 1000,
        "client_cpu_ms_per_frame": own_cpu / events * 1000,
    }


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live_feed", description="SSE fan-out")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    args = parser.parse_args()
    with bench_database() as database_url, bench_redis() as redis_url:
        client = redis.Redis.from_url(redis_url)
        with live_sidecar(database_url, redis_url, args.subscribers + 10) as (port, server):
            for count in (1, args.subscribers):
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    result = runner.run(
                        measure(port, client, count, args.events, args.rate, server)
                    )
                print(
                    f"{result['subscribers']:>5} subscribers: connected in "
                    f"{result['connect_s']:.2f} s; {result['deliveries']} deliveries "
                    f"({result['missing']} missing); XADD → receipt p50 {result['p50_ms']:.2f} ms, "
                    f"p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms; server RSS "
                    f"+{result['rss_per_subscriber_kib']:.1f} KiB per subscriber; CPU per frame "
                    f"server {result['server_cpu_ms_per_frame']:.1f} ms, subscribers "
                    f"{result['client_cpu_ms_per_frame']:.1f} ms; load average "
                    f"{os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        client.close()


if __name__ == "__main__":
    main()
