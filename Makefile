# pycanary: `make demo` shows it, `make test` checks it, `make bench` measures it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit bench wheel-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pycanary demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Every test, against fakeredis and a real Redis (PYCANARY_TEST_REDIS_URL, default
# redis://127.0.0.1:6379/0; tests use their own key prefixes and never flush).
test: $(STAMP) lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/route_latency.py

# A plain (non-editable) install into a fresh venv must run the Lua scripts.
wheel-check: $(STAMP)
	$(PY) -m pytest -q tests/test_packaging.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
