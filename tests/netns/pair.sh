# pair.sh - sourced by the network-namespace tests (cut.sh, multihost.sh):
# two "hosts", network namespaces joined by a veth pair.
#
#   netns_pair TAG NET     e.g. netns_pair cut 10.78.0
#
# creates namespaces A and B (host A is NET.1/24, host B NET.2/24, both
# with lo up), a private scratch directory TMP, and an EXIT trap that
# kills every pid in PIDS (the caller appends to it), deletes both
# namespaces and TMP. The caller defines skip() (exit 77 with the reason)
# and fail(); without the rights to create namespaces or a veth pair the
# test is skipped. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN).

netns_cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    ip netns del "$A" 2>/dev/null
    ip netns del "$B" 2>/dev/null
    rm -rf "$TMP"
}

netns_pair() {
    A=dexec-$1-a-$$
    B=dexec-$1-b-$$
    ip netns add "$A" 2>/dev/null || skip "ip netns add is not permitted here (needs root and CAP_SYS_ADMIN)"
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/dexec-$1-XXXXXX")
    chmod 700 "$TMP"
    PIDS=""
    trap netns_cleanup EXIT
    ip netns add "$B" || fail "ip netns add $B"
    ip link add "$1a$$" type veth peer name "$1b$$" || skip "cannot create a veth pair"
    ip link set "$1a$$" netns "$A" && ip link set "$1b$$" netns "$B" || fail "moving the veth ends"
    ip -n "$A" addr add "$2.1/24" dev "$1a$$" && ip -n "$B" addr add "$2.2/24" dev "$1b$$" ||
        fail "addresses"
    for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
    ip -n "$A" link set "$1a$$" up && ip -n "$B" link set "$1b$$" up || fail "links up"
}
