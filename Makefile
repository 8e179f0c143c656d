# `make test` and `make demo` work on a fresh clone: they build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -n 2 -q

demo: $(STAMP)
	$(PY) examples/digits_mlp.py

bench: $(STAMP)
	@echo "benchmarks land with the benchmark issue; nothing to run yet"

clean:
	rm -rf $(VENV) demo_out bench_out
