#!/usr/bin/env bash
# A real single-node Slurm on this machine, for tests and for trying examples/slurm/:
#
#   eval "$(tools/slurm_local.sh start DIR)"   # starts munged, slurmctld, slurmd; the last
#                                              # line printed is `export SLURM_CONF=DIR/slurm.conf`
#   tools/slurm_local.sh stop DIR              # cancels its jobs, stops the three daemons
#
# Everything lives under DIR (made absolute; created when missing): the munge key, socket,
# pid, log and seed files, the generated slurm.conf, slurmctld's state, slurmd's spool, the
# daemons' pid and log files. Nothing is written to /etc, /run or /var. The node is this
# host (`hostname -s`, at 127.0.0.1) with `nproc` CPUs, in one default partition "debug";
# select/cons_tres with CR_CPU, so one 1-CPU task runs per CPU at a time. No accounting
# (sacct does not work; use `scontrol show job ID`).
#
# Needs: root (SlurmUser=root; munged runs as root and the jobs as the submitting user), and
# Debian's packages: `apt-get install -y slurm-wlm munge` (slurmctld, slurmd, the clients,
# munged). Their maintainer scripts may or may not have started a system munged or Slurm
# (no systemd: usually not); this Slurm uses its own munge socket, key and ports, so either
# way it does not talk to them. DIR must be short enough for unix sockets (< 80 characters).
#
# `start` waits (up to SLURM_LOCAL_TIMEOUT seconds, default 60) until sinfo shows the node
# idle; otherwise it prints the daemons' log tails, stops what it started and exits 1.
# (`eval "$(... start DIR)"` goes on when start fails: scripts should run `conf=$(... start
# DIR)` first, then `eval "$conf"`.) SLURM_LOCAL_GPUS=N gives the node N pretend GPUs
# (gres gpu, /dev/null-like device files) so that --gres/--gpus submissions can be tried.
# `stop` is safe to call twice, or after a `start` that failed halfway.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR | stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
action=$1
case "$action" in start | stop) ;; *) usage ;; esac
if [ "$action" = stop ] && [ ! -d "$2" ]; then exit 0; fi # nothing was started there
mkdir -p "$2"
DIR=$(cd "$2" && pwd -P)
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
export SLURM_CONF=$CONF
# in the environment of the daemons this script starts (and so of slurmd's slurmstepds):
# how `stop` finds what a killed daemon left behind
MARK=SLURM_LOCAL_DIR=$DIR

log() { echo "slurm_local: $*" >&2; }

# The pid in pid file $1 when that process is still running program $2 (a stale pid file
# whose pid now belongs to another process gives nothing).
live_pid() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(tr -dc 0-9 <"$1")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$2" || return 1
  echo "$pid"
}

