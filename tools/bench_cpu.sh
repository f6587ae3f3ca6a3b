#!/usr/bin/env bash
# qwen-scope vs PyTorch/transformers on CPU: token-identity sweep throughput and forward
# (prefill / decode) timings, plus a cell-by-cell check of the token-identity predictions.
#
#   tools/bench_cpu.sh [MODEL] [VAL]          (defaults: models/smollm2-135m 24)
#
# NOT a CI step. Needs a Python with torch + transformers (5.x) + tokenizers + numpy,
# taken from $PYTHON (default /work/venv-ref/bin/python), and a built
# ./target/release/qwen-scope (cargo build --release). Settings via the environment:
#   PYTHON, THREADS (2: torch.set_num_threads and RAYON_NUM_THREADS), TRAIN (40),
#   SEED (7), BATCH (16, both sides), PROMPTS (data/prompts.txt), OUT (temp dir).
# It runs, in one go: qwen-scope sweep (fast path, --lens-positions one), qwen-scope
# bench, tools/bench_torch.py (CPU, float32), then tools/bench_compare.py prints the
# ratios (tools/bench_gpu.sh is the CUDA counterpart). Exit status 1 if the
# token-identity predictions of qwen-scope and PyTorch differ in any cell (other
# than an exact float tie on the PyTorch side), 2 on a missing tool, 3 when there is nothing
# to compare (a side timed no cell: tools/bench_compare.py says why and prints no ratio).
set -euo pipefail

cd "$(dirname "$0")/.."
MODEL=${1:-models/smollm2-135m}
VAL=${2:-24}
PYTHON=${PYTHON:-/work/venv-ref/bin/python}
THREADS=${THREADS:-2}
TRAIN=${TRAIN:-40}
SEED=${SEED:-7}
BATCH=${BATCH:-16}
PROMPTS=${PROMPTS:-data/prompts.txt}
OUT=${OUT:-$(mktemp -d /tmp/bench_cpu.XXXXXX)}
QS=./target/release/qwen-scope

[ -x "$QS" ] || { echo "error: $QS not built (cargo build --release)" >&2; exit 2; }
"$PYTHON" -c 'import torch, transformers, tokenizers, numpy' 2>/dev/null || {
    echo "error: $PYTHON lacks torch/transformers/tokenizers/numpy; this benchmark needs" \
         "them (set PYTHON=...). It is not a CI step." >&2; exit 2; }
mkdir -p "$OUT"
export RAYON_NUM_THREADS=$THREADS
START=$(date +%s)

echo "== bench_cpu: model=$MODEL prompts=$PROMPTS train=$TRAIN val=$VAL seed=$SEED" \
     "batch=$BATCH threads=$THREADS out=$OUT"
echo "== (needs torch+transformers from $PYTHON; a local benchmark, not a CI step)"

echo "== qwen-scope sweep (fast path, --lens-positions one)"
rm -rf "$OUT/sweep"
$QS sweep --model "$MODEL" --prompts "$PROMPTS" --train "$TRAIN" --val "$VAL" \
    --seed "$SEED" --batch "$BATCH" --lens-positions one --device cpu --out "$OUT/sweep" \
    >"$OUT/sweep.stdout" 2>"$OUT/sweep.stderr"
grep -E "^(evaluated|time by phase|token identity alone)" "$OUT/sweep.stderr"

echo "== qwen-scope bench"
$QS bench --model "$MODEL" --device cpu --tokens 32 --repeat 5 --decode 16 \
    >"$OUT/bench.stdout" 2>"$OUT/bench.stderr"
cat "$OUT/bench.stdout"

echo "== PyTorch (tools/bench_torch.py)"
set +e
"$PYTHON" tools/bench_torch.py --model "$MODEL" --prompts "$PROMPTS" --train "$TRAIN" \
    --val "$VAL" --seed "$SEED" --batch "$BATCH" --device cpu --dtype float32 \
    --threads "$THREADS" --forward 1x32+16 --repeat 5 \
    --out "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log"
TORCH_RC=${PIPESTATUS[0]}
set -e
[ -s "$OUT/torch.json" ] || { echo "error: bench_torch.py failed (rc $TORCH_RC)" >&2; exit 2; }

echo "== comparison"
"$PYTHON" tools/bench_compare.py "$OUT" "$START" --label bench_cpu.sh || exit $?
[ "$TORCH_RC" = 0 ] || { echo "bench_torch.py: the PyTorch ways disagree (rc $TORCH_RC)" >&2; exit 1; }
