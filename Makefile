# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck bench check clean

$(STAMP): pyproject.toml setup.py gateway/_fastmask.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo

# The whole suite: lint, types, unit and end-to-end tests.
test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: $(STAMP)
	$(BIN)/gateway check -c deploy/gateway.yaml

bench: $(STAMP)
	$(BIN)/python -m gateway.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
