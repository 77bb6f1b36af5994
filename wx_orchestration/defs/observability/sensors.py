"""`sidecar_health_sensor`: the sidecar's and the LML budget's state in the Dagster UI.

Reads what the sidecar publishes (heartbeat hashes), what Redis knows about the stream's
consumer groups, and the dead-letter table; records all of it on `wx_cdc_stream` every tick,
changed or not, so the observation history is also a liveness history. It also evaluates the
health checks (all reads) as check evaluations: a minute's resolution without a run a minute.
Dagster marks a tick that launches no run "skipped"; its reason says what the tick recorded.
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg
from redis import Redis

from wx_orchestration.clients.redis_client import stream_groups
from wx_orchestration.contracts.cdc import (
    CDC_STREAM,
    HEARTBEAT_KEY_PREFIX,
    GroupStats,
    SidecarHeartbeat,
)
from wx_orchestration.defs.observability.assets import LML_BUDGET_KEY, WX_CDC_STREAM_KEY
from wx_orchestration.defs.resources import LmlBudgetResource, PostgresResource, RedisResource
from wx_orchestration.defs.sweeps.checks import evaluate_health_checks


def _heartbeats(client: Redis) -> list[SidecarHeartbeat]:
    beats = []
    for key in client.scan_iter(match=f"{HEARTBEAT_KEY_PREFIX}*", count=100):
        beat = SidecarHeartbeat.from_hash(client.hgetall(key))  # type: ignore[arg-type]
        if beat is not None:
            beats.append(beat)
    return sorted(beats, key=lambda b: b.instance)


def _dead_letters(postgres: PostgresResource) -> tuple[int, int]:
    with postgres.connection() as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE created_at > now() - interval '24 hours')"
            " FROM wx_orchestration.dead_letters"
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def sidecar_observation(
    beats: list[SidecarHeartbeat],
    stream_length: int | None,
    groups: list[GroupStats],
    dead_letters: tuple[int, int],
    now_ms: int,
) -> dg.AssetObservation:
    leaders = [b.instance for b in beats if b.bridge_state == "leader"]
    metadata: dict[str, Any] = {
        "sidecars_alive": len(beats),
        "bridge_leader": leaders[0] if leaders else "none",
        "stream_length": stream_length if stream_length is not None else "missing",
        "dead_letters_total": dead_letters[0],
        "dead_letters_24h": dead_letters[1],
        "oldest_heartbeat_age_s": (
            round((now_ms - min(b.last_seen_ms for b in beats)) / 1000, 1) if beats else "none"
        ),
        "sidecars": dg.MetadataValue.json(
            [
                {
                    "instance": b.instance,
                    "roles": list(b.roles),
                    "bridge_state": b.bridge_state,
                    "last_seen_age_s": round((now_ms - b.last_seen_ms) / 1000, 1),
                    "dead_letters_since_start": b.dead_letters,
                }
                for b in beats
            ]
        ),
    }
    for group in groups:
        metadata[f"lag_{group.name}"] = group.lag if group.lag is not None else "unknown"
        metadata[f"pending_{group.name}"] = group.pending
    return dg.AssetObservation(asset_key=WX_CDC_STREAM_KEY, metadata=metadata)


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records the sidecar's heartbeat, stream lag and dead letters on wx_cdc_stream "
    "and evaluates the health checks, every minute.",
)
def sidecar_health_sensor(
    context: dg.SensorEvaluationContext,
    redis: RedisResource,
    postgres: PostgresResource,
    lml_budget: LmlBudgetResource,
) -> dg.SensorResult:
    client = redis.get_client()
    beats = _heartbeats(client)
    length, groups = stream_groups(client, CDC_STREAM)
    observation = sidecar_observation(
        beats, length, groups, _dead_letters(postgres), time.time_ns() // 1_000_000
    )
    context.log.info(
        "sidecars alive: %d; lag: %s",
        len(beats),
        {g.name: g.lag for g in groups} or "no groups",
    )
    budget = lml_budget.get_budget()
    budget_states = {family: budget.state(family) for family in ("lookup", "identity")}
    budget_observation = dg.AssetObservation(
        asset_key=LML_BUDGET_KEY,
        metadata={
            **{f"breaker_{f}": state["breaker"] for f, state in budget_states.items()},
            **{f"paused_ms_{f}": state["paused_ms"] for f, state in budget_states.items()},
            **{f"in_flight_{f}": state["in_flight"] for f, state in budget_states.items()},
            "limits": dg.MetadataValue.json(budget_states["lookup"]["limits"]),
        },
    )
    checks = evaluate_health_checks({"postgres": postgres, "redis": redis})
    failing = [e.check_name for e in checks if not e.passed]
    return dg.SensorResult(
        asset_events=[observation, budget_observation, *checks],
        skip_reason=(
            f"recorded: {len(beats)} sidecar(s) alive, {len(checks)} checks evaluated, "
            f"failing: {', '.join(failing) or 'none'} (no run to launch)"
        ),
    )
