#!/bin/sh
# test-cli-plugins.sh - "dexec plugins": directories listed in search order,
# a name found again later marked as shadowed, refused files shown with the
# loader's reason, a device plugin probed for its status, exit status 0
# only when every file loads.
set -u
cli=${DEXEC_CLI:?run me from make check}
libs=${DEXEC_TEST_BUILDDIR:?run me from make check}/plugins/.libs
tmp=$(mktemp -d /tmp/dexec-test-cli-plugins.XXXXXX) || exit 99
trap 'rm -rf "$tmp"' EXIT
unset DEXEC_CONFIG
status=0

fail() {
    echo "FAIL: $*"
    echo "--- output:"
    cat "$tmp/out"
    status=1
}

expect_line() {
    grep -F -- "$1" "$tmp/out" >/dev/null || fail "no line with: $1"
}

mkdir "$tmp/a" "$tmp/b" || exit 99
cp "$libs/dexec_testgood.so" "$tmp/a/" || exit 99
cp "$libs/dexec_testgood.so" "$libs/dexec_testdisc.so" "$libs/dexec_testdevice.so" "$tmp/b/" ||
    exit 99
echo "this is not a shared object" > "$tmp/a/dexec_notso.so"

DEXEC_PLUGIN_PATH="$tmp/a:$tmp/b:$tmp/none" "$cli" plugins > "$tmp/out" 2>&1
rc=$?
[ "$rc" -eq 1 ] || fail "exit status $rc with a broken plugin, expected 1"
expect_line "$tmp/a:"
expect_line "$tmp/none: (does not exist)"
expect_line "plugin $tmp/a/dexec_notso.so: cannot be loaded: "
expect_line "(shadowed by $tmp/a/dexec_testgood.so: that one is used for 'testgood')"
expect_line "discovery  testdisc"
expect_line "device     testdevice"
expect_line "             status: no usable device: testdevice has no hardware"
# directories appear in search order
order=$(grep -n -e "^$tmp/a:" -e "^$tmp/b:" "$tmp/out" | cut -d: -f2 | tr '\n' ' ')
[ "$order" = "$tmp/a $tmp/b " ] || fail "directories out of order: $order"
# the first copy of testgood is listed as usable, the second as shadowed
first=$(grep -n "executor   testgood" "$tmp/out" | head -1)
case $first in *"$tmp/a/dexec_testgood.so"*) ;; *) fail "first testgood is not $tmp/a's: $first" ;; esac

# plugin_path from -c CONFIG is searched after $DEXEC_PLUGIN_PATH
printf 'plugin_path = [ "%s" ];\n' "$tmp/b" > "$tmp/dexec.conf"
DEXEC_PLUGIN_PATH="$tmp/a" "$cli" plugins -c "$tmp/dexec.conf" > "$tmp/out" 2>&1
order=$(grep -n -e "^$tmp/a:" -e "^$tmp/b:" "$tmp/out" | cut -d: -f2 | tr '\n' ' ')
[ "$order" = "$tmp/a $tmp/b " ] || fail "plugin_path not searched after DEXEC_PLUGIN_PATH: $order"

"$cli" plugins --help > "$tmp/out" 2>&1 || fail "--help failed"
expect_line "Usage: dexec plugins [-c CONFIG]"
"$cli" plugins extra > "$tmp/out" 2>&1
rc=$?
[ "$rc" -eq 2 ] || fail "exit status $rc for a stray argument, expected 2"
expect_line "dexec plugins: unexpected argument 'extra'"

exit $status
