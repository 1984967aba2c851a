#!/usr/bin/env bash
# Start or stop a single-node SLURM (munged + slurmctld + slurmd) on this machine, for tests and
# for trying the SLURM profile without a cluster. Needs root and Debian's munge, slurmctld, slurmd
# and slurm-client packages. Every daemon is stopped by the PID it wrote, nothing else is touched.
#
#   cluster/local_slurm.sh start [STATE_DIR]   # prints `export SLURM_CONF=...`
#   cluster/local_slurm.sh stop  [STATE_DIR]
set -euo pipefail

action=${1:-}
state_dir=$(realpath -m "${2:-${TMPDIR:-/tmp}/phi3v-slurm}")
conf="$state_dir/slurm.conf"

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

start() {
  for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] \
      || die "$tool not found: install Debian's munge slurmctld slurmd slurm-client (apt-get install munge slurmctld slurmd slurm-client)"
  done
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd starts job steps as their users)"
  mkdir -p "$state_dir"/{state,spool,munge}
  chown munge: "$state_dir/munge"
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

  # munge: a private key and socket, so a system munged (if any) is left alone.
  [ -s "$state_dir/munge/munge.key" ] || {
    dd if=/dev/urandom bs=1 count=1024 of="$state_dir/munge/munge.key" status=none
    chown munge: "$state_dir/munge/munge.key"; chmod 400 "$state_dir/munge/munge.key"
  }
  runuser -u munge -- /usr/sbin/munged --key-file="$state_dir/munge/munge.key" \
    --socket="$state_dir/munge/munge.socket" --pid-file="$state_dir/munge/munged.pid" \
    --log-file="$state_dir/munge/munged.log" --seed-file="$state_dir/munge/munged.seed"

  cat >"$conf" <<CONF
ClusterName=phi3v-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$state_dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$state_dir/state
SlurmdSpoolDir=$state_dir/spool
SlurmctldPidFile=$state_dir/slurmctld.pid
SlurmdPidFile=$state_dir/slurmd.pid
SlurmctldLogFile=$state_dir/slurmctld.log
SlurmdLogFile=$state_dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
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
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  /usr/sbin/slurmctld -f "$conf"
  /usr/sbin/slurmd -f "$conf"
  export SLURM_CONF="$conf"
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.5
  done
  stop; die "the node did not come up within 30 s; logs in $state_dir"
}

stop() {
  local pidfile pid
  for pidfile in "$state_dir/slurmd.pid" "$state_dir/slurmctld.pid" "$state_dir/munge/munged.pid"; do
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop [STATE_DIR]" ;;
esac
