# Everything a newcomer needs: `make demo` runs the whole job on synthetic data,
# `make test` runs the suite. Both create .venv from scratch if it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= .
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0

# Two stamps: the demo needs only the product's own dependencies; the tests also need
# the dev extras (pytest, ruff, schemathesis, ...). `make test` after `make demo` adds them.
# Packages are installed by uv (from PyPI, into the plain venv): the same packages as pip,
# in seconds instead of most of a minute (benchmarks/results/demo_setup.md).
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
UV := $(BIN)/uv pip install --python $(BIN)/python

.PHONY: install install-dev demo test lint clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "uv>=0.5,<1"

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/uv
	$(UV) -e .
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/uv
	$(UV) -e ".[dev]"
	@touch $(RUNTIME_STAMP) $@

install: $(RUNTIME_STAMP)

install-dev: $(DEV_STAMP)

demo: install
	./scripts/demo.sh $(DEMO)

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install-dev
	$(BIN)/ruff check .

clean:
	./scripts/demo.sh --clean $(DEMO)
	rm -rf .pytest_cache .ruff_cache
