# flashkit: two commands on a fresh machine.
#   make report   set up .venv, then run every benchmark and tuning notebook (papermill) into reports/
#   make test     set up .venv, then ruff, mypy (strict) and pytest
# The venv is (re)installed only when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := dev

.PHONY: test report lint typecheck pytest bench clean setup

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

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

report: $(STAMP)
	$(BIN)/python -m flashkit.report $(REPORT_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/primitives.py

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache .hypothesis
