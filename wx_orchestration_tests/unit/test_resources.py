"""The typed resources keep secrets out of their reprs (they end up in logs and tracebacks)."""

from __future__ import annotations

from wx_orchestration.defs.resources import (
    LmlBudgetResource,
    LmlResource,
    PostgresResource,
    RedisResource,
)
from wx_orchestration.settings import Settings


def test_lml_resource_repr_hides_the_key() -> None:
    resource = LmlResource(base_url="https://lml.example.org", api_key="sk-live-abcdef123456")
    assert "sk-live-abcdef123456" not in repr(resource)
    assert "sk-live-abcdef123456" not in repr(resource.get_client())
    assert "https://lml.example.org" in repr(resource)


def test_database_and_redis_passwords_are_redacted() -> None:
    postgres = PostgresResource(database_url="postgresql://wx:pg-secret-99@db:5432/wxyc")
    redis_resource = RedisResource(url="redis://:redis-secret-77@cache:6379/0")
    budget = LmlBudgetResource(redis=redis_resource)
    for text in (repr(postgres), repr(redis_resource), repr(budget)):
        assert "pg-secret-99" not in text
        assert "redis-secret-77" not in text


def test_settings_repr_hides_every_secret() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://wx:pg-secret-99@db/wxyc",
            "REDIS_URL": "redis://:redis-secret-77@cache:6379/0",
            "LML_API_KEY": "sk-live-abcdef123456",
            "SENTRY_DSN": "https://dsnkey4321@sentry.example.org/1",
        }
    )
    text = repr(settings)
    for secret in ("pg-secret-99", "redis-secret-77", "sk-live-abcdef123456", "dsnkey4321"):
        assert secret not in text
