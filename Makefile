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

.PHONY: help install test-deps lint test soak demo bench bench-core bench-fuse bench-pod crds clean \
	cluster-up cluster-down images e2e-kind

help:
	@echo "make install     system packages + uv environment (.venv/bin/mediadrive)"
	@echo "                 + pyfuse3 with FUSE passthrough (libfuse 3.17 in ~/.cache/mediadrive/fuse)"
	@echo "make test-deps   install + test binaries (MinIO, the Kubernetes node, helm, csi-sanity)"
	@echo "                 built once under ~/.cache/mediadrive"
	@echo "make lint        ruff check, ruff format --check, mypy"
	@echo "make test        test-deps, lint, pytest (extra args: PYTEST_ARGS=...)"
	@echo "make soak        long integrity runs: 100,000 random operations per --commit-on"
	@echo "                 mode and 10,000 pwrite+fsync rounds (tests/node/test_integrity.py)"
	@echo "make demo        run the end-to-end demo"
	@echo "make bench       mediadrive vs JuiceFS, rclone and s3fs on one MinIO: bench/report.md,"
	@echo "                 results.json, *.png (QUICK=1: smaller sizes, about 13 minutes)"
	@echo "make bench-core  core benchmarks against MinIO and PostgreSQL"
	@echo "make bench-fuse  FUSE mount benchmarks"
	@echo "make bench-pod   storage pod benchmarks: pod vs MinIO, mount reads, event relay"
	@echo "make cluster-up  start a one-node Kubernetes cluster on this machine (root; state in"
	@echo "                 /var/tmp/mediadrive-cluster, KUBECONFIG printed; docs/cluster.md)"
	@echo "make cluster-down stop it and remove its processes, mounts, bridge, iptables chains, cgroups"
	@echo "make images      build the mediadrive images without Docker (.cache/images/*.tar);"
	@echo "                 imported into the cluster when it is up"
	@echo "make e2e-kind    run tests/e2e in a kind cluster (needs docker and kind)"
	@echo "make crds        regenerate crds/ and the chart's CRDs and values schema from the models"
	@echo "make clean       remove .venv, .cache and tool caches"

install:
	@$(TIMED) system-packages scripts/install-system-deps.sh
	@$(TIMED) uv-sync $(UV) sync --all-packages --frozen --compile-bytecode
	@$(TIMED) fuse-passthrough scripts/build-fuse-passthrough.sh

test-deps: install
	@$(TIMED) test-binaries scripts/build-test-binaries.sh
	@$(TIMED) cluster-binaries scripts/build-cluster-binaries.sh

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

bench: install
	@$(TIMED) test-binaries scripts/build-test-binaries.sh
	@$(TIMED) bench-peers scripts/bench/peers.sh
	@$(TIMED) bench $(PYTHON) bench/compare.py $(if $(QUICK),--quick) $(BENCH_ARGS)

bench-core: test-deps
	$(PYTHON) bench/core_bench.py

bench-fuse: test-deps
	$(PYTHON) bench/fuse_bench.py

bench-pod: test-deps
	$(PYTHON) bench/pod_bench.py $(BENCH_ARGS)

cluster-up:
	@$(TIMED) system-packages scripts/install-system-deps.sh
	@$(TIMED) test-binaries scripts/build-test-binaries.sh
	@$(TIMED) cluster-binaries scripts/build-cluster-binaries.sh
	@$(TIMED) cluster-up scripts/cluster/up.sh

cluster-down:
	@$(TIMED) cluster-down scripts/cluster/down.sh

images: install
	@$(TIMED) images scripts/images/build.sh

e2e-kind: install
	@$(TIMED) e2e-kind env PYTEST_ARGS="$(PYTEST_ARGS)" scripts/cluster/e2e-kind.sh
crds: install
	@$(TIMED) crds $(PYTHON) -m mediadrive.operator.crds .

clean:
	if [ -d .cache ]; then chmod -R u+w .cache; fi
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
