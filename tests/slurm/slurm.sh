#!/bin/bash
# slurm.sh - the Slurm suite: brings up a one-node cluster once
# (tests/slurm/cluster.sh), runs test-slurm against it, then submits
# contrib/slurm/dexec-engine.sbatch with sbatch and waits for it (bounded).
# Skips (77) only when the daemons cannot start; stops them by pid always.
set -u
src=${DEXEC_TEST_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
build=${DEXEC_TEST_BUILDDIR:-$src}
top=${DEXEC_TOP_SRCDIR:-$src/..}
dir=$(mktemp -d /tmp/dexec-slurm.XXXXXX)
cleanup() {
    # jobs first (their steps hold the node), then the daemons
    [ -n "${SLURM_CONF:-}" ] && timeout 10 scancel --full --user=root >/dev/null 2>&1
    "$src/slurm/cluster.sh" stop "$dir"
    rm -rf "$dir"
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
exit $status
