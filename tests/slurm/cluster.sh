#!/bin/bash
# cluster.sh - a one-node Slurm cluster in a directory, for the tests:
# munged, slurmctld and slurmd on free loopback ports, a generated
# slurm.conf, state and logs under DIR. Needs root (slurmd runs the jobs)
# and Debian's slurmctld, slurmd and munge packages.
#
#   cluster.sh start DIR   prints "SLURM_CONF=DIR/slurm.conf" once srun answers;
#                          exit 77 with the reason when the daemons cannot start
#   cluster.sh stop DIR    stops the daemons by the pids in DIR (bounded)
set -u

die_skip() {
    echo "SKIP: $*" >&2
    exit 77
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits at most $2 seconds for the command $1 to succeed.
wait_for() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        eval "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

start() {
    local dir=$1 p
    [ "$(id -u)" -eq 0 ] || die_skip "a test Slurm cluster needs root (slurmd runs jobs as their users)"
    for p in munged mungekey slurmctld slurmd srun sbatch squeue scontrol scancel; do
        command -v "$p" >/dev/null || die_skip "$p is not installed (apt-get install slurmctld slurmd slurm-client munge)"
    done
    mkdir -p "$dir"/{munge,state,spool,log} || die_skip "cannot create $dir"
    chmod 700 "$dir/munge"
    mungekey -c -k "$dir/munge/munge.key" >/dev/null 2>&1 ||
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    # --force: munged refuses directories it does not like (a /tmp path);
    # the key and socket are this test's own
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/seed" >"$dir/log/munged.out" 2>&1 ||
        die_skip "munged did not start: $(tail -n 3 "$dir/log/munged.out" "$dir/log/munged.log" 2>/dev/null | tr '\n' ' ')"
    local host cpus mem ctld_port d_port
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ { print int($2 / 1024 / 2) }' /proc/meminfo)
    ctld_port=$(free_port)
    d_port=$(free_port)
    cat >"$dir/slurm.conf" <<CONF
ClusterName=dexectest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=2
MinJobAge=2
SlurmdTimeout=30
SchedulerParameters=sched_interval=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Features=dexec_test State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -i -f "$SLURM_CONF" >"$dir/log/slurmctld.out" 2>&1 ||
        die_skip "slurmctld did not start: $(tail -n 5 "$dir/log/slurmctld.out" "$dir/log/slurmctld.log" 2>/dev/null | tr '\n' ' ')"
    wait_for "test -s $dir/slurmctld.pid && scontrol ping | grep -q UP" 20 ||
        die_skip "slurmctld does not answer: $(tail -n 5 "$dir/log/slurmctld.log" 2>/dev/null | tr '\n' ' ')"
    slurmd -f "$SLURM_CONF" -N "$host" >"$dir/log/slurmd.out" 2>&1 ||
        die_skip "slurmd did not start: $(tail -n 5 "$dir/log/slurmd.out" "$dir/log/slurmd.log" 2>/dev/null | tr '\n' ' ')"
    wait_for "sinfo -h -N -o %t | grep -Eq '^(idle|mix)'" 30 ||
        die_skip "the node did not come up: $(sinfo -h -N -o '%t %E' 2>&1; tail -n 5 "$dir/log/slurmd.log" 2>/dev/null | tr '\n' ' ')"
    timeout 30 srun -n1 -t 1 true >"$dir/log/srun-probe.out" 2>&1 ||
        die_skip "srun -n1 true did not work: $(tr '\n' ' ' <"$dir/log/srun-probe.out")"
    echo "SLURM_CONF=$SLURM_CONF"
}

stop_pidfile() {
    local f=$1 pid i
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
}

stop() {
    local dir=$1
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munge/munged.pid"
}

case "${1:-}" in
start) start "$2" ;;
stop) stop "$2" ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
