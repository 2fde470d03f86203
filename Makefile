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
# --compile-bytecode: uv leaves .pyc files out by default, and where PYTHONDONTWRITEBYTECODE
# is set (as on CI machines) every process then compiles every module it imports: 2.8 s of
# the 4.6 s a small `score` took, paid again by each Ray worker and each test subprocess.
UV := $(BIN)/uv pip install --compile-bytecode --python $(BIN)/python
# The versions every install takes (constraints.txt: pinned, re-resolved by `make lock`).
PINNED := -c constraints.txt
# The project's own sources (an editable install) are compiled by each run, for the same reason.
COMPILE_SOURCES := $(BIN)/python -m compileall -q uba jobs
# Copied logic (six or more equal lines, imports and docstrings aside) in the product's code
# fails the build: each decision lives in one place. Nothing is excluded.
DUPLICATES := $(BIN)/pylint --disable=all --enable=R0801 --min-similarity-lines=6 --ignore-imports=yes \
	--ignore-docstrings=yes --score=no uba jobs

# The layers of docs/architecture.md ([tool.importlinter] in pyproject.toml): an import
# that goes up a layer, or between independent packages, or round a cycle, fails the build.
LAYERS := $(BIN)/lint-imports --no-cache
# Strict types on uba/ and jobs/ ([tool.mypy] in pyproject.toml): 0 errors or the build fails.
TYPES := $(BIN)/mypy

# The suite on two processes, whole test files to each (module fixtures such as the two-node
# Ray cluster stay in one process; each process builds the session's shared worlds once):
# 9-11 min instead of 15-17 on 2 cores, since most tests wait on subprocesses, servers and Ray.
# `make test PARALLEL=` runs it in one process.
PARALLEL ?= -n 2 --dist loadfile

.PHONY: install install-dev demo test test-fast lint lock clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "uv>=0.5,<1"

$(RUNTIME_STAMP): pyproject.toml constraints.txt | $(BIN)/uv
	$(UV) $(PINNED) -e .
	@touch $@

$(DEV_STAMP): pyproject.toml constraints.txt | $(BIN)/uv
	$(UV) $(PINNED) -e ".[dev]"
	@touch $(RUNTIME_STAMP) $@

install: $(RUNTIME_STAMP)

install-dev: $(DEV_STAMP)

demo: install
	@$(COMPILE_SOURCES) >/dev/null
	./scripts/demo.sh $(DEMO)

test: install-dev
	$(BIN)/ruff check .
	$(DUPLICATES)
	$(LAYERS)
	$(TYPES)
	@$(COMPILE_SOURCES) >/dev/null
	$(BIN)/pytest -q $(PARALLEL)

# The unit tier only (tests/conftest.py says what each tier holds): under a minute.
test-fast: install-dev
	@$(COMPILE_SOURCES) >/dev/null
	$(BIN)/pytest -q -m unit

lint: install-dev
	$(BIN)/ruff check .
	$(DUPLICATES)
	$(LAYERS)
	$(TYPES)

# Re-resolve constraints.txt from pyproject.toml: the newest releases it accepts, for
# Python 3.11 and 3.12 on any platform. Keeps the file's comment header.
lock: | $(BIN)/uv
	{ sed -n '/^#/!q;p' constraints.txt; $(BIN)/uv pip compile pyproject.toml --extra dev --universal \
		--python-version 3.11 --no-header --quiet; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	./scripts/demo.sh --clean $(DEMO)
	rm -rf .pytest_cache .ruff_cache
