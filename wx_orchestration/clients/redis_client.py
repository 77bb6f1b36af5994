"""One Redis connection pool per URL per process."""

from __future__ import annotations

import threading

import redis
import redis.asyncio as aioredis

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


# Deletes KEYS[1] only while it holds something other than a stream, in one step: a stream
# recreated meanwhile by another process is never deleted. Returns the type it found.
_DELETE_IF_NOT_STREAM = """
local found = redis.call('TYPE', KEYS[1])['ok']
if found ~= 'stream' and found ~= 'none' then
  redis.call('DEL', KEYS[1])
end
return found
"""


def is_wrong_type(err: BaseException) -> bool:
    return isinstance(err, redis.ResponseError) and str(err).startswith("WRONGTYPE")


def delete_if_not_stream(client: redis.Redis, key: str) -> str | None:
    """Free a stream key of ours that holds another type (an operator's SET, a stray client).

    Such a key is ours by name and holds nothing we can use; everything in our streams can be
    rebuilt (the bridge replays what `wx:cdc` lost). Returns the type deleted, or None when
    the key was a stream or absent.
    """
    return _deleted_type(client.eval(_DELETE_IF_NOT_STREAM, 1, key))


async def delete_if_not_stream_async(client: aioredis.Redis, key: str) -> str | None:
    """`delete_if_not_stream` on an asyncio client."""
    return _deleted_type(await client.eval(_DELETE_IF_NOT_STREAM, 1, key))  # type: ignore[misc]


def _deleted_type(found: object) -> str | None:
    text = found.decode() if isinstance(found, bytes) else str(found)
    return None if text in ("stream", "none") else text
