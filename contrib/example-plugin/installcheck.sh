#!/bin/sh
# installcheck.sh - builds the example plugin against an installed dexec
# (headers, dexec.pc and libdexec only, as a third party would) and runs a
# generate through it with two real dexec-worker processes, first started
# here, then started by the plugin itself (spawn mode).
#
# Run by "make installcheck" (and so by "make distcheck"); by hand after a
# staged install:
#     make install DESTDIR=/tmp/stage && make installcheck DESTDIR=/tmp/stage
# Environment: DESTDIR (may be empty), libdir, bindir, pkgdatadir (the
# configured, unstaged directories). Argument: this directory.
set -eu

src=${1:?usage: installcheck.sh EXAMPLE_PLUGIN_DIR}
stage=${DESTDIR:-}
: "${libdir:?}" "${bindir:?}" "${pkgdatadir:?}"

work=$(mktemp -d "${TMPDIR:-/tmp}/dexec-example-XXXXXX")
pids=
cleanup() {
    for p in $pids; do
        kill "$p" 2>/dev/null || :
    done
    for p in $pids; do
        wait "$p" 2>/dev/null || :
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

cp "$src/roundrobin.c" "$src/Makefile" "$work/"
chmod u+w "$work"/*
PKG_CONFIG_PATH="$stage$libdir/pkgconfig"
export PKG_CONFIG_PATH
if [ -n "$stage" ]; then
    PKG_CONFIG_SYSROOT_DIR=$stage
    export PKG_CONFIG_SYSROOT_DIR
fi
echo "example-plugin: building against $(pkg-config --modversion dexec) in ${stage}${libdir}"
make -s -C "$work" dexec_roundrobin.so

LD_LIBRARY_PATH="$stage$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
unset DEXEC_CONFIG DEXEC_PLUGIN_PATH DIFFUSION_WORKER_ACTOR_NAMES
mkdir -m 700 "$work/run"
model="$stage$pkgdatadir/models/fashion-dit.safetensors"
for r in 0 1; do
    "$stage$bindir/dexec-worker" --listen "unix:$work/run/w$r.sock" --rank $r \
        --device cpu --model "$model" 2>"$work/w$r.log" &
    pids="$pids $!"
done
for i in $(seq 1 300); do
    [ -S "$work/run/w0.sock" ] && [ -S "$work/run/w1.sock" ] && break
    sleep 0.1
done

# the plugin's own settings, in its section of the configuration file
cat >"$work/rr.conf" <<EOF
distributed_executor_backend = "$work/dexec_roundrobin.so";
roundrobin = {
  workers = [ "unix:$work/run/w0.sock", "unix:$work/run/w1.sock" ];
  connect_timeout = 5.0;
};
EOF
"$stage$bindir/dexec" config keys -c "$work/rr.conf" | grep -q "^roundrobin.workers .*(plugin roundrobin)"
if "$stage$bindir/dexec" config check -c "$work/rr.conf" -s roundrobin.connect_timeout=0 \
    2>"$work/check.err"; then
    echo "example-plugin: roundrobin.connect_timeout=0 was accepted" >&2
    exit 1
fi
grep -q "roundrobin.connect_timeout: must be greater than 0 and at most 3600, got 0" "$work/check.err"
"$stage$bindir/dexec" generate -c "$work/rr.conf" -p "a sneaker" \
    --steps 2 --seed 1 -b 2 -q -o "$work/out.png"
for f in out-0.png out-1.png; do
    if [ ! -s "$work/$f" ]; then
        echo "example-plugin: $f was not written" >&2
        exit 1
    fi
done
# the workers belong to us, not to the plugin: still running after the engine closed
for p in $pids; do
    kill -0 "$p"
done
echo "example-plugin: generate through dexec_roundrobin.so with 2 workers: ok"

# spawn mode: the plugin starts its own workers through <dexec/process.h>
# (the staged dexec-worker, CPU device, one CPU each) and stops them on close
DEXEC_WORKER="$stage$bindir/dexec-worker" ROUNDROBIN_SPAWN=2 ROUNDROBIN_CPUS=1 \
    ROUNDROBIN_WORKERS= "$stage$bindir/dexec" generate --backend "$work/dexec_roundrobin.so" \
    --device cpu -m "$model" -p "a sneaker" --steps 2 --seed 1 -b 2 -q -o "$work/own.png"
for f in own-0.png own-1.png; do
    if [ ! -s "$work/$f" ]; then
        echo "example-plugin: $f was not written (spawn mode)" >&2
        exit 1
    fi
done
echo "example-plugin: generate through dexec_roundrobin.so with 2 workers of its own: ok"
