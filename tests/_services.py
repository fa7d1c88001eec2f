"""Reaching the real services: skip with a reason, or fail under CI=true."""

from __future__ import annotations

import os

import pytest


def _ping_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _ping_postgres(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
    finally:
        engine.dispose()


def require_service(name: str, variable: str, url: str) -> str:
    """Return ``url`` when the service answers; else skip (or fail when CI=true) with the reason."""
    probe = _ping_redis if url.startswith(("redis://", "rediss://", "unix://")) else _ping_postgres
    try:
        probe(url)
    except Exception as error:  # any failure to connect means "not reachable"
        reason = (
            f"{name} is not reachable at {url} ({type(error).__name__}: {error}); "
            f"start it or point {variable} at one"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return url
