#!/usr/bin/env bash
# Download, into .whl/, the wheels `make gpu-check` installs on the GPU machine (Python 3.12, x86-64 Linux):
# what the project needs there that the image lacks (bitsandbytes, datasets, pydantic and their own missing
# needs), plus transformers and peft at the project's versions: the image's transformers 5.17 has no
# `activation_checkpointing_enable`, which pref_core.modeling.load_backbone calls. No dependency resolution
# (--no-deps): every wheel is named here, one version each (two versions of one package stop the install).
#
#     make gpu-wheels                     # or: bash bench/gpu_wheels.sh [DIR]
#     EXTRA="somepkg==1.2" make gpu-wheels   # also bring another package
#
# The folder is git-ignored; what travels to the GPU machine counts against its 64 MiB limit
# (bitsandbytes ~43 MB + transformers ~12 MB of ~58 MB), so bring nothing else the image already has.
set -euo pipefail
DIR="${1:-.whl}"
PYTHON="${PYTHON:-python3}"
# Versions of the project's own venv (pyproject.toml ranges), so the GPU run tests what CI tests.
PACKAGES=(
  bitsandbytes==0.50.2 transformers==5.24.0 peft==0.21.2
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
)
# shellcheck disable=SC2206
PACKAGES+=(${EXTRA:-})
mkdir -p "$DIR"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform any -d "$DIR" "${PACKAGES[@]}"
ls -l "$DIR"
du -sh "$DIR"
