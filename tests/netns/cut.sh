#!/bin/bash
# cut.sh - a network cut between the engine and a TCP worker during a
# step: two network namespaces joined by a veth pair, the engine on A
# (10.78.0.1) with the external executor, a dexec-worker on B (10.78.0.2).
# Once the step runs, the link is cut. The engine must report the rank
# within its health deadline (timeouts.health = 2 s: a probe after 1 s of
# silence, the connection closed after 2 s, plus slack), not at
# timeouts.generate; the worker must
# drop the dead connection (TCP_USER_TIMEOUT, 15 s, plus slack), not stay
# blocked on it.
#
# Needs root (ip netns add); exits 77 (skipped) with the reason otherwise.
set -u

skip() { echo "cut: skipped: $*"; exit 77; }
fail() { echo "cut: FAIL: $*" >&2; [ -n "${TMP:-}" ] && tail -n 20 "$TMP"/*.log >&2; exit 1; }

: "${DEXEC_WORKER:?run through make check}" "${DEXEC_CLI:?}" "${DEXEC_PLUGIN_PATH:?}"
command -v ip >/dev/null 2>&1 || skip "no ip command (iproute2)"
command -v ss >/dev/null 2>&1 || skip "no ss command (iproute2)"

. "$(dirname "$0")/pair.sh"
netns_pair cut 10.78.0

printf 'cut-secret-%s\n' "$$" >"$TMP/token"
chmod 600 "$TMP/token"
ip netns exec "$B" env OPENBLAS_NUM_THREADS=1 DEXEC_LOG_LEVEL=info "$DEXEC_WORKER" \
    --listen tcp:10.78.0.2:7071 --token-file "$TMP/token" --device cpu --print-address \
    >"$TMP/worker.out" 2>"$TMP/worker.log" &
PIDS="$PIDS $!"
for _ in $(seq 100); do [ -s "$TMP/worker.out" ] && break; sleep 0.1; done
[ -s "$TMP/worker.out" ] || fail "the worker on host B did not start"

cat >"$TMP/engine.conf" <<CONF
device = "cpu";
distributed_executor_backend = "external";
external = { worker_names = [ "tcp:10.78.0.2:7071" ]; };
token_file = "$TMP/token";
timeouts = { init = 30.0; health = 2.0; generate = 300.0; };
CONF

# a step long enough to be cut in the middle (32 images of 1000 steps)
ip netns exec "$A" "$DEXEC_CLI" generate -c "$TMP/engine.conf" -p sneaker -b 32 --steps 1000 -s 3 \
    -q -o "$TMP/out.png" >"$TMP/gen.out" 2>"$TMP/gen.log" &
GEN=$!
PIDS="$PIDS $GEN"
established() {
    ip netns exec "$B" ss -Htn state established '( sport = :7071 )' | grep -c .
}
for _ in $(seq 300); do [ "$(established)" -ge 1 ] && break; sleep 0.1; done
[ "$(established)" -ge 1 ] || fail "the engine did not connect"
sleep 2 # the step is under way
kill -0 "$GEN" 2>/dev/null || fail "generate ended before the cut: $(cat "$TMP/gen.log")"
ip -n "$B" link set "cutb$$" down || fail "cutting the link"
t0=$(date +%s.%N)

# the engine reports the rank within the health deadline
for _ in $(seq 200); do kill -0 "$GEN" 2>/dev/null || break; sleep 0.1; done
t1=$(date +%s.%N)
took=$(echo "$t0 $t1" | awk '{ printf "%.1f", $2 - $1 }')
kill -0 "$GEN" 2>/dev/null && fail "generate still waits ${took} s after the cut"
wait "$GEN"
rc=$?
[ "$rc" -ne 0 ] || fail "generate succeeded across a cut link"
grep -F "past timeouts.health (2 s), a get_rank probe unanswered; closed the connection" "$TMP/gen.log" >/dev/null ||
    fail "the failure does not name the health deadline: $(cat "$TMP/gen.log")"
awk -v t="$took" 'BEGIN { exit !(t <= 6) }' ||
    fail "the engine reported the rank after ${took} s (health deadline 2 s)"
echo "cut: the engine reported the rank ${took} s after the cut: $(tail -n 1 "$TMP/gen.log")"

# the worker drops the dead connection (its progress notifications go
# unacknowledged: TCP_USER_TIMEOUT 15 s, or its 30 s write deadline)
for _ in $(seq 450); do [ "$(established)" -eq 0 ] && break; sleep 0.1; done
t2=$(date +%s.%N)
[ "$(established)" -eq 0 ] ||
    fail "the worker still holds the dead connection $(echo "$t0 $t2" | awk '{ printf "%.0f", $2 - $1 }') s after the cut"
echo "cut: the worker dropped the dead connection $(echo "$t0 $t2" | awk '{ printf "%.1f", $2 - $1 }') s after the cut"
exit 0
