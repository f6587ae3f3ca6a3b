#!/usr/bin/env bash
# qwen-scope vs candle 0.11 (candle-transformers' qwen2 model) on the same model: forward
# timings (prefill / decode, the protocol of `qwen-scope bench`) and a logits check.
#
#   tools/bench_candle.sh [MODEL]             (default: models/smollm2-135m)
#
# NOT a CI step. Needs cargo and crates.io the first time: compare/candle is a crate of
# its own (own workspace, own target/ at compare/candle/target, outside qwen-scope's
# build), and its first release build takes minutes. ./target/release/qwen-scope is
# built (cargo build --release) only if missing. Settings via the environment:
#   THREADS (2)   CPU threads of both engines: RAYON_NUM_THREADS (qwen-scope's pool, and
#                 candle's rayon pool and gemm) and CANDLE_NUM_THREADS (candle's own pool)
#   DEVICE (cpu)  or cuda / cuda:N: candle is built with --features cuda and qwen-scope
#                 gets --device/--dtype (those flags only when DEVICE != cpu)
#   DTYPE (f32)   f16 / bf16 on a GPU (qwen-scope's CPU backend is f32 only)
#   REPEAT (5)    runs per setting, the median is reported
#   CANDLE_FEATURES ("")  extra cargo features for compare/candle, e.g. gemm-x86-v4
#                 (qwen-scope builds gemm with its AVX-512 kernels, stock candle does
#                 not; see compare/candle/Cargo.toml)
#   OUT (temp dir)  where the raw outputs go
# In one run, alternating engines, it times (a) 1 x 32 prefill + 16 decode steps and
# (b) 8 x 32 batched prefill + 16 batched decode steps, then checks the last-position
# logits of "The capital of France is" on DEVICE in f32 (same token ids, same top-1,
# max |diff| <= 1e-3), then prints the table. Exit status 1 if the check fails.
set -euo pipefail

cd "$(dirname "$0")/.."
MODEL=${1:-models/smollm2-135m}
THREADS=${THREADS:-2}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-f32}
REPEAT=${REPEAT:-5}
CANDLE_FEATURES=${CANDLE_FEATURES:-}
OUT=${OUT:-$(mktemp -d /tmp/bench_candle.XXXXXX)}
TOKENS=32
DECODE=16
PROMPT="The capital of France is"
QS=./target/release/qwen-scope
CB=compare/candle/target/release/candle-bench

[ -f "$MODEL/config.json" ] || { echo "error: no $MODEL/config.json (tools/get_model.sh smollm2-135m)" >&2; exit 2; }
if [ "$DEVICE" = cpu ] && [ "$DTYPE" != f32 ]; then
    echo "error: DTYPE=$DTYPE on the CPU: qwen-scope's CPU backend is f32 only" >&2; exit 2
fi
mkdir -p "$OUT"

# qwen-scope picks a GPU by itself when one is usable (--device auto, env
# QWEN_SCOPE_DEVICE); the env var pins the CPU without a flag older builds lack.
QS_BENCH=() QS_CHECK=()
if [ "$DEVICE" = cpu ]; then
    export QWEN_SCOPE_DEVICE=cpu
else
    QS_BENCH=(--device "$DEVICE" --dtype "$DTYPE")
    QS_CHECK=(--device "$DEVICE" --dtype f32)
    CANDLE_FEATURES="${CANDLE_FEATURES:+$CANDLE_FEATURES,}cuda"
fi
export RAYON_NUM_THREADS=$THREADS CANDLE_NUM_THREADS=$THREADS

echo "== bench_candle: model=$MODEL device=$DEVICE dtype=$DTYPE threads=$THREADS" \
     "repeat=$REPEAT out=$OUT (a local benchmark, not a CI step)"
if [ ! -x "$QS" ]; then
    echo "== building qwen-scope (cargo build --release)"
    cargo build --release
fi
echo "== building compare/candle${CANDLE_FEATURES:+ (features: $CANDLE_FEATURES)}"
T0=$(date +%s)
cargo build --release --manifest-path compare/candle/Cargo.toml \
    ${CANDLE_FEATURES:+--features "$CANDLE_FEATURES"}
