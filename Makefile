# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv when missing and installs exactly
# what requirements.lock pins (torch first, with --no-deps: a bare torch requirement would pull a multi-GB CUDA
# build), then reuses it. `make lock` regenerates the lock from pyproject.toml's ranges, on purpose.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.arena-pref-installed
LOCK := requirements.lock
SMOKE_LOCK := requirements-smoke.lock
# The torch release is pinned in the lock like everything else (its line carries no build tag, so the CPU build
# here and the CUDA build on a GPU box both satisfy it).
TORCH_VERSION ?= $(shell sed -n 's/^torch==//p' $(LOCK))
# Where `make lock` finds the CPU build of torch it resolves against (its dependencies differ from the CUDA build's).
TORCH_WHEELS ?= $(or $(PIP_FIND_LINKS),https://download.pytorch.org/whl/cpu/torch/)
LOCK_FLAGS = --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) \
	--override <(echo torch==$(TORCH_VERSION)+cpu) --no-emit-package torch --custom-compile-command 'make lock'

demo test smoke-real bench bench-gpu: export HF_HUB_OFFLINE := 1

.PHONY: install lock lock-upgrade demo test lint format smoke-real clean

install: $(STAMP)

# Every package at the lock's version and nothing resolved here (--no-deps), the project itself built with the
# locked setuptools (--no-build-isolation); pip check proves the set is complete and consistent.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-deps torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

# The lock keeps its current versions where pyproject.toml's ranges still allow them (uv prefers the existing
# output file); `make lock-upgrade` moves every package to its newest allowed release. Run `make test` after either.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra gpu --extra quant --extra k8s --extra docker \
		$(LOCK_FLAGS) $(UPGRADE) -o $(LOCK)
	echo "torch==$(TORCH_VERSION)" >> $(LOCK)
	$(BIN)/uv pip compile requirements-smoke.in --no-deps -c $(LOCK) $(LOCK_FLAGS) $(UPGRADE) -o $(SMOKE_LOCK)

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

demo: $(STAMP)
	$(BIN)/arena-pref demo

# Lint and format check first (ruff, configured in pyproject.toml): seconds, before the suite's minutes.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q --durations=25  # the slowest tests listed, to keep the suite inside CI

# `make format`: what `make test` checks, fixed in place (import order, lint autofixes, the formatter).
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# A real pretrained LM on CPU (SmolLM2-135M, shipped as GGUF in a PyPI package; no hub access):
# both heads, 2 folds. `make smoke-real DATA=../shared/data/hh_rlhf_harmless_pairs_dev.jsonl.gz`;
# without DATA it uses synthetic pairs.
smoke-real: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps -r $(SMOKE_LOCK)
	$(BIN)/python -m arena_pref.smoke_real $(if $(DATA),--data $(DATA))

clean:
	rm -rf outputs .pytest_cache

# Benchmarks (bench/, results in docs/benchmarks.md): CPU ones in under 10 minutes, and the GPU one.
.PHONY: bench bench-gpu gpu-check gpu-wheels

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-gpu: $(STAMP)
	$(BIN)/python -m bench.gpu_throughput

# The whole GPU check in one command of at most 8 minutes (bench/gpu_check.py; docs/benchmarks.md):
# wheels from .whl/, `pytest -m gpu tests/gpu`, the 8B throughput benchmark, prediction timing; writes
# OUT/summary.json and logs. It runs under the machine's own python3 (GPU images have no .venv), so it
# has no install prerequisite. `make gpu-check OUT=DIR SMALL=1` is the CPU dry run (2-layer config).
GPU_PYTHON ?= python3
OUT ?= bench/results/gpu-check

gpu-check:
	$(GPU_PYTHON) -m bench.gpu_check --out $(OUT) $(if $(SMALL),--small)

# Download the wheels gpu-check installs there (Python 3.12, manylinux x86-64) into .whl/ (git-ignored).
gpu-wheels:
	bash bench/gpu_wheels.sh .whl
