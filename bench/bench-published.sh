#!/bin/sh
# bench-published.sh - a published latent model on the CPU: one DiT-XL/2
# forward pass (batch 2, the guided sampler's cond + uncond) and one SD-VAE
# decode in dexec (bench-published, the CPU backend on OpenBLAS) and in
# PyTorch running the twin (bench-published-torch.py, float32), with the
# same thread count, in the same run, plus OpenBLAS SGEMM's rate and the
# load average (PyTorch twice when dexec corrected OpenBLAS's choice of
# kernels: as OpenBLAS chose them, and with dexec's choice). Results: doc/performance.md "Published models".
#
#   bench-published.sh BUILD_BENCH_DIR SRCDIR
#
# Environment: BENCH_THREADS (2), BENCH_DEPTH (28: DiT-XL/2; fewer blocks of
# the same width keep the per-block figures and shorten the run),
# BENCH_VAE_SIDE (latent side of the decode, 32: a 256 px image),
# BENCH_REPS (2), BENCH_DIR (where the random model is written; removed).
# Needs /usr/bin/python3 with Debian's python3-torch and python3-torchvision.
set -eu
bld=$1 src=$2
threads=${BENCH_THREADS:-2} depth=${BENCH_DEPTH:-28} vside=${BENCH_VAE_SIDE:-32}
reps=${BENCH_REPS:-2}
py=/usr/bin/python3
if ! "$py" -c "import torch, torchvision" >/dev/null 2>&1; then
    echo "bench-published: $py cannot import torch and torchvision" \
        "(apt-get install python3-torch python3-torchvision)" >&2
    exit 1
fi
dir=${BENCH_DIR:-$bld/bench-published-model}
rm -rf "$dir"
trap 'rm -rf "$dir"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" "$src/contrib/published/make_pipeline.py" --out "$dir" --layout original \
    --depth "$depth"
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
out=$("$bld/bench-published" "$dir" "$reps" "$vside")
echo "$out"
echo "torch, OpenBLAS core as it chooses it (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}):"
"$py" "$src/bench/bench-published-torch.py" "$dir" "$threads" "$reps" "$vside"
# dexec's CPU backend corrects OpenBLAS's choice of kernels where it fell
# back to an old core (kernels.h dxk_blas_core_reexec); PyTorch's linear layers
# call the same OpenBLAS, so run it again with the core dexec used
core=$(echo "$out" | sed -n 's/.*(OpenBLAS core \([A-Za-z0-9_]*\)).*/\1/p')
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -n "$core" ]; then
    echo "torch, OPENBLAS_CORETYPE=$core (the core dexec used):"
    OPENBLAS_CORETYPE=$core "$py" "$src/bench/bench-published-torch.py" "$dir" "$threads" \
        "$reps" "$vside"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
