# kpigate: the two commands are `make demo` and `make test`; both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-cohorts bench-robust bench-replay bench-router \
	bench-soak bench-scoring bench-demo setup system clean

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

# Two workers, a test file each at a time (module fixtures stay in one process): most tests wait
# on real servers, so two cores run the suite in about 8 minutes instead of 12. PYTEST_WORKERS=0
# runs it in one process. Tests marked `solo` (the live demo, which measures the machine's speed
# and sizes its windows to it) then run alone: beside another worker the rate they measured
# does not last. Exit status 5 (nothing selected, e.g. PYTEST_ARGS names one file) is no failure.
PYTEST_WORKERS ?= 2
unit: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not solo" $(PYTEST_ARGS) || [ $$? = 5 ]
	$(BIN)/pytest -m solo $(PYTEST_ARGS) || [ $$? = 5 ]

# Every benchmark runs even when an earlier one misses a target; any miss fails the target.
# statistical.py rewrites docs/statistics.md below its marker, so the others, which write their
# own sections of that file, run after it.
bench: $(STAMP)
	@status=0; \
	$(BIN)/python bench/statistical.py --write docs/statistics.md $(BENCH_ARGS) || status=1; \
	$(BIN)/python bench/forecast.py --write docs/forecast.md || status=1; \
	$(BIN)/python bench/delayed_labels.py --rollouts 1000 --write docs/statistics.md || status=1; \
	$(BIN)/python bench/robust.py --write docs/statistics.md $(ROBUST_ARGS) || status=1; \
	exit $$status

bench-robust: $(STAMP)
	$(BIN)/python bench/robust.py --write docs/statistics.md $(ROBUST_ARGS)

bench-cohorts: $(STAMP)
	$(BIN)/python bench/cohort_query.py --write docs/prediction-log.md $(BENCH_ARGS)

bench-replay: $(STAMP)
	$(BIN)/python bench/replay_speed.py --write docs/replay-speed.md $(BENCH_ARGS)

# Builds the peers' environments under .bench-venvs/ on first use (KServe, MLServer, the HTTP
# ceiling; from the package index), then measures them and kpigate interleaved (~20 min).
# BENCH_ARGS=--quick for a short try.
bench-router: $(STAMP)
	$(BIN)/python bench/router_bench.py --write docs/bench-router.md $(BENCH_ARGS)

bench-soak: $(STAMP)
	$(BIN)/python bench/soak.py --write docs/reliability.md $(BENCH_ARGS)

# The live demo ten times in a row at 50 requests/s asked for (two hours on a busy 2-core box).
bench-demo: $(STAMP)
	$(BIN)/python bench/demo_runs.py --runs 10 --rate 50 --write docs/demo-runs.md $(BENCH_ARGS)

bench-scoring: $(STAMP)
	$(BIN)/python bench/scoring.py --write docs/bench-scoring.md $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
