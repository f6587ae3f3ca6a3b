#!/usr/bin/env bash
# qwen-scope attribute extraction vs the official batched PyTorch way, on CPU, in one run:
# the same rows, layers and generation length on both sides, and the generations compared
# cell by cell.
#
#   tools/bench_attributes.sh [MODEL] [RELATION...]
#       (defaults: models/qwen2.5-coder-0.5b data/relations/capitals.json)
#
# NOT a CI step. Needs a Python with torch + transformers (5.x) + tokenizers + numpy from
# $PYTHON (default /work/venv-ref/bin/python), and a built ./target/release/qwen-scope.
# Settings via the environment: LIMIT (8 rows per relation), LAYERS (0,2,4,...,22: source
# and target layers), MAX_NEW (10), BATCH (16 cells per HF generate, the official batch
# size), THREADS (2), OUT (temp dir).
# qwen-scope's time and PyTorch's both count baselines, source passes and every patched
# generation, not model loading. The PyTorch side is tools/reference_attributes.py
# --way batched: one HF generate per batch of cells with a hook patching each row, as the
# official evaluate_attriburte_exraction_batch does. Exit status 1 if any generation differs
# other than at a float near-tie (top-1 minus top-2 logit < 1e-3), 2 on a missing tool, 3
# when there is nothing to compare: only rows the model knows unpatched are evaluated (the
# official only_correct rule), so on a relation it does not know no cell is timed, and the
# script says so (tools/bench_attributes_compare.py) instead of printing a ratio.
# LRE relations get the default prompts with demonstrations on both sides (DEMOS, 3, and
# DEMO_SEED, 0: qwen-scope --demonstrations/--demo-seed, the reference's flags alike).
set -euo pipefail

cd "$(dirname "$0")/.."
MODEL=${1:-models/qwen2.5-coder-0.5b}
shift || true
RELATIONS=("${@:-data/relations/capitals.json}")
[ ${#RELATIONS[@]} -gt 0 ] || RELATIONS=(data/relations/capitals.json)
PYTHON=${PYTHON:-/work/venv-ref/bin/python}
LIMIT=${LIMIT:-8}
LAYERS=${LAYERS:-0,2,4,6,8,10,12,14,16,18,20,22}
MAX_NEW=${MAX_NEW:-10}
BATCH=${BATCH:-16}
DEMOS=${DEMOS:-3}
DEMO_SEED=${DEMO_SEED:-0}
THREADS=${THREADS:-2}
OUT=${OUT:-$(mktemp -d /tmp/bench_attributes.XXXXXX)}
QS=./target/release/qwen-scope

[ -x "$QS" ] || { echo "error: $QS not built (cargo build --release)" >&2; exit 2; }
"$PYTHON" -c 'import torch, transformers, tokenizers, numpy' 2>/dev/null || {
    echo "error: $PYTHON lacks torch/transformers/tokenizers/numpy (set PYTHON=...);" \
         "this benchmark is not a CI step." >&2; exit 2; }
mkdir -p "$OUT"
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
echo "== bench_attributes: model=$MODEL relations=${RELATIONS[*]} limit=$LIMIT layers=$LAYERS" \
     "max_new=$MAX_NEW batch=$BATCH demonstrations=$DEMOS seed=$DEMO_SEED threads=$THREADS" \
     "out=$OUT"

echo "== qwen-scope attributes"
rm -rf "$OUT/qs"
$QS attributes --device cpu --model "$MODEL" --relations "${RELATIONS[@]}" --limit "$LIMIT" \
    --source-layers "$LAYERS" --target-layers "$LAYERS" --max-new "$MAX_NEW" --out "$OUT/qs" \
    --demonstrations "$DEMOS" --demo-seed "$DEMO_SEED" \
    >"$OUT/qs.stdout" 2>"$OUT/qs.stderr" || { tail -20 "$OUT/qs.stderr" >&2; exit 2; }
grep -E "^evaluated" "$OUT/qs.stderr"
# no evaluated row (a relation the model does not know): no work to time, say so now
"$PYTHON" tools/bench_attributes_compare.py "$OUT" "$LIMIT" --qwen-scope-only

echo "== PyTorch, the official batched way (tools/reference_attributes.py --way batched)"
"$PYTHON" tools/reference_attributes.py --model "$MODEL" --relations "${RELATIONS[@]}" \
    --limit "$LIMIT" --source-layers "$LAYERS" --target-layers "$LAYERS" --max-new "$MAX_NEW" \
    --demonstrations "$DEMOS" --demo-seed "$DEMO_SEED" \
    --way batched --batch "$BATCH" --threads "$THREADS" --time --out "$OUT/torch.json" \
    >"$OUT/torch.log" 2>&1 || { tail -20 "$OUT/torch.log" >&2; exit 2; }

echo "== comparison"
"$PYTHON" tools/bench_attributes_compare.py "$OUT" "$LIMIT"
