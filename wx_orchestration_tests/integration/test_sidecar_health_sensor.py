"""`sidecar_health_sensor` observes wx_cdc_stream every tick from heartbeats, lag, dead letters."""

from __future__ import annotations

import dagster as dg
import psycopg
import redis

from wx_orchestration.clients.lml_budget import LmlBudget
from wx_orchestration.contracts.cdc import (
    CDC_STREAM,
    EVENTLOG_GROUP,
    SidecarHeartbeat,
    heartbeat_key,
)
from wx_orchestration.core.budget import BudgetLimits
from wx_orchestration.defs.observability.assets import wx_cdc_stream
from wx_orchestration.defs.observability.sensors import sidecar_health_sensor
from wx_orchestration.defs.resources import LmlBudgetResource, PostgresResource, RedisResource
from wx_orchestration.defs.sweeps.checks import HEALTH_CHECKS
from wx_orchestration_tests.servers import STATION_SCHEMA


def _evaluate_all(station_db: str, redis_url: str) -> dict[str, dict[str, object]]:
    result = _sensor_result(station_db, redis_url)
    assert not result.run_requests
    observed = {}
    for observation in result.asset_events:
        if isinstance(observation, dg.AssetCheckEvaluation):
            continue
        assert isinstance(observation, dg.AssetObservation)
        observed[observation.asset_key.to_user_string()] = {
            key: getattr(value, "value", value) for key, value in observation.metadata.items()
        }
    return observed


def _sensor_result(station_db: str, redis_url: str) -> dg.SensorResult:
    redis_resource = RedisResource(url=redis_url)
    with dg.build_sensor_context(
        resources={
            "redis": redis_resource,
            "postgres": PostgresResource(database_url=station_db, station_schema=STATION_SCHEMA),
            "lml_budget": LmlBudgetResource(redis=redis_resource),
        }
    ) as context:
        result = sidecar_health_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _evaluate(station_db: str, redis_url: str) -> dict[str, object]:
    return _evaluate_all(station_db, redis_url)[wx_cdc_stream.key.to_user_string()]


def test_observes_heartbeat_lag_and_dead_letters(station_db: str, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for n in range(3):
        client.xadd(CDC_STREAM, {"payload": str(n)})
    client.xgroup_create(CDC_STREAM, EVENTLOG_GROUP, id="0")
    client.xreadgroup(EVENTLOG_GROUP, "c1", {CDC_STREAM: ">"}, count=1)
    beat = SidecarHeartbeat("host-1", ("bridge", "eventlog"), 1_000, 500, "leader", {}, 2)
    client.hset(heartbeat_key("host-1"), mapping=beat.to_hash())  # type: ignore[arg-type]
    with psycopg.connect(station_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO wx_orchestration.dead_letters (source, payload, reason)"
            " VALUES ('wx:cdc/eventlog', 'x', 'not JSON')"
        )
    metadata = _evaluate(station_db, redis_url)
    assert metadata["sidecars_alive"] == 1
    assert metadata["bridge_leader"] == "host-1"
    assert metadata["stream_length"] == 3
    assert metadata[f"lag_{EVENTLOG_GROUP}"] == 2
    assert metadata[f"pending_{EVENTLOG_GROUP}"] == 1
    assert metadata["dead_letters_total"] == 1
    assert metadata["dead_letters_24h"] == 1


def test_observes_even_when_nothing_runs(station_db: str, redis_url: str) -> None:
    metadata = _evaluate(station_db, redis_url)
    assert metadata["sidecars_alive"] == 0
    assert metadata["bridge_leader"] == "none"
    assert metadata["stream_length"] == "missing"


def test_observes_the_shared_lml_budget(station_db: str, redis_url: str) -> None:
    budget = LmlBudget(redis.Redis.from_url(redis_url), BudgetLimits())
    budget.settle("backlog", budget.acquire("backlog"), "rate_limited", retry_after_s=30)
    observed = _evaluate_all(station_db, redis_url)["lml_budget"]
    assert observed["breaker_lookup"] == "closed"
    assert isinstance(observed["paused_ms_lookup"], int)
    assert observed["paused_ms_lookup"] > 0
    assert observed["paused_ms_identity"] == 0


def test_sensor_and_asset_load_in_definitions() -> None:
    defs = dg.Definitions(
        assets=[wx_cdc_stream],
        sensors=[sidecar_health_sensor],
        resources={
            "redis": RedisResource(url="redis://127.0.0.1:1/0"),
            "postgres": PostgresResource(database_url="postgresql://nowhere/db"),
            "lml_budget": LmlBudgetResource(redis=RedisResource(url="redis://127.0.0.1:1/0")),
        },
    )
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_sensor_def("sidecar_health_sensor").minimum_interval_seconds == 60


def test_evaluates_every_health_check_without_a_run(station_db: str, redis_url: str) -> None:
    with psycopg.connect(station_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO wx_orchestration.dead_letters (source, payload, reason)"
            " VALUES ('wx:cdc/eventlog', 'x', 'not JSON')"
        )
    result = _sensor_result(station_db, redis_url)
    assert not result.run_requests
    evaluations = {
        e.check_name: e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)
    }
    assert set(evaluations) == {key.name for check in HEALTH_CHECKS for key in check.check_keys}
    assert not evaluations["dead_letters"].passed
    assert evaluations["stranded_claims"].passed
    assert result.skip_reason is not None
    reason = result.skip_reason.skip_message or ""
    assert "failing: dead_letters" in reason
