#!/bin/sh
# bench-serve.sh - `dexec serve` throughput and latency against the engine's
# own throughput, in one run on one machine:
#  1. engine: the engine's own step throughput, wall clock: one `dexec
#     generate -b 65` process against one `-b 1` (the difference is 64
#     images through dexec_engine_step, start-up cancelled out), and as an
#     upper bound the images' own compute time (encode + denoise + decode,
#     as printed) over the ranks: no HTTP, no gaps between requests;
#     measured before and again after the server's runs;
#  2. serve: sustained images/s and p50/p99 request latency at concurrency
#     1, 4 and 16 (keep-alive clients, tests/serve_client.py);
#  3. one image: a request to a running `dexec serve` against one `dexec
#     generate` process (start-up, workers and model load included).
# Usage: bench-serve.sh [RANKS] [STEPS] [REQUESTS]  (defaults 2 10 400)
set -eu
top=${DEXEC_TOP_BUILDDIR:?run me from make bench-serve-run}
src=${DEXEC_TOP_SRCDIR:?run me from make bench-serve-run}
ranks=${1:-2} steps=${2:-10} requests=${3:-400}
cli="$top/core/dexec"
tmp=$(mktemp -d /tmp/dexec-bench-serve.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
export OPENBLAS_NUM_THREADS=1

echo "ranks $ranks, $steps steps per image, $requests requests per concurrency level"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# engine WHEN: the engine's step throughput, measured before and after the
# server's runs (the load of a shared machine drifts in between)
engine() {
    s=$(date +%s.%N)
    "$cli" generate -p sneaker -b 1 -s 1 --steps "$steps" --num-gpus "$ranks" -q -o "$tmp/e1.png"
    t1=$(echo "$(date +%s.%N) - $s" | bc -l)
    s=$(date +%s.%N)
    "$cli" generate -p sneaker -b 65 -s 1 --steps "$steps" --num-gpus "$ranks" -o "$tmp/e.png" >"$tmp/gen"
    t65=$(echo "$(date +%s.%N) - $s" | bc -l)
    echo "engine step, wall clock, $1: 64 images in $(echo "$t65 - $t1" | bc -l | cut -c1-6) s, $(echo "64 / ($t65 - $t1)" | bc -l | cut -c1-5) images/s"
    awk -v r="$ranks" -v w="$1" '/ s$/ { t += $(NF-1); n++ } END {
        printf "engine compute (upper bound), %s: %d images, %.2f ms compute each, %.1f images/s over %d rank(s)\n", w, n, 1000*t/n, r*n/t, r }' "$tmp/gen"
}
engine before

"$cli" serve -l 127.0.0.1:0 --num-gpus "$ranks" --set log_level=warn >"$tmp/out" 2>"$tmp/err" &
pid=$!
url=
while [ -z "$url" ]; do
    sleep 0.1
    url=$(sed -n 's|.*listening on \(http://[^ ]*\)/$|\1|p' "$tmp/out")
    kill -0 "$pid"
done
python3 "$src/tests/serve_client.py" "$url" 4 40 "$steps" >/dev/null # warm-up
for c in 1 4 16; do
    printf 'serve, concurrency %2d: ' "$c"
    python3 "$src/tests/serve_client.py" "$url" "$c" "$requests" "$steps"
done
body="{\"prompt\":\"sneaker\",\"num_inference_steps\":$steps,\"seed\":1}"
t=$(curl -s -o /dev/null -w '%{time_total}' -X POST "$url/v1/images/generations" -d "$body")
echo "one image via a running dexec serve: ${t} s"
kill -TERM "$pid"
wait "$pid"
pid=
# warnings and errors of the server (a rank that died or went silent)
if grep -v ' serve: \(Terminated: draining\|stopped\)' "$tmp/err" | grep -q .; then
    echo "server log (warnings and errors):"
    cat "$tmp/err"
fi
s=$(date +%s.%N)
"$cli" generate -p sneaker -s 1 --steps "$steps" --num-gpus "$ranks" -q -o "$tmp/one.png"
echo "one image via one dexec generate process: $(echo "$(date +%s.%N) - $s" | bc -l | cut -c1-6) s"
engine after
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
