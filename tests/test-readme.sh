#!/bin/sh
# test-readme.sh - README.md as written: its C program is
# doc/examples/generate.c (same text), which compiles against the headers
# and runs; every command of "Using it" runs (with the build's programs),
# `dexec config check my.conf` on the README's own configuration block, and
# `dexec actors` against a real redis-server when one is installed.
set -u
cli=${DEXEC_CLI:?run me from make check}
src=${DEXEC_TOP_SRCDIR:?run me from make check}
top=${DEXEC_TOP_BUILDDIR:?run me from make check}
tmp=$(mktemp -d /tmp/dexec-test-readme.XXXXXX) || exit 99
rpid=
cleanup() {
    [ -n "$rpid" ] && kill "$rpid" 2>/dev/null && wait "$rpid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
status=0
fail() { echo "FAIL: $*"; [ -f "$tmp/err" ] && sed 's/^/  | /' "$tmp/err"; status=1; }

# 1. the C program: the README's block is the file, and it runs
sed -n '/^```c$/,/^```$/p' "$src/README.md" | sed '1d;$d' >"$tmp/readme.c"
cmp -s "$tmp/readme.c" "$src/doc/examples/generate.c" ||
    fail "README.md's C block differs from doc/examples/generate.c"
${CC:-cc} -Wall -Wextra -Werror -I"$src/include" "$src/doc/examples/generate.c" \
    -L"$top/core/.libs" -Wl,-rpath,"$top/core/.libs" -ldexec -o "$tmp/generate" 2>"$tmp/err" ||
    fail "doc/examples/generate.c does not compile"
if [ -x "$tmp/generate" ]; then
    (cd "$tmp" && ./generate) >"$tmp/out" 2>"$tmp/err" || fail "doc/examples/generate.c failed"
    grep -Eqx '28x28, 1 channels, seed 7' "$tmp/out" || fail "generate printed: $(cat "$tmp/out")"
fi

# 2. the README's configuration block, as my.conf
sed -n '/^## Configuration/,/^## /p' "$src/README.md" | sed -n '/^```$/,/^```$/p' | sed '1d;$d' \
    >"$tmp/my.conf"
[ -s "$tmp/my.conf" ] || fail "no configuration block under ## Configuration"

# 3. every command of "Using it", as written but with the build's dexec
if [ -n "${REDIS_SERVER:-}" ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        >"$tmp/redis.log" 2>&1 &
    rpid=$!
    for _ in $(seq 1 50); do
        grep -q 'Ready to accept' "$tmp/redis.log" && break
        sleep 0.1
    done
fi
sed -n '/^## Using it/,/^`dexec generate`/p' "$src/README.md" | grep '^    dexec ' |
    sed 's/^    //; s/  *#.*$//' >"$tmp/commands"
[ "$(wc -l <"$tmp/commands")" -ge 8 ] || fail "found only $(wc -l <"$tmp/commands") commands"
while read -r line; do
    case $line in
    "dexec actors"*)
        if [ -z "$rpid" ]; then
            echo "SKIP (partly): '$line' needs redis-server (not found)"
            continue
        fi
        # `dexec actors` reads the registry address from DEXEC_REGISTRY
        export DEXEC_REGISTRY="redis://127.0.0.1:$port/0" ;;
    esac
    # shellcheck disable=SC2086
    (cd "$tmp" && eval "\"$cli\" ${line#dexec }") >"$tmp/out" 2>"$tmp/err" </dev/null ||
        fail "README command failed: $line"
    unset DEXEC_REGISTRY
done <"$tmp/commands"
[ -f "$tmp/boot-3.png" ] || fail "dexec generate -b 4 -o boot.png wrote no boot-3.png"
exit $status
