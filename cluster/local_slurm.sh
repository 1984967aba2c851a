#!/usr/bin/env bash
# Start or stop a SLURM (munged + slurmctld + slurmd) on this machine, for tests and for trying the
# SLURM profile without a cluster. Needs root and Debian's munge, slurmctld, slurmd and slurm-client
# packages. Every daemon is stopped by the PID it wrote, nothing else is touched.
# NODES > 1 runs one slurmd per node name (node1, node2, ...) on this one host, each on its own
# port, so that jobs on several nodes (srun across nodes, one torchrun per node) can be tried.
#
#   cluster/local_slurm.sh start [STATE_DIR] [NODES]  # prints `export SLURM_CONF=... PATH=STATE_DIR/bin:$PATH`
#   cluster/local_slurm.sh stop  [STATE_DIR]
set -euo pipefail

action=${1:-}
state_dir=$(realpath -m "${2:-${TMPDIR:-/tmp}/phi3v-slurm}")
conf="$state_dir/slurm.conf"
# munged runs as the munge user, who may not reach a private state dir (e.g. pytest's, mode 0700):
# its files then live in a folder of their own, named after the state dir.
munge_dir="$state_dir/munge"
nodes=${3:-1}
[ -e "$state_dir/munge_dir" ] && munge_dir=$(cat "$state_dir/munge_dir")
# slurmstepd makes a Unix socket <spool>/<node>/<node>_<job id>.<step id>, at most 108 bytes, and a
# job whose socket path is longer hangs: under a deep state dir the spool gets a short folder.
spool_dir="$state_dir/spool"
[ -e "$state_dir/spool_dir" ] && spool_dir=$(cat "$state_dir/spool_dir")

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

node_names() {
  if [ "$nodes" = 1 ]; then hostname -s; else seq -f 'node%g' 1 "$nodes"; fi
}

start() {
  for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] \
      || die "$tool not found: install Debian's munge slurmctld slurmd slurm-client (apt-get install munge slurmctld slurmd slurm-client)"
  done
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd starts job steps as their users)"
  mkdir -p "$state_dir/state"
  local name longest=0
  for name in $(node_names); do (( ${#name} > longest )) && longest=${#name}; done
  if (( ${#spool_dir} + 2 * longest + 24 > 107 )); then  # ids of up to 10 digits each
    spool_dir="${TMPDIR:-/tmp}/phi3v-spool-$(printf %s "$state_dir" | md5sum | cut -c1-12)"
    echo "$spool_dir" >"$state_dir/spool_dir"
  fi
  if ! runuser -u munge -- test -x "$state_dir"; then
    munge_dir="${TMPDIR:-/tmp}/phi3v-munge-$(printf %s "$state_dir" | md5sum | cut -c1-12)"
    echo "$munge_dir" >"$state_dir/munge_dir"
  fi
  mkdir -p "$munge_dir"
  chown munge: "$munge_dir"; chmod 755 "$munge_dir"  # munged wants its socket folder reachable by all
  [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "NODES must be a positive number, not '$nodes'"
  local host cpus mem_mb node_lines node_names
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

  # munge: a private key and socket, so a system munged (if any) is left alone.
  [ -s "$munge_dir/munge.key" ] || {
    dd if=/dev/urandom bs=1 count=1024 of="$munge_dir/munge.key" status=none
    chown munge: "$munge_dir/munge.key"; chmod 400 "$munge_dir/munge.key"
  }
  runuser -u munge -- /usr/sbin/munged --key-file="$munge_dir/munge.key" \
    --socket="$munge_dir/munge.socket" --pid-file="$munge_dir/munged.pid" \
    --log-file="$munge_dir/munged.log" --seed-file="$munge_dir/munged.seed"

  # One node is this host under its own name; several are node1..nodeN, all on this host.
  node_lines=""
  local port=6818
  for name in $(node_names); do
    node_lines+="NodeName=$name NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"$'\n'
    port=$((port + 1))
  done
  node_names=$(node_names | paste -sd,)

  cat >"$conf" <<CONF
ClusterName=phi3v-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$munge_dir/munge.socket
CredType=cred/munge
StateSaveLocation=$state_dir/state
SlurmdSpoolDir=$spool_dir/%n
SlurmctldPidFile=$state_dir/slurmctld.pid
SlurmdPidFile=$state_dir/slurmd-%n.pid
SlurmctldLogFile=$state_dir/slurmctld.log
SlurmdLogFile=$state_dir/slurmd-%n.log
SlurmctldPort=6817
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=600
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
$node_lines
PartitionName=debug Nodes=$node_names Default=YES MaxTime=INFINITE State=UP
CONF
  /usr/sbin/slurmctld -f "$conf"
  for name in $(node_names); do
    mkdir -p "$spool_dir/$name"
    /usr/sbin/slurmd -f "$conf" -N "$name"
  done
  # Client commands that find this config without SLURM_CONF, which Snakemake's SLURM job step
  # removes (with every SLURM_* variable) before it calls srun; a cluster has /etc/slurm instead.
  mkdir -p "$state_dir/bin"
  local tool
  for tool in srun sbatch squeue scontrol sinfo scancel; do
    printf '#!/bin/sh\nSLURM_CONF=%q exec %q "$@"\n' "$conf" "$(command -v "$tool")" >"$state_dir/bin/$tool"
    chmod 755 "$state_dir/bin/$tool"
  done
  export SLURM_CONF="$conf"
  for _ in $(seq 1 60); do
    if [ "$(sinfo -h -N -o '%T' 2>/dev/null | grep -cE '^(idle|mixed|allocated)')" = "$nodes" ]; then
      echo "export SLURM_CONF=$conf PATH=$state_dir/bin:\$PATH"
      return 0
    fi
    sleep 0.5
  done
  stop; die "the nodes did not come up within 30 s; logs in $state_dir"
}

stop() {
  local pidfile pid
  for pidfile in "$state_dir"/slurmd-*.pid "$state_dir/slurmctld.pid" "$munge_dir/munged.pid"; do
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  if [ -e "$state_dir/munge_dir" ]; then rm -rf "$munge_dir" "$state_dir/munge_dir"; fi
  if [ -e "$state_dir/spool_dir" ]; then rm -rf "$spool_dir" "$state_dir/spool_dir"; fi
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop [STATE_DIR]" ;;
esac
