#!/bin/sh
# test-gpu-build.sh - builds the standalone GPU check (tests/gpu/run.sh
# --build-only) with the nvcc configure found, into the build tree, so that
# a link error in kernels/cuda/ shows up here and not on the first GPU
# machine. Skipped (77) where configure found no nvcc.
set -u
nvcc=${DEXEC_TEST_NVCC-}
src=${DEXEC_TEST_SRCDIR:?run me from make check}
build=${DEXEC_TEST_BUILDDIR:?run me from make check}/gpu-build
if [ -z "$nvcc" ]; then
    echo "SKIP: configure found no nvcc and cuBLAS (or was given --without-cuda): nothing to build"
    exit 77
fi
rm -rf "$build"
if ! NVCC=$nvcc "$src/gpu/run.sh" --build-only --build-dir "$build"; then
    echo "FAIL: tests/gpu/run.sh --build-only did not build $build/gpu_check"
    exit 1
fi
if [ ! -x "$build/gpu_check" ]; then
    echo "FAIL: run.sh succeeded but $build/gpu_check is not there"
    exit 1
fi
rm -rf "$build"
exit 0
