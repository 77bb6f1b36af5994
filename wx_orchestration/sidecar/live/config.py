"""The live-feed role's settings, from the environment: `WX_LIVE_CORS_ORIGINS` (comma-separated,
default `*`; empty turns CORS off), `WX_LIVE_STREAM_MAXLEN` (10000), `WX_LIVE_MAX_CONNECTIONS`
(2000 per process), `WX_LIVE_QUEUE_BYTES` (how far behind a connection may fall before it is
closed, 1 MiB), `WX_LIVE_KEEPALIVE_S` (15).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wx_orchestration.settings import env_float, env_int


@dataclass(frozen=True)
class LiveConfig:
    stream_maxlen: int = 10_000
    max_connections: int = 2_000
    queue_bytes: int = 1 << 20
    keepalive_s: float = 15.0
    cors_origins: tuple[str, ...] = ("*",)
    # Only bounds how long the reader takes to notice a dropped Redis connection.
    read_block_ms: int = 5_000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LiveConfig:
        origins = env.get("WX_LIVE_CORS_ORIGINS")
        return cls(
            stream_maxlen=env_int(env, "WX_LIVE_STREAM_MAXLEN", cls.stream_maxlen, minimum=1),
            max_connections=env_int(env, "WX_LIVE_MAX_CONNECTIONS", cls.max_connections, minimum=1),
            queue_bytes=env_int(env, "WX_LIVE_QUEUE_BYTES", cls.queue_bytes, minimum=1024),
            keepalive_s=env_float(env, "WX_LIVE_KEEPALIVE_S", cls.keepalive_s, minimum=0.05),
            cors_origins=cls.cors_origins
            if origins is None
            else tuple(o.strip() for o in origins.split(",") if o.strip()),
        )
