# PipelineJobs Manager. `make demo` runs the main job; `make test` runs the tests; `make image` builds the
# actor image and `make image-test` runs it as Abaco does (docs/deploying.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# pytest workers, each taking whole modules: a third of the suite's time is waits on timers, servers and
# processes, so one worker more than a 2-core machine's cores keeps both busy (3m15 -> 2m35 here).
TEST_WORKERS ?= 3

.PHONY: install test lint demo demo-keep bench bench-serve clean lock image image-test base-image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check pipelinejobs reactor.py

# `make demo ARGS=--keep` (or `make demo-keep`): afterwards, keep serving the web view until Ctrl-C.
demo: install
	$(BIN)/python -m pipelinejobs.demo $(ARGS)

demo-keep: install
	$(BIN)/python -m pipelinejobs.demo --keep

# The serve ratios (latency and throughput on both stores, cold reactor.py), the job list and /metrics over
# 100,000 jobs, the watchdog pass (`--only read`, `--only watch`), notifications and a Snakemake run reporting
# to serve (`--only snakemake`, ~4 min): 12-18 min on 2 cores. Figures: docs/performance.md.
bench: install
	$(BIN)/python bench/run.py

# Only the serve part of `make bench` (both stores).
bench-serve: install
	$(BIN)/python bench/run.py --only latency,throughput

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# -- the image (docs/deploying.md) ----------------------------------------------------------------------------
# The locks are resolved for the image's Python: Debian bookworm's python3 (3.11) on Linux. `make lock` keeps
# every pin it can; `make lock UPGRADE=--upgrade` moves them all to the newest releases pyproject.toml allows.
UV_VERSION  := 0.13.8
LOCK_PYTHON := 3.11
LOCK_FLAGS   = --quiet --generate-hashes --python-version $(LOCK_PYTHON) --python-platform linux \
               --custom-compile-command 'make lock' $(UPGRADE)

$(BIN)/uv: $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)

lock: $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) --output-file requirements.lock
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(BIN)/uv pip compile - $(LOCK_FLAGS) --output-file requirements-build.lock

VERSION  := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' pipelinejobs/__init__.py)
IMAGE    ?= pipelinejobs-manager:$(VERSION)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE   ?= $(shell git remote get-url origin 2>/dev/null)
# The host's CA bundle, handed to pip for the build only (a BuildKit/buildah secret, never a layer): needed
# where HTTPS to PyPI goes through a proxy that re-signs it with a local certificate authority.
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
# docker or podman, whichever answers (a docker client without a daemon does not); ENGINE=... to choose.
# Looked up once, and only by the targets that use it.
ENGINE   ?= $(eval ENGINE := $(shell for e in docker podman; do $$e info >/dev/null 2>&1 && { echo $$e; break; }; done))$(ENGINE)
, := ,

image:
	@test -n "$(ENGINE)" || { echo "make image: neither 'docker info' nor 'podman info' answers" >&2; exit 1; }
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--network host --jobs 2) \
	  $(if $(wildcard $(CA_BUNDLE)),--secret id=ca$(,)src=$(CA_BUNDLE)) \
	  --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) --build-arg SOURCE=$(SOURCE) \
	  --tag $(IMAGE) .

# The base image made from Debian's archive, under the Dockerfile's FROM name, where no registry serves it.
base-image:
	tools/debian_base.sh $(ENGINE)

# Builds the image, then runs it as Abaco does against a secantusd-py on this host (not part of `make test`).
# It needs the virtual environment (secantusd-py, pymongo, httpx), made by `make install` when missing.
$(BIN)/secantusd-py:
	$(MAKE) install

image-test: $(BIN)/secantusd-py image
	$(BIN)/python tools/image_test.py --engine $(ENGINE) --image $(IMAGE) --revision $(REVISION)
