# Every target sets itself up: a fresh clone needs only Python 3.11+ and PyPI.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo run test test-fast lint bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)  ## POST sample-data.json through chalice local and the worker, then show what landed
	$(PY) -m scripts.demo

run: $(STAMP)  ## keep the endpoint (port 8000) and a worker running until Ctrl-C
	$(PY) -m scripts.run_local

test: $(STAMP)  ## every test, including the long crash/fault runs
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis
