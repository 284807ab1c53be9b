#!/bin/sh
# test-messages.sh - what a user reads when something goes wrong: each
# error said once (not by the worker and again by the engine), log lines
# labelled with the program that wrote them, and a missing token answered
# with what to set.
set -u
cli=${DEXEC_CLI:?run me from make check}
worker=${DEXEC_WORKER:?run me from make check}
tmp=$(mktemp -d /tmp/dexec-test-messages.XXXXXX) || exit 99
chmod 700 "$tmp"
wpid=
rpid=
npid=
cleanup() {
    [ -n "$npid" ] && kill -9 "$npid" 2>/dev/null
    [ -n "$wpid" ] && kill -9 "$wpid" 2>/dev/null
    [ -n "$rpid" ] && kill "$rpid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
unset DEXEC_CONFIG
status=0

fail() {
    echo "FAIL: $*"
    [ -f "$tmp/err" ] && { echo "--- stderr:"; cat "$tmp/err"; }
    status=1
}

# 1. a model that cannot be opened: one line about it, from the engine
"$cli" generate -p sneaker -m "$tmp/none.safetensors" -o "$tmp/x.png" >/dev/null 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "bad model: exit status $rc, expected 1"
n=$(grep -c "none.safetensors: cannot open: No such file or directory" "$tmp/err")
[ "$n" -eq 1 ] || fail "bad model: the error is printed $n times, expected once"
grep -F "dexec: mp: rank 0 failed to initialize: $tmp/none.safetensors: cannot open" "$tmp/err" \
    >/dev/null || fail "bad model: no initialize error naming rank 0 once"

# 2. a worker's log lines carry its own name
"$worker" --listen "unix:$tmp/w.sock" --device cpu --log-level info >/dev/null 2>"$tmp/err" &
wpid=$!
for _ in $(seq 1 100); do
    grep -q "listening on" "$tmp/err" && break
    sleep 0.1
done
grep -E "^dexec-worker\[$wpid\] info worker: rank 0 listening on unix:" "$tmp/err" >/dev/null ||
    fail "worker log line not labelled dexec-worker[$wpid]"
kill "$wpid"
wait "$wpid"
wpid=

# 3. a worker that wants a token, an engine without one: say what to set
printf 'secret-token\n' >"$tmp/token"
chmod 600 "$tmp/token"
"$worker" --listen "unix:$tmp/t.sock" --device cpu --token-file "$tmp/token" 2>"$tmp/werr" &
wpid=$!
for _ in $(seq 1 100); do
    [ -S "$tmp/t.sock" ] && break
    sleep 0.1
done
DIFFUSION_WORKER_ACTOR_NAMES="unix:$tmp/t.sock" "$cli" health --backend external >/dev/null \
    2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "no token: exit status $rc, expected 1"
grep -F "refused the handshake: this worker requires a token: give the client the worker's token file (dexec: token_file, or external.token_file, in the configuration)" \
    "$tmp/err" >/dev/null || fail "no token: no hint to set token_file"
n=$(grep -o "rank 0 (" "$tmp/err" | wc -l)
[ "$n" -eq 1 ] || fail "no token: rank 0 named $n times"
printf 'token_file = "%s";\n' "$tmp/token" >"$tmp/dexec.conf"
DIFFUSION_WORKER_ACTOR_NAMES="unix:$tmp/t.sock" "$cli" health --backend external \
    -c "$tmp/dexec.conf" >"$tmp/out" 2>"$tmp/err" || fail "with token_file: health failed"
DEXEC_TOKEN_FILE="$tmp/token" DIFFUSION_WORKER_ACTOR_NAMES="unix:$tmp/t.sock" "$cli" health \
    --backend external >"$tmp/out" 2>"$tmp/err" || fail "with DEXEC_TOKEN_FILE: health failed"
grep -F "secret-token" "$tmp/err" "$tmp/out" "$tmp/werr" >/dev/null && fail "the token was printed"

# 4. a unix socket in a directory that does not exist: the directory named,
# with what to do (contrib/systemd's --listen unix:/run/dexec/w0.sock)
kill "$wpid"
wait "$wpid"
wpid=
"$worker" --listen "unix:$tmp/run/dexec/w0.sock" --device cpu >/dev/null 2>"$tmp/err"
rc=$?
[ "$rc" -ne 0 ] || fail "missing socket directory: exit status 0"
grep -Fx "dexec-worker: unix:$tmp/run/dexec/w0.sock: directory $tmp/run/dexec: No such file or directory; create it first (mkdir -m 700 $tmp/run/dexec)" \
    "$tmp/err" >/dev/null || fail "missing socket directory: message does not name $tmp/run/dexec"

# 5. a node agent removes its private directory (TMPDIR/dexec-node-XXXXXX)
# on every exit: a registry it cannot reach, and SIGTERM
mkdir "$tmp/nt" || exit 99
TMPDIR="$tmp/nt" "$worker" --node --node-name n1 --registry redis://127.0.0.1:1/0 \
    --listen tcp:127.0.0.1:0 >/dev/null 2>"$tmp/err"
[ $? -ne 0 ] || fail "node agent without a registry: exit status 0"
[ -z "$(ls -A "$tmp/nt")" ] || fail "node agent without a registry left: $(ls -A "$tmp/nt")"
if [ -n "${REDIS_SERVER:-}" ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$tmp/redis.log" 2>&1 &
    rpid=$!
    for _ in $(seq 1 50); do
        grep -q 'Ready to accept' "$tmp/redis.log" && break
        sleep 0.1
    done
    TMPDIR="$tmp/nt" "$worker" --node --node-name n1 --registry "redis://127.0.0.1:$port/0" \
        --listen tcp:127.0.0.1:0 --print-address >"$tmp/node.out" 2>"$tmp/err" &
    wpid=$!
    for _ in $(seq 1 100); do
        [ -s "$tmp/node.out" ] && break
        sleep 0.1
    done
    [ -n "$(ls -A "$tmp/nt")" ] || fail "node agent: no private directory in TMPDIR while running"
    # dexec actors pings a token-protected worker with --token-file or
    # DEXEC_TOKEN_FILE; without the token it is unreachable, and says why
    "$worker" --listen "unix:$tmp/named.sock" --name tok_w0 --registry "redis://127.0.0.1:$port/0" \
        --token-file "$tmp/token" --device cpu >/dev/null 2>"$tmp/nerr" &
    npid=$!
    for _ in $(seq 1 100); do
        "$cli" actors --registry "redis://127.0.0.1:$port/0" --kind actor 2>/dev/null | grep -q tok_w0 && break
        sleep 0.1
    done
    "$cli" actors --registry "redis://127.0.0.1:$port/0" --kind actor >"$tmp/out" 2>"$tmp/err"
    [ $? -eq 1 ] || fail "actors without the token: exit status 0"
    grep -F "unreachable: " "$tmp/out" | grep -F "requires a token" >/dev/null ||
        fail "actors without the token: $(cat "$tmp/out")"
    "$cli" actors --registry "redis://127.0.0.1:$port/0" --kind actor --token-file "$tmp/token" \
        >"$tmp/out" 2>"$tmp/err" || fail "actors --token-file: $(cat "$tmp/out")"
    grep -E "^tok_w0 .* ok [0-9.]+ ms$" "$tmp/out" >/dev/null || fail "actors --token-file: $(cat "$tmp/out")"
    DEXEC_TOKEN_FILE="$tmp/token" "$cli" actors --registry "redis://127.0.0.1:$port/0" --kind actor \
        >"$tmp/out" 2>"$tmp/err" || fail "actors with DEXEC_TOKEN_FILE: $(cat "$tmp/out")"
    grep -F "secret-token" "$tmp/out" "$tmp/err" >/dev/null && fail "actors printed the token"
    kill "$npid"
    wait "$npid"
    npid=
    kill "$wpid"
    wait "$wpid"
    wpid=
    kill "$rpid"
    wait "$rpid" 2>/dev/null
    rpid=
    [ -z "$(ls -A "$tmp/nt")" ] || fail "node agent after SIGTERM left: $(ls -A "$tmp/nt")"
else
    echo "SKIP (partly): the node agent's SIGTERM exit needs redis-server (not found)"
fi

exit $status
