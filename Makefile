# mediadrive developer entry points. `make test` installs everything it
# needs (Debian packages, the uv environment, a pyfuse3 with FUSE passthrough
# built against libfuse 3.17, test binaries) and is quick when nothing changed.

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV ?= uv
VENV := .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
# Every step says how long it took.
TIMED := scripts/timed.sh

.PHONY: help install test-deps lint test soak demo bench-core bench-fuse crds clean

help:
	@echo "make install     system packages + uv environment (.venv/bin/mediadrive)"
	@echo "                 + pyfuse3 with FUSE passthrough (libfuse 3.17 in .cache/fuse3)"
	@echo "make test-deps   install + test binaries (MinIO) under ~/.cache/mediadrive"
	@echo "make lint        ruff check, ruff format --check, mypy"
	@echo "make test        test-deps, lint, pytest (extra args: PYTEST_ARGS=...)"
	@echo "make soak        long integrity runs: 100,000 random operations per --commit-on"
	@echo "                 mode and 10,000 pwrite+fsync rounds (tests/node/test_integrity.py)"
	@echo "make demo        run the end-to-end demo"
	@echo "make bench-core  core benchmarks against MinIO and PostgreSQL"
	@echo "make bench-fuse  FUSE mount benchmarks"
	@echo "make crds        regenerate crds/ and the chart's CRDs and values schema from the models"
	@echo "make clean       remove .venv, .cache and tool caches"

install:
	@$(TIMED) system-packages scripts/install-system-deps.sh
	@$(TIMED) uv-sync $(UV) sync --all-packages --frozen
	@$(TIMED) fuse-passthrough scripts/build-fuse-passthrough.sh

test-deps: install
	@$(TIMED) test-binaries scripts/build-test-binaries.sh

lint: install
	@$(TIMED) ruff $(VENV)/bin/ruff check .
	@$(TIMED) ruff-format $(VENV)/bin/ruff format --check .
	@$(TIMED) mypy $(VENV)/bin/mypy

test: test-deps lint
	@$(TIMED) pytest $(VENV)/bin/pytest -q tests $(PYTEST_ARGS)

soak: test-deps
	@$(TIMED) soak env MEDIADRIVE_SOAK=1 $(VENV)/bin/pytest -q -s --timeout=0 tests/node/test_integrity.py $(PYTEST_ARGS)

demo: install
	$(PYTHON) -m mediadrive.cli.demo

bench-core: test-deps
	$(PYTHON) bench/core_bench.py

bench-fuse: test-deps
	$(PYTHON) bench/fuse_bench.py

crds: install
	@$(TIMED) crds $(PYTHON) -m mediadrive.operator.crds .

clean:
	if [ -d .cache ]; then chmod -R u+w .cache; fi
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
