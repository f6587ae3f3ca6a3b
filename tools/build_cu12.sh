#!/usr/bin/env bash
# Builds qwen-scope with kernels for older GPUs and drivers: Kaggle's P100 (sm_60) and Colab's
# T4 (sm_75) on an R550 driver (CUDA 12.4), which a CUDA 13 build cannot serve. Needs no nvcc:
# CUDA 12.4's NVRTC and nvFatbin from PyPI (in .venv-cu12) compile kernels/*.cu to SASS
# (tools/fatbin_cu12.py), and build.rs embeds that fatbin (QWEN_SCOPE_FATBIN).
#
#   tools/build_cu12.sh [cargo build args...]     # e.g. --bin qwen-scope
#
# QWEN_SCOPE_CUDA_ARCHS picks the SASS targets (default 60,61,70,75,80,86,89,90: Pascal to
# Hopper) plus PTX for the newest. A GPU machine with a CUDA 12 nvcc (Colab, Kaggle) needs
# none of this: there plain `cargo build --release` finds that nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-cu12
if ! "$venv/bin/python" -c "import nvidia.cuda_nvrtc, nvidia.nvfatbin" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q nvidia-cuda-nvrtc-cu12==12.4.127 nvidia-cuda-runtime-cu12==12.4.127 \
    nvidia-nvfatbin-cu12==12.4.127
fi
archs="${QWEN_SCOPE_CUDA_ARCHS:-60,61,70,75,80,86,89,90}"
fatbin="$PWD/target/cu12/qwen_scope_kernels.fatbin"
"$venv/bin/python" tools/fatbin_cu12.py --kernels kernels --archs "$archs" --out "$fatbin"
QWEN_SCOPE_FATBIN="$fatbin" QWEN_SCOPE_FATBIN_COMPILER="NVRTC 12.4" \
  cargo build --release "$@"
