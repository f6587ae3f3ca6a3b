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
# Needs root and `apt-get install -y slurm-wlm munge`. Env: QWEN_SCOPE (default: a fake,
# written to WORK, that only checks the shard protocol; QWEN_SCOPE=target/release/qwen-scope
# runs the real one, on models/smollm2-135m, and compares its merges with unsharded runs
# byte for byte: see compare_with_unsharded), SLURM_TEST_TIMEOUT (seconds to wait for each
# merge job, default 150).
# On failure it prints the jobs' states and logs and the daemons' log tails; exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WORK=${1:-$(mktemp -d /tmp/qs-slurm.XXXXXX)}
mkdir -p "$WORK"
chmod 0755 "$WORK" # munged wants every directory above its socket searchable by all
WORK=$(cd "$WORK" && pwd -P)
SL=$WORK/slurm
TIMEOUT=${SLURM_TEST_TIMEOUT:-150}
SHARDS=4
# The shard commands (the fake ignores what it does not check). Relative paths are relative
# to the repository root, where the jobs run. 8 prompts in batches of 2: one batch a shard.
ARGS=(sweep --model models/smollm2-135m --train 8 --val 8 --batch 2 --device cpu)
# long enough (20 batches a shard, ~10 s on one CPU) for a task to be cancelled mid-way
ARGS_LONG=(sweep --model models/smollm2-135m --train 8 --val 80 --batch 2 --device cpu)

say() { echo "test_slurm: $*" >&2; }
t_start=$SECONDS

cleanup() {
  local rc=$?
  tools/slurm_local.sh stop "$SL" || rc=1
  say "$([ $rc -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - t_start)) s (work: $WORK)"
  exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------------------------ the fake
# Stands in for qwen-scope until `--shard`/`merge` exist: it enforces the --resume protocol
# (refuses an existing run without --resume, and --resume without DIR/run.json), writes
# DIR/run.json and a journal line per start, sleeps FAKE_SLEEP seconds (SIGTERM ends it
# as killed), then marks DIR complete; `merge` names missing or incomplete shards.
write_fake() {
  cat >"$WORK/fake-qwen-scope" <<'FAKE'
#!/usr/bin/env bash
set -euo pipefail
cmd=$1; shift
case "$cmd" in
sweep | attributes)
  shard= out= resume=0 args=()
  while [ $# -gt 0 ]; do
    case "$1" in
    --shard) shard=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --resume) resume=1; shift ;;
    *) args+=("$1"); shift ;;
    esac
  done
  [ -n "$shard" ] && [ -n "$out" ] || { echo "fake: --shard and --out are needed" >&2; exit 2; }
  if [ -e "$out/run.json" ] && [ $resume = 0 ]; then echo "fake: $out/run.json exists: --resume" >&2; exit 3; fi
  if [ ! -e "$out/run.json" ] && [ $resume = 1 ]; then echo "fake: --resume without $out/run.json" >&2; exit 3; fi
  mkdir -p "$out"
  [ $resume = 1 ] || echo "{\"command\":\"$cmd\",\"shard\":\"$shard\",\"args\":\"${args[*]}\"}" >"$out/run.json"
  echo "start $(date +%s.%N) shard=$shard resume=$resume" | tee -a "$out/journal"
  trap 'echo "killed $(date +%s.%N)" | tee -a "$out/journal"; exit 143' TERM
  sleep "${FAKE_SLEEP:-2}" & wait $!
  echo "end $(date +%s.%N)" | tee -a "$out/journal"
  touch "$out/complete"
  ;;
