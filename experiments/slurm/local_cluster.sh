#!/bin/bash
# A one-node Slurm cluster on 127.0.0.1 for testing lcnet's Slurm path (`make test-slurm`): munge,
# slurmctld and slurmd from Debian's slurm-wlm and munge packages, configured and started in DIR
# (state, spool, logs, slurm.conf). The node "localhost" offers this machine's CPUs; a job's tasks
# each simulate CPU devices (LCNET_LOCAL_DEVICES). Run as root.
#
#   experiments/slurm/local_cluster.sh start DIR   # then: export SLURM_CONF=DIR/slurm.conf
#   experiments/slurm/local_cluster.sh stop DIR
set -euo pipefail
cmd=${1:?start or stop}; dir=$(realpath -m "${2:?a directory for the cluster}")
case $cmd in
stop)
  for p in slurmd slurmctld; do
    [ -f "$dir/$p.pid" ] && kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
  done
  exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
for b in munged slurmctld slurmd sbatch; do
  command -v $b >/dev/null || { echo "$b not found: apt-get install slurm-wlm munge" >&2; exit 1; }
done
mkdir -p "$dir/state" "$dir/spool"
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=lcnet-local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${LCNET_SLURMCTLD_PORT:-6817}
SlurmdPort=${LCNET_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
CONF
# munge: the package made /etc/munge/munge.key; its daemon runs as the munge user
if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge && chown munge:munge /run/munge
  [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
  su -s /bin/sh munge -c munged
fi
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 100); do  # until the node takes jobs
  sinfo -h -N -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' && { echo "SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 0.2
done
echo "the local Slurm node did not come up: see $dir/slurmctld.log and $dir/slurmd.log" >&2
exit 1
