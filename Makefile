# Two commands for a newcomer: `make demo` and `make test`. Both create the virtual
# environment from the project's own files when it is missing.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The embedded Prefect server needs more than its default 20 s to start on 2 cores.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test test-fast lint format install bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

demo: $(STAMP)
	$(BIN)/vqa demo --out demo-output

# The full suite (what CI runs), on 2 processes (pytest-xdist); PYTEST_ARGS="-n 0" runs it serially.
PYTEST_ARGS ?= -n 2
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The edit-test loop: every module, slow tests (marked `slow`) left out; under 90 s on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/pipeline_efficiency.py

clean:
	rm -rf demo-output .pytest_cache
