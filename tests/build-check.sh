#!/bin/sh
# build-check.sh - the packager's path, as doc and issue 13 describe it:
# autoreconf and configure print no warning, `./configure --prefix=OTHER &&
# make && make install` works after an earlier build (the install paths are
# a generated header, so a changed prefix relinks what records it), and the
# suites that look at the plugin directory pass with dexec installed there.
# Run from the top of a configured, built source tree (CI runs it after
# `make check`); it reconfigures that tree and leaves it configured for the
# last prefix. Usage: tests/build-check.sh [SCRATCH_DIR]
set -eu
cd "$(dirname "$0")/.."
scratch=${1:-$(mktemp -d /tmp/dexec-build-check.XXXXXX)}
fail() { echo "build-check: $*" >&2; exit 1; }

autoreconf -fi >"$scratch/autoreconf.log" 2>&1 || fail "autoreconf failed (see $scratch/autoreconf.log)"
if grep -i 'warning' "$scratch/autoreconf.log"; then fail "autoreconf printed a warning"; fi

for p in a b; do
    ./configure --enable-werror --prefix="$scratch/$p" >"$scratch/configure-$p.log" 2>&1 ||
        fail "configure --prefix=$scratch/$p failed"
    if grep -E 'cannot remove|warning:' "$scratch/configure-$p.log"; then
        fail "configure printed the lines above"
    fi
    make -j"$(nproc)" >"$scratch/make-$p.log" 2>&1 || fail "make after --prefix=$scratch/$p failed"
    make install >"$scratch/install-$p.log" 2>&1 ||
        fail "make install into $scratch/$p failed: $(grep -m1 -i 'error\|cannot' "$scratch/install-$p.log")"
    "$scratch/$p/bin/dexec" plugins | grep -q "^$scratch/$p/lib/dexec:" ||
        fail "$scratch/$p/bin/dexec plugins does not list $scratch/$p/lib/dexec"
done
[ "$(ls conftest* confdefs* 2>/dev/null | wc -l)" -eq 0 ] || fail "configure left conftest files"

# With dexec installed into the configured prefix, the suites that search
# the plugin directory still pass.
make check TESTS='test-loader test-kernels' >"$scratch/check.log" 2>&1 ||
    fail "make check with dexec installed in $scratch/b failed (see tests/test-suite.log)"
rm -rf "$scratch"
echo "build-check: autoreconf and configure quiet; reconfigure + install into a second prefix works"
