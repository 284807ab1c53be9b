#!/bin/sh
# test-cli-tensors.sh - the tensor methods of a published latent model
# through `dexec rpc` with real workers (mp executor), against the golden
# tensors of the PyTorch twin (tests/golden/published-io.safetensors): one
# transformer forward pass, one guided pass, a 4-step sample of each
# sampler from given noise (DDPM's per-step noise too), one VAE decode.
# Inputs go in as @FILE of raw little-endian float32, outputs come back
# through --bin-out; relative error <= 1e-4. Then the errors a user sees.
set -u
cli=${DEXEC_CLI:?run me from make check}
src=${DEXEC_TEST_SRCDIR:?run me from make check}
tmp=$(mktemp -d /tmp/dexec-test-cli-tensors.XXXXXX) || exit 99
trap 'rm -rf "$tmp"' EXIT
unset DEXEC_CONFIG
export OPENBLAS_NUM_THREADS=1
status=0

fail() {
    echo "FAIL: $*"
    for f in out err; do
        [ -f "$tmp/$f" ] && { echo "--- $f:"; head -c 3000 "$tmp/$f"; echo; }
    done
    status=1
}

# The golden tensors as raw float32 files, NAME.f32.
python3 - "$src/golden/published-io.safetensors" "$tmp" <<'PY' || exit 99
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n, = struct.unpack('<Q', b[:8]); h = json.loads(b[8:8 + n])
for k, v in h.items():
    if k != '__metadata__':
        assert v['dtype'] == 'F32'
        o = v['data_offsets']
        open('%s/%s.f32' % (sys.argv[2], k), 'wb').write(b[8 + n + o[0]:8 + n + o[1]])
PY

# The guided and sampler goldens were made with the original-layout twin:
# the same pipeline directory with those weights (the loader tells the
# layouts apart by the tensor names).
mkdir -p "$tmp/orig/transformer"
cp "$src/golden/published/model_index.json" "$tmp/orig/"
cp -r "$src/golden/published/vae" "$src/golden/published/scheduler" "$tmp/orig/"
cp "$src/golden/published/transformer/config.json" "$tmp/orig/transformer/"
cp "$src/golden/published-orig.safetensors" \
    "$tmp/orig/transformer/diffusion_pytorch_model.safetensors"

# compare GOT WANT: max |got - want| / max |want| <= 1e-4
compare() {
    python3 - "$1" "$2" <<'PY'
import array, sys
g = array.array('f'); g.frombytes(open(sys.argv[1], 'rb').read())
w = array.array('f'); w.frombytes(open(sys.argv[2], 'rb').read())
if len(g) != len(w):
    print('%d floats, want %d' % (len(g), len(w))); sys.exit(1)
e = max(abs(a - b) for a, b in zip(g, w)) / max(abs(b) for b in w)
print('relative error %.3g' % e)
sys.exit(0 if e <= 1e-4 else 1)
PY
}

rpc() { # MODEL-DIR OUT METHOD ARGS...
    model=$1 out=$2
    shift 2
    "$cli" rpc --device cpu -m "$model" -r 0 -o "$out" "$@" >"$tmp/out" 2>"$tmp/err"
}

pub=$src/golden/published

# 1. one forward pass, batch 2 (t = fwd.t, y = fwd.y of the golden file)
t=$(python3 -c "import array,sys; a=array.array('f'); a.frombytes(open(sys.argv[1],'rb').read()); print(','.join(repr(float(x)) for x in a))" "$tmp/fwd.t.f32")
y=$(python3 -c "import array,sys; a=array.array('f'); a.frombytes(open(sys.argv[1],'rb').read()); print(','.join(str(int(x)) for x in a))" "$tmp/fwd.y.f32")
rpc "$pub" "$tmp/v.f32" latent_forward "{\"t\": [$t], \"y\": [$y], \"h\": 8, \"w\": 8}" \
    "@$tmp/fwd.x.f32" || fail "latent_forward: exit status $?"
grep -F '"shape": [' "$tmp/out" >/dev/null || fail "latent_forward: no shape in the reply"
compare "$tmp/v.f32" "$tmp/fwd.diffusers.f32" || fail "latent_forward against fwd.diffusers"

# 2. one guided pass: the first image of fwd.x at t = 500, class 3 against
# class 10, scale 4 on 3 channels
python3 -c "import sys; d=open(sys.argv[1],'rb').read(); open(sys.argv[2],'wb').write(d[:len(d)//2])" \
    "$tmp/fwd.x.f32" "$tmp/x0.f32"
rpc "$tmp/orig" "$tmp/g.f32" latent_guided \
    '{"t": 500, "y": 3, "y_neg": 10, "guidance": 4.0, "guide_channels": 3, "h": 8, "w": 8}' \
    "@$tmp/x0.f32" || fail "latent_guided: exit status $?"
compare "$tmp/g.f32" "$tmp/guided.orig.f32" || fail "latent_guided against guided.orig"

# 3. 4 steps of each sampler from the golden noise
for s in ddpm ddim euler heun; do
    extra=
    [ "$s" = ddpm ] && extra="@$tmp/sample.step_noise.f32"
    rpc "$tmp/orig" "$tmp/s.f32" latent_sample \
        "{\"sampler\": \"$s\", \"steps\": 4, \"y\": 3, \"y_neg\": 10, \"guidance\": 4.0, \"guide_channels\": 3, \"h\": 8, \"w\": 8}" \
        "@$tmp/sample.noise.f32" $extra || fail "latent_sample $s: exit status $?"
    compare "$tmp/s.f32" "$tmp/sample.$s.f32" || fail "latent_sample $s against sample.$s"
done

# 4. one VAE decode
rpc "$pub" "$tmp/img.f32" vae_decode '{"h": 8, "w": 8}' "@$tmp/vae.z.f32" ||
    fail "vae_decode: exit status $?"
grep -F '"shape": [' "$tmp/out" >/dev/null || fail "vae_decode: no shape in the reply"
compare "$tmp/img.f32" "$tmp/vae.out.f32" || fail "vae_decode against vae.out"

# 5. errors: a tensor of the wrong size, a missing option, a missing file,
# per-step noise for a flow sampler, the bundled model
rpc "$pub" "$tmp/x.f32" vae_decode '{"h": 8, "w": 4}' "@$tmp/vae.z.f32"
[ $? -eq 1 ] || fail "wrong size: exit status not 1"
grep -F 'vae_decode: z is 1024 bytes; [1, 4, 8, 4] float32 is 512 bytes' "$tmp/err" >/dev/null ||
    fail "wrong size: message"
rpc "$pub" "$tmp/x.f32" vae_decode '{"w": 8}' "@$tmp/vae.z.f32"
grep -F "vae_decode: the options map needs 'h' (an integer 1..256)" "$tmp/err" >/dev/null ||
    fail "missing option: message"
rpc "$pub" "$tmp/x.f32" vae_decode '{"h": 8, "w": 8}' "@$tmp/no-such-file"
[ $? -eq 2 ] || fail "missing file: exit status not 2"
grep -F "dexec rpc: @$tmp/no-such-file: No such file or directory" "$tmp/err" >/dev/null ||
    fail "missing file: message"
rpc "$tmp/orig" "$tmp/x.f32" latent_sample \
    '{"sampler": "euler", "steps": 4, "y": 3, "h": 8, "w": 8}' \
    "@$tmp/sample.noise.f32" "@$tmp/sample.step_noise.f32"
grep -F "latent_sample: per-step noise is for the ddpm sampler; euler adds none" "$tmp/err" \
    >/dev/null || fail "step noise for euler: message"
"$cli" rpc --device cpu -r 0 vae_decode '{"h": 8, "w": 8}' "@$tmp/vae.z.f32" >"$tmp/out" 2>"$tmp/err"
grep -F "vae_decode: the loaded model is not a published latent model" "$tmp/err" >/dev/null ||
    fail "bundled model: message"

exit $status
