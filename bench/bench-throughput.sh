#!/bin/sh
# bench-throughput.sh - throughput of "dexec generate -b 32" (default
# settings, CPU) with 1 and 2 mp ranks, against the host's own two-way
# scaling measured in the same run: two independent single-rank processes,
# each on its own CPU with one compute thread, over one such process.
# target: (2 ranks / 1 rank) >= 0.95 * (host two-way scaling).
#   bench/bench-throughput.sh            (from the build tree; make bench-throughput-run)
# BENCH_B (32), BENCH_STEPS (20), BENCH_REPEAT (3: the best of each is kept),
# BENCH_CPUS ("0 1": the two CPUs of the host baseline).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
B=${BENCH_B:-32}
STEPS=${BENCH_STEPS:-20}
REPEAT=${BENCH_REPEAT:-3}
set -- ${BENCH_CPUS:-0 1}
cpu_a=$1
cpu_b=$2
[ "$(nproc)" -ge 2 ] || { echo "bench-scaling: needs 2 CPUs, this process may use $(nproc)"; exit 77; }
command -v taskset >/dev/null || { echo "bench-scaling: needs taskset (util-linux)"; exit 77; }
tmp=$(mktemp -d /tmp/dexec-bench-scaling.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

now() { date +%s.%N; }
gen() { # OUT [ARGS...]: one dexec generate of B images
    out=$1
    shift
    "$top/dexec-uninstalled" dexec generate -p sneaker -b "$B" --steps "$STEPS" -q \
        --device cpu -o "$tmp/$out.png" "$@" || { echo "bench-scaling: generate $* failed"; exit 1; }
}
# best images/s over REPEAT runs of "$@" producing IMAGES images
best() {
    images=$1
    shift
    b=0
    i=0
    while [ "$i" -lt "$REPEAT" ]; do
        t0=$(now)
        "$@"
        t1=$(now)
        b=$(awk -v b="$b" -v n="$images" -v a="$t0" -v z="$t1" \
            'BEGIN { r = n / (z - a); printf "%.3f", (r > b ? r : b) }')
        i=$((i + 1))
    done
    echo "$b"
}
one_rank() { gen a --num-gpus 1; }
two_ranks() { gen a --num-gpus 2; }
host_one() { OPENBLAS_NUM_THREADS=1 taskset -c "$cpu_a" "$top/dexec-uninstalled" dexec generate \
    -p sneaker -b "$B" --steps "$STEPS" -q --device cpu -o "$tmp/h1.png" --num-gpus 1; }
host_two() {
    OPENBLAS_NUM_THREADS=1 taskset -c "$cpu_a" "$top/dexec-uninstalled" dexec generate \
        -p sneaker -b "$B" --steps "$STEPS" -q --device cpu -o "$tmp/h2a.png" --num-gpus 1 &
    pa=$!
    OPENBLAS_NUM_THREADS=1 taskset -c "$cpu_b" "$top/dexec-uninstalled" dexec generate \
        -p sneaker -b "$B" --steps "$STEPS" -q --device cpu -o "$tmp/h2b.png" --num-gpus 1 &
    pb=$!
    wait "$pa"
    wait "$pb"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
r1=$(best "$B" one_rank)
r2=$(best "$B" two_ranks)
h1=$(best "$B" host_one)
h2=$(best $((2 * B)) host_two)
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
awk -v r1="$r1" -v r2="$r2" -v h1="$h1" -v h2="$h2" -v b="$B" -v s="$STEPS" 'BEGIN {
    printf "-b %d, %d steps, CPU, default settings (best of each)\n", b, s
    printf "  mp, 1 rank:                  %7.2f images/s\n", r1
    printf "  mp, 2 ranks:                 %7.2f images/s  (%.2fx)\n", r2, r2 / r1
    printf "  host, 1 one-thread process:  %7.2f images/s\n", h1
    printf "  host, 2 one-thread processes:%7.2f images/s  (%.2fx)\n", h2, h2 / h1
    printf "  2-rank scaling / host scaling: %.2f (target >= 0.95)\n", (r2 / r1) / (h2 / h1)
    printf "  2 ranks / 2 host processes:    %.2f (absolute throughput)\n", r2 / h2
}'
