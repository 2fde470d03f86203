# Everything a newcomer needs: `make demo` runs the whole job on synthetic data,
# `make test` runs the suite. Both create .venv from scratch if it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0

.PHONY: install demo test lint clean

$(BIN)/uba-batch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	@touch $@

install: $(BIN)/uba-batch

demo: install
	./scripts/demo.sh $(DEMO)

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
