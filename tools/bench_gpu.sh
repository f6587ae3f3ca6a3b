#!/usr/bin/env bash
# qwen-scope vs PyTorch/transformers on a CUDA GPU: token-identity sweep throughput and
# forward (prefill / decode) timings, plus a cell-by-cell check of the token-identity
# predictions, all on the same model files and prompts in one run.
#
#   tools/bench_gpu.sh MODEL OUT [VAL]          (VAL default 64)
#
# NOT a CI step. For a GPU machine without network or Rust: needs prebuilt binaries in
# $BIN (default gpu-bin, holding qwen-scope; see tools/gpu-check.sh --pack) and a Python
# ($PYTHON, default python3) with torch (CUDA) + transformers (5.x) + tokenizers + numpy.
# Works with any Qwen2 model folder; made for the random model with Qwen2-0.5B shapes of
# tools/gpu_parity.py (a random model's predictions have many near ties, hence TOL).
# Settings via the environment:
#   BIN (gpu-bin), PYTHON (python3), DTYPE (f16: qwen-scope --dtype; PyTorch runs the
#   matching float16 / bfloat16 / float32), TRAIN (40), SEED (7), BATCH (64, both sides),
#   PROMPTS (data/prompts.txt), TOL (largest PyTorch top-1 minus top-2 logit margin at
#   which a qwen-scope prediction differing from PyTorch's counts as a near tie, for
#   every dtype run; default 0.001 for f32, 0.1 for f16, 0.25 for bf16: a few times the
#   logit error of half precision measured on a random Qwen2-0.5B-shaped model, whose
#   top-1 minus top-2 gaps have a median near 0.08), TORCH_TOL (the same among the
#   PyTorch ways: bench_torch.py --tol, default 0 / 0.05 / 0.25), ALSO_F32 (0; 1 also
#   runs everything once more with DTYPE=f32 against PyTorch float32, TF32 off),
#   FORWARD (the forward benches, "1x128+64 32x32+32": B rows x T tokens + D decode),
#   ROOFLINE (1: first measure the GPU's bandwidth and matmul peaks with
#   tools/gpu_roofline.py into OUT/roofline.json, ~15 s, and print each forward rate as
#   a % of them; 0 skips it; a failure there only warns).
# Per dtype, into OUT/DTYPE/: qwen-scope sweep (--device cuda, --lens-positions one),
# qwen-scope bench at 1 x 128 prefill + 64 decode steps and 32 x 32 + 32,
# tools/bench_torch.py (the three PyTorch ways and the same two forward benches), then
# tools/bench_compare.py prints the ratios. Prints each step's wall time. Exit status 1
# if a prediction mismatch exceeds the tolerance (or the PyTorch ways disagree beyond
# theirs), 2 on a missing tool or GPU, 3 when there is nothing to compare (a side timed no
# cell: tools/bench_compare.py says why and prints no ratio).
set -euo pipefail

cd "$(dirname "$0")/.."
usage() { echo "usage: tools/bench_gpu.sh MODEL OUT [VAL]" >&2; exit 2; }
[ $# -ge 2 ] || usage
MODEL=$1
OUT=$2
VAL=${3:-64}
BIN=${BIN:-gpu-bin}
PYTHON=${PYTHON:-python3}
DTYPE=${DTYPE:-f16}
TRAIN=${TRAIN:-40}
SEED=${SEED:-7}
BATCH=${BATCH:-64}
PROMPTS=${PROMPTS:-data/prompts.txt}
ALSO_F32=${ALSO_F32:-0}
ROOFLINE=${ROOFLINE:-1}
QS=$BIN/qwen-scope
# forward benches, each BxT+D: B rows x T prompt tokens + D decode steps (both sides)
read -r -a FORWARD <<<"${FORWARD:-1x128+64 32x32+32}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

die() { echo "error: $*" >&2; exit 2; }

torch_dtype() {
    case $1 in
        f16) echo float16 ;;
        bf16) echo bfloat16 ;;
        f32) echo float32 ;;
        *) die "DTYPE=$1: expected f16, bf16 or f32" ;;
    esac
}

default_tol() {
    case $1 in
        f32) echo 0.001 ;;
        f16) echo 0.1 ;;
        bf16) echo 0.25 ;;
    esac
}

check_tools() {
    [ -x "$QS" ] || die "$QS not found: copy the prebuilt binaries (tools/gpu-check.sh" \
                        "--pack) into BIN=$BIN"
    [ -f "$MODEL/config.json" ] || die "$MODEL/config.json not found"
    [ -f "$PROMPTS" ] || die "$PROMPTS not found"
    "$PYTHON" -c 'import torch, transformers, tokenizers, numpy' 2>/dev/null ||
        die "$PYTHON lacks torch/transformers/tokenizers/numpy (set PYTHON=...)"
    "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
        die "$PYTHON's torch sees no CUDA device: this benchmark needs a GPU." \
            "It is not a CI step."
}

# step NAME CMD...: runs CMD, then prints NAME's wall time
step() {
    local name=$1 t0=$SECONDS rc=0
    shift
    echo "== $name"
    "$@" || rc=$?
    echo "   ($name: $((SECONDS - t0))s)"
    return "$rc"
}

