"""One Redis connection pool per URL per process."""

from __future__ import annotations

import threading

import redis

from wx_orchestration.contracts.cdc import GroupStats

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def shared_redis(url: str) -> redis.Redis:
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
            )
            _clients[url] = client
        return client


def stream_groups(client: redis.Redis, stream: str) -> tuple[int | None, list[GroupStats]]:
    """The stream's length and consumer groups; (None, []) when the stream does not exist (yet,
    or after a Redis reset)."""
    try:
        length = int(client.xlen(stream))  # type: ignore[arg-type]
        groups = [GroupStats.from_xinfo(g) for g in client.xinfo_groups(stream)]  # type: ignore[union-attr]
    except redis.ResponseError:
        return None, []
    return length, groups
