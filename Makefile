# The two commands of the quickstart: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock requirements-dev.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint typecheck pytest chaos bench bench-quick clean

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

## Start nats-server, one actor worker and one edge on 127.0.0.1:8787.
run: $(STAMP)
	$(BIN)/signaling dev

## Lint, type-check and run every test against real processes.
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

## Random faults under live calls, every guarantee checked (CHAOS_SECONDS, default
## 300; CHAOS_SEED, default a fresh one): report in tests/artifacts/chaos-<seed>.txt.
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos

## The standard benchmarks (under ten minutes): results in bench/results/.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-bench.lock
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.failover --kills 5 --seconds 5
	$(BIN)/python -m bench.liveness --rounds 5
	$(BIN)/python -m bench.commands

bench-quick: $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-bench.lock
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) .data .mypy_cache .pytest_cache .ruff_cache
