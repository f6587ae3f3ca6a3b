#!/usr/bin/env bash
# GPU verification of qwen-scope's CUDA backend from prebuilt binaries (docs/CUDA.md,
# "Whole-model forward").
#
# On the build machine (Rust toolchain + nvcc; no GPU needed), in the source tree:
#
#   tools/gpu-check.sh --pack [BINDIR]          # default BINDIR: gpu-bin
#
# builds with the kernels required (QWEN_SCOPE_REQUIRE_CUDA=1), runs
# `cargo test --release --no-run --message-format=json`, and copies the test executables
# cuda_kernels, cuda_model and parity plus the release qwen-scope binary, stripped, into
# BINDIR with a MANIFEST (commit, toolchain, nvcc, glibc) and BUILD_ROOT.
#
# On the GPU machine (NVIDIA driver, python3 with torch + transformers + safetensors; no
# network, no Rust), in a copy of the same source tree with BINDIR in it:
#
#   tools/gpu-check.sh OUTDIR [BINDIR]
#
# runs, logging each step to OUTDIR/<step>.log:
#   info       nvidia-smi, the MANIFEST
#   kernels    every kernel against its CPU twin (tests/cuda_kernels.rs)
#   model      the whole-model forward against the CPU pass (tests/cuda_model.rs)
#   parity     the CPU pass against transformers' fixtures (tests/parity.rs)
#   memcheck-* compute-sanitizer memcheck on the model tests and on a subset of the kernel
#              tests (skipped when compute-sanitizer is not found; MEMCHECK=0 skips it)
#   hf-parity  tools/gpu_parity.py: a random model with Qwen2-0.5B's shapes against
#              transformers in f32, bf16 and f16 (needs torch + transformers)
#   bench      tools/bench_gpu.sh on that model: the card's measured bandwidth and matrix
#              rates (tools/gpu_roofline.py), qwen-scope's sweep and forward against the
#              three PyTorch ways and transformers' forward in f16 (BENCH=0 skips it)
#   roofline   tools/roofline.py: bytes and FLOPs per step against the measured card,
#              and the same arithmetic projected onto T4 and P100 datasheet peaks
# and writes OUTDIR/summary.txt. The GPU tests are ignored tests (a plain `cargo test`
# reports them as ignored); every step here runs them with --include-ignored, where one
# that finds no usable GPU fails with the reason.
# Exit status: 0 when every step passed.

set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTS=(cuda_kernels cuda_model parity)

pack() {
    local dir=${1:-gpu-bin}
    cd "$REPO" || exit 1
    mkdir -p "$dir" || exit 1
    dir=$(cd "$dir" && pwd)
    export QWEN_SCOPE_REQUIRE_CUDA=1
    cargo build --release || exit 1
    local json
    json=$(mktemp)
    cargo test --release --no-run --message-format=json >"$json" || {
        rm -f "$json"
        exit 1
    }
    python3 - "$json" "$dir" "${TESTS[@]}" <<'PY' || exit 1
import json, shutil, sys
path, out, names = sys.argv[1], sys.argv[2], set(sys.argv[3:])
found = {}
for line in open(path):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if "test" in t["kind"] and t["name"] in names:
        found[t["name"]] = m["executable"]
missing = names - set(found)
if missing:
    sys.exit(f"test executables not found: {sorted(missing)}")
for name, exe in found.items():
    shutil.copy2(exe, f"{out}/{name}")
    print(f"{name}: {exe}")
PY
    rm -f "$json"
    cp target/release/qwen-scope "$dir/qwen-scope" || exit 1
    if command -v strip >/dev/null; then
        for f in "${TESTS[@]}" qwen-scope; do strip "$dir/$f"; done
    fi
    echo "$REPO" >"$dir/BUILD_ROOT"
    {
        echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
        echo "rustc: $(rustc -V)"
        echo "glibc: $(ldd --version 2>/dev/null | head -1)"
        cat target/release/build/qwen-scope-*/out/qwen_scope_kernels.txt 2>/dev/null | head -5
    } >"$dir/MANIFEST"
    cat "$dir/MANIFEST"
    ls -l "$dir"
    echo "packed into $dir: copy it with the source tree to the GPU machine, then run"
    echo "  tools/gpu-check.sh OUTDIR $(basename "$dir")"
}

if [ "${1:-}" = "--pack" ]; then
    pack "${2:-gpu-bin}"
    exit $?
