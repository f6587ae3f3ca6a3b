#!/usr/bin/env bash
# The Slurm check: a sharded run through examples/slurm/ on a real single-node Slurm
# (tools/slurm_local.sh), as a researcher would submit it:
#
#   1. start Slurm under WORK/slurm (stopped again on exit, whatever happens)
#   2. examples/slurm/submit.sh SHARDS WORK/out COMMAND ARGS...: the job array and the
#      merge job (afterany); wait, bounded, for the merge; every task and the merge must end
#      COMPLETED with ExitCode 0:0
#   3. compare_with_unsharded: the merged results against one unsharded run
#   4. a task cancelled mid-way (scancel), resubmitted with ARRAY=K: the merge after the
#      cancel must fail naming the shard; the resubmitted task must be given --resume and
#      the merge after it succeed
#
#   tools/test_slurm.sh [WORK]     WORK defaults to a new /tmp/qs-slurm.XXXXXX (short:
#                                  unix socket paths live under it)
#
# Needs root, `apt-get install -y slurm-wlm munge`, target/release/qwen-scope (or
# QWEN_SCOPE=binary) and models/smollm2-135m (tools/get_model.sh smollm2-135m) for the
# cancelled task, long enough to be cancelled mid-way. SLURM_TEST_TIMEOUT: seconds to wait
# for each merge job (default 150).
# On failure it prints the jobs' states and logs and the daemons' log tails; exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WORK=${1:-}
keep=${WORK:+1} # a folder made here is removed after a pass
[ -n "$WORK" ] || WORK=$(mktemp -d /tmp/qs-slurm.XXXXXX)
mkdir -p "$WORK"
chmod 0755 "$WORK" # munged wants every directory above its socket searchable by all
WORK=$(cd "$WORK" && pwd -P)
SL=$WORK/slurm
TIMEOUT=${SLURM_TEST_TIMEOUT:-150}
SHARDS=4
TINY=tests/fixtures/tiny-qwen2
# Relative paths are relative to the repository root, where the jobs run. Shard counts that
# do not divide the work: a grid sweep of 30 prompts in 10 batches of 3 (shards of 2, 3, 2
# and 3 batches), attributes on 67 rows of both project relation files in 23 batches of 3.
SWEEP=(sweep --model $TINY --train 20 --val 30 --batch 3 --grid --device cpu)
ATTRIBUTES=(attributes --model $TINY --relations data/relations/capitals.json
  data/relations/cities.json --all-rows --max-new 4 --batch 3 --device cpu)
# long enough (40 batches a shard, ~10 s on one CPU) for a task to be cancelled mid-way
ARGS_LONG=(sweep --model models/smollm2-135m --train 8 --val 80 --batch 2 --device cpu)
export QWEN_SCOPE=${QWEN_SCOPE:-$ROOT/target/release/qwen-scope}
[ -x "$QWEN_SCOPE" ] || { echo "test_slurm: no $QWEN_SCOPE: cargo build --release first" >&2; exit 1; }
[ -f models/smollm2-135m/.qwen-scope-model ] ||
  { echo "test_slurm: models/smollm2-135m is missing: tools/get_model.sh smollm2-135m" >&2; exit 1; }

say() { echo "test_slurm: $*" >&2; }
t_start=$SECONDS

cleanup() {
  local rc=$?
  tools/slurm_local.sh stop "$SL" || rc=1
  if [ $rc -eq 0 ] && [ -z "$keep" ]; then
    rm -rf "$WORK"
    say "passed in $((SECONDS - t_start)) s"
  else
    say "$([ $rc -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - t_start)) s (work: $WORK)"
  fi
  exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------------------------ helpers
# `scontrol show job -o ID` fields (one line per array task); sacct needs accounting.
job_field() { grep -o " $2=[^ ]*" <<<"$1" | head -n 1 | cut -d= -f2-; }

# wait_job ID: until job ID (and, for an array, every task) has ended, or TIMEOUT seconds;
# prints its JobState and ExitCode ("COMPLETED 0:0").
wait_job() {
  local id=$1 deadline=$((SECONDS + TIMEOUT)) info state reason
  while :; do
    info=$(scontrol show job -o "$id" 2>&1) || { say "scontrol show job $id: $info"; return 1; }
    state=$(job_field "$info" JobState)
    reason=$(job_field "$info" Reason)
    case "$state" in
    COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | PREEMPTED | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE)
      echo "$state $(job_field "$info" ExitCode)"
      return 0 ;;
    esac
    [ "$reason" != DependencyNeverSatisfied ] || { echo "NEVER $reason"; return 0; }
    [ $SECONDS -lt $deadline ] || { echo "TIMEOUT_WAITING $state"; return 0; }
    sleep 0.5
  done
}

# every task of array job $1 ended COMPLETED 0:0
array_ok() {
  local line bad=0
  while IFS= read -r line; do
    [ "$(job_field "$line" JobState) $(job_field "$line" ExitCode)" = "COMPLETED 0:0" ] || {
      say "task $(job_field "$line" ArrayJobId)_$(job_field "$line" ArrayTaskId): $(job_field "$line" JobState) $(job_field "$line" ExitCode)"
      bad=1
    }
  done < <(scontrol show job -o "$1")
  return $bad
}

