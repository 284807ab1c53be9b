#!/bin/sh
# tests/gpu/run.sh - checks and times the CUDA backend on a GPU machine that
# has only the CUDA toolkit, libc and a C compiler (no autotools, Check,
# OpenBLAS or msgpack): builds tests/gpu/gpu_check from kernels/cuda/*.cu
# (the sources of the device plugin dexec_cuda.so) and
# tests/gpu/gpu_check.c with nvcc, and runs it. `make check` runs it with
# --build-only wherever configure found nvcc (tests/test-gpu-build.sh). It prints a table of
# every op against a naive C reference (the half-precision ones, float16 and
# bfloat16 weights, against float32 too), one DiT-S-sized denoising step,
# and timings; in a configured and built tree it then runs the cuda Check
# suite (tests/test-cuda.c, the half-precision pipeline among its cases).
# The exit status is gpu_check's (0 pass, 1 mismatch, 77 no GPU), or 1 when
# the suite failed.
#
# usage: tests/gpu/run.sh [--build-only] [--arch ARCH] [--build-dir DIR]
#                         [-- gpu_check options: --iters N --gpu N]
#   --arch       nvcc -arch value (default sm_90, the H100/H200; "native"
#                compiles for the GPUs of this machine)
#   --build-dir  where the program is built (default tests/gpu/build)
#   NVCC         the compiler (default: nvcc on PATH, else /usr/local/cuda)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=$here/build
arch=sm_90
build_only=no

usage() {
    sed -n '/^# usage:/,/^#   NVCC/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
    --build-only) build_only=yes ;;
    --arch)
        [ $# -ge 2 ] || usage
        arch=$2
        shift
        ;;
    --build-dir)
        [ $# -ge 2 ] || usage
        build=$2
        shift
        ;;
    --)
        shift
        break
        ;;
    *) usage ;;
    esac
    shift
done

nvcc=${NVCC:-}
if [ -z "$nvcc" ]; then
    if command -v nvcc >/dev/null 2>&1; then
        nvcc=$(command -v nvcc)
    elif [ -x /usr/local/cuda/bin/nvcc ]; then
        nvcc=/usr/local/cuda/bin/nvcc
    else
        echo "run.sh: no nvcc on PATH or in /usr/local/cuda/bin: install the CUDA toolkit or set NVCC" >&2
        exit 2
    fi
fi
# cuBLAS is a shared library: record where it is so the program runs
# without LD_LIBRARY_PATH
cuda_home=$(cd "$(dirname "$nvcc")/.." && pwd)
if [ -d "$cuda_home/lib64" ]; then
    cuda_lib=$cuda_home/lib64
else
    cuda_lib=$cuda_home/lib
fi

mkdir -p "$build"
# The .cu files include config.h first, as every dexec source does; from
# configure they need nothing but HAVE_CUDA and the version the module's
# descriptor carries. The module calls no libdexec function, so nothing of
# core/ is compiled here.
version=$(sed -n 's/^AC_INIT(\[dexec\], \[\([^]]*\)\].*/\1/p' "$top/configure.ac")
cat >"$build/config.h" <<EOF
/* written by tests/gpu/run.sh for its standalone build */
#define HAVE_CUDA 1
#define PACKAGE_VERSION "${version:-unknown}"
EOF

echo "run.sh: building $build/gpu_check for $arch with $nvcc"
"$nvcc" --version | tail -n 1
"$nvcc" -O3 -arch="$arch" -I"$build" -I"$top/include" -I"$top/kernels" \
    -Xcompiler -Wall,-Wextra \
    -o "$build/gpu_check" "$here/gpu_check.c" "$top"/kernels/cuda/*.cu \
    -lcublas -lm -Xlinker -rpath,"$cuda_lib"

if [ "$build_only" = yes ]; then
    echo "run.sh: built $build/gpu_check (not run: --build-only)"
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv ||
        true
fi
rc=0
"$build/gpu_check" "$@" || rc=$?
# In a configured and built tree, the Check suite of the CUDA backend too:
# every op against the CPU backend, the golden models, and the golden
# pipeline with float16 and bfloat16 weights against float32
# (test_half_pipeline: at most 1e-2 and 5e-2 of the output's scale).
if [ "$rc" -ne 77 ] && [ -f "$top/tests/Makefile" ]; then
    echo "run.sh: the cuda suite of the built tree (make -C tests check TESTS=test-cuda)"
    suite=0
    make -C "$top/tests" check TESTS=test-cuda >/dev/null 2>&1 || suite=$?
    cat "$top/tests/test-cuda.log" 2>/dev/null || true
    if [ "$suite" -ne 0 ] && [ "$rc" -eq 0 ]; then
        rc=1
    fi
fi
exit "$rc"
