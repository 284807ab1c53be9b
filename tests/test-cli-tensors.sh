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

# 6. dexec generate with the caller's noise and sampler (doc/model.md
# "Samplers"): the seed's own noise, saved by latent_noise, makes the
# seed's image again from files; the same files make the same image
# whatever the seed; the sampler is overridden within the model's kind.
gen() { # OUT ARGS...: dexec generate on the CPU, quiet
    out=$1
    shift
    "$cli" generate --device cpu -q -o "$out" "$@" >"$tmp/out" 2>"$tmp/err"
}
# pixels PNG: a digest of the decompressed image data (the text chunks
# name the seed, which differs on purpose)
pixels() {
    python3 - "$1" <<'PY'
import hashlib, struct, sys, zlib
b = open(sys.argv[1], 'rb').read()
i, idat = 8, b''
while i < len(b):
    n, = struct.unpack('>I', b[i:i + 4]); t = b[i + 4:i + 8]
    if t == b'IDAT':
        idat += b[i + 8:i + 8 + n]
    i += 12 + n
print(hashlib.sha256(zlib.decompress(idat)).hexdigest())
PY
}
rpc "$pub" "$tmp/n7.f32" latent_noise '{"seed": 7, "h": 8, "w": 8}' ||
    fail "latent_noise: exit status $?"
rpc "$pub" "$tmp/s7.f32" latent_noise '{"seed": 7, "h": 8, "w": 8, "steps": 4}' ||
    fail "latent_noise steps: exit status $?"
[ "$(wc -c <"$tmp/n7.f32")" -eq 1024 ] && [ "$(wc -c <"$tmp/s7.f32")" -eq 4096 ] ||
    fail "latent_noise: sizes $(wc -c <"$tmp/n7.f32") and $(wc -c <"$tmp/s7.f32"), want 1024 and 4096"
# ddpm (the model's sampler): seed 7 against its noise from files, twice
gen "$tmp/a.png" -m "$pub" -p "" --steps 4 -s 7 || fail "generate seed 7: exit status $?"
gen "$tmp/b.png" -m "$pub" -p "" --steps 4 -s 99 --noise "$tmp/n7.f32" --step-noise "$tmp/s7.f32" ||
    fail "generate --noise (seed 99): exit status $?"
gen "$tmp/c.png" -m "$pub" -p "" --steps 4 -s 123 --noise "$tmp/n7.f32" --step-noise "$tmp/s7.f32" ||
    fail "generate --noise (seed 123): exit status $?"
gen "$tmp/d.png" -m "$pub" -p "" --steps 4 -s 99 || fail "generate seed 99: exit status $?"
pa=$(pixels "$tmp/a.png") pb=$(pixels "$tmp/b.png") pc=$(pixels "$tmp/c.png") pd=$(pixels "$tmp/d.png")
[ "$pa" = "$pb" ] || fail "ddpm: the seed's noise from files does not make the seed's image"
[ "$pb" = "$pc" ] || fail "ddpm: the same noise files made two different images"
[ "$pa" != "$pd" ] || fail "ddpm: seeds 7 and 99 made the same image (the control)"
# ddim, by override: no per-step noise
gen "$tmp/e.png" -m "$pub" -p "" --steps 4 -s 7 --sampler ddim || fail "ddim seed 7: exit status $?"
gen "$tmp/f.png" -m "$pub" -p "" --steps 4 -s 5 --sampler ddim --noise "$tmp/n7.f32" ||
    fail "ddim --noise: exit status $?"
[ "$(pixels "$tmp/e.png")" = "$(pixels "$tmp/f.png")" ] ||
    fail "ddim: the seed's noise from a file does not make the seed's image"
