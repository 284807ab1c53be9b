#!/bin/sh
# test-systemd.sh - the systemd units as `make install` writes them: every
# @VAR@ filled in, ExecStart naming this build's bindir/dexec-worker, the
# setup commands in their comments valid shell, and `systemd-analyze
# verify` clean (with ExecStart pointed at the built worker, since the
# installed one need not exist yet). Skips verify, saying why, where
# systemd-analyze is missing.
set -u
top=${DEXEC_TOP_BUILDDIR:?run me from make check}
bindir=${DEXEC_TEST_BINDIR:?run me from make check}
worker=${DEXEC_WORKER:?run me from make check}
tmp=$(mktemp -d /tmp/dexec-test-systemd.XXXXXX) || exit 99
trap 'rm -rf "$tmp"' EXIT
status=0
fail() { echo "FAIL: $*"; status=1; }

for u in dexec-worker@.service dexec-node.service; do
    f="$top/contrib/systemd/$u"
    [ -f "$f" ] || { fail "$f was not built"; continue; }
    grep -n '@[a-z_]*@' "$f" && fail "$u: a placeholder is left"
    grep -q "^ExecStart=$bindir/dexec-worker " "$f" || fail "$u: ExecStart is not $bindir/dexec-worker"
    # the setup commands shown in the comment parse as shell
    sed -n 's/^#   \(useradd\|install\|(umask\|chown\|systemctl\)/\1/p' "$f" >"$tmp/setup.sh"
    [ -s "$tmp/setup.sh" ] || fail "$u: no setup commands in its comments"
    sh -n "$tmp/setup.sh" || fail "$u: its setup commands are not valid shell"
    grep -q 'useradd --system' "$tmp/setup.sh" || fail "$u: does not say how to create the dexec user"
    grep -q '/etc/dexec/token' "$tmp/setup.sh" || fail "$u: does not say how to make the token"
    sed "s|^ExecStart=$bindir/dexec-worker|ExecStart=$worker|" "$f" >"$tmp/$u"
done

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP (partly): systemd-analyze not installed, units not verified"
elif ! systemd-analyze verify --man=no "$tmp/dexec-node.service" "$tmp/dexec-worker@w0.service" \
    >"$tmp/verify" 2>&1; then
    # outside a booted systemd (a container) verify can fail for reasons
    # that are not the unit's: only messages naming our units count
    if grep -E 'dexec-(node|worker@)' "$tmp/verify"; then
        fail "systemd-analyze verify"
    fi
fi
exit $status
