#!/usr/bin/env bash
# Submits a sharded qwen-scope run to Slurm: a job array of shard.sbatch (task K runs
# `COMMAND ARGS... --shard K/SHARDS --out OUT/shards/K`, K = 0..SHARDS-1) and a merge job,
# merge.sbatch, that runs after every task has ended, whether it succeeded or not
# (--dependency=afterany), and writes the results to OUT or names the shards that failed.
#
#   examples/slurm/submit.sh SHARDS OUT sweep|attributes ARGS...
#
# ARGS are qwen-scope's arguments for COMMAND, without --shard, --out and --resume. Relative
# paths in ARGS are relative to the directory you submit from (the jobs run there).
# Environment:
#   QWEN_SCOPE  the binary (default: qwen-scope on PATH), resolved to an absolute path here
#   ARRAY       the tasks to submit, as sbatch --array takes them (default 0-(SHARDS-1));
#               ARRAY=2 reruns shard 2 (with --resume when it had started) and a new merge
#   SBATCH_*    sbatch's own: SBATCH_PARTITION, SBATCH_TIMELIMIT, SBATCH_GRES=gpu:1, ...
#               (the GPU ones are dropped for the merge job, which needs no GPU)
# Prints the two job ids; the last line is the merge job's id alone.
set -euo pipefail

usage() {
  [ $# -eq 0 ] || echo "submit.sh: $*" >&2
  cat >&2 <<'USAGE'
usage: examples/slurm/submit.sh SHARDS OUT sweep|attributes ARGS...
  SHARDS  number of shards (tasks 0..SHARDS-1)   OUT  results folder (shards in OUT/shards/K,
  logs in OUT/logs)   ARGS  qwen-scope's arguments without --shard/--out/--resume
  env: QWEN_SCOPE=binary  ARRAY=sbatch --array spec (e.g. ARRAY=2 reruns shard 2)  SBATCH_*
USAGE
  exit 2
}
[ $# -ge 3 ] || usage "expected SHARDS OUT COMMAND [ARGS...], got $# argument(s)"
shards=$1 out=$2 command=$3
shift 3
[[ $shards =~ ^[1-9][0-9]*$ ]] || usage "SHARDS must be a positive integer, not '$shards'"
case "$command" in sweep | attributes) ;; *) usage "COMMAND must be sweep or attributes, not '$command'" ;; esac
for a in "$@"; do
  case "$a" in
  --shard | --shard=* | --out | --out=* | --resume | --resume=*)
    usage "$a is set by the scripts: leave --shard, --out and --resume out of ARGS" ;;
  esac
done

array=${ARRAY:-0-$((shards - 1))}
# every index in the spec (N, A-B, A-B:S, comma-separated, optional %LIMIT) must be a shard
[[ $array =~ ^[0-9]+(-[0-9]+(:[0-9]+)?)?(,[0-9]+(-[0-9]+(:[0-9]+)?)?)*(%[0-9]+)?$ ]] ||
  usage "ARRAY='$array' is not an sbatch --array spec like 0-3, 2 or 1,3"
for n in $(sed -E 's/:[0-9]+//g' <<<"${array%\%*}" | tr ',-' '\n\n'); do
  [ $((10#$n)) -lt "$shards" ] ||
    usage "ARRAY='$array' names task $n, but there are $shards shards, 0..$((shards - 1))"
done

qs=${QWEN_SCOPE:-qwen-scope}
qs_path=$(command -v -- "$qs") || usage "QWEN_SCOPE=$qs: no such program (set QWEN_SCOPE or PATH)"
[[ $qs_path = /* ]] || qs_path=$PWD/$qs_path
export QWEN_SCOPE=$qs_path
command -v sbatch >/dev/null || { echo "submit.sh: sbatch not found (is Slurm set up here?)" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out/logs" "$out/shards"
out=$(cd "$out" && pwd)

array_id=$(sbatch --parsable --array="$array" --output="$out/logs/shard_%A_%a.log" \
  "$here/shard.sbatch" "$shards" "$out" "$command" "$@")
array_id=${array_id%%;*}
echo "array job $array_id: tasks $array of 0-$((shards - 1)), logs $out/logs/shard_${array_id}_K.log"

merge_id=$(env -u SBATCH_GRES -u SBATCH_GPUS -u SBATCH_GPUS_PER_NODE -u SBATCH_GPUS_PER_TASK \
  -u SBATCH_GPUS_PER_SOCKET -u SBATCH_CPUS_PER_GPU -u SBATCH_MEM_PER_GPU -u SBATCH_ARRAY_INX \
  sbatch --parsable --dependency="afterany:$array_id" --output="$out/logs/merge_%j.log" \
  "$here/merge.sbatch" "$shards" "$out") || {
  echo "submit.sh: the merge job was not submitted; the array $array_id was. Submit it with:" >&2
  echo "  sbatch --dependency=afterany:$array_id --output=$out/logs/merge_%j.log $here/merge.sbatch $shards $out" >&2
  exit 1
}
merge_id=${merge_id%%;*}
echo "merge job $merge_id: after $array_id, results in $out, log $out/logs/merge_$merge_id.log"
echo "$merge_id"
