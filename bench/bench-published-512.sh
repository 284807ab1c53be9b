#!/bin/sh
# bench-published-512.sh - a full-size DiT-XL/2-512-shaped model (random
# weights, written by the PyTorch twin contrib/published/make_pipeline.py)
# generating one 512 x 512 RGB PNG through the CPU: `dexec generate` (mp
# executor, one worker) with a few DDPM steps, timed, and the peak resident
# memory of the largest process (the worker) with the activation budget it
# implies: peak RSS minus the weights, which the worker maps and reads in
# place (original layout: nothing is copied). Results: doc/model.md
# "Devices and memory" and doc/performance.md "Published models".
#
#   bench-published-512.sh BUILD_TOP_DIR SRCDIR
#
# Environment: BENCH_STEPS (2: DDPM's fewest), BENCH_DEPTH (28: DiT-XL/2),
# BENCH_DIR (where the model is written; removed at the end).
# Needs /usr/bin/python3 with Debian's python3-torch, and /usr/bin/time.
set -eu
top=$1 src=$2
steps=${BENCH_STEPS:-2} depth=${BENCH_DEPTH:-28}
py=/usr/bin/python3
if ! "$py" -c "import torch" >/dev/null 2>&1; then
    echo "bench-published-512: $py cannot import torch (apt-get install python3-torch)" >&2
    exit 1
fi
[ -x /usr/bin/time ] || { echo "bench-published-512: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
dir=${BENCH_DIR:-$top/bench/bench-published-512-model}
rm -rf "$dir"
trap 'rm -rf "$dir"' EXIT INT TERM
export DEXEC_PLUGIN_PATH="$top/plugins/.libs:$top/kernels/.libs"
export DEXEC_WORKER="$top/worker/dexec-worker"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(date +%s)
"$py" "$src/contrib/published/make_pipeline.py" --out "$dir/model" --image-size 512 \
    --layout original --depth "$depth"
echo "make_pipeline.py: $(($(date +%s) - t0)) s"
weights=$(du -cb "$dir"/model/transformer/*.safetensors "$dir"/model/vae/*.safetensors |
    tail -n 1 | cut -f1)
# one decode at 512 px is minutes on a loaded CPU with no progress message
# in between: no stall deadline, generous others
cat >"$dir/bench.conf" <<'EOF'
timeouts = { init = 600.0; generate = 7200.0; stall = 0.0; };
EOF
/usr/bin/time -f "%e s wall, %U s user, %S s system, %M KiB peak RSS (the largest process)" \
    -o "$dir/time" "$top/core/dexec" generate -c "$dir/bench.conf" --device cpu -m "$dir/model" \
    -p "golden retriever" -s 1 --steps "$steps" --timeout 7200 -o "$dir/out.png"
cat "$dir/time"
"$py" - "$dir/out.png" <<'PY'
import struct, sys
d = open(sys.argv[1], 'rb').read()
w, h, depth, color = struct.unpack('>IIBB', d[16:26])
print(f"{sys.argv[1]}: {w} x {h}, {'RGB' if color == 2 else color}, {depth}-bit")
sys.exit(0 if (w, h, depth, color) == (512, 512, 8, 2) else 1)
PY
peak_kib=$(sed -n 's/.*, \([0-9]*\) KiB peak RSS.*/\1/p' "$dir/time")
awk -v p="$peak_kib" -v w="$weights" 'BEGIN {
    printf "weights %.0f MiB (mapped in place), peak RSS %.0f MiB: activations, scratch and the process %.0f MiB\n",
        w / 1048576, p / 1024, p / 1024 - w / 1048576 }'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
