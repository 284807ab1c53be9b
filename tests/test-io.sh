#!/bin/sh
# test-io.sh - the engine's I/O with real workers, through the CLI:
#  - a 128-px, 278-step batch of 3 on 2 ranks completes: both ranks finish
#    long computes and send 128x128 outputs (16 KB frames) and 278
#    progress notifications per image while the engine waits on the other
#    rank (it once lost rank 1's reply to the worker's write timeout);
#  - two ranks run side by side: `-b 2 --num-gpus 2` at 1000 steps against
#    two independent one-rank `dexec generate -b 1` run at the same time.
#    The bound is the issue's 1.15x, met by the best of up to five rounds
#    (a round on a shared machine can lose a CPU to others for seconds;
#    ranks run one after the other take 2x in every round);
#    bench/bench-scaling.sh reports the median over rounds.
# The model is small (hidden 32, one block) so that the test takes seconds
# on one CPU thread per worker; the frames are those of any 128-px model.
set -u
cli=${DEXEC_CLI:?run me from make check}
tool=${DEXEC_MODEL_TOOL:?run me from make check}
tmp=$(mktemp -d /tmp/dexec-test-io.XXXXXX) || exit 99
pids=
cleanup() {
    for p in $pids; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
unset DEXEC_CONFIG
export OPENBLAS_NUM_THREADS=1
status=0

fail() {
    echo "FAIL: $*"
    for f in out err; do
        [ -f "$tmp/$f" ] && { echo "--- $f:"; cat "$tmp/$f"; }
    done
    status=1
}

now() { date +%s.%N; }

# ---- a 128-px, 278-step batch on 2 ranks --------------------------------------
"$tool" init "$tmp/m128.safetensors" --image-size 128 --patch 8 --hidden 32 --depth 1 \
    --heads 2 >/dev/null || fail "dexec-model init"
if "$cli" generate -m "$tmp/m128.safetensors" --num-gpus 2 --device cpu -b 3 --steps 278 \
    -W 128 -H 128 -p class1 -s 7 -o "$tmp/b.png" >"$tmp/out" 2>"$tmp/err"; then
    for i in 0 1 2; do
        [ -s "$tmp/b-$i.png" ] || fail "128-px batch: no b-$i.png"
    done
    grep -F "b-1.png: 128x128, seed 8, 278 steps, cfg 4, rank 1," "$tmp/out" >/dev/null ||
        fail "128-px batch: rank 1's image not reported"
else
    fail "128-px, 278-step batch of 3 on 2 ranks (exit $?)"
fi

# ---- two ranks against two independent one-rank processes ---------------------
best=
for round in 1 2 3 4 5; do
    t0=$(now)
    "$cli" generate -q -p sneaker -b 1 --steps 1000 -s 1 --device cpu -o "$tmp/a.png" \
        >"$tmp/out" 2>"$tmp/err" &
    p1=$!
    "$cli" generate -q -p bag -b 1 --steps 1000 -s 2 --device cpu -o "$tmp/c.png" \
        >>"$tmp/out" 2>>"$tmp/err" &
    p2=$!
    pids="$p1 $p2"
    wait "$p1" || fail "one-rank generate (round $round)"
    wait "$p2" || fail "one-rank generate (round $round)"
    pids=
    t1=$(now)
    "$cli" generate -q -p sneaker -b 2 --num-gpus 2 --steps 1000 -s 1 --device cpu \
        -o "$tmp/two.png" >"$tmp/out" 2>"$tmp/err" || fail "two-rank generate (round $round)"
    t2=$(now)
    ratio=$(echo "$t0 $t1 $t2" | awk '{ printf "%.3f", ($3 - $2) / ($2 - $1) }')
    echo "round $round: two ranks $(echo "$t1 $t2" | awk '{ printf "%.2f", $2 - $1 }') s," \
        "two one-rank processes side by side $(echo "$t0 $t1" | awk '{ printf "%.2f", $2 - $1 }') s:" \
        "${ratio}x"
    [ $status -eq 0 ] || break
    if awk -v r="$ratio" 'BEGIN { exit !(r <= 1.15) }'; then
        best=$ratio
        break
    fi
done
[ $status -ne 0 ] || [ -n "$best" ] ||
    fail "two ranks took more than 1.15x two independent one-rank processes in 5 rounds"
exit $status
