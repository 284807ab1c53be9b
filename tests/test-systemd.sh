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

# dexec serve's unit: the same setup, this build's dexec, the workers'
# hardening, and SIGTERM to the server alone so that it can drain
f="$top/contrib/systemd/dexec-serve.service"
if [ -f "$f" ]; then
    grep -n '@[a-z_]*@' "$f" && fail "dexec-serve.service: a placeholder is left"
    grep -q "^ExecStart=$bindir/dexec serve$" "$f" || fail "dexec-serve.service: ExecStart is not $bindir/dexec serve"
    grep -q '^KillMode=mixed$' "$f" || fail "dexec-serve.service: no KillMode=mixed"
    for h in $(sed -n 's/^\(NoNewPrivileges\|Protect[A-Za-z]*\|Restrict[A-Za-z]*\|CapabilityBoundingSet\)=.*/\1/p' \
        "$top/contrib/systemd/dexec-worker@.service"); do
        grep -q "^$h=" "$f" || fail "dexec-serve.service: lacks the worker unit's $h"
    done
    sed -n 's/^#   \(useradd\|install\|(umask\|chown\|systemctl\)/\1/p' "$f" >"$tmp/setup.sh"
    sh -n "$tmp/setup.sh" || fail "dexec-serve.service: its setup commands are not valid shell"
    sed "s|^ExecStart=$bindir/dexec serve|ExecStart=$top/core/dexec serve|" "$f" >"$tmp/dexec-serve.service"
else
    fail "$f was not built"
fi

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP (partly): systemd-analyze not installed, units not verified"
elif ! systemd-analyze verify --man=no "$tmp/dexec-node.service" "$tmp/dexec-worker@w0.service" "$tmp/dexec-serve.service" \
    >"$tmp/verify" 2>&1; then
    # outside a booted systemd (a container) verify can fail for reasons
    # that are not the unit's: only messages naming our units count
    if grep -E 'dexec-(node|worker@|serve)' "$tmp/verify"; then
        fail "systemd-analyze verify"
    fi
fi
exit $status