# TCP ports in use (any state, IPv4 and IPv6), in decimal, one a line.
ports_in_use() {
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
    awk 'NR > 0 && $2 ~ /:/ { split($2, a, ":"); print a[2] }' |
    while read -r hex; do echo $((16#$hex)); done | sort -un
}

# Two free ports below the ephemeral range, starting from one derived from DIR (so two
# local Slurms in different DIRs do not pick the same ones).
pick_ports() {
  local used p n=0 found=()
  used=$(ports_in_use)
  p=$((17000 + $(echo "$DIR" | cksum | cut -d' ' -f1) % 12000))
  while [ ${#found[@]} -lt 2 ] && [ $n -lt 2000 ]; do
    if ! grep -qx "$p" <<<"$used"; then found+=("$p"); fi
    p=$((p + 1)); n=$((n + 1))
    [ $p -lt 29000 ] || p=17000
  done
  [ ${#found[@]} -eq 2 ] || { log "no free ports in 17000-28999"; return 1; }
  echo "${found[@]}"
}

tails() {
  local f
  for f in "$DIR"/log/munged.log "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log "$DIR"/log/*.stderr; do
    [ -s "$f" ] || continue
    echo "----- tail $f" >&2
    tail -n 30 "$f" >&2
  done
}

stop() {
  local pid name pf deadline jobs killed=()
  # Jobs first: slurmstepd and the job processes outlive slurmd by design.
  if live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u || true)
    [ -z "$jobs" ] || scancel --full --quiet $jobs 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while [ -n "$(squeue -h -o %A 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do sleep 1; done
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  # Then whatever is left, by pid file: the two Slurm daemons, then munged.
  for name in slurmd slurmctld munged; do
    pf=$DIR/run/$name.pid
    [ $name != munged ] || pf=$DIR/munge/munged.pid
    pid=$(live_pid "$pf" "$name") || continue
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while [ -d "/proc/$pid" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if [ -d "/proc/$pid" ]; then
      log "$name ($pid) ignored SIGTERM; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # What a killed daemon left: slurmstepds (they inherit slurmd's $MARK) and job processes
  # (this SLURM_CONF and a SLURM_JOB_ID); by pid, nothing else.
  for pid in $(grep -lszxF -e "$MARK" -e "SLURM_CONF=$CONF" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
    [ "$pid" != $$ ] || continue
    grep -qszxF "$MARK" "/proc/$pid/environ" || grep -qszE '^SLURM_JOB_ID=[0-9]+$' "/proc/$pid/environ" || continue
    log "killing leftover $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)"
    kill -KILL "$pid" 2>/dev/null || true
    killed+=("$pid")
  done
  deadline=$((SECONDS + 5))
  for pid in "${killed[@]}"; do
    while [ -r "/proc/$pid/cmdline" ] && [ -s "/proc/$pid/cmdline" ] && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  done
  rm -f "$DIR"/run/*.pid "$DIR"/munge/munged.pid "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
}

fail() {
  log "$*"
  tails
  stop
  exit 1
}

start() {
  local bin host cpus mem ports ctld_port slurmd_port deadline state gres gpus i
  for bin in munged slurmctld slurmd sinfo scontrol squeue scancel sbatch; do
    command -v $bin >/dev/null || PATH=$PATH:/usr/sbin:/sbin
    command -v $bin >/dev/null ||
      { log "$bin not found: apt-get install -y slurm-wlm munge"; exit 1; }
  done
  [ "$(id -u)" -eq 0 ] || { log "must run as root (SlurmUser=root, munged as root)"; exit 1; }
  # sun_path holds 108 bytes; slurmd's step sockets are SlurmdSpoolDir/<host>_<job>.<step>
  [ ${#DIR} -lt 80 ] || { log "DIR is too long for unix sockets (${#DIR} >= 80): $DIR"; exit 1; }
  if live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null ||
    live_pid "$DIR/munge/munged.pid" munged >/dev/null; then
    log "already running in $DIR (run: $0 stop $DIR)"
    exit 1
  fi

  # munged refuses a socket below a directory that others cannot search (mktemp -d: 0700)
  local d=$DIR
  while d=$(dirname "$d") && [ "$d" != / ]; do
    [ "$(( 0$(stat -c %a "$d") & 01 ))" -eq 1 ] ||
      { log "munged needs o+x on every directory above its socket: chmod o+x $d (or another DIR)"; exit 1; }
  done
  mkdir -p "$DIR"/{munge,log,run,state,spool}
  chmod 0755 "$DIR" "$DIR/munge"
  chmod 0700 "$DIR/state" "$DIR/spool"

  # munge: its own key (kept across restarts of the same DIR), socket, pid, log, seed
  if [ ! -s "$DIR/munge/munge.key" ]; then
    (umask 0277 && dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none)
  fi
  chmod 0400 "$DIR/munge/munge.key"
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  env "$MARK" munged --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" 2>"$DIR/log/munged.stderr" ||
    fail "munged did not start"
  deadline=$((SECONDS + 10))
  until [ -S "$MUNGE_SOCKET" ]; do
    [ $SECONDS -lt $deadline ] || fail "munged made no socket $MUNGE_SOCKET"
    sleep 0.2
  done
  if command -v munge >/dev/null && command -v unmunge >/dev/null; then
    munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null ||
      fail "munge credentials do not round-trip through $MUNGE_SOCKET"
  fi

  host=$(hostname -s)
  cpus=$(nproc)
  # RealMemory below the machine's (a node that reports less than its RealMemory is drained)
  mem=$(awk '/^MemTotal:/ { m = int($2 / 1024 * 0.9); print (m > 1 ? m : 1) }' /proc/meminfo)
  ports=$(pick_ports) || fail "no free ports"
  read -r ctld_port slurmd_port <<<"$ports"

  # SLURM_LOCAL_GPUS=N: N pretend GPUs for trying --gres/--gpus submissions (Slurm wants a
  # device file per GPU: here copies of /dev/null; the jobs run on the CPU)
  gres= gpus=${SLURM_LOCAL_GPUS:-0}
  rm -rf "$DIR/gres.conf" "$DIR/dev"
  if [ "$gpus" -gt 0 ]; then
    gres=gpu:$gpus
    mkdir -p "$DIR/dev"
    for ((i = 0; i < gpus; i++)); do
      mknod "$DIR/dev/gpu$i" c 1 3 2>/dev/null || touch "$DIR/dev/gpu$i"
    done
    echo "Name=gpu File=$DIR/dev/gpu[0-$((gpus - 1))]" >"$DIR/gres.conf"
  fi
  cat >"$CONF" <<EOF
# Generated by tools/slurm_local.sh for a single-node Slurm under $DIR.
ClusterName=qwenscope
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# a finished job stays visible to scontrol show job for 10 minutes
MinJobAge=600
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
# scancel / time limit: SIGTERM, then SIGKILL 10 s later
KillWait=10
SlurmdTimeout=60
${gres:+GresTypes=gpu}
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem ${gres:+Gres=$gres }State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

  env "$MARK" slurmctld -f "$CONF" 2>"$DIR/log/slurmctld.stderr" || fail "slurmctld did not start"
  env "$MARK" slurmd -f "$CONF" 2>"$DIR/log/slurmd.stderr" || fail "slurmd did not start"

  deadline=$((SECONDS + TIMEOUT))
  while :; do
    state=$(sinfo -h -N -n "$host" -o %T 2>/dev/null || true)
    [ "$state" != idle ] || break
    [ $SECONDS -lt $deadline ] ||
      fail "node $host is not idle after ${TIMEOUT}s (sinfo says: ${state:-nothing})"
    sleep 0.5
  done
  log "node $host idle: $cpus CPUs, ports $ctld_port/$slurmd_port, conf $CONF"
  echo "export SLURM_CONF=$CONF"
}

"$action"
