"""One sidecar process: start the roles, serve HTTP, publish a heartbeat, stop in bounded time.

Shutdown is a short ordered list: stop reading (the shared `stop` event), let each role finish
and acknowledge the batch in hand (consumers first, the bridge last), stop HTTP, close the
database pools and Redis, exit — all within `shutdown_deadline_s`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

import redis

from wx_orchestration.clients.redis_client import stream_groups
from wx_orchestration.contracts.cdc import CDC_STREAM, SidecarHeartbeat, heartbeat_key
from wx_orchestration.db.pool import close_shared_pools
from wx_orchestration.settings import Settings
from wx_orchestration.sidecar.http import HttpServer, build_app
from wx_orchestration.sidecar.metrics import SidecarMetrics
from wx_orchestration.sidecar.roles import Role, SidecarConfig, SidecarContext, build_roles
from wx_orchestration.sidecar.sentry import init_sentry

log = logging.getLogger("wx_orchestration.sidecar")


class Sidecar:
    def __init__(
        self,
        settings: Settings,
        config: SidecarConfig,
        role_names: Sequence[str],
        instance: str,
        *,
        metrics: SidecarMetrics | None = None,
    ) -> None:
        self.ctx = SidecarContext(settings, config, instance, metrics or SidecarMetrics())
        self.role_names = tuple(role_names)
        self.stop_event = threading.Event()
        self.started_at_ms = time.time_ns() // 1_000_000
        self.roles: list[Role] = []
        self.threads: list[threading.Thread] = []
        self.http: HttpServer | None = None

    def start(self, *, serve_http: bool = True) -> None:
        settings = self.ctx.settings
        init_sentry(settings.sentry_dsn, instance=self.ctx.instance)
        self.roles = build_roles(self.role_names, self.ctx)
        for role in self.roles:
            self._spawn(role.name, role.run)
        self._spawn("heartbeat", self._heartbeat_loop)
        if serve_http:
            app = build_app(
                metrics=self.ctx.metrics,
                alive=self.alive,
                readiness={
                    "postgres": self._postgres_ready,
                    "redis": self._redis_ready,
                    **{role.name: role.readiness for role in self.roles},
                },
                extra_routes=self.ctx.routes,
            )
            self.http = HttpServer(app, settings.sidecar_host, settings.sidecar_port)
            self.http.start()
        log.info("sidecar %s running roles %s", self.ctx.instance, ",".join(self.role_names))

    def _spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        thread = threading.Thread(target=self._guarded, args=(name, target), name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _guarded(self, name: str, target: Callable[[threading.Event], None]) -> None:
        try:
            target(self.stop_event)
        except Exception:
            # /healthz turns red when a role's thread is gone; the supervisor restarts us.
            log.exception("role %s crashed", name)

    def alive(self) -> tuple[bool, str]:
        dead = [t.name for t in self.threads if not t.is_alive()]
        if dead and not self.stop_event.is_set():
            return False, f"stopped: {', '.join(dead)}"
        return True, "running"

    def _postgres_ready(self) -> tuple[bool, str]:
        with self.ctx.pool().connection(timeout=2.0) as conn:
            conn.execute("SELECT 1")
        return True, "ok"

    def _redis_ready(self) -> tuple[bool, str]:
        return bool(self.ctx.redis().ping()), "ok"

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        interval = self.ctx.config.heartbeat_interval_s
        while not stop.is_set():
            try:
                self.publish_heartbeat(ttl_s=max(3 * interval, 10.0))
            except redis.RedisError as err:
                log.warning("heartbeat not published: %s", err)
            stop.wait(interval)

    def publish_heartbeat(self, ttl_s: float) -> SidecarHeartbeat:
        client = self.ctx.redis()
        metrics = self.ctx.metrics
        _, groups = stream_groups(client, CDC_STREAM)
        for group in groups:
            if group.lag is not None:
                metrics.group_lag.labels(CDC_STREAM, group.name).set(group.lag)
            metrics.group_pending.labels(CDC_STREAM, group.name).set(group.pending)
        beat = SidecarHeartbeat(
            instance=self.ctx.instance,
            roles=self.role_names,
            last_seen_ms=time.time_ns() // 1_000_000,
            started_at_ms=self.started_at_ms,
            bridge_state=self.ctx.bridge_state,
            lag={g.name: g.lag for g in groups},
            dead_letters=metrics.dead_letter_count(),
        )
        key = heartbeat_key(self.ctx.instance)
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=beat.to_hash())  # type: ignore[arg-type]
        pipe.pexpire(key, int(ttl_s * 1000))
        pipe.execute()
        return beat

    def stop(self) -> bool:
        """Stop within the deadline; False if some role had to be abandoned."""
        deadline = time.monotonic() + self.ctx.config.shutdown_deadline_s
        self.stop_event.set()
        clean = True
        for thread in reversed(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.error("%s did not stop before the deadline", thread.name)
                clean = False
        if self.http is not None:
            self.http.stop(max(0.5, deadline - time.monotonic()))
        with contextlib.suppress(redis.RedisError):
            self.ctx.redis().delete(heartbeat_key(self.ctx.instance))
        self.ctx.redis().close()
        close_shared_pools()
        log.info("sidecar %s stopped%s", self.ctx.instance, "" if clean else " (forced)")
        return clean

    def run_until_signalled(self) -> bool:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not self.stop_event.wait(1.0):
            pass
        return self.stop()
