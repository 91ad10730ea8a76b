# Everything a fresh machine with python3 and make needs: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.test-installed
SAMPLE := data/sample
MODEL := data/model
RUN_DATE ?= 2026-11-28
PYTEST_ARGS ?=

.PHONY: run test test-fast test-quick lint format bench bench-quick clean install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(INSTALLED): setup.py constraints.txt transforms/_tokens.c | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

$(TEST_INSTALLED): $(INSTALLED) setup.py constraints.txt constraints-dev.txt
	$(PY) -m pip install --quiet -c constraints-dev.txt -e '.[test]'
	touch $@

install: $(INSTALLED)

$(SAMPLE)/.complete: | $(INSTALLED)
	$(BIN)/sentiment-score sample-data --output $(SAMPLE) --reviews 3000 --days 3 --end-date $(RUN_DATE)
	touch $@

$(MODEL)/metadata.json: $(SAMPLE)/.complete
	$(BIN)/sentiment-score train --customers $(SAMPLE)/customers --reviews $(SAMPLE)/reviews --model-dir $(MODEL) --epochs 8

# Scores one night of the sample reviews on DirectRunner with the demo model.
run: $(INSTALLED) $(MODEL)/metadata.json
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/sentiment-score score --config configs/local.yaml --date $(RUN_DATE)

lint: $(TEST_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(TEST_INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Lint, then the whole suite (unit, pipeline end-to-end, CLI subprocesses, portable runner, packaging).
test: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: lint, then every test not marked slow (pure functions, DoFns, the model on the small trained bundle);
# the slow ones run a pipeline, a subprocess, a server (S3, portable runner), Airflow or many hypothesis examples.
test-fast: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# Everything but the installs: lint, then every test not marked install (the sdist and wheel into fresh venvs, the
# Airflow venv and DAG), pipeline runs, subprocesses and servers included.
test-quick: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not install" $(PYTEST_ARGS)

# Throughput, memory and CPU-µs a row per stage against baselines, by hand (never in make test); see benchmarks/README.md.
bench: $(TEST_INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.run --sizes 1000000 --backfill 5x2000000 --repeat 3

bench-quick: $(TEST_INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.run --sizes 20000 --backfill 2x10000 --no-readme

clean:
	rm -rf $(VENV) .venv-airflow .venv-airflow.lock data output *.egg-info .pytest_cache .ruff_cache
