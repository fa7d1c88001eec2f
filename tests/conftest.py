"""Shared fixtures: real services (Redis, PostgreSQL) and headless plotting.

Tests that need a service take the ``redis_url`` or ``database_url`` fixture. The URLs come from
``FLASHKIT_REDIS_URL`` / ``FLASHKIT_DATABASE_URL`` (defaults: the local services). When a service
does not answer, its tests are skipped with the reason, except under ``CI=true``, where an
unreachable service fails the run: CI must never skip silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from _services import require_service

os.environ.setdefault("MPLBACKEND", "Agg")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a live Redis (FLASHKIT_REDIS_URL); skip, or fail under CI, when unreachable."""
    url = os.environ.get("FLASHKIT_REDIS_URL", DEFAULT_REDIS_URL)
    return require_service("Redis", "FLASHKIT_REDIS_URL", url)


@pytest.fixture(scope="session")
def database_url() -> str:
    """SQLAlchemy URL of a live PostgreSQL (FLASHKIT_DATABASE_URL); skip, or fail under CI."""
    url = os.environ.get("FLASHKIT_DATABASE_URL", DEFAULT_DATABASE_URL)
    return require_service("PostgreSQL", "FLASHKIT_DATABASE_URL", url)


@pytest.fixture
def close_figures() -> Iterator[None]:
    """Close every matplotlib figure a test opened."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The notebook runs first: the longest file, so with workers (``make test``) the others
    fill the second worker instead of waiting behind it at the end (stable otherwise)."""
    items.sort(key=lambda item: item.get_closest_marker("notebooks") is None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "soak: bounded real-time soak against a live server (seconds; runs by default and in CI)",
    )
