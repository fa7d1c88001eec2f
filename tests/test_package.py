"""The package's public surface and the repository's own promises (layout, env files, notebooks)."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

import flashkit

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = [
    "clock",
    "errors",
    "retry",
    "budget",
    "breaker",
    "ratelimit",
    "cache",
    "logs",
]
# Subsystems: their main names at top level, the rest (metric names, span schema, the
# simulator's parts) in their own namespace.
NAMESPACES = {
    "telemetry": [
        "Telemetry",
        "configure_opentelemetry",
        "get_meter",
        "get_tracer",
        "instrument_breaker",
        "instrument_budget",
        "instrument_limiter",
        "retry_hooks",
    ],
    "client": ["ChatResult", "LLMClient", "Usage"],
}


def test_all_is_sorted_explicit_and_complete() -> None:
    """flashkit.__all__ lists exactly the public names the package defines, sorted (as httpx)."""
    public = sorted(
        name
        for name, value in vars(flashkit).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    )
    assert sorted(flashkit.__all__, key=str.casefold) == flashkit.__all__
    assert sorted(set(flashkit.__all__) - {"__version__"}) == public


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_each_public_module_reexports_its_names_at_top_level(module_name: str) -> None:
    """Every name in flashkit.<module>.__all__ is importable from flashkit itself, same object."""
    module = importlib.import_module(f"flashkit.{module_name}")
    assert module.__all__, f"flashkit.{module_name} has no __all__"
    for name in module.__all__:
        assert getattr(flashkit, name) is getattr(module, name), name


@pytest.mark.parametrize("module_name", sorted(NAMESPACES))
def test_each_subsystem_reexports_its_main_names(module_name: str) -> None:
    """flashkit.<subsystem>'s main names are importable from flashkit, same object."""
    module = importlib.import_module(f"flashkit.{module_name}")
    assert set(NAMESPACES[module_name]) <= set(module.__all__)
    for name in NAMESPACES[module_name]:
        assert getattr(flashkit, name) is getattr(module, name), name


def test_every_top_level_name_lives_in_a_named_module() -> None:
    """A newcomer finds each primitive in the module named after its idea."""
    homes = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(f"flashkit.{module_name}")
        homes.update(dict.fromkeys(module.__all__, module_name))
    for module_name, names in NAMESPACES.items():
        homes.update(dict.fromkeys(names, module_name))
    assert set(flashkit.__all__) - {"__version__"} <= set(homes)


@pytest.mark.parametrize("gone", ["redis_ratelimit", "adaptive"])
def test_the_limiters_live_in_one_package(gone: str) -> None:
    """Every limiter is in flashkit.ratelimit; the old module paths are gone, not aliased."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"flashkit.{gone}")


def test_the_client_does_not_load_the_app_the_simulator_or_the_lab() -> None:
    """The import direction, checked where a user meets it: importing the client (in a fresh
    interpreter) loads no module of the flashcard app, the simulator or the lab."""
    import subprocess
    import sys

    code = (
        "import flashkit.client, sys; "
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('flashkit.'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "flashkit.client" in loaded
    for layer in ("flashkit.flashcards", "flashkit.sim", "flashkit.lab", "flashkit.cli"):
        assert not [m for m in loaded if m == layer or m.startswith(layer + ".")], layer


def test_version_matches_pyproject_and_package_is_typed() -> None:
    """__version__ equals pyproject's version and py.typed ships with the package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert flashkit.__version__ == project["version"]
    assert (ROOT / "flashkit" / "py.typed").exists()
    assert project["requires-python"] == ">=3.11"


def _normalise(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)", requirement)
    assert match, requirement
    name = match.group(1).lower().replace("_", "-")
    conda = {"redis": "redis-py", "msgpack": "msgpack-python"}.get(name, name)
    return conda, match.group(3).replace(" ", "")


def test_environment_yml_mirrors_pyproject() -> None:
    """environment.yml lists every dependency of the package and its extras, same bounds."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_normalise(r) for r in project["dependencies"])
    for requirements in project["optional-dependencies"].values():
        for requirement in requirements:
            if not requirement.startswith("flashkit"):
                wanted.update([_normalise(requirement)])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda: dict[str, str] = {}
    pip_lines: list[str] = []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip_lines.extend(entry["pip"])
            continue
        name, bound = _normalise(entry)
        if name not in {"python", "pip"}:
            conda[name] = bound
    assert conda == wanted, (
        "environment.yml and pyproject.toml disagree: "
        f"only in environment.yml {sorted(set(conda) - set(wanted))}, "
        f"only in pyproject {sorted(set(wanted) - set(conda))}, "
        f"different bounds {sorted(n for n in set(conda) & set(wanted) if conda[n] != wanted[n])}"
    )
    assert "-e ." in pip_lines


def test_notebooks_are_committed_without_outputs() -> None:
    """Notebooks stay diff-friendly: no outputs, no execution counts, a parameters cell."""
    notebooks = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("benchmarks/*.ipynb")])
    assert notebooks, "no notebooks found"
    for path in notebooks:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") for c in code), f"{path.name} has outputs"
        assert all(c.get("execution_count") is None for c in code), f"{path.name} was executed"
        tags = [t for c in code for t in c.get("metadata", {}).get("tags", [])]
        assert "parameters" in tags, f"{path.name} has no cell tagged 'parameters'"


def test_report_manifest_lists_every_notebook() -> None:
    """make report runs every tuning and benchmark notebook: none is left out of the manifest."""
    manifest = tomllib.loads((ROOT / "benchmarks" / "report.toml").read_text())
    listed = {entry["path"] for entry in manifest["notebook"]}
    present = {
        str(p.relative_to(ROOT))
        for p in [*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("benchmarks/*.ipynb")]
    }
    assert listed == present


def test_readme_first_screen_shows_the_two_commands() -> None:
    """The README's first screen (40 lines) shows `make report` and `make test`."""
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert "make report" in first_screen
    assert "make test" in first_screen


def test_ci_script_starts_services_and_runs_make_test() -> None:
    """.ci/run starts PostgreSQL and Redis when they do not answer, then runs `make test`."""
    script = (ROOT / ".ci" / "run").read_text()
    assert "make test" in script
    assert "redis-server" in script
    assert "pg_ctlcluster" in script
    assert "CI=true" in script or "export CI" in script
