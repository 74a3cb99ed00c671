# PipelineJobs Manager. `make demo` runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install test lint demo demo-keep bench bench-serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check pipelinejobs reactor.py

# `make demo ARGS=--keep` (or `make demo-keep`): afterwards, keep serving the web view until Ctrl-C.
demo: install
	$(BIN)/python -m pipelinejobs.demo $(ARGS)

demo-keep: install
	$(BIN)/python -m pipelinejobs.demo --keep

# Issue 8's ratios (serve latency and throughput on both stores, cold reactor.py), issue 11's job list and
# /metrics over 100,000 jobs, issue 10's watchdog pass (`--only read`, `--only watch`), issue 22's Snakemake
# run reporting to serve (`--only snakemake`, ~4 min): 12-18 min on 2 cores.
bench: install
	$(BIN)/python bench/run.py

# Only the serve part of `make bench` (both stores).
bench-serve: install
	$(BIN)/python bench/run.py --only latency,throughput

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
