"""One sidecar process: start the roles, serve HTTP, publish a heartbeat, stop in bounded time.

Every role (and the heartbeat) runs supervised: an error that escapes it is logged with its
cause and the role is started again after a backoff (`core.supervision`); meanwhile `/readyz`
answers 503 naming it. A role that keeps failing (5 times within 5 minutes) stops the whole
process with exit code 1, so that whatever runs the sidecar starts a fresh one. A `WRONGTYPE`
error frees our stream keys first (`clients.redis_client.delete_if_not_stream`): only our
streams' keys are ours to delete, and a bridge alone would otherwise fail on it for ever.

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

from wx_orchestration.clients.redis_client import (
    delete_if_not_stream,
    is_wrong_type,
    stream_groups,
)
from wx_orchestration.contracts.cdc import CDC_STREAM, SidecarHeartbeat, heartbeat_key
from wx_orchestration.contracts.live import LIVE_STREAM
from wx_orchestration.core.supervision import FailureWindow, RestartPolicy
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
        restart: RestartPolicy | None = None,
    ) -> None:
        self.ctx = SidecarContext(settings, config, instance, metrics or SidecarMetrics())
        self.restart = restart or RestartPolicy()
        # Role → why it is down, while it waits to be started again.
        self.down: dict[str, str] = {}
        # Set when a role could not stay up: the process exits non-zero.
        self.gave_up: str | None = None
        self.role_names = tuple(role_names)
        self.stop_event = threading.Event()
        self.started_at_ms = time.time_ns() // 1_000_000
        self.roles: list[Role] = []
        self.threads: list[threading.Thread] = []
        self.http: HttpServer | None = None

    def start(self, *, serve_http: bool = True) -> None:
        settings = self.ctx.settings
        init_sentry(settings.sentry, instance=self.ctx.instance)
        self.roles = build_roles(self.role_names, self.ctx)
        if serve_http:
            app = build_app(
                metrics=self.ctx.metrics,
                alive=self.alive,
                readiness={
                    "postgres": self._postgres_ready,
                    "redis": self._redis_ready,
                    **{role.name: self._readiness(role) for role in self.roles},
                },
                extra_routes=self.ctx.routes,
                readyz_details=settings.sidecar.readyz_details,
            )
            # Before any role runs: a sidecar without its port must not lead the bridge.
            self.http = HttpServer(app, settings.sidecar.host, settings.sidecar.port)
            self.http.start()
        for role in self.roles:
            self._spawn(role.name, role.run)
        self._spawn("heartbeat", self._heartbeat_loop)
        log.info("sidecar %s running roles %s", self.ctx.instance, ",".join(self.role_names))

    def _spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        thread = threading.Thread(
            target=self._supervised, args=(name, target), name=name, daemon=True
        )
        thread.start()
        self.threads.append(thread)

    def _supervised(self, name: str, target: Callable[[threading.Event], None]) -> None:
        stop = self.stop_event
        failures = FailureWindow(self.restart)
        while not stop.is_set():
            error: Exception | None = None
            try:
                target(stop)
            except Exception as err:
                error = err
            if stop.is_set():
                return
            cause = "it stopped on its own" if error is None else _cause(error)
            self.down[name] = cause
            if error is not None and is_wrong_type(error):
                self._free_stream_keys()
            if failures.record(time.monotonic()):
                self.gave_up = (
                    f"role {name} failed {len(failures.times)} times within "
                    f"{self.restart.window_s:g}s (last: {cause})"
                )
                log.error("%s; exiting so that the sidecar is started afresh", self.gave_up)
                stop.set()
                return
            delay = failures.delay_s()
            log.error("role %s failed: %s; restarting in %.1fs", name, cause, delay, exc_info=error)
            if stop.wait(delay):
                return
            del self.down[name]
            log.info("role %s restarting", name)

    def _free_stream_keys(self) -> None:
        for key in (CDC_STREAM, LIVE_STREAM):
            try:
                found = delete_if_not_stream(self.ctx.redis(), key)
            except redis.RedisError as err:
                log.warning("could not check the type of %s: %s", key, err)
                continue
            if found is not None:
                log.error("%s held a %s, not a stream: deleted it", key, found)

    def _readiness(self, role: Role) -> Callable[[], tuple[bool, str]]:
        def check() -> tuple[bool, str]:
            cause = self.down.get(role.name)
            if cause is not None:
                return False, f"down, restarting: {cause}"
            return role.readiness()

        return check

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
        """Run until SIGTERM/SIGINT or a role that cannot stay up; False: exit non-zero."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not self.stop_event.wait(1.0):
            pass
        return self.stop() and self.gave_up is None


def _cause(error: BaseException) -> str:
    """The error and what raised it, on one line."""
    parts = []
    seen: BaseException | None = error
    while seen is not None and len(parts) < 3:
        parts.append(f"{type(seen).__name__}: {seen}".strip())
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)
