#!/bin/sh
# bench-scaling.sh - throughput of 2 ranks over 1 at 1000 steps per image,
# against the host's own two-way scaling measured in the same run: per
# round, one `dexec generate -b 1` alone (T1), two of them side by side as
# independent processes (Tpar), and `-b 2 --num-gpus 2` (T2), each worker
# on one BLAS thread. Host scaling = 2*T1/Tpar, dexec scaling = 2*T1/T2,
# and their ratio Tpar/T2 is the figure (target >= 0.95). The issue's
# in-test criterion is reported too: T2 at most 1.15x Tpar (T2/Tpar <=
# 1.15; tests/test-io.sh asserts a looser 1.5x on the shared test
# machine). Prints a markdown table and the median ratios.
#
#   bench-scaling.sh [ROUNDS [STEPS]]     (run it through `make bench`)
set -u
cli=${DEXEC_CLI:?run me through make bench-scaling-run}
rounds=${1:-5}
steps=${2:-1000}
tmp=$(mktemp -d /tmp/dexec-bench-scaling.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT
unset DEXEC_CONFIG
export OPENBLAS_NUM_THREADS=1

now() { date +%s.%N; }
gen() { "$cli" generate -q --device cpu --steps "$steps" "$@" >/dev/null 2>"$tmp/err" ||
    { cat "$tmp/err" >&2; exit 1; }; }

echo "2 ranks over 1 at $steps steps per image, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| round | T1 one image (s) | Tpar two processes (s) | T2 two ranks (s) | host scaling 2*T1/Tpar | dexec scaling 2*T1/T2 | dexec / host (Tpar/T2) | T2/Tpar (<= 1.15) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
: >"$tmp/ratios"
for r in $(seq "$rounds"); do
    t0=$(now); gen -p sneaker -b 1 -s 1 -o "$tmp/a.png"; t1=$(now)
    gen -p sneaker -b 1 -s 1 -o "$tmp/b.png" &
    p1=$!
    gen -p bag -b 1 -s 2 -o "$tmp/c.png" &
    p2=$!
    wait "$p1" && wait "$p2" || exit 1
    t2=$(now)
    gen -p sneaker -b 2 --num-gpus 2 -s 1 -o "$tmp/d.png"
    t3=$(now)
    echo "$r $t0 $t1 $t2 $t3" | awk '{
        t1 = $3 - $2; tp = $4 - $3; t2 = $5 - $4;
        printf "| %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %.3f |\n", $1, t1, tp, t2,
               2 * t1 / tp, 2 * t1 / t2, tp / t2, t2 / tp }'
    echo "$t1 $t2 $t3" | awk '{ printf "%.4f\n", ($2 - $1) / ($3 - $2) }' >>"$tmp/ratios"
done
echo
sort -n "$tmp/ratios" | awk '{ v[NR] = $1 } END { m = v[int((NR + 1) / 2)]
    printf("median dexec / host: %.3f (target >= 0.95: %s); median T2/Tpar: %.3f (test criterion <= 1.15: %s); load average after: ",
        m, (m >= 0.95 ? "met" : "NOT met"), 1 / m, (1 / m <= 1.15 ? "met" : "NOT met")) }'
cut -d' ' -f1-3 /proc/loadavg
