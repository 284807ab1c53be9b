# serve-lib.sh - sourced by the `dexec serve` tests (test-serve.sh,
# test-serve-load.sh, test-serve-page.sh), after they set cli.
#
#   serve_setup NAME       a scratch directory $tmp (/tmp/dexec-NAME.XXXXXX)
#                          and an EXIT trap that kills every pid in $pids
#                          and removes $tmp (after showing the servers'
#                          logs if status is not 0); status=0 and fail MESSAGE
#                          (prints FAIL: MESSAGE, sets status=1)
#   serve_start NAME ARGS  starts `dexec serve -l 127.0.0.1:0 ARGS` in the
#                          background (stdout $tmp/NAME.out, stderr
#                          $tmp/NAME.err), adds it to $pids, sets $pid and
#                          $url from its first line (port 0: a free port);
#                          fails and returns 1 if the server exits or says
#                          nothing within 60 s

# on a failure, the servers' logs are shown before they are removed
serve_cleanup() {
    for p in $pids; do kill -9 "$p" 2>/dev/null; done
    if [ "$status" -ne 0 ]; then
        for f in "$tmp"/*.err; do
            [ -s "$f" ] && { echo "--- last lines of $f:"; tail -n 25 "$f"; }
        done
    fi
    rm -rf "$tmp"
}

serve_setup() {
    tmp=$(mktemp -d "/tmp/dexec-$1.XXXXXX") || exit 99
    pids=
    trap serve_cleanup EXIT
    unset DEXEC_CONFIG
    export OPENBLAS_NUM_THREADS=1
    status=0
}

fail() {
    echo "FAIL: $*"
    status=1
}

serve_start() {
    name=$1
    shift
    "$cli" serve -l 127.0.0.1:0 "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    pid=$!
    pids="$pids $pid"
    url=
    for _ in $(seq 1 600); do
        url=$(sed -n 's|.*listening on \(http://[^ ]*\)/$|\1|p' "$tmp/$name.out")
        [ -n "$url" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    fail "$name: the server did not start"
    cat "$tmp/$name.err"
    return 1
}
