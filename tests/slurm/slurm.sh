#!/bin/bash
# slurm.sh - the Slurm suite: brings up a one-node cluster once
# (tests/slurm/cluster.sh), runs test-slurm against it, then submits
# contrib/slurm/dexec-engine.sbatch with sbatch and waits for it (bounded).
# Then the README's external-workers flow: contrib/slurm/dexec-workers.sbatch
# submitted with sbatch (two tasks on the one node, --device cpu), workers
# registering in a real redis-server on a free loopback port, and `dexec
# generate -c contrib/examples/external-redis.conf` finding them by name.
# Skips (77) only when the daemons cannot start; stops them by pid always.
set -u
src=${DEXEC_TEST_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
build=${DEXEC_TEST_BUILDDIR:-$src}
top=${DEXEC_TOP_SRCDIR:-$src/..}
dir=$(mktemp -d /tmp/dexec-slurm.XXXXXX)
rpid=
cleanup() {
    # jobs first (their steps hold the node), then the daemons
    [ -n "${SLURM_CONF:-}" ] && timeout 10 scancel --full --user=root >/dev/null 2>&1
    "$src/slurm/cluster.sh" stop "$dir"
    if [ -n "$rpid" ]; then
        kill "$rpid" 2>/dev/null
        wait "$rpid" 2>/dev/null
    fi
    [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

out=$("$src/slurm/cluster.sh" start "$dir")
rc=$?
if [ $rc -ne 0 ]; then
    exit $rc
fi
export "$out" # SLURM_CONF=...
unset SLURM_JOB_ID

status=0
"$build/test-slurm" || status=1

# contrib/slurm/dexec-engine.sbatch: engine and ranks in one allocation
conf=$dir/engine.conf
{
    cat "$top/contrib/slurm/mp-srun.conf"
    echo "model = \"$src/golden/golden-model.safetensors\";"
    echo 'device = "cpu";'
} >"$conf"
job=$(DEXEC="$DEXEC_CLI" DEXEC_CONFIG=$conf DEXEC_OUTPUT=$dir/img.png \
    timeout 120 sbatch --parsable --wait --ntasks=2 --chdir="$dir" \
    --output="$dir/engine-%j.out" "$top/contrib/slurm/dexec-engine.sbatch")
rc=$?
log=$(cat "$dir"/engine-*.out 2>/dev/null)
if [ $rc -ne 0 ]; then
    echo "FAIL: sbatch --wait dexec-engine.sbatch: status $rc (job '$job'): $log"
    status=1
elif [ ! -s "$dir/img-0.png" ] || [ ! -s "$dir/img-1.png" ]; then
    echo "FAIL: dexec-engine.sbatch made no images: $(ls "$dir"): $log"
    status=1
else
    echo "PASS: dexec-engine.sbatch: job $job made img-0.png and img-1.png"
fi
steps=$(timeout 10 squeue -h -s -o %i)
if [ -n "$steps" ]; then
    echo "FAIL: steps left after the batch job: $steps"
    status=1
fi

# contrib/slurm/README.md, "Workers for the external backend", as written
# but for the cluster's size (one node: two tasks on it, no GPU) and a
# registry of the test's own
external_flow() {
    local rport wport registry names job log i n st addr
    if [ -z "${REDIS_SERVER:-}" ]; then
        echo "SKIP (partly): the external-workers flow needs redis-server (not found)"
        return 0
    fi
    rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$REDIS_SERVER" --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
        >"$dir/redis.log" 2>&1 &
    rpid=$!
    for ((i = 0; i < 50; i++)); do
        grep -q 'Ready to accept' "$dir/redis.log" && break
        sleep 0.1
    done
    # two consecutive free ports: the node's tasks listen on DEXEC_PORT + i
    wport=$(python3 -c '
import socket
for _ in range(50):
    a = socket.socket(); a.bind(("0.0.0.0", 0)); p = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("0.0.0.0", p + 1)); print(p); break
    except OSError:
        pass
')
    registry=redis://127.0.0.1:$rport/0
    names=diffusion_worker_0,diffusion_worker_1
    (umask 077; head -c 32 /dev/urandom | base64 >"$dir/token")
    mkdir -p "$dir/bin"
    ln -sf "$DEXEC_WORKER" "$dir/bin/dexec-worker"
    ln -sf "$DEXEC_CLI" "$dir/bin/dexec"
    export PATH="$dir/bin:$PATH"

    # the README's commands: the environment, then sbatch
    export DEXEC_REGISTRY=$registry
    export DEXEC_TOKEN_FILE=$dir/token
    job=$(DEXEC_DEVICE=cpu DEXEC_PORT=$wport timeout 30 sbatch --parsable --nodes=1 \
        --ntasks-per-node=2 --chdir="$dir" "$top/contrib/slurm/dexec-workers.sbatch" 2>"$dir/sbatch.err")
    if [ -z "$job" ]; then
        echo "FAIL: sbatch dexec-workers.sbatch did not submit: $(cat "$dir/sbatch.err")"
        return 1
    fi
    log=$dir/dexec-workers-$job.out # the script's own --output
    # dexec actors --registry $DEXEC_REGISTRY: wait until both answer "ok"
    n=0
    for ((i = 0; i < 600; i++)); do
        timeout 20 dexec actors --registry $DEXEC_REGISTRY >"$dir/actors.out" 2>&1
        n=$(grep -Ec '^diffusion_worker_[01] +actor .* ok [0-9.]+ ms' "$dir/actors.out")
        [ "$n" -eq 2 ] && break
        st=$(timeout 10 squeue -h -j "$job" -o %T 2>/dev/null)
        [ -z "$st" ] && break # the job ended
        sleep 0.2
    done
    if [ "$n" -ne 2 ]; then
        echo "FAIL: dexec-workers.sbatch: the workers did not answer in dexec actors:"
        sed 's/^/  | /' "$dir/actors.out" "$log" 2>/dev/null
        return 1
    fi
    # the script's default address: the first of hostname -I
    addr=$(hostname -I | cut -d' ' -f1)
    addr=${addr:-$(hostname)}
    if ! grep -q "tcp:$addr:$wport " "$dir/actors.out" ||
        ! grep -q "tcp:$addr:$((wport + 1)) " "$dir/actors.out"; then
        echo "FAIL: the workers do not advertise $addr on ports $wport and $((wport + 1)):"
        sed 's/^/  | /' "$dir/actors.out"
        return 1
    fi
    (cd "$dir" && DIFFUSION_WORKER_ACTOR_NAMES=$names \
        timeout 300 dexec generate -c "$top/contrib/examples/external-redis.conf" --num-gpus 2 \
        -p "a boot" -b 2) >"$dir/gen.out" 2>&1
    st=$?
    if [ $st -ne 0 ] || [ ! -s "$dir/output-0.png" ] || [ ! -s "$dir/output-1.png" ]; then
        echo "FAIL: dexec generate -c external-redis.conf against the Slurm workers: status $st, files: $(ls "$dir")"
        sed 's/^/  | /' "$dir/gen.out" "$log"
        return 1
    fi
    echo "PASS: dexec-workers.sbatch (job $job) + external-redis.conf made output-0.png and output-1.png"
    # scancel: every worker deregisters its name before it exits
    timeout 10 scancel "$job"
    for ((i = 0; i < 200; i++)); do
        [ -z "$(timeout 10 squeue -h -j "$job" -o %T 2>/dev/null)" ] && break
        sleep 0.1
    done
    timeout 20 dexec actors --registry $DEXEC_REGISTRY >"$dir/actors.out" 2>&1
    if ! grep -q '^no actors registered' "$dir/actors.out"; then
        echo "FAIL: after scancel the workers' names are still registered:"
        sed 's/^/  | /' "$dir/actors.out" "$log"
        return 1
    fi
    unset DEXEC_REGISTRY DEXEC_TOKEN_FILE
    return 0
}
external_flow || status=1
exit $status
