"""The real local services the later primitives build on, and the CI rule for reaching them."""

from __future__ import annotations

import uuid

import pytest
from _services import require_service


def test_redis_round_trip(redis_url: str) -> None:
    """The session's Redis is real: a value written with a TTL is read back and expires."""
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"flashkit:test:{uuid.uuid4()}"
    try:
        client.set(key, b"value", px=60_000)
        assert client.get(key) == b"value"
        assert 0 < client.pttl(key) <= 60_000
    finally:
        client.delete(key)
        client.close()


def test_postgres_round_trip(database_url: str) -> None:
    """The session's PostgreSQL is real: a temporary table holds what was written."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("create temporary table t (word text)"))
            connection.execute(sa.text("insert into t values ('사랑'), ('바보')"))
            words = connection.execute(sa.text("select word from t order by word")).scalars()
            assert sorted(words) == sorted(["사랑", "바보"])
    finally:
        engine.dispose()


def test_unreachable_service_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside CI an unreachable service skips, naming the URL and the variable to set."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="FLASHKIT_REDIS_URL"):
        require_service("Redis", "FLASHKIT_REDIS_URL", "redis://127.0.0.1:1/0")


def test_unreachable_service_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CI=true an unreachable service is a failure, never a silent skip."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_service(
            "PostgreSQL", "FLASHKIT_DATABASE_URL", "postgresql+psycopg://x@127.0.0.1:1/none"
        )
