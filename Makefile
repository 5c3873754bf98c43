# gpuledger — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Test processes (pytest-xdist): the suite mostly waits on brokers, servers and subprocesses, so two
# overlap well on CI's 2 cores. TEST_WORKERS=0 runs in one process (pytest's own output, pdb).
TEST_WORKERS ?= 2
XDIST  := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench bench-json bench-doc soak setup clean help

help:
	@echo "make demo   simulate a 32-GPU fleet for a day through the whole pipeline, then serve the API"
	@echo "make test   set up, type-check and lint (mypy --strict, ruff), then run the whole test suite"
	@echo "make lint   mypy --strict over gpuledger/ and ruff over the tree (part of make test)"
	@echo "make test-fast  the tests that need no broker or system tool and take under ~5 s each (docs/testing.md)"
	@echo "make bench  run the benchmarks under benchmarks/"
	@echo "make bench-json  run them, store each result in benchmarks/results/ and regenerate docs/benchmarks.md"
	@echo "make bench-doc   regenerate docs/benchmarks.md and the README's status table from benchmarks/results/"
	@echo "make soak   run the agent for 3,600 ticks against the simulator; fails if its memory grows"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/gpuledger demo $(DEMO_ARGS)

test: setup lint
	sh scripts/system-deps.sh
	$(PY) -m tests.support.focus_validator
	$(PY) -m tests.support.rest_catalog
	$(PY) -m pytest -q $(XDIST) $(TEST_ARGS)

# mypy --strict and ruff, configured in pyproject.toml; CI runs them through `make test`.
lint: setup
	$(PY) -m mypy
	$(PY) -m ruff check gpuledger tests benchmarks dashboards

# While iterating: no Kafka broker, Prometheus or browser, nothing slow (markers in pyproject.toml).
test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow and not external" $(TEST_ARGS)

bench: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

bench-json: setup
	$(PY) -m benchmarks --json benchmarks/results $(BENCH_ARGS)
	$(PY) -m benchmarks.report

bench-doc: setup
	$(PY) -m benchmarks.report

soak: setup
	$(PY) -m benchmarks.soak_agent $(SOAK_ARGS)

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis
