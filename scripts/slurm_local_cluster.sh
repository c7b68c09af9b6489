#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and CI: munged, slurmctld and slurmd with every
# file (config, keys, sockets, state, logs) under one folder, so nothing in /etc is touched.
#
#   eval "$(bash scripts/slurm_local_cluster.sh start DIR)"   # prints `export SLURM_CONF=DIR/slurm.conf`
#   sinfo; sbatch ...                                          # any slurm client, through SLURM_CONF
#   bash scripts/slurm_local_cluster.sh stop DIR               # stops the three daemons it started
#
# Needs the Debian packages (apt-get install -y --no-install-recommends slurm-wlm munge) and root (slurmd
# starts jobs as their user). proctrack/linuxproc + task/none: no cgroups, so it runs in a container.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)

stop() {
  for name in slurmd slurmctld munged; do
    pidfile="$dir/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
  done
}

free_port() {  # a TCP port nobody listens on, so two clusters (or a real slurmctld) never collide
  local port
  while :; do
    port=$(shuf -i 20000-40000 -n 1)
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
}

case "$cmd" in
stop) stop; exit 0 ;;
start) ;;
*) usage ;;
esac

for bin in munged mungekey slurmctld slurmd sinfo; do
  command -v "$bin" >/dev/null || { echo "$bin not found: apt-get install -y slurm-wlm munge" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "the one-node cluster needs root (slurmd starts jobs as their user)" >&2; exit 1; }
stop  # a previous cluster in the same folder

mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
chmod 700 "$dir/munge"
[ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key" 2>/dev/null \
  || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$dir/munge/munge.key"
socket="$dir/munge/munge.socket"
munged --force --socket="$socket" --key-file="$dir/munge/munge.key" --pid-file="$dir/munged.pid" \
  --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

host=$(hostname -s)
cpus=$(nproc)
cat >"$dir/slurm.conf" <<EOF
# written by scripts/slurm_local_cluster.sh: a one-node test cluster
ClusterName=segvae-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=3600
KillWait=5
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do  # ready when the node is idle
  if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "the one-node cluster in $dir did not come up; its logs:" >&2
tail -n 20 "$dir"/log/*.log >&2 || true
stop
exit 1