echo "   compare/candle build: $(( $(date +%s) - T0 ))s"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# run NAME CMD...: stdout to $OUT/NAME.stdout, stderr shown only on failure
run() {
    local name=$1; shift
    if ! "$@" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr"; then
        echo "error: $name failed: $*" >&2; cat "$OUT/$name.stderr" >&2; exit 2
    fi
}

# ms NAME prefill|decode: the number before "ms" / "ms/step" in a bench line
ms() {
    awk -v kind="$2" '$1 == kind { for (i = 1; i <= NF; i++)
        if ($i == "ms" || $i == "ms/step") { print $(i - 1); exit } }' "$OUT/$1.stdout"
}

for B in 1 8; do
    echo "== $B x $TOKENS prefill + $DECODE decode steps"
    run "qwen$B" "$QS" bench --model "$MODEL" --tokens $TOKENS --batch "$B" \
        --decode $DECODE --repeat "$REPEAT" "${QS_BENCH[@]}"
    sed 's/^/   qwen-scope  /' "$OUT/qwen$B.stdout"
    run "candle$B" "$CB" bench --model "$MODEL" --tokens $TOKENS --batch "$B" \
        --decode $DECODE --repeat "$REPEAT" --device "$DEVICE" --dtype "$DTYPE"
    sed 's/^/   candle      /' "$OUT/candle$B.stdout"
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

echo "== logits check: \"$PROMPT\" on $DEVICE in f32"
run qwen_fwd "$QS" forward --model "$MODEL" --prompt "$PROMPT" --out "$OUT/qwen_forward.json" \
    "${QS_CHECK[@]}"
run candle_logits "$CB" logits --model "$MODEL" --prompt "$PROMPT" \
    --out "$OUT/candle_logits.json" --device "$DEVICE" --dtype f32
# exit status 1: the engines disagree; 2: the check could not run
CHECK_RC=0
"$CB" check --qwen-scope "$OUT/qwen_forward.json" --candle "$OUT/candle_logits.json" \
    --tol 1e-3 >"$OUT/check.stdout" || CHECK_RC=$?
cat "$OUT/check.stdout"

echo "== results: $MODEL, $DEVICE $DTYPE, $THREADS threads, median of $REPEAT" \
     "(ratio = candle / qwen-scope; > 1: qwen-scope faster)"
printf '%-28s %14s %12s %8s\n' setting "qwen-scope ms" "candle ms" ratio
# a ratio only over two measured times: a side whose output has no positive time for the
# setting (it ran no step) gets "n/a" and the reason, never a number
row() {
    local q c
    q=$(ms "qwen$2" "$3"); c=$(ms "candle$2" "$3")
    if awk -v c="$c" -v q="$q" 'BEGIN { exit !(c + 0 > 0 && q + 0 > 0) }'; then
        printf '%-28s %14s %12s %8.2f\n' "$1" "$q" "$c" "$(awk -v c="$c" -v q="$q" 'BEGIN { print c / q }')"
    else
        printf '%-28s %14s %12s %8s  (no ratio: a side measured no time for this setting)\n' \
            "$1" "${q:-none}" "${c:-none}" n/a
    fi
}
row "1 x $TOKENS prefill" 1 prefill
row "1 row decode, per step" 1 decode
row "8 x $TOKENS prefill" 8 prefill
row "8 rows decode, per step" 8 decode
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), nproc $(nproc)," \
     "load average $LOAD_START at start, $LOAD_END after the timings"
CANDLE_VERSIONS=$(awk '/^name = "candle-(core|transformers)"/ { n = $3; getline;
    gsub(/"/, "", n); gsub(/"/, "", $3); printf "%s%s %s", sep, n, $3; sep = ", " }' \
    compare/candle/Cargo.lock)
QS_GIT="git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo '+dirty')"
echo "versions: $("$QS" --version) ($QS_GIT, binary built $(date -r "$QS" '+%F %T'))," \
     "$CANDLE_VERSIONS${CANDLE_FEATURES:+ (features: $CANDLE_FEATURES)}, $(rustc --version)"
cat "$OUT/check.stdout"
echo "raw outputs: $OUT"
case $CHECK_RC in
    0) ;;
    1) echo "error: the logits check failed" >&2; exit 1 ;;
    *) echo "error: the logits check could not run (rc $CHECK_RC)" >&2; exit 2 ;;
esac
