# pycanary: `make demo` shows it, `make test` checks it, `make bench` measures it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install demo test lint bench wheel-check clean mutants

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pycanary demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Every test, against fakeredis and a real Redis (PYCANARY_TEST_REDIS_URL, default
# redis://127.0.0.1:6379/0; tests use their own key prefixes and never flush).
test: $(STAMP) lint
	$(PY) -m pytest -q

# The peers bench/peers.py compares with (the `bench` extra). arq declares redis<6: installed
# without its dependencies so redis-py stays the one every bench uses; peers.py prints
# "n/a (why)" for any peer that is missing or fails.
# A failed install is retried next time and does not stop the benchmarks.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	-$(PY) -m pip install --quiet -e '.[dev,bench]' && \
	  $(PY) -m pip install --quiet --no-deps 'arq==0.28.0' && touch $(BENCH_STAMP)

# Benchmarks print figures and the baseline measured in the same run (docs/performance.md);
# a missed target is reported, and the next benchmark still runs.
bench: $(BENCH_STAMP)
	-$(PY) bench/route_latency.py
	-$(PY) bench/route_server_time.py
	-$(PY) bench/worker_throughput.py
	-$(PY) bench/drain.py
	-$(PY) bench/streams.py
	-$(PY) bench/controller.py
	-$(PY) bench/analysis_quality.py
	-$(PY) bench/load.py
	-$(PY) bench/peers.py

# A plain (non-editable) install into a fresh venv must run the Lua scripts.
wheel-check: $(STAMP)
	$(PY) -m pytest -q tests/test_packaging.py

# One-line bugs injected into a copy of the tree must each fail a test (tools/mutants.py).
mutants: $(STAMP)
	$(PY) tools/mutants.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