qs_sweep() {
    local dir=$1 dtype=$2
    rm -rf "$dir/sweep"
    "$QS" sweep --model "$MODEL" --prompts "$PROMPTS" --train "$TRAIN" --val "$VAL" \
        --seed "$SEED" --batch "$BATCH" --lens-positions one --device cuda \
        --dtype "$dtype" --out "$dir/sweep" >"$dir/sweep.stdout" 2>"$dir/sweep.stderr" || {
        tail -20 "$dir/sweep.stderr" >&2
        die "qwen-scope sweep failed"
    }
    grep -E "^(evaluated|time by phase|token identity alone)" "$dir/sweep.stderr"
}

# forward_spec BxT+D: prints "B T D"
forward_spec() {
    [[ $1 =~ ^([0-9]+)x([0-9]+)\+([0-9]+)$ ]] || die "FORWARD: $1 is not BxT+D"
    echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]} ${BASH_REMATCH[3]}"
}

qs_bench() {
    local dir=$1 dtype=$2 b t d
    for spec in "${FORWARD[@]}"; do
        read -r b t d <<<"$(forward_spec "$spec")"
        "$QS" bench --model "$MODEL" --device cuda --dtype "$dtype" --batch "$b" \
            --tokens "$t" --decode "$d" --repeat 5 \
            >"$dir/bench_${b}x${t}.stdout" 2>"$dir/bench_${b}x${t}.stderr" || {
            tail -20 "$dir/bench_${b}x${t}.stderr" >&2
            die "qwen-scope bench failed"
        }
        cat "$dir/bench_${b}x${t}.stdout"
    done
}

# torch_bench DIR TORCH_DTYPE: returns bench_torch.py's status (1: ways disagree)
torch_bench() {
    local dir=$1 dtype=$2 fwd=() spec rc
    for spec in "${FORWARD[@]}"; do
        fwd+=(--forward "$spec")
    done
    [ -z "${TORCH_TOL:-}" ] || fwd+=(--tol "$TORCH_TOL")
    set +e
    "$PYTHON" tools/bench_torch.py --model "$MODEL" --prompts "$PROMPTS" --train "$TRAIN" \
        --val "$VAL" --seed "$SEED" --batch "$BATCH" --device cuda --dtype "$dtype" \
        "${fwd[@]}" --out "$dir/torch.json" 2>&1 | tee "$dir/torch.log"
    rc=${PIPESTATUS[0]}
    set -e
    [ -s "$dir/torch.json" ] || die "bench_torch.py failed (rc $rc)"
    return "$rc"
}

# roofline: OUT/roofline.json, and ROOF_ARGS for bench_compare.py when it worked
ROOF_ARGS=()
roofline() {
    if "$PYTHON" tools/gpu_roofline.py --out "$OUT/roofline.json"; then
        ROOF_ARGS=(--roofline "$OUT/roofline.json")
    else
        echo "warning: tools/gpu_roofline.py failed; no roofline percentages" >&2
    fi
}

# run_dtype DTYPE: the whole comparison in OUT/DTYPE; returns 1 on a mismatch
run_dtype() {
    local dtype=$1 tdtype tol dir start rc=0
    tdtype=$(torch_dtype "$dtype")
    tol=${TOL:-$(default_tol "$dtype")}
    dir=$OUT/$dtype
    start=$(date +%s)
    mkdir -p "$dir" || die "cannot create $dir"
    echo "== bench_gpu: qwen-scope --dtype $dtype vs torch $tdtype, tolerance $tol," \
         "out=$dir"
    step "qwen-scope sweep ($dtype)" qs_sweep "$dir" "$dtype"
    step "qwen-scope bench ($dtype)" qs_bench "$dir" "$dtype"
    step "PyTorch (tools/bench_torch.py, $tdtype)" torch_bench "$dir" "$tdtype" || {
        echo "bench_torch.py: the PyTorch ways disagree beyond their tolerance" >&2
        rc=1
    }
    step "comparison ($dtype)" "$PYTHON" tools/bench_compare.py "$dir" "$start" \
        --tol "$tol" --label "bench_gpu.sh $dtype" ${ROOF_ARGS[@]+"${ROOF_ARGS[@]}"} || rc=$?
    return "$rc"
}

main() {
    local rc=0 spec
    torch_dtype "$DTYPE" >/dev/null
    [ ${#FORWARD[@]} -gt 0 ] || die "FORWARD is empty"
    for spec in "${FORWARD[@]}"; do forward_spec "$spec" >/dev/null; done
    check_tools
    mkdir -p "$OUT"
    echo "== bench_gpu: model=$MODEL prompts=$PROMPTS train=$TRAIN val=$VAL seed=$SEED" \
         "batch=$BATCH dtype=$DTYPE also_f32=$ALSO_F32 roofline=$ROOFLINE bin=$BIN out=$OUT"
    echo "== (needs torch+transformers from $PYTHON and a GPU; a local benchmark," \
         "not a CI step)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
            true
    fi
    if [ "$ROOFLINE" = 1 ]; then step "roofline (tools/gpu_roofline.py)" roofline; fi
    run_dtype "$DTYPE" || rc=$?
    if [ "$ALSO_F32" = 1 ] && [ "$DTYPE" != f32 ]; then
        run_dtype f32 || rc=$?
    fi
    echo "== bench_gpu.sh total wall time: ${SECONDS}s (exit status $rc)"
    return "$rc"
}

main
