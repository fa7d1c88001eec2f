# flashkit: two commands on a fresh machine.
#   make report   set up .venv, then run every benchmark and tuning notebook (papermill) into reports/
#   make test     set up .venv, then ruff + codespell, mypy (strict), import contracts
#                 (lint-imports) and pytest with flashkit's coverage (fails below the floor)
#   make lab      JupyterLab on 127.0.0.1 (PORT=8888) with the `flashkit` kernel
#   make dashboard  the breaker simulator and backoff explorer as Voila dashboards (PORT=8866)
# The venv is (re)installed only when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := dev

.PHONY: test report lint typecheck imports pytest bench clean setup lab dashboard kernel

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "flashkit needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check flashkit tests benchmarks
	$(BIN)/ruff format --check flashkit tests benchmarks
	$(BIN)/codespell flashkit tests benchmarks docs notebooks README.md
	$(BIN)/validate-pyproject pyproject.toml

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

# Coverage and the two workers here, not in addopts: a single `pytest tests/test_x.py` stays
# fast and plain. Whole files per worker (--dist loadfile): a module's fixtures run once.
PYTEST_WORKERS ?= 2
pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --cov=flashkit --cov-report=term

test: lint typecheck imports pytest

# The project's environment as a Jupyter kernel, installed into .venv itself (--sys-prefix).
KERNEL := $(VENV)/share/jupyter/kernels/flashkit/kernel.json
kernel: $(KERNEL)
$(KERNEL): $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name flashkit --display-name "flashkit (.venv)"

lab: $(KERNEL)
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(or $(PORT),8888) --no-browser \
		--ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

dashboard: $(KERNEL)
	$(BIN)/voila notebooks/dashboards --Voila.ip=127.0.0.1 --port=$(or $(PORT),8866) --no-browser \
		$(DASHBOARD_ARGS)

report: $(STAMP)
	$(BIN)/python -m flashkit.report $(REPORT_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/primitives.py

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache
	rm -f .coverage .coverage.*
