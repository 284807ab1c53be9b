#!/bin/bash
# multihost.sh - the ray_actor executor across two "hosts": two network
# namespaces joined by a veth pair. Host A (10.77.0.1) runs Redis and the
# engine; host B (10.77.0.2) runs a node agent. The engine must place its
# actor on B and generate there; cutting the link must make check_health
# fail within the health deadline.
#
# Needs root (ip netns add); exits 77 (skipped) with the reason otherwise.
set -u

skip() { echo "multihost: skipped: $*"; exit 77; }
fail() { echo "multihost: FAIL: $*" >&2; [ -n "${TMP:-}" ] && tail -n 20 "$TMP"/*.log >&2; exit 1; }

: "${DEXEC_WORKER:?run through make check}" "${DEXEC_CLI:?}" "${DEXEC_PLUGIN_PATH:?}"
[ -n "${REDIS_SERVER:-}" ] || skip "no redis-server (configure found none)"
command -v ip >/dev/null 2>&1 || skip "no ip command (iproute2)"

. "$(dirname "$0")/pair.sh"
netns_pair mh 10.77.0

# host A: Redis, reachable from B (protected mode off: the namespace is private)
ip netns exec "$A" "$REDIS_SERVER" --bind 10.77.0.1 --port 6390 --save "" --appendonly no \
    --protected-mode no >"$TMP/redis.log" 2>&1 &
PIDS="$PIDS $!"
URL=redis://10.77.0.1:6390/0
for _ in $(seq 50); do
    ip netns exec "$A" bash -c "exec 3<>/dev/tcp/10.77.0.1/6390" 2>/dev/null && break
    sleep 0.1
done

# host B: the node agent, with a token (it listens on a routable address)
printf 'node-secret-%s\n' "$$" >"$TMP/token"
chmod 600 "$TMP/token"
ip netns exec "$B" env DEXEC_LOG_LEVEL=info TMPDIR="$TMP" "$DEXEC_WORKER" --node --node-name host-b \
    --registry "$URL" --listen tcp:10.77.0.2:7070 --token-file "$TMP/token" \
    --cpus 1 --gpus 0 --resources gpu_worker=1 --print-address >"$TMP/node.out" 2>"$TMP/node.log" &
PIDS="$PIDS $!"
for _ in $(seq 100); do [ -s "$TMP/node.out" ] && break; sleep 0.1; done
[ -s "$TMP/node.out" ] || fail "the node agent on host B did not register"

MODEL=${DEXEC_TEST_SRCDIR:-$(dirname "$0")/..}/golden/golden-model.safetensors
cat >"$TMP/engine.conf" <<EOF
model = "$MODEL";
device = "cpu";
num_gpus = 1;
distributed_executor_backend = "ray_actor";
token_file = "$TMP/token";
ray_actor = { cpus = 1; resources = { gpu_worker = 1; }; };
ray_init = { address = "$URL"; };
timeouts = { init = 30.0; health = 2.0; shutdown_grace = 1.0; };
EOF

# host A: generate; the actor must run on B
ip netns exec "$A" "$DEXEC_CLI" generate -c "$TMP/engine.conf" -q -p sneaker --steps 2 -s 3 \
    -o "$TMP/out.png" >"$TMP/gen.log" 2>&1 || fail "generate on host B: $(cat "$TMP/gen.log")"
[ -s "$TMP/out.png" ] || fail "no image"
grep -q "spawned actor" "$TMP/node.log" || fail "the actor did not run on host B"
echo "multihost: generated on host B"
# the node frees the actor's CPU once it has reaped it (the engine's close
# does not wait for that): wait for it, so the next engine finds room
for _ in $(seq 100); do grep -q "actor pid [0-9]* exited" "$TMP/node.log" && break; sleep 0.1; done
grep -q "actor pid [0-9]* exited" "$TMP/node.log" || fail "host B never reaped the first actor"

# a long-lived engine on A whose link to B is then cut: check_health must
# fail within the health deadline (2 s), not wait for the generate timeout
PROBE=$(dirname "$0")/health-probe
[ -x "$PROBE" ] || PROBE=${DEXEC_TEST_BUILDDIR:-.}/netns/health-probe
mkfifo "$TMP/go"
ip netns exec "$A" "$PROBE" "$TMP/engine.conf" <"$TMP/go" >"$TMP/probe.log" 2>&1 &
PROBE_PID=$!
PIDS="$PIDS $PROBE_PID"
exec 4>"$TMP/go"
for _ in $(seq 300); do grep -q '^ready' "$TMP/probe.log" && break; sleep 0.1; done
grep -q '^ready' "$TMP/probe.log" || fail "the probe engine did not start: $(cat "$TMP/probe.log")"
ip -n "$B" link set "mhb$$" down || fail "cutting the link"
echo go >&4
exec 4>&-
wait "$PROBE_PID"
rc=$?
cat "$TMP/probe.log"
[ "$rc" -eq 0 ] || fail "check_health with the link to host B cut (probe exit $rc)"
exit 0
