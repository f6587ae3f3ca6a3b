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
# bench, tools/bench_torch.py, then prints the ratios. Exit status 1 if the
# token-identity predictions of qwen-scope and PyTorch differ in any cell (other
# than an exact float tie on the PyTorch side).
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
    --seed "$SEED" --batch "$BATCH" --lens-positions one --out "$OUT/sweep" \
    >"$OUT/sweep.stdout" 2>"$OUT/sweep.stderr"
grep -E "^evaluated" "$OUT/sweep.stderr"

echo "== qwen-scope bench"
$QS bench --model "$MODEL" --tokens 32 --repeat 5 --decode 16 \
    >"$OUT/bench.stdout" 2>"$OUT/bench.stderr"
cat "$OUT/bench.stdout"

echo "== PyTorch (tools/bench_torch.py)"
set +e
"$PYTHON" tools/bench_torch.py --model "$MODEL" --prompts "$PROMPTS" --train "$TRAIN" \
    --val "$VAL" --seed "$SEED" --batch "$BATCH" --threads "$THREADS" \
    --out "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log"
TORCH_RC=${PIPESTATUS[0]}
set -e
[ -s "$OUT/torch.json" ] || { echo "error: bench_torch.py failed (rc $TORCH_RC)" >&2; exit 2; }

echo "== comparison"
"$PYTHON" - "$OUT" "$START" <<'EOF'
import csv, json, re, sys, time
out, start = sys.argv[1], int(sys.argv[2])
err = open(f"{out}/sweep.stderr").read()
m = re.search(r"evaluated (\d+) samples \((\d+) cells\) in ([\d.]+)s: ([\d.]+) cells/s", err)
assert m, "no 'evaluated ...' line in qwen-scope sweep stderr"
n_samples, all_cells, cells_per_s = int(m[1]), int(m[2]), float(m[4])
secs = all_cells / cells_per_s  # more digits than the printed "in Xs"
rows = list(csv.DictReader(open(f"{out}/sweep/samples.csv", newline="")))
ti = [r for r in rows if r["method"] == "token_identity"
      and r["source_layer"] == r["target_layer"]]
qs_ti = len(ti) / secs
bench = open(f"{out}/bench.stdout").read()
qp = float(re.search(r"prefill .*?:\s+([\d.]+) ms", bench)[1])
qd = float(re.search(r"decode .*?:\s+([\d.]+) ms/step", bench)[1])
t = json.load(open(f"{out}/torch.json"))
L = t["num_layers"]

print(f"\nqwen-scope sweep: {n_samples} samples, {all_cells} cells "
      f"(token_identity + logit_lens + tuned_lens) in {secs:.2f}s = {cells_per_s:.1f} cells/s")
print(f"token-identity-only qwen-scope throughput = {len(ti)} token_identity cells / "
      f"{secs:.2f}s (the WHOLE evaluate time, lens cells' time included, so it is a "
      f"lower bound) = {qs_ti:.1f} cells/s")
print(f"PyTorch timings include the source passes; CPU f32, {t['threads']} threads, "
      f"attn={t['attn']}, torch {t['versions']['torch']}, "
      f"transformers {t['versions']['transformers']}\n")
print(f"{'token identity (same layer)':<34} {'seconds':>8} {'cells':>6} {'cells/s':>9} "
      f"{'qwen-scope x':>13}")
print(f"{'qwen-scope sweep (TI cells only)':<34} {secs:8.2f} {len(ti):6d} {qs_ti:9.1f} "
      f"{'1.00':>13}")
for name, w in t["ways"].items():
    label = f"torch ({w['way']}) {name}"
    print(f"{label:<34} {w['seconds']:8.2f} {w['cells']:6d} {w['cells_per_s']:9.1f} "
          f"{qs_ti / w['cells_per_s']:13.2f}")
f = t["forward"]
print(f"\n{'forward (1 x 32 prefill, 16 decode)':<34} {'qwen-scope':>11} {'torch':>9} "
      f"{'speedup':>8}")
print(f"{'prefill ms':<34} {qp:11.2f} {f['prefill_ms']:9.2f} {f['prefill_ms'] / qp:8.2f}")
print(f"{'decode ms/step':<34} {qd:11.2f} {f['decode_ms_per_step']:9.2f} "
      f"{f['decode_ms_per_step'] / qd:8.2f}")

# cell-by-cell: qwen-scope token-identity pred vs every PyTorch way
by_index = {s["index"]: i for i, s in enumerate(t["samples"])}
bad, ties, checked = [], 0, 0
for r in ti:
    i, l = by_index[int(r["index"])], int(r["source_layer"])
    sample = t["samples"][i]
    assert int(r["position"]) == sample["position"], ("position", r["index"])
    for name, w in t["ways"].items():
        checked += 1
        if int(r["pred"]) != w["pred"][i][l]:
            if w["margin"][i][l] == 0.0:
                ties += 1
            else:
                bad.append((r["index"], l, name, int(r["pred"]), w["pred"][i][l],
                            w["margin"][i][l]))
expected = len(t["samples"]) * L
ok = not bad and len(ti) == expected
print(f"\npredictions: qwen-scope token_identity vs {len(t['ways'])} PyTorch ways: "
      f"{checked - len(bad) - ties} of {checked} cell comparisons equal, {ties} exact ties, "
      f"{len(bad)} mismatches ({len(ti)} qwen-scope cells, {expected} expected); "
      f"torch ways among themselves: {len(t['mismatches'])} mismatches")
for b in bad[:20]:
    print(f"  mismatch index={b[0]} layer={b[1]} way={b[2]} qwen-scope={b[3]} "
          f"torch={b[4]} torch margin={b[5]:.3g}")
print(f"\nbench_cpu.sh total wall time: {time.time() - start:.0f}s")
sys.exit(0 if ok else 1)
EOF
[ "$TORCH_RC" = 0 ] || { echo "bench_torch.py: the PyTorch ways disagree (rc $TORCH_RC)" >&2; exit 1; }