fi
if [ $# -lt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -u/p' "$0" | sed '$d'
    exit 2
fi

OUT=$1
BIN=${2:-$REPO/gpu-bin}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
BIN=$(cd "$BIN" 2>/dev/null && pwd) || {
    echo "no binary folder ${2:-$REPO/gpu-bin}: make it on the build machine with tools/gpu-check.sh --pack" >&2
    exit 2
}
export BIN  # tools/bench_gpu.sh finds qwen-scope there
export QWEN_SCOPE_FIXTURES="$REPO/tests/fixtures"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export RUST_BACKTRACE=1
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

# step NAME TIMEOUT_S CMD...: runs CMD with its output in OUTDIR/NAME.log (and on the
# terminal), records status and time.
step() {
    local name=$1 limit=$2
    shift 2
    local log="$OUT/$name.log" t0 rc status
    echo "=== $name: $*" | tee "$log"
    t0=$(date +%s)
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    local secs=$(($(date +%s) - t0))
    if [ "$rc" -eq 124 ]; then
        status="TIMEOUT (${limit} s)"
    elif [ "$rc" -ne 0 ]; then
        status="FAILED (exit $rc)"
    elif grep -q "^SKIPPED" "$log"; then
        status="FAILED (tests skipped: $(grep -c '^SKIPPED' "$log"))"
        rc=1
    else
        status="ok"
    fi
    [ "$rc" -ne 0 ] && FAILED=1
    printf '%-18s %-28s %5d s  %s\n' "$name" "$status" "$secs" "$log" | tee -a "$SUMMARY"
}

# info
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm)"
    echo "repo: $REPO"
    echo "binaries: $BIN"
    cat "$BIN/MANIFEST" 2>/dev/null
    echo
    nvidia-smi 2>&1
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1
} >"$OUT/info.log"
cat "$OUT/info.log"

for t in "${TESTS[@]}"; do
    if [ ! -x "$BIN/$t" ]; then
        echo "missing $BIN/$t: rebuild the folder with tools/gpu-check.sh --pack" >&2
        exit 2
    fi
done

# tests/parity.rs finds its fixtures under the build machine's source path: link it here
# when that path does not exist on this machine.
ROOT=$(cat "$BIN/BUILD_ROOT" 2>/dev/null || true)
if [ -n "$ROOT" ] && [ ! -d "$ROOT/tests/fixtures" ]; then
    if mkdir -p "$(dirname "$ROOT")" 2>/dev/null && ln -s "$REPO" "$ROOT" 2>/dev/null; then
        echo "linked $ROOT -> $REPO for the fixture paths compiled into the tests"
    else
        echo "warning: cannot link $ROOT -> $REPO; the parity step will not find its fixtures" >&2
    fi
fi

step kernels 600 "$BIN/cuda_kernels" --include-ignored --nocapture --test-threads=1
# qwen2_05b_parity runs in the hf-parity step, with the model it needs
step model 600 "$BIN/cuda_model" --include-ignored --skip qwen2_05b_parity --nocapture \
    --test-threads=1
step parity 600 "$BIN/parity"

SAN=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /opt/cuda/bin/compute-sanitizer; do
    [ -z "$SAN" ] && [ -x "$c" ] && SAN=$c
done
if [ "${MEMCHECK:-1}" = "0" ]; then
    printf '%-18s %-28s\n' memcheck "skipped (MEMCHECK=0)" | tee -a "$SUMMARY"
elif [ -z "$SAN" ]; then
    printf '%-18s %-28s\n' memcheck "skipped (no compute-sanitizer)" | tee -a "$SUMMARY"
else
    MC=("$SAN" --tool memcheck --error-exitcode 86 --print-limit 50)
    # The whole model on the tiny fixtures (f32 and the error paths), then the kernels:
    # every family except the long attention sweeps, plus the shared-prefix decode test.
    step memcheck-model 420 "${MC[@]}" "$BIN/cuda_model" --include-ignored --test-threads=1 \
        f32_ invalid_
    step memcheck-kernels 420 "${MC[@]}" "$BIN/cuda_kernels" --include-ignored --test-threads=1 \
        embedding rmsnorm rope swiglu cast residual logits gemm attention_decode
fi

if python3 -c "import torch, transformers, safetensors" 2>/dev/null; then
    step hf-parity 900 python3 "$REPO/tools/gpu_parity.py" --out "$OUT" \
        --test-bin "$BIN/cuda_model" --repo "$REPO"
else
    printf '%-18s %-28s\n' hf-parity "FAILED (python3 lacks torch/transformers/safetensors)" |
        tee -a "$SUMMARY"
    FAILED=1
fi

MODEL_05B="$OUT/qwen2-0.5b-random"
if [ "${BENCH:-1}" = "0" ]; then
    printf '%-18s %-28s\n' bench "skipped (BENCH=0)" | tee -a "$SUMMARY"
elif [ ! -f "$MODEL_05B/config.json" ]; then
    printf '%-18s %-28s\n' bench "FAILED (no $MODEL_05B: hf-parity makes it)" | tee -a "$SUMMARY"
    FAILED=1
else
    step bench 420 "$REPO/tools/bench_gpu.sh" "$MODEL_05B" "$OUT/bench"
    step roofline 60 python3 "$REPO/tools/roofline.py" --config "$MODEL_05B/config.json" \
        --dtype f16 --batch 1 --tokens 128 --context 160 \
        --measured "$OUT/bench/roofline.json" --card T4 --card P100
fi

echo
echo "=== summary ($SUMMARY)"
cat "$SUMMARY"
exit $FAILED
