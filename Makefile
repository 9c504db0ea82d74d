# make demo  - create .venv if needed, install, run the detector pipeline on built-in synthetic CT
# make test  - create .venv if needed, install, run the test suite
# make bench - side-by-side benchmarks (bench/*.py), each ending with its ratio lines

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-noduleflow

.PHONY: install demo test bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# pip takes the pinned CPU torch (torch==2.13.0) from this machine's disk; reinstall when pyproject changes
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/noduleflow demo

# ruff first (lint, then the formatter's check): a style slip fails in a second, before the suite's minutes
test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(PY) -m pytest

bench: $(STAMP)
	@set -e; for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) demo build dist src/*.egg-info .pytest_cache
