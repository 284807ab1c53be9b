#!/bin/sh
# test-worker-access.sh - who may drive a worker and what it may make the
# worker do (doc/protocol.md, "Who may drive a worker"): administrative
# methods refused without --allow-admin, a file's bytes never quoted back,
# a warning for --insecure on a non-loopback address; and `dexec rpc` and
# `dexec health` against a real worker, with their exit statuses.
set -u
cli=${DEXEC_CLI:?run me from make check}
worker=${DEXEC_WORKER:?run me from make check}
tmp=$(mktemp -d /tmp/dexec-test-access.XXXXXX) || exit 99
chmod 700 "$tmp"
wpid=
cleanup() {
    [ -n "$wpid" ] && kill -9 "$wpid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
unset DEXEC_CONFIG DIFFUSION_WORKER_ACTOR_NAMES
status=0

fail() {
    echo "FAIL: $*"
    [ -f "$tmp/err" ] && { echo "--- stderr:"; cat "$tmp/err"; }
    status=1
}

# Starts a worker on $1 with further options; waits (10 s at most) for the
# address it prints.
start_worker() {
    addr=$1
    shift
    : >"$tmp/addr"
    "$worker" --listen "$addr" --device cpu --print-address "$@" >"$tmp/addr" \
        2>"$tmp/werr" &
    wpid=$!
    for _ in $(seq 1 100); do
        [ -s "$tmp/addr" ] && return 0
        kill -0 "$wpid" 2>/dev/null || break
        sleep 0.1
    done
    fail "worker on $addr did not start"
    cat "$tmp/werr"
    return 1
}

stop_worker() {
    kill "$wpid" 2>/dev/null
    wait "$wpid" 2>/dev/null
    wpid=
}

refusal() {
    echo "dexec rpc: collective_rpc $1: rank 0: $1: refused: this worker serves administrative methods (load_model, debug_sleep) only when started with --allow-admin (owned workers: set allow_admin_methods = true)"
}

# 1. without --allow-admin: load_model and debug_sleep refused, exit 1
start_worker "unix:$tmp/w.sock"
export DIFFUSION_WORKER_ACTOR_NAMES="unix:$tmp/w.sock"
"$cli" rpc --backend external load_model /etc/passwd >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "load_model without --allow-admin: exit status $rc, expected 1"
[ "$(cat "$tmp/err")" = "$(refusal load_model)" ] || fail "load_model: wrong refusal"
"$cli" rpc --backend external debug_sleep 30 >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "debug_sleep without --allow-admin: exit status $rc, expected 1"
[ "$(cat "$tmp/err")" = "$(refusal debug_sleep)" ] || fail "debug_sleep: wrong refusal"

# 2. dexec rpc and dexec health: replies as JSON, exit 0
"$cli" rpc --backend external get_rank >"$tmp/out" 2>"$tmp/err" || fail "rpc get_rank failed"
[ "$(tr -d ' \n' <"$tmp/out")" = "[0]" ] || fail "rpc get_rank printed $(cat "$tmp/out")"
"$cli" rpc --backend external echo 1 '"two"' >"$tmp/out" 2>"$tmp/err" || fail "rpc echo failed"
[ "$(tr -d ' \n' <"$tmp/out")" = '[[1,"two"]]' ] || fail "rpc echo printed $(cat "$tmp/out")"
"$cli" health --backend external >"$tmp/out" 2>"$tmp/err" || fail "health failed"
grep -E "^healthy: 1 rank\(s\) on external " "$tmp/out" >/dev/null ||
    fail "health printed $(cat "$tmp/out")"
# the names decide the ranks: another num_gpus is refused, not ignored
"$cli" health --backend external --num-gpus 3 >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "num_gpus 3 with one name: exit status $rc, expected 1"
[ "$(cat "$tmp/err")" = "dexec: external: num_gpus = 3 (from set) but 1 worker name(s) are given (external.worker_names, from env DIFFUSION_WORKER_ACTOR_NAMES): each name is one rank; set num_gpus = 1, or name 3 workers (plugin ${DEXEC_PLUGIN_PATH%%:*}/dexec_external.so)" ] ||
    fail "num_gpus mismatch: wrong message"
stop_worker
"$cli" health --backend external >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "health of a stopped worker: exit status $rc, expected 1"
grep -F "dexec: external: worker 0 (unix:$tmp/w.sock) at unix:$tmp/w.sock does not answer" \
    "$tmp/err" >/dev/null || fail "health of a stopped worker: wrong message"

# 3. with --allow-admin: a file that is not a model is named, its bytes never quoted
printf 'TOPSECRETBYTES-do-not-echo\n' >"$tmp/private"
start_worker "unix:$tmp/w.sock" --allow-admin
"$cli" rpc --backend external load_model "$tmp/private" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "load_model of a non-model: exit status $rc, expected 1"
grep -F "$tmp/private" "$tmp/err" >/dev/null || fail "load_model error does not name the file"
grep -F "TOPSECRET" "$tmp/err" "$tmp/out" "$tmp/werr" >/dev/null &&
    fail "load_model quoted the file's bytes"
"$cli" rpc --backend external debug_sleep 0.1 >"$tmp/out" 2>"$tmp/err" ||
    fail "debug_sleep with --allow-admin failed"
stop_worker
unset DIFFUSION_WORKER_ACTOR_NAMES

# 4. --insecure on a non-loopback address: a warning at start
start_worker "tcp:0.0.0.0:0" --insecure
grep -E "^dexec-worker\[$wpid\] warn worker: tcp:0.0.0.0:0 is not a loopback address and no token is required \(--insecure\): anyone who can reach it may drive this worker; give --token-file FILE$" \
    "$tmp/werr" >/dev/null || { fail "no --insecure warning"; cat "$tmp/werr"; }
stop_worker
# on loopback, or with a token, no warning
start_worker "tcp:127.0.0.1:0" --insecure
grep -F "warn" "$tmp/werr" >/dev/null && fail "a warning for a loopback listener"
stop_worker

exit $status
