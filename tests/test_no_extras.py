"""``import flashkit`` and the primitives work without the optional extras.

The extras (``pyproject.toml``'s optional-dependencies: redis, uvicorn, lz4, msgpack, psycopg,
pandas, the OTLP exporter, the notebook and benchmark tools ...) are installed in the dev
environment, so their absence is simulated: ``tests/_no_extras_probe.py`` runs in a fresh
interpreter with a ``sys.meta_path`` finder that makes importing any module that only they
provide raise ``ModuleNotFoundError``. The modules to block are computed here from the installed
distributions: every distribution an extra pulls in (transitively) that the core dependencies do
not, and of those the top-level modules (or, for namespace packages such as ``opentelemetry``,
the subpackages) that no core distribution provides.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import json
import subprocess
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).with_name("_no_extras_probe.py")
_CODE_SUFFIXES = (".py", ".so", ".pyd")


def _closure(requirements: Iterable[str]) -> set[str]:
    """The distributions ``requirements`` install, transitively (those installed here)."""
    seen: set[str] = set()
    stack = [Requirement(text) for text in requirements]
    while stack:
        requirement = stack.pop()
        name = canonicalize_name(requirement.name)
        if name == "flashkit" or name in seen:
            continue  # flashkit[lab]: the extras are all listed anyway
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            needed = Requirement(text)
            marker, extras = needed.marker, requirement.extras or {""}
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras):
                needed.marker = None
                stack.append(needed)
    return seen


def _modules(dist_name: str) -> set[tuple[str, ...]]:
    """Every module and package path a distribution installs, as name tuples."""
    found: set[tuple[str, ...]] = set()
    for file in metadata.distribution(dist_name).files or []:
        parts = file.parts
        if not parts or ".." in parts or not parts[-1].endswith(_CODE_SUFFIXES):
            continue
        if parts[0].endswith((".dist-info", ".egg-info", ".data")):
            continue
        *packages, last = parts
        stem = last.split(".", 1)[0]
        names = (*packages, stem) if stem != "__init__" else tuple(packages)
        if names and all(part.isidentifier() for part in names):
            found.update(names[:n] for n in range(1, len(names) + 1))
    return found


@functools.cache
def blocked_modules() -> tuple[str, ...]:
    """The shortest module names that only the extras' distributions provide."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = _closure(project["dependencies"])
    extras = _closure(text for texts in project["optional-dependencies"].values() for text in texts)
    optional = {name for name in extras - core if _installed(name)}
    owners: defaultdict[tuple[str, ...], set[str]] = defaultdict(set)
    for name in optional | {name for name in core if _installed(name)}:
        for module in _modules(name):
            owners[module].add(name)
    only_optional = {module for module, dists in owners.items() if dists <= optional}
    shortest = {
        module
        for module in only_optional
        if not any(module[:n] in only_optional for n in range(1, len(module)))
    }
    return tuple(sorted(".".join(module) for module in shortest))


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(PROBE), json.dumps(blocked_modules())],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return parsed


def test_the_blocked_modules_are_the_extras() -> None:
    """The computed list blocks what the extras provide, and nothing the core needs."""
    blocked = set(blocked_modules())
    for module in ("redis", "uvicorn", "lz4", "msgpack", "psycopg", "pandas", "numpy"):
        assert module in blocked, module
    assert "opentelemetry.exporter" in blocked  # the otlp extra, inside a namespace package
    assert "httpx" in blocked  # a bench extra: flashkit runs on httpx2 without it
    for core in ("httpx2", "sqlalchemy", "zstandard", "opentelemetry", "typer", "rich", "genanki"):
        assert not any(core == name or core.startswith(f"{name}.") for name in blocked), core


def test_import_flashkit_without_extras(report: dict[str, Any]) -> None:
    """Nothing blocked was loaded before the finder, and the package root imports (it
    re-exports every primitive, the client and telemetry)."""
    assert report["preloaded"] == []
    assert report["import"] == "ok", report["import"]
    assert report["loaded"] == []


@pytest.mark.parametrize(
    "check",
    [
        "retry",
        "retry_async",
        "retry_context",
        "CircuitBreaker",
        "RateLimiter.try_acquire",
        "CompressedCache+MemoryStore",
        "CacheService",
        "classify",
    ],
)
def test_primitive_works_without_extras(report: dict[str, Any], check: str) -> None:
    assert report["checks"][check] == "ok", report["checks"][check]


@pytest.mark.parametrize(
    ("feature", "extra"),
    [
        ("redis:RedisRateLimiter", "redis"),
        ("redis:RedisStore", "redis"),
        ("cache:lz4", "cache"),
        ("cache:msgpack", "cache"),
        ("server:sim.serve", "server"),
    ],
)
def test_a_feature_needing_an_extra_says_which(
    report: dict[str, Any], feature: str, extra: str
) -> None:
    """Using it raises an ImportError that names the extra to install."""
    outcome = report["extras"][feature]
    assert outcome is not None, f"{feature} worked without its extra"
    kind, message = outcome
    assert kind in ("ImportError", "ModuleNotFoundError"), outcome
    assert f"flashkit[{extra}]" in message, message
