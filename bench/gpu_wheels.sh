#!/usr/bin/env bash
# Download, into .whl/, the wheels `make gpu-check` installs on the GPU machine (Python 3.12, x86-64 Linux):
# what the project needs there that the image lacks (bitsandbytes, datasets, pydantic and their own missing
# needs), plus transformers and peft at the project's versions: the image's transformers 5.17 has no
# `activation_checkpointing_enable`, which pref_core.model.backbone.load_backbone calls. No dependency resolution
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
# The versions are requirements.lock's, so the GPU run tests what CI tests (a name missing from the lock stops here).
NAMES=(
  bitsandbytes transformers peft
  datasets dill multiprocess
  pydantic pydantic-core annotated-types typing-inspection typing-extensions
)
LOCK="$(dirname "$0")/../requirements.lock"
PACKAGES=()
for name in "${NAMES[@]}"; do
  pin="$(grep -i -E "^${name}==" "$LOCK" || true)"
  [[ -n "$pin" ]] || { echo "gpu_wheels: $name is not in $LOCK; run \`make lock\`" >&2; exit 2; }
  PACKAGES+=("$pin")
done
# shellcheck disable=SC2206
PACKAGES+=(${EXTRA:-})
mkdir -p "$DIR"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform any -d "$DIR" "${PACKAGES[@]}"
ls -l "$DIR"
du -sh "$DIR"