show_failure() {
  local out=$1 f
  say "---- squeue"; squeue >&2 || true
  for f in "$out"/logs/*.log; do
    [ -e "$f" ] || continue
    echo "----- $f" >&2
    cat "$f" >&2
  done
  for f in "$SL"/log/slurmctld.log "$SL"/log/slurmd.log; do
    echo "----- tail $f" >&2
    tail -n 20 "$f" >&2 || true
  done
}

# submit SHARDS OUT [ENV=VALUE...] -- ARGS...: runs examples/slurm/submit.sh; sets ARRAY_ID
# and MERGE_ID
submit() {
  local shards=$1 out=$2 text envs=()
  shift 2
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  text=$(env "${envs[@]}" examples/slurm/submit.sh "$shards" "$out" "$@") || {
    say "submit.sh failed"
    return 1
  }
  echo "$text" >&2
  MERGE_ID=$(tail -n 1 <<<"$text")
  ARRAY_ID=$(sed -n 's/^array job \([0-9]*\):.*/\1/p' <<<"$text")
  [[ $MERGE_ID =~ ^[0-9]+$ && $ARRAY_ID =~ ^[0-9]+$ ]] || { say "no job ids in: $text"; return 1; }
}

# ------------------------------------------------------------------------------ checks
# compare_with_unsharded OUT ARGS...: OUT, the merge of a sharded run of ARGS, holds what
# the unsharded run writes, byte for byte (less OUT's shards/ and logs/): docs/SHARDING.md
compare_with_unsharded() {
  local out=$1
  shift
  "$QWEN_SCOPE" "$@" --out "$out.unsharded" >"$out.unsharded.log" 2>&1 ||
    { say "the unsharded run failed:"; cat "$out.unsharded.log" >&2; return 1; }
  diff -r -x shards -x logs "$out.unsharded" "$out" >&2 ||
    { say "the merge in $out differs from the unsharded run $out.unsharded"; return 1; }
  say "$out equals the unsharded run: $(cd "$out.unsharded" && echo *)"
}

# A task killed mid-way and resubmitted alone (ARRAY=K) continues with --resume; the merge
# after the killed task fails naming it, the one after the resubmission succeeds.
rerun_after_cancel() {
  local out=$WORK/rerun k=1 result deadline started
  submit 2 "$out" -- "${ARGS_LONG[@]}" || return 1
  # cancelled once its first samples are in its journal
  started=$out/shards/$k/samples.jsonl
  deadline=$((SECONDS + 60))
  until [ -s "$started" ]; do
    [ $SECONDS -lt $deadline ] || { say "task $k never started"; show_failure "$out"; return 1; }
    sleep 0.1
  done
  scancel "${ARRAY_ID}_$k"
  result=$(wait_job "$MERGE_ID")
  if [ "${result%% *}" != FAILED ] || ! grep -q "shards/$k" "$out/logs/merge_$MERGE_ID.log"; then
    say "the merge after cancelled task $k: $result (expected FAILED, naming shards/$k)"
    show_failure "$out"
    return 1
  fi
  submit 2 "$out" ARRAY=$k -- "${ARGS_LONG[@]}" || return 1
  result=$(wait_job "$MERGE_ID")
  if [ "$result" != "COMPLETED 0:0" ] || ! array_ok "$ARRAY_ID" ||
    ! grep -q -- "--shard $k/2 --out $out/shards/$k --resume" "$out/logs/shard_${ARRAY_ID}_$k.log" ||
    ! grep -q "resuming: " "$out/logs/shard_${ARRAY_ID}_$k.log"; then
    say "resubmitted task $k: merge $result; expected COMPLETED 0:0 and task $k given --resume"
    show_failure "$out"
    return 1
  fi
  compare_with_unsharded "$out" "${ARGS_LONG[@]}" || { show_failure "$out"; return 1; }
}

# ------------------------------------------------------------------------------ main
t=$SECONDS
# not eval "$(...)" alone: that would go on when start fails
conf=$(tools/slurm_local.sh start "$SL")
eval "$conf"
say "Slurm up in $((SECONDS - t)) s: $(sinfo -h -o '%P %D %c %T' | head -n 1)"

# both arrays at once, each with its merge job; then wait for both merges
t=$SECONDS
submit "$SHARDS" "$WORK/sweep" -- "${SWEEP[@]}"
sweep_ids=("$ARRAY_ID" "$MERGE_ID")
submit "$SHARDS" "$WORK/attributes" -- "${ATTRIBUTES[@]}"
attributes_ids=("$ARRAY_ID" "$MERGE_ID")
for run in sweep attributes; do
  declare -n ids=${run}_ids
  result=$(wait_job "${ids[1]}")
  if [ "$result" != "COMPLETED 0:0" ] || ! array_ok "${ids[0]}"; then
    say "$run: merge job ${ids[1]}: $result (expected COMPLETED 0:0)"
    show_failure "$WORK/$run"
    exit 1
  fi
done
say "two $SHARDS-task arrays + merges: $((SECONDS - t)) s from submit to both merges done"
compare_with_unsharded "$WORK/sweep" "${SWEEP[@]}" || { show_failure "$WORK/sweep"; exit 1; }
compare_with_unsharded "$WORK/attributes" "${ATTRIBUTES[@]}" || { show_failure "$WORK/attributes"; exit 1; }

t=$SECONDS
rerun_after_cancel
say "task cancelled mid-way, merge fails naming it, ARRAY=1 resubmission resumes, merge equals the unsharded run: $((SECONDS - t)) s"