[ "$(pixels "$tmp/e.png")" != "$pa" ] || fail "ddim and ddpm made the same image"
# refusals: the wrong size (naming the file), a sampler of the other kind,
# an unknown one, per-step noise for ddim
head -c 100 "$tmp/n7.f32" >"$tmp/short.f32"
gen "$tmp/x.png" -m "$pub" -p "" --steps 4 --noise "$tmp/short.f32"
[ $? -eq 1 ] || fail "short noise: exit status not 1"
grep -xF "dexec generate: --noise $tmp/short.f32: 100 bytes given; this request needs 1024 bytes: float32 [1, 4, 8, 8] (outputs, channels, height / 2, width / 2), little-endian" \
    "$tmp/err" >/dev/null || fail "short noise: message"
[ ! -e "$tmp/x.png" ] || fail "short noise: an image was written"
gen "$tmp/x.png" -m "$pub" -p "" --steps 4 --sampler euler
[ $? -eq 1 ] || fail "euler on a DiT: exit status not 1"
grep -F "sampler 'euler' does not fit this model: it is a DiT-style epsilon-prediction model, whose samplers are ddpm and ddim" \
    "$tmp/err" >/dev/null || fail "euler on a DiT: message"
gen "$tmp/x.png" -m "$pub" -p "" --steps 4 --sampler bogus
grep -F "sampler 'bogus' is not one of ddpm, ddim, euler, heun; this model is a DiT-style epsilon-prediction model, whose samplers are ddpm and ddim" \
    "$tmp/err" >/dev/null || fail "unknown sampler: message"
gen "$tmp/x.png" -m "$pub" -p "" --steps 4 --sampler ddim --noise "$tmp/n7.f32" --step-noise "$tmp/s7.f32"
grep -xF "dexec generate: --step-noise $tmp/s7.f32: only the ddpm sampler adds noise between steps; ddim adds none" \
    "$tmp/err" >/dev/null || fail "step noise for ddim: message"
# a SiT (flow) model: the same weights under SiT's scheduler
cp -r "$pub" "$tmp/sit"
echo '{"_class_name": "SiTTransport", "sampling_method": "euler"}' \
    >"$tmp/sit/scheduler/scheduler_config.json"
gen "$tmp/x.png" -m "$tmp/sit" -p "" --steps 2 --sampler ddpm
grep -F "sampler 'ddpm' does not fit this model: it is a SiT-style flow-matching model, whose samplers are euler and heun" \
    "$tmp/err" >/dev/null || fail "ddpm on a SiT: message"
gen "$tmp/h.png" -m "$tmp/sit" -p "" --steps 2 --sampler heun -s 3 || fail "heun on a SiT: exit status $?"
gen "$tmp/g.png" -m "$tmp/sit" -p "" --steps 2 -s 3 || fail "euler on a SiT: exit status $?"
[ "$(pixels "$tmp/h.png")" != "$(pixels "$tmp/g.png")" ] || fail "SiT: heun made euler's image"
# the bundled model: its noise is the image's, [N, 1, 28, 28]; euler only
python3 -c "import struct,sys; sys.stdout.buffer.write(struct.pack('<784f', *[((i * 37) % 101) / 50.0 - 1 for i in range(784)]))" >"$tmp/b28.f32"
gen "$tmp/m1.png" -p sneaker --steps 2 -s 1 --noise "$tmp/b28.f32" || fail "bundled --noise: exit status $?"
gen "$tmp/m2.png" -p sneaker --steps 2 -s 2 --noise "$tmp/b28.f32" || fail "bundled --noise 2: exit status $?"
[ "$(pixels "$tmp/m1.png")" = "$(pixels "$tmp/m2.png")" ] ||
    fail "bundled: the same noise file made two different images"
gen "$tmp/x.png" -p sneaker --steps 2 --sampler ddim
grep -F "sampler 'ddim' does not fit this model: it is dexec's own flow-matching model, whose sampler is euler" \
    "$tmp/err" >/dev/null || fail "ddim on the bundled model: message"
gen "$tmp/x.png" -p sneaker --steps 2 --sampler bogus
grep -F "sampler 'bogus' is not one of ddpm, ddim, euler, heun; this model is dexec's own flow-matching model, whose sampler is euler" \
    "$tmp/err" >/dev/null || fail "an unknown sampler on the bundled model: message"

exit $status
