# Every target sets itself up: a fresh clone needs only Python 3.11+ and PyPI. `make test` also
# installs, as root, what its real servers and browser need when missing (PostgreSQL, Chromium).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-postgres run explore screenshot test test-fast fuzz mutation lint bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-explore.txt
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)  ## POST sample-data.json through chalice local and the worker, then show what landed
	$(PY) -m scripts.demo

demo-postgres: $(STAMP)  ## make demo, landing in a throwaway PostgreSQL server (DATABASE_URL)
	bash scripts/ensure_postgres.sh
	$(PY) -m scripts.demo_postgres

run: $(STAMP)  ## keep the endpoint (port 8000) and a worker running until Ctrl-C
	$(PY) -m scripts.run_local

explore: $(STAMP)  ## Datasette on the demo database (or DB_PATH): metadata, canned queries, dashboards
	$(PY) -m scripts.explore

screenshot: $(STAMP)  ## re-make docs/explore.png from the browser test
	bash scripts/ensure_chromium.sh
	FIREHOSE_WRITE_SCREENSHOT=1 $(PY) -m pytest -q tests/test_browser.py

# Two test processes (pytest-xdist): the long tests mostly wait on real workers, servers and
# signals, so two of them share 2 cores well. TEST_PROCESSES=0 runs them in this one process.
TEST_PROCESSES ?= 2

test: $(STAMP)  ## every test, including the long crash/fault runs, PostgreSQL and the browser
	bash scripts/ensure_postgres.sh
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q --durations=15 -n $(TEST_PROCESSES) --dist worksteal

test-fast: $(STAMP)
	bash scripts/ensure_postgres.sh
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q -m "not slow" -n $(TEST_PROCESSES) --dist worksteal

fuzz: $(STAMP)  ## the property tests with many more examples (minutes)
	bash scripts/ensure_postgres.sh
	FIREHOSE_FUZZ=1 $(PY) -m pytest -q tests/test_hostile_queue.py tests/test_hostile_endpoint.py \
		tests/test_hostile_values.py tests/test_codec.py tests/test_views.py tests/test_idempotence.py \
		tests/test_store_contract.py

mutation: $(STAMP)  ## mutmut over loop, store, local queue, codec, ingest; writes docs/mutation.md (hours on 2 cores)
	$(PY) -m scripts.mutation

lint: $(STAMP)  ## ruff, and mypy over the packages that run in production
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis
