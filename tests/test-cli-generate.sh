#!/bin/sh
# test-cli-generate.sh - "dexec generate" as a user runs it, with real
# workers: file names FILE-i by request index (also when a rank dies),
# PNG text chunks (iTXt for UTF-8), -o - on standard output with status on
# stderr, -q, --scale, and each refusal with its message and exit status 2
# before any work is done.
set -u
cli=${DEXEC_CLI:?run me from make check}
tmp=$(mktemp -d /tmp/dexec-test-cli-generate.XXXXXX) || exit 99
gen_pid=
cleanup() {
    [ -n "$gen_pid" ] && kill -9 "$gen_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
unset DEXEC_CONFIG
status=0
export OPENBLAS_NUM_THREADS=1

fail() {
    echo "FAIL: $*"
    for f in out err; do
        [ -f "$tmp/$f" ] && { echo "--- $f:"; cat "$tmp/$f"; }
    done
    status=1
}

expect_in() { # file text
    grep -F -- "$2" "$tmp/$1" >/dev/null || fail "no line in $1 with: $2"
}

# Waits (up to 60 s) until PID has used 0.3 s of CPU: a worker that is
# computing an image, past its start-up and hello (a fixed sleep killed it
# during hello on a loaded machine).
wait_busy() {
    for _ in $(seq 1 600); do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null) || return
        [ "${t:-0}" -ge $(( $(getconf CLK_TCK) * 3 / 10 )) ] && return
        sleep 0.1
    done
}

# Prints the text chunks of a PNG as KEY=VALUE lines (iTXt marked).
png_text() {
    python3 - "$1" <<'PY'
import struct, sys, zlib
d = open(sys.argv[1], 'rb').read()
assert d[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
i = 8
while i < len(d):
    n, = struct.unpack('>I', d[i:i + 4]); t = d[i + 4:i + 8]; body = d[i + 8:i + 8 + n]
    crc, = struct.unpack('>I', d[i + 8 + n:i + 12 + n])
    assert zlib.crc32(t + body) == crc, 'bad CRC in ' + t.decode()
    if t == b'IHDR':
        w, h = struct.unpack('>II', body[:8]); print('size=%dx%d' % (w, h))
    if t == b'tEXt':
        k, v = body.split(b'\0', 1); print(k.decode('latin-1') + '=' + v.decode('latin-1'))
    if t == b'iTXt':
        k, rest = body.split(b'\0', 1)
        v = rest[2:].split(b'\0', 2)[2]
        print('iTXt:' + k.decode() + '=' + v.decode('utf-8'))
    i += 12 + n
PY
}

# 1. a batch: FILE-i, seeds SEED+i, text chunks, one line per image
"$cli" generate -p sneaker -b 3 -s 5 --steps 2 -o "$tmp/o.png" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 0 ] || fail "batch: exit status $rc"
for i in 0 1 2; do
    [ -f "$tmp/o-$i.png" ] || fail "batch: no o-$i.png"
    expect_in out "$tmp/o-$i.png: 28x28, seed $((5 + i)), 2 steps"
done
[ ! -e "$tmp/o.png" ] || fail "batch: o.png written besides o-i.png"
png_text "$tmp/o-1.png" >"$tmp/text" || fail "o-1.png is not a valid PNG"
for kv in size=28x28 prompt=sneaker seed=6 steps=2 "Software=dexec "; do
    grep -F -- "$kv" "$tmp/text" >/dev/null || fail "o-1.png: no text chunk $kv: $(cat "$tmp/text")"
done
grep -E '^model=.*fashion-dit\.safetensors$' "$tmp/text" >/dev/null ||
    fail "o-1.png: no model chunk: $(cat "$tmp/text")"
grep -Fx "class=sneaker" "$tmp/text" >/dev/null || fail "o-1.png: no class chunk: $(cat "$tmp/text")"
# the resolved class of a synonym and of a negative prompt
"$cli" generate -p "white trainers" -n "ankle boots" -s 5 --steps 2 -o "$tmp/c.png" >"$tmp/out" 2>"$tmp/err" ||
    fail "class: exit status $?: $(cat "$tmp/err")"
png_text "$tmp/c.png" >"$tmp/text" || fail "c.png is not a valid PNG"
for kv in "class=sneaker" "negative_class=ankle boot" "prompt=white trainers"; do
    grep -Fx -- "$kv" "$tmp/text" >/dev/null || fail "c.png: no text chunk $kv: $(cat "$tmp/text")"
done

# 2. -o -: the PNG alone on stdout, the status line on stderr; -q quiet
"$cli" generate -p sneaker -s 3 --steps 2 -o - >"$tmp/stdout.png" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 0 ] || fail "-o -: exit status $rc"
png_text "$tmp/stdout.png" >"$tmp/text" || fail "-o -: standard output is not a PNG"
expect_in err "-: 28x28, seed 3, 2 steps"
"$cli" generate -p sneaker -s 3 --steps 2 -q -o "$tmp/q.png" >"$tmp/out" 2>&1
rc=$?
[ "$rc" -eq 0 ] && [ -f "$tmp/q.png" ] || fail "-q: exit status $rc or no file"
[ ! -s "$tmp/out" ] || fail "-q printed: $(cat "$tmp/out")"
cmp -s "$tmp/q.png" "$tmp/stdout.png" || fail "-o - and a file differ for the same seed"

# 3. UTF-8 text goes into iTXt; --scale enlarges by nearest neighbour
"$cli" generate -p "a sneaker für ☃" -s 1 --steps 2 --scale 4 -o "$tmp/u.png" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 0 ] || fail "UTF-8 prompt: exit status $rc"
png_text "$tmp/u.png" >"$tmp/text" || fail "u.png is not a valid PNG"
grep -Fx "iTXt:prompt=a sneaker für ☃" "$tmp/text" >/dev/null || fail "no iTXt prompt: $(cat "$tmp/text")"
grep -Fx "size=112x112" "$tmp/text" >/dev/null || fail "--scale 4: $(cat "$tmp/text")"

# 4. refusals: exit 2, the message, nothing on standard output (no seed
# line) and no worker started (fast)
refuse() { # message args...
    msg=$1
    shift
    "$cli" generate "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 2 ] || fail "generate $*: exit status $rc, expected 2"
    expect_in err "$msg"
    [ ! -s "$tmp/out" ] || fail "generate $*: refused, yet printed: $(cat "$tmp/out")"
}
refuse "dexec generate: -o $tmp/nodir/x.png: directory $tmp/nodir: No such file or directory" \
    -p sneaker --steps 1000 -b 3 -o "$tmp/nodir/x.png"
refuse "dexec generate: -o $tmp/x.jpg: dexec writes PNG only: name the file $tmp/x.png" \
    -p sneaker -o "$tmp/x.jpg"
refuse "dexec generate: -o - writes one image to standard output, but -b asks for 2" \
    -p sneaker -b 2 -o -
refuse "dexec generate: unexpected argument 'sneaker': a prompt needs -p, as in: dexec generate -p \"sneaker\"" \
    sneaker
refuse "dexec generate: --seed 9223372036854775807 with -b 2: image 1 would need seed 9223372036854775807+1, above the largest seed 9223372036854775807: use a seed <= 9223372036854775806" \
    -p sneaker -s 9223372036854775807 -b 2
refuse "dexec generate: --steps expects an integer in 1..1000, got '1001'" -p sneaker --steps 1001
refuse "dexec generate: --steps expects an integer in 1..1000, got '0'" -p sneaker --steps 0
refuse "dexec generate: --cfg-scale expects a number in 0..100, got '101'" -p sneaker --cfg-scale 101
refuse "dexec generate: --cfg-scale expects a number in 0..100, got 'nan'" -p sneaker --cfg-scale nan
refuse "dexec generate: --cfg-scale expects a number in 0..100, got '-1'" -p sneaker --cfg-scale -1
# the engine options and the configuration are arguments too: refused
# before any worker starts, exit 2, like the command's own options
refuse 'dexec: dtype: "fp16" is not one of: float32, float16, bfloat16' -p sneaker --dtype fp16
refuse 'dexec: num_gpus: must be between 1 and 64, got 0' -p sneaker --num-gpus 0
refuse "dexec: foo: unknown key ('dexec config keys' lists the known ones)" -p sneaker --set foo=1
refuse "dexec: $tmp/none.conf: cannot read the configuration file: No such file or directory" \
    -p sneaker -c "$tmp/none.conf"
refuse 'dexec: mp.spin_us: must be between 0 and 2000, got 2001' -p sneaker --set mp.spin_us=2001
refuse "dexec: --set expects KEY=VALUE, got 'mp.spin_us'" -p sneaker --set mp.spin_us
# the other commands that start an engine, and those that read the
# configuration, by the same rule
for sub in health "rpc get_rank" "logs" "serve" "actors" "plugins" "config keys"; do
    # shellcheck disable=SC2086
    "$cli" $sub -c "$tmp/none.conf" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 2 ] || fail "dexec $sub -c none.conf: exit status $rc, expected 2"
    expect_in err "dexec: $tmp/none.conf: cannot read the configuration file: No such file or directory"
done
# dexec config check's finding about a file it is asked to check is 1
"$cli" config check "$tmp/none.conf" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "dexec config check none.conf: exit status $rc, expected 1"
for sub in health "rpc get_rank" "logs" "serve"; do
    # shellcheck disable=SC2086
    "$cli" $sub --dtype fp16 >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 2 ] || fail "dexec $sub --dtype fp16: exit status $rc, expected 2"
    expect_in err 'dexec: dtype: "fp16" is not one of: float32, float16, bfloat16'
done
"$cli" serve -l nocolon >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 2 ] || fail "dexec serve -l nocolon: exit status $rc, expected 2"
expect_in err "dexec serve: serve.listen 'nocolon' is not HOST:PORT (e.g. 127.0.0.1:8000)"
# options the commands do not know are usage errors, said as such and
# refused before any worker starts (rpc took one before METHOD for the
# method, config keys took it for FILE); an output file that cannot be
# written is refused before the run, not after it printed the replies
usage_refused() { # message args...
    msg=$1
    shift
    "$cli" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 2 ] || fail "dexec $*: exit status $rc, expected 2"
    expect_in err "$msg"
    [ ! -s "$tmp/out" ] || fail "dexec $*: refused, yet printed: $(head -c 200 "$tmp/out")"
}
usage_refused "dexec rpc: unknown option '--bogus' (see --help)" rpc --bogus get_info
usage_refused "dexec rpc: --bin-out $tmp/nodir/b.bin: directory $tmp/nodir: No such file or directory" \
    rpc get_info --bin-out "$tmp/nodir/b.bin"
usage_refused "dexec rpc: --bin-out $tmp is a directory: name a file" rpc get_info --bin-out "$tmp"
usage_refused "dexec logs: unknown option '--bogus' (see --help)" logs --bogus
for sub in generate serve health rpc logs actors plugins config "config check" "config keys"; do
    # shellcheck disable=SC2086
    "$cli" $sub --help >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 0 ] || fail "dexec $sub --help: exit status $rc, expected 0: $(cat "$tmp/err")"
    grep -F "Usage: dexec " "$tmp/out" >/dev/null || fail "dexec $sub --help: no usage on standard output"
done
usage_refused "dexec config keys: unknown option '--bogus' (see dexec config --help; a file whose name starts with '-': ./--bogus)" \
    config keys --bogus
# what only a started engine can tell is a failure, exit 1: a plugin that
# is not there, a sampler the model refuses (nothing on standard output
# either: the random seed is said with the first image made)
"$cli" generate -p sneaker --backend nosuch -o "$tmp/nb.png" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "--backend nosuch: exit status $rc, expected 1"
expect_in err "dexec: plugin 'nosuch' not found: no dexec_nosuch.so in "
"$cli" generate -p sneaker --steps 1 --sampler ddim -o "$tmp/nb.png" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "--sampler ddim: exit status $rc, expected 1"
expect_in err "dexec generate: image 0 (seed "
[ ! -s "$tmp/out" ] || fail "--sampler ddim: refused, yet printed: $(cat "$tmp/out")"
[ ! -e "$tmp/nb.png" ] || fail "--sampler ddim: an image was written"
# --rank past the deployment's ranks, said with the option's name (it said
# "unique_reply_rank 5", the C API's): known once the engine started, exit 1
for sub in rpc logs; do
    [ "$sub" = rpc ] && args="rpc get_rank" || args=logs
    # shellcheck disable=SC2086
    "$cli" $args --rank 2 --num-gpus 2 >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 1 ] || fail "dexec $sub --rank 2 of 2: exit status $rc, expected 1"
    expect_in err "dexec $sub: --rank 2 is out of range: the deployment has 2 rank(s) (0..1)"
    [ ! -s "$tmp/out" ] || fail "dexec $sub --rank 2 of 2 printed: $(cat "$tmp/out")"
done
# a batch that fails whole (here its deadline) names the seeds it was
# given: a random seed is not on standard output, so nowhere else
"$cli" generate -p sneaker -s 40 -b 2 --steps 1000 --timeout 0.05 -o "$tmp/to.png" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "--timeout 0.05: exit status $rc, expected 1"
expect_in err "dexec generate: generate: no reply from rank 0 within 0.05 s"
expect_in err "dexec generate: none of the 2 images written (seeds 40..41)"
"$cli" generate -p sneaker -s -1 --steps 1000 --timeout 0.05 -o "$tmp/to.png" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 1 ] || fail "-s -1 --timeout 0.05: exit status $rc, expected 1"
expect_in err "dexec generate: no image written (seed "
[ ! -s "$tmp/out" ] || fail "-s -1 --timeout 0.05: failed, yet printed: $(cat "$tmp/out")"
[ ! -e "$tmp/to.png" ] && [ ! -e "$tmp/to-0.png" ] || fail "--timeout 0.05: an image was written"
# sizes the model does not serve (its dexec.sizes): refused at once, the sizes named
t0=$(date +%s)
for wh in "512 512" "64 64" "32 28"; do
    set -- $wh
    "$cli" generate -p sneaker -W "$1" -H "$2" -o "$tmp/sz.png" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 1 ] || fail "-W $1 -H $2: exit status $rc, expected 1"
    expect_in err "image size $1x$2 (width x height) is not one this model serves: 28x28 (its metadata dexec.sizes)"
done
[ $(($(date +%s) - t0)) -lt 60 ] || fail "sizes: refusing three sizes took $(($(date +%s) - t0)) s"
[ ! -e "$tmp/sz.png" ] || fail "sizes: an image was written"
"$cli" rpc get_info >"$tmp/info" 2>"$tmp/err" || fail "rpc get_info: exit status $?"
tr -d ' \n' <"$tmp/info" | grep -F '"sizes":["28x28"],"size_multiple":4' >/dev/null ||
    fail "get_info names no sizes: $(grep -A3 sizes "$tmp/info")"
[ ! -e "$tmp/x.jpg" ] && [ ! -e "$tmp/x.png" ] || fail "a refused run wrote a file"

# 5. a rank killed mid-batch, with recovery off: the image it held is
# reported lost by index and seed, the others (taken by the live rank 0 as
# it frees) keep their own names (request i -> o-i.png)
printf 'max_restarts = 0;\nmax_task_retries = 0;\n' >"$tmp/norecover.conf"
DEXEC_CONFIG="$tmp/norecover.conf" \
"$cli" generate -p sneaker -b 4 -s 10 --steps 1000 --num-gpus 2 -o "$tmp/k.png" \
    >"$tmp/out" 2>"$tmp/err" &
gen_pid=$!
victim=
for _ in $(seq 1 100); do
    victim=$(pgrep -P "$gen_pid" -f -- "--rank 1" | head -n 1)
    [ -n "$victim" ] && break
    sleep 0.1
done
if [ -z "$victim" ]; then
    fail "rank 1's worker never appeared"
else
    wait_busy "$victim" # computing its first image
    kill -9 "$victim"
fi
wait "$gen_pid"
rc=$?
gen_pid=
[ "$rc" -eq 1 ] || fail "killed rank: exit status $rc, expected 1"
# the images written after the death still name their model
png_text "$tmp/k-2.png" >"$tmp/text" 2>/dev/null
grep -E '^model=.*fashion-dit\.safetensors$' "$tmp/text" >/dev/null ||
    fail "killed rank: k-2.png has no model chunk: $(cat "$tmp/text")"
[ -f "$tmp/k-0.png" ] && [ -f "$tmp/k-2.png" ] && [ -f "$tmp/k-3.png" ] ||
    fail "killed rank: rank 0's k-0.png, k-2.png, k-3.png missing"
[ ! -e "$tmp/k-1.png" ] && [ ! -e "$tmp/k.png" ] ||
    fail "killed rank: a lost image has a file: $(ls "$tmp")"
expect_in err "dexec generate: image 1 (seed 11) lost: "
expect_in err "dexec generate: 1 of 4 image(s) not written (index 1); the others were written"
expect_in out "$tmp/k-2.png: 28x28, seed 12"
expect_in out "$tmp/k-3.png: 28x28, seed 13"

# 5b. the same with the default recovery: the death is printed, rank 1 is
# restarted, its images are dealt again and every file is written
"$cli" generate -p sneaker -b 4 -s 10 --steps 500 --num-gpus 2 -o "$tmp/r.png" \
    >"$tmp/out" 2>"$tmp/err" &
gen_pid=$!
victim=
for _ in $(seq 1 100); do
    victim=$(pgrep -P "$gen_pid" -f -- "--rank 1" | head -n 1)
    [ -n "$victim" ] && break
    sleep 0.1
done
if [ -z "$victim" ]; then
    fail "rank 1's worker never appeared"
else
    wait_busy "$victim"
    kill -9 "$victim"
fi
wait "$gen_pid"
rc=$?
gen_pid=
[ "$rc" -eq 0 ] || fail "recovered rank: exit status $rc, expected 0: $(cat "$tmp/err")"
for i in 0 1 2 3; do
    [ -f "$tmp/r-$i.png" ] || fail "recovered rank: r-$i.png missing"
done
expect_in err "warn mp: rank 1 (pid $victim): worker died: killed by signal 9 (Killed); restarting it (restart 1 of 3)"

# 6. the model file truncated while the worker has it mapped: the request
# fails naming the file, instead of the worker dying of SIGBUS
cp "${DEXEC_MODEL_PATH%%:*}/fashion-dit.safetensors" "$tmp/m.safetensors" || exit 99
"$cli" generate -p sneaker -s 1 --steps 1000 -m "$tmp/m.safetensors" -o "$tmp/t.png" \
    >"$tmp/out" 2>"$tmp/err" &
gen_pid=$!
for _ in $(seq 1 100); do
    pgrep -P "$gen_pid" >/dev/null && break
    sleep 0.1
done
sleep 1 # the worker has loaded the model and is denoising
truncate -s 4096 "$tmp/m.safetensors"
wait "$gen_pid"
rc=$?
gen_pid=
[ "$rc" -eq 1 ] || fail "truncated model: exit status $rc, expected 1"
expect_in err "$tmp/m.safetensors: the model file changed on disk while in use"
grep -F "signal" "$tmp/err" >/dev/null && fail "truncated model: the worker died of a signal"
[ ! -e "$tmp/t.png" ] || fail "truncated model: an image was written"

# half-precision weights are CUDA's: the CPU refuses them (exit 1, the
# engine's ENOTSUP text), never a silent float32
for dt in float16 bfloat16; do
    "$cli" generate --device cpu --dtype "$dt" -m "$DEXEC_TEST_SRCDIR/golden/published" \
        -p "golden retriever" -s 4 --steps 3 -o "$tmp/h.png" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 1 ] || fail "--dtype $dt on the cpu: exit status $rc, expected 1"
    expect_in err "dexec: dtype = \"$dt\" is not supported on the CPU: the CPU backend computes in float32 (float16 and bfloat16 files are converted to float32 when loaded); use dtype = \"float32\" (the default), or device = \"cuda\""
    [ ! -e "$tmp/h.png" ] || fail "--dtype $dt on the cpu: an image was written"
done
"$cli" generate --dtype float64 -p sneaker -o "$tmp/h.png" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 2 ] || fail "--dtype float64: exit status $rc, expected 2"
expect_in err 'dexec: dtype: "float64" is not one of: float32, float16, bfloat16'
# --set: any other key, checked like the configuration's
"$cli" generate -p sneaker --steps 2 -s 5 --set mp.spin_us=50 --set=timeouts.health=7 -q \
    -o "$tmp/set.png" >"$tmp/out" 2>"$tmp/err" || fail "--set: exit status $?: $(cat "$tmp/err")"
[ -s "$tmp/set.png" ] || fail "--set: no image"
"$cli" generate -p sneaker --steps 2 --set mp.spin_us=2001 -o "$tmp/set.png" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] || fail "--set mp.spin_us=2001: exit status not 2"
expect_in err "dexec: mp.spin_us: must be between 0 and 2000, got 2001"
"$cli" generate -p sneaker --steps 2 --set mp.spin_us -o "$tmp/set.png" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] || fail "--set without =: exit status not 2"
expect_in err "dexec: --set expects KEY=VALUE, got 'mp.spin_us'"
# a worker started by hand with a half dtype on the CPU stops at once
"$DEXEC_WORKER" --listen "unix:$tmp/w.sock" --device cpu --dtype float16 >"$tmp/out" 2>"$tmp/err"
rc=$?
[ "$rc" -eq 2 ] || fail "dexec-worker --device cpu --dtype float16: exit status $rc, expected 2"
expect_in err "dexec-worker: --dtype float16 is not supported with --device cpu: the CPU backend computes in float32 (float16 and bfloat16 files are converted when loaded); start it with --dtype float32 (the default) or --device cuda"

# 7. a published latent model: a diffusers pipeline directory (the reduced
# golden DiT + VAE of contrib/published) gives RGB images of its size
"$cli" generate --device cpu -m "$DEXEC_TEST_SRCDIR/golden/published" -p "golden retriever" \
    -s 4 --steps 3 -o "$tmp/p.png" >"$tmp/out" 2>"$tmp/err" || fail "pipeline directory: exit status $?"
expect_in out "$tmp/p.png: 16x16, seed 4, 3 steps, cfg 4"
python3 - "$tmp/p.png" <<'PY' || fail "pipeline directory: not a 16x16 RGB PNG"
import struct, sys
d = open(sys.argv[1], 'rb').read()
w, h, depth, color = struct.unpack('>IIBB', d[16:26])
sys.exit(0 if (w, h, depth, color) == (16, 16, 8, 2) else 1)
PY

exit $status
