# kpigate: the two commands are `make demo` and `make test`; both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-replay bench-router bench-soak setup system clean

demo: $(STAMP)
	$(BIN)/kpigate demo

test: $(STAMP) system lint typecheck unit

setup: $(STAMP)

# A fresh Debian/Ubuntu python3 may lack the venv module: install it when we can.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "kpigate needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) \
	  || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq python3-venv \
	       && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# System packages the integration tests use (Prometheus, promtool). Installed only when missing
# and only when we are root; tests that need them skip with a message otherwise (CI fails instead).
system:
	@bash scripts/ensure-system.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/statistical.py --write docs/statistics.md $(BENCH_ARGS)
	$(BIN)/python bench/forecast.py --write docs/forecast.md

bench-replay: $(STAMP)
	$(BIN)/python bench/replay_speed.py --write docs/replay-speed.md $(BENCH_ARGS)

bench-router: $(STAMP)
	$(BIN)/python bench/router_bench.py $(BENCH_ARGS)

bench-soak: $(STAMP)
	$(BIN)/python bench/soak.py --write docs/reliability.md $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
