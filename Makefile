# Quick start: `make demo` and `make test`; each sets up .venv first when needed.
SHELL := /bin/bash
# Prefer Python 3.12 (newest jax); a pyenv shim that is present but not selected does not count.
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 python3; do \
	"$$p" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
# JAX for the machine: cpu (default, development and CI), cuda12, cuda13 or tpu. The platform's
# packages (requirements/platform-*.txt: JAX's own extra at the locked jax version) go on top of
# the lock; switching platforms removes the other platforms' packages first. Every lock is made
# from pyproject.toml by `make locks` (uv, with hashes): lock-dev-* for this checkout,
# lock-py* (runtime only) for the wheel.
PLATFORM ?= cpu
PLATFORMS := cpu cuda12 cuda13 tpu
STAMP := $(VENV)/.installed-$(PLATFORM)
PYVER = $$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
WORKDIR ?= runs/demo
DEMO_CONFIG ?= configs/demo.py

# PyTorch reference for the parity tests, in its own environment: torch wheels here exist for
# Python 3.11 only, and `make test` must not pull a multi-GB build into the project's .venv.
TORCH_PYTHON ?= $(shell for p in python3.11 $$HOME/.pyenv/versions/3.11*/bin/python3.11; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
TORCH_VENV := .venv-torch

.PHONY: setup locks check-platforms test test-fast wheel-test lint demo bench parity extras clean

$(STAMP): pyproject.toml requirements/lock-dev-py3.11.txt requirements/lock-dev-py3.12.txt $(wildcard requirements/platform-*.txt)
	@case " $(PLATFORMS) " in *" $(PLATFORM) "*) ;; *) echo "PLATFORM must be one of: $(PLATFORMS)"; exit 1;; esac
	@test -n "$(PYTHON)" || { echo "No Python >= 3.11 found; install python3.12 or python3.11."; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/lock-dev-py$(PYVER).txt
	@for other in requirements/platform-*-py$(PYVER).txt; do \
		case "$$other" in *platform-$(PLATFORM)-*) ;; *) $(PY) -m pip uninstall -q -y -r "$$other" 2>/dev/null || true;; esac; done
	@if [ "$(PLATFORM)" != cpu ]; then \
		$(PY) -m pip install -q --no-deps -r requirements/platform-$(PLATFORM)-py$(PYVER).txt; fi
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	@rm -f $(VENV)/.installed $(VENV)/.installed-*
	@touch $@
	@echo "set up .venv for PLATFORM=$(PLATFORM)"

# What `make setup PLATFORM=...` would install, resolved against the package index without
# installing anything (every platform; needs the index).
check-platforms: setup
	@for p in cuda12 cuda13 tpu; do \
		$(PY) -m pip install -q --dry-run --ignore-installed -r requirements/lock-py$(PYVER).txt \
			-r requirements/platform-$$p-py$(PYVER).txt >/dev/null || { echo "PLATFORM=$$p does not resolve"; exit 1; }; \
		echo "PLATFORM=$$p resolves"; done

setup: $(STAMP)

# Regenerates requirements/ from pyproject.toml (needs the index); UPGRADE=1 moves the pins.
locks: setup
	UV=$(abspath $(VENV))/bin/uv requirements/make_locks.sh

lint: setup
	$(VENV)/bin/ruff check mkln_jax configs tests bench launch
	$(VENV)/bin/ruff format --check mkln_jax configs tests bench launch

# Four pytest-xdist workers on two cores, whole files to each (a module's fixtures run once):
# XLA compiles on one thread and many tests wait on `mkln` subprocesses, so fewer workers leave
# cores idle. With the cluster rehearsals and FSDP tests (clean-clone suite, 2-core VM,
# 2026-12-08): three workers 18 min 34 s with the cores 1.57 of 2 busy, four 14 min 58 s.
# tests/conftest.py warms the shared caches first. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 4
test: lint
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

# The tests that need no training run and no subprocess: under two minutes on 2 cores.
test-fast: setup
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests

# The wheel as a pip user installs it, run from outside the checkout (.ci/wheel_test.sh), on
# Python 3.12 and, where there is one, 3.11 (each with its runtime lock).
wheel-test: setup
	PYTHON=$(PY) .ci/wheel_test.sh
	@if [ -n "$(TORCH_PYTHON)" ]; then PYTHON=$(PY) VENV_PYTHON=$(TORCH_PYTHON) .ci/wheel_test.sh; \
		else echo "no Python 3.11 here: wheel test on 3.11 skipped"; fi

demo: setup
	$(VENV)/bin/mkln demo --config=$(DEMO_CONFIG) --workdir=$(WORKDIR)

$(TORCH_VENV)/.installed: tests/torch_reference/requirements.txt
	@test -n "$(TORCH_PYTHON)" || { echo "parity needs Python 3.11 (torch wheels)"; exit 1; }
	@test -x $(TORCH_VENV)/bin/python || $(TORCH_PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 numpy
	$(TORCH_VENV)/bin/pip install -q --no-deps -r tests/torch_reference/requirements.txt
	@touch $@

parity: setup $(TORCH_VENV)/.installed
	MKLN_TORCH_PYTHON=$(abspath $(TORCH_VENV))/bin/python $(VENV)/bin/pytest -q tests/test_torch_parity.py

# The extras move core pins (Apache Beam: protobuf, pyarrow, numpy; jax2onnx: orbax-checkpoint
# < 0.11.37), so they are tested in their own environment: the development lock, then the
# extras. On Python 3.11 where there is one (the other supported version gets a full run).
EXTRAS_VENV := .venv-extras
EXTRAS_PYTHON ?= $(or $(TORCH_PYTHON),$(PYTHON))
$(EXTRAS_VENV)/.installed: pyproject.toml requirements/lock-dev-py3.12.txt requirements/lock-dev-py3.11.txt
	@test -n "$(EXTRAS_PYTHON)" || { echo "No Python >= 3.11 found"; exit 1; }
	@test -x $(EXTRAS_VENV)/bin/python || $(EXTRAS_PYTHON) -m venv $(EXTRAS_VENV)
	$(EXTRAS_VENV)/bin/pip install -q --upgrade pip
	$(EXTRAS_VENV)/bin/pip install -q -r requirements/lock-dev-py$$($(EXTRAS_VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])').txt
	$(EXTRAS_VENV)/bin/pip install -q --no-build-isolation -e ".[beam,faces,onnx,savedmodel]" --config-settings editable_mode=compat
	@touch $@

# Beam's DirectRunner against the local dataset build; ONNX and SavedModel exports against the
# JAX artifact; predict's crops against prepare's with dlib's and RetinaFace's landmarks.
extras: $(EXTRAS_VENV)/.installed
	$(EXTRAS_VENV)/bin/pytest -q -p no:cacheprovider tests/test_beam.py tests/test_onnx.py \
		tests/test_savedmodel.py tests/test_face_pipeline.py

bench: setup
	$(PY) bench/dct_bench.py
	$(PY) bench/method_bench.py

clean:
	rm -rf $(VENV) $(TORCH_VENV) $(EXTRAS_VENV) runs .pytest_cache .ruff_cache
