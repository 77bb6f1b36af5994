"""One psycopg connection pool per database URL per process."""

from __future__ import annotations

import threading
from typing import Any

from psycopg_pool import ConnectionPool

_pools: dict[tuple[str, int], ConnectionPool[Any]] = {}
_lock = threading.Lock()


def shared_pool(url: str, *, max_size: int = 8) -> ConnectionPool[Any]:
    """The process-wide pool for `url`, opened on first use.

    Dagster step processes and the sidecar each keep their own; a pool per call would pay a
    connection set-up on every statement.
    """
    key = (url, max_size)
    with _lock:
        pool = _pools.get(key)
        if pool is None or pool.closed:
            pool = ConnectionPool[Any](
                url,
                min_size=1,
                max_size=max_size,
                open=True,
                name="wx_orchestration",
                # Fail fast with a clear error instead of hanging a run on an unreachable DB.
                timeout=30.0,
            )
            _pools[key] = pool
        return pool


def close_shared_pools() -> None:
    with _lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()
