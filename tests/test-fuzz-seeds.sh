#!/bin/sh
# test-fuzz-seeds.sh - replays every fuzz target's seed corpus through its
# entry point (tests/fuzz/replay.c); a crash or abort fails the test. The
# long runs under libFuzzer + ASan + UBSan are `make -C tests fuzz`
# (doc/fuzzing.md).
set -u
src=${DEXEC_TEST_SRCDIR:-$(dirname "$0")}
status=0
for t in frame safetensors config; do
    seeds="$src/fuzz/seeds-$t"
    [ "$t" = frame ] && seeds="$src/fuzz/seeds"
    n=$(ls "$seeds" | wc -l)
    [ "$n" -gt 0 ] || { echo "FAIL: no seeds in $seeds"; status=1; continue; }
    ./fuzz/replay-$t "$seeds" || { echo "FAIL: fuzz-$t crashed on a seed of $seeds"; status=1; }
done
exit $status
