#!/bin/sh
# bench-parallel.sh - time per image of one rank against a cfg = 2 group
# (doc/parallelism.md), on a seeded random DiT of DiT-S shape at 256 tokens
# (32 x 32 pixels, 2 x 2 patches, hidden 384, depth 12, 6 heads), one
# compute thread per rank, against the host's own two-way scaling measured
# in the same run: two independent one-rank, one-thread processes over one.
# target: (one rank's time / cfg = 2's time) >= 0.9 * (host two-way scaling).
#   bench/bench-parallel.sh              (from the build tree; make bench-parallel-run)
# BENCH_B (2 images), BENCH_STEPS (4), BENCH_REPEAT (1: the best is kept),
# BENCH_CPUS ("0 1": the two CPUs of the host baseline).
# A request's time is the engine's total_s (engine start not included):
# time per image = the last image's total_s / B (the images of a batch run
# one after the other on one group).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
B=${BENCH_B:-2}
STEPS=${BENCH_STEPS:-4}
REPEAT=${BENCH_REPEAT:-1}
set -- ${BENCH_CPUS:-0 1}
cpu_a=$1
cpu_b=$2
[ "$(nproc)" -ge 2 ] || { echo "bench-parallel: needs 2 CPUs, this process may use $(nproc)"; exit 77; }
command -v taskset >/dev/null || { echo "bench-parallel: needs taskset (util-linux)"; exit 77; }
tmp=$(mktemp -d /tmp/dexec-bench-parallel.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

"$top/dexec-uninstalled" dexec-model init "$tmp/dit-s.safetensors" --image-size 32 --channels 3 \
    --patch 2 --hidden 384 --depth 12 --heads 6 --classes 10 --seed 1 >/dev/null ||
    { echo "bench-parallel: dexec-model init failed"; exit 1; }
printf 'model = "%s";\ndevice = "cpu";\nnum_gpus = 1;\nmp = { cpus_per_rank = 1; };\n' \
    "$tmp/dit-s.safetensors" >"$tmp/one.conf"
printf 'model = "%s";\ndevice = "cpu";\nnum_gpus = 2;\nparallel = { cfg = 2; };\nmp = { cpus_per_rank = 1; };\n' \
    "$tmp/dit-s.safetensors" >"$tmp/cfg2.conf"

# seconds per image of one dexec generate (the last image's total_s / B)
per_image() { # CONF OUT [taskset CPU]
    conf=$1
    out=$2
    shift 2
    "$@" "$top/dexec-uninstalled" dexec generate -c "$conf" -p class3 -s 5 -b "$B" \
        --steps "$STEPS" -o "$tmp/$out.png" 2>&1 |
        awk -v b="$B" '/ s$/ { t = $(NF - 1) } END { if (t == "") exit 1; printf "%.3f", t / b }' ||
        { echo "bench-parallel: generate -c $conf failed" >&2; exit 1; }
}
best() { # best (lowest) of REPEAT runs of "$@"
    b=
    i=0
    while [ "$i" -lt "$REPEAT" ]; do
        t=$("$@") || exit 1
        b=$(awk -v b="$b" -v t="$t" 'BEGIN { printf "%.3f", (b == "" || t < b ? t : b) }')
        i=$((i + 1))
    done
    echo "$b"
}
host_two() { # the slower of two one-thread processes side by side
    OPENBLAS_NUM_THREADS=1 per_image "$tmp/one.conf" ha taskset -c "$cpu_a" >"$tmp/ta" &
    pa=$!
    OPENBLAS_NUM_THREADS=1 per_image "$tmp/one.conf" hb taskset -c "$cpu_b" >"$tmp/tb" &
    pb=$!
    wait "$pa"
    wait "$pb"
    awk '{ t = $1 > t ? $1 : t } END { printf "%.3f", t }' "$tmp/ta" "$tmp/tb"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
t1=$(best per_image "$tmp/one.conf" one)
tc=$(best per_image "$tmp/cfg2.conf" cfg2)
h1=$(OPENBLAS_NUM_THREADS=1 best per_image "$tmp/one.conf" h1 taskset -c "$cpu_a")
h2=$(best host_two)
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
cmp -s "$tmp/one-0.png" "$tmp/cfg2-0.png" && same="bit-identical" || same="not bit-identical"
# the cfg exchange: each rank sends its branch's prediction, C x H x W floats, per step
awk -v t1="$t1" -v tc="$tc" -v h1="$h1" -v h2="$h2" -v b="$B" -v s="$STEPS" -v same="$same" 'BEGIN {
    printf "DiT-S shape, 256 tokens, -b %d, %d steps, CPU, one thread per rank (best of each)\n", b, s
    printf "  one rank:                      %7.3f s/image\n", t1
    printf "  cfg = 2 (2 ranks):             %7.3f s/image  (%.2fx)\n", tc, t1 / tc
    printf "  host, 1 one-thread process:    %7.3f s/image\n", h1
    printf "  host, 2 one-thread processes:  %7.3f s/image each, %.2fx the throughput\n", h2, 2 * h1 / h2
    printf "  cfg = 2 speed-up / host scaling: %.2f (target >= 0.9)\n", (t1 / tc) / (2 * h1 / h2)
    printf "  bytes exchanged per step: %d sent by each rank (3 x 32 x 32 floats)\n", 3 * 32 * 32 * 4
    printf "  first image against one rank: %s\n", same
}'