merge)
  out=$1; shift
  bad=()
  for d in "$@"; do [ -e "$d/complete" ] || bad+=("$d"); done
  [ ${#bad[@]} -eq 0 ] || { echo "fake merge: missing or incomplete shards: ${bad[*]}" >&2; exit 1; }
  for d in "$@"; do echo "$d $(cat "$d/run.json") resumes=$(grep -c 'resume=1' "$d/journal")"; done | tee "$out/merged.txt"
  ;;
*) echo "fake: unknown command $cmd" >&2; exit 2 ;;
esac
FAKE
  chmod +x "$WORK/fake-qwen-scope"
}

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
# compare_with_unsharded OUT SHARDS ARGS...: OUT, the merge of a SHARDS-shard run of ARGS,
# is what the unsharded run writes.
#   real qwen-scope: run ARGS unsharded into OUT.unsharded; the two folders (less OUT's
#     shards/ and logs/) must be equal, byte for byte (the merge's promise, docs/SHARDING.md)
#   the fake: every shard is in the merge, with its K/SHARDS and the shard command, and (with
#     2 CPUs or more) at least two tasks ran at the same time
compare_with_unsharded() {
  local out=$1 shards=$2 k starts ends overlap=0 i j
  shift 2
  if [ "$QWEN_SCOPE" != "$WORK/fake-qwen-scope" ]; then
    "$QWEN_SCOPE" "$@" --out "$out.unsharded" >"$out.unsharded.log" 2>&1 ||
      { say "the unsharded run failed:"; cat "$out.unsharded.log" >&2; return 1; }
    diff -r -x shards -x logs "$out.unsharded" "$out" >&2 ||
      { say "the merge in $out differs from the unsharded run $out.unsharded"; return 1; }
    return 0
  fi
  for ((k = 0; k < shards; k++)); do
    grep -qF "$out/shards/$k {\"command\":\"$1\",\"shard\":\"$k/$shards\",\"args\":\"${*:2}\"}" \
      "$out/merged.txt" || { say "shard $k missing from $out/merged.txt"; return 1; }
  done
  if [ "$(nproc)" -ge 2 ]; then
    mapfile -t starts < <(for ((k = 0; k < shards; k++)); do awk '$1 == "start" { print $2; exit }' "$out/shards/$k/journal"; done)
    mapfile -t ends < <(for ((k = 0; k < shards; k++)); do awk '$1 == "end" { print $2 }' "$out/shards/$k/journal"; done)
    for ((i = 0; i < shards; i++)); do
      for ((j = 0; j < shards; j++)); do
        [ $i -ne $j ] || continue
        # task j started while task i ran
        awk -v s="${starts[j]}" -v a="${starts[i]}" -v e="${ends[i]}" 'BEGIN { exit !(a <= s && s < e) }' && overlap=1
      done
    done
    [ $overlap -eq 1 ] || { say "no two tasks ran at the same time (CR_CPU, $(nproc) CPUs)"; return 1; }
  fi
}

# A task killed mid-way and resubmitted alone (ARRAY=K) continues with --resume; the merge
# after the killed task fails naming it, the one after the resubmission succeeds.
rerun_after_cancel() {
  local out=$WORK/rerun k=1 result deadline
  submit 2 "$out" FAKE_SLEEP=4 -- "${ARGS_LONG[@]}" || return 1
  deadline=$((SECONDS + 60))
  until [ -e "$out/shards/$k/run.json" ]; do
    [ $SECONDS -lt $deadline ] || { say "task $k never started"; show_failure "$out"; return 1; }
    sleep 0.2
  done
  scancel "${ARRAY_ID}_$k"
  result=$(wait_job "$MERGE_ID")
  if [ "${result%% *}" != FAILED ] || ! grep -q "shards/$k" "$out/logs/merge_$MERGE_ID.log"; then
    say "the merge after cancelled task $k: $result (expected FAILED, naming shards/$k)"
    show_failure "$out"
    return 1
  fi
  submit 2 "$out" ARRAY=$k FAKE_SLEEP=1 -- "${ARGS_LONG[@]}" || return 1
  result=$(wait_job "$MERGE_ID")
  if [ "$result" != "COMPLETED 0:0" ] || ! array_ok "$ARRAY_ID" ||
    ! grep -q -- "--shard $k/2 --out $out/shards/$k --resume" "$out/logs/shard_${ARRAY_ID}_$k.log" ||
    { [ "$QWEN_SCOPE" = "$WORK/fake-qwen-scope" ] && ! grep -q "shards/$k .* resumes=1$" "$out/merged.txt"; }; then
    say "resubmitted task $k: merge $result; expected COMPLETED 0:0 and task $k given --resume"
    show_failure "$out"
    return 1
  fi
  compare_with_unsharded "$out" 2 "${ARGS_LONG[@]}" || { show_failure "$out"; return 1; }
}

# ------------------------------------------------------------------------------ main
if [ -z "${QWEN_SCOPE:-}" ]; then
  write_fake
  export QWEN_SCOPE=$WORK/fake-qwen-scope
fi

t=$SECONDS
# not eval "$(...)" alone: that would go on when start fails
conf=$(tools/slurm_local.sh start "$SL")
eval "$conf"
say "Slurm up in $((SECONDS - t)) s: $(sinfo -h -o '%P %D %c %T' | head -n 1)"

out=$WORK/out
t=$SECONDS
submit "$SHARDS" "$out" -- "${ARGS[@]}"
result=$(wait_job "$MERGE_ID")
if [ "$result" != "COMPLETED 0:0" ] || ! array_ok "$ARRAY_ID"; then
  say "merge job $MERGE_ID: $result (expected COMPLETED 0:0)"
  show_failure "$out"
  exit 1
fi
say "$SHARDS-task array + merge: $((SECONDS - t)) s from submit to merge done"
compare_with_unsharded "$out" "$SHARDS" "${ARGS[@]}" || { show_failure "$out"; exit 1; }

t=$SECONDS
rerun_after_cancel
say "task cancelled, merge fails naming it, ARRAY=1 resubmission with --resume, merge: $((SECONDS - t)) s"
