# The two commands that matter: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check lint types bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## The whole farm on an embedded default: http://127.0.0.1:8000/
run: $(STAMP)
	$(BIN)/llama-farm dev --port $${PORT:-8000}

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## The suite in one test process per core, up to 4 (`.venv/bin/pytest` alone: one process)
test: check
	$(BIN)/pytest -n auto --maxprocesses 4 --dist worksteal

## Every benchmark; rewrites the tables in docs/PERFORMANCE.md (set FARM_TEST_POSTGRES_URL
## for the PostgreSQL figures)
bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .farm .mypy_cache .pytest_cache .ruff_cache .hypothesis
