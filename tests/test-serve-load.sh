#!/bin/sh
# test-serve-load.sh - a bounded load test of `dexec serve` on loopback: 16
# concurrent keep-alive clients send 1,000 warm-up then 3,000 measured
# one-step requests to 2 ranks (4,000 in all: about 30 s on an idle 2-core
# machine); every request must succeed, and the server's resident memory
# and open descriptors must be flat across the measured 3,000.
set -u
cli=${DEXEC_CLI:?run me from make check}
src=${DEXEC_TEST_SRCDIR:?run me from make check}
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }
. "$src/serve-lib.sh"
serve_setup test-serve-load
serve_start load --num-gpus 2 --set log_level=warn || exit 1

rss() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status"; }
fds() { ls "/proc/$pid/fd" | wc -l; }

python3 "$src/serve_client.py" "$url" 16 1000 1 >"$tmp/warm" || fail "warm-up client failed"
rss0=$(rss) fd0=$(fds)
python3 "$src/serve_client.py" "$url" 16 3000 1 >"$tmp/run" || fail "client failed"
rss1=$(rss) fd1=$(fds)
echo "warm-up: $(cat "$tmp/warm")"
echo "measured: $(cat "$tmp/run")"
echo "server RSS ${rss0} kB -> ${rss1} kB, descriptors $fd0 -> $fd1"
grep -F '"statuses": {"200": 1000}' "$tmp/warm" >/dev/null || fail "warm-up: not every request succeeded"
grep -F '"statuses": {"200": 3000}' "$tmp/run" >/dev/null || fail "not every request succeeded"
grep -F '"images": 3000' "$tmp/run" >/dev/null || fail "not every image came back"
[ -n "$rss0" ] && [ -n "$rss1" ] || fail "could not read the server's VmRSS"
[ $((${rss1:-0} - ${rss0:-0})) -le 4096 ] || fail "RSS grew by $((rss1 - rss0)) kB over 3000 requests"
[ "$fd1" -le "$fd0" ] || fail "descriptors grew from $fd0 to $fd1"
kill -TERM "$pid"
wait "$pid" || fail "exit status $? after SIGTERM"
pid= pids=
exit $status
