# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck bench check fuzz clean

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

# The native pass built with AddressSanitizer and UBSan in .fuzz/, fed mutated bodies and
# checked against the reference (tests/fuzz/native.py). About a minute: not in `make test`.
FUZZ_RUNS ?= 100000
FUZZ_SEED ?= 1
SANITIZE  := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
fuzz: $(STAMP)
	rm -rf .fuzz && mkdir .fuzz && cp -r gateway .fuzz/gateway && rm -f .fuzz/gateway/*.so
	CFLAGS='$(SANITIZE) -O1' LDFLAGS='$(SANITIZE)' \
		$(BIN)/python setup.py -q build_ext --build-lib .fuzz --build-temp .fuzz/build
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
		PYTHONMALLOC=malloc PYTHONPATH=.fuzz \
		$(BIN)/python tests/fuzz/native.py --runs $(FUZZ_RUNS) --seed $(FUZZ_SEED)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .fuzz
