#!/bin/sh
# test-convert-pt.sh - contrib/published/convert_pt.py turns an original
# DiT/SiT .pt checkpoint into a pipeline directory dexec loads: a training
# checkpoint made by the twin ({"model", "ema", "opt", "args"}, the reduced
# golden transformer as "ema" and different weights as "model"), converted
# with the golden VAE and id2label; its forward pass through `dexec rpc`
# matches the twin's golden tensor (so "ema" was taken and the original
# names kept), `dexec generate -m DIR` makes an RGB PNG; then a bare state
# dict as SiT with labels from a text file, and the errors a user sees.
# Needs Debian's python3-torch for /usr/bin/python3 (CI does not install
# it): skipped otherwise.
set -u
cli=${DEXEC_CLI:?run me from make check}
src=${DEXEC_TEST_SRCDIR:?run me from make check}
py=/usr/bin/python3
if ! [ -x "$py" ] || ! "$py" -c "import torch, numpy" >/dev/null 2>&1; then
    echo "SKIP: $py cannot import torch and numpy (apt-get install python3-torch)"
    exit 77
fi
tmp=$(mktemp -d /tmp/dexec-test-convert-pt.XXXXXX) || exit 99
trap 'rm -rf "$tmp"' EXIT
unset DEXEC_CONFIG
export OPENBLAS_NUM_THREADS=1
conv=$src/../contrib/published/convert_pt.py
pub=$src/golden/published
status=0

fail() {
    echo "FAIL: $*"
    for f in out err; do
        [ -f "$tmp/$f" ] && { echo "--- $f:"; head -c 3000 "$tmp/$f"; echo; }
    done
    status=1
}

expect_in() { # FILE TEXT
    grep -F -- "$2" "$tmp/$1" >/dev/null || fail "'$2' not in $1"
}

# The checkpoints: train.pt as DiT's train.py saves it, bare.pt as the
# released DiT-XL-2-256x256.pt / SiT-XL-2-256x256.pt are (the EMA dict).
"$py" - "$src" "$tmp" <<'PY' || exit 99
import os, sys
import torch
sys.path.insert(0, os.path.join(sys.argv[1], "..", "contrib", "published"))
import published
import safetensors_io
src, tmp = sys.argv[1], sys.argv[2]
t, _ = safetensors_io.load_file(os.path.join(src, "golden", "published-orig.safetensors"))
ema = {k: torch.from_numpy(v.copy()) for k, v in t.items()}
bare = {"module." + k: v for k, v in ema.items()}
# DiT's fixed position embedding, a parameter of the published checkpoints
# (4 x 4 tokens of width 32): the converter reads the latent size off it
ema["pos_embed"] = torch.from_numpy(published.pos_embed(32, 4, 4)).float()[None]
model = {k: v + 1.0 for k, v in ema.items()}
torch.save({"model": model, "ema": ema, "opt": {}, "args": None}, os.path.join(tmp, "train.pt"))
torch.save(bare, os.path.join(tmp, "bare.pt"))
open(os.path.join(tmp, "labels.txt"), "w").write(
    "".join("class number %d\n" % i for i in range(10)))
# the golden tensors used below, as raw float32
io, _ = safetensors_io.load_file(os.path.join(src, "golden", "published-io.safetensors"))
for k in ("fwd.x", "fwd.orig"):
    io[k].astype("<f4").tofile(os.path.join(tmp, k + ".f32"))
print(",".join(repr(float(x)) for x in io["fwd.t"]), file=open(os.path.join(tmp, "t"), "w"))
print(",".join(str(int(x)) for x in io["fwd.y"]), file=open(os.path.join(tmp, "y"), "w"))
PY

# 1. a training checkpoint: "ema" taken, VAE copied, id2label from a
# model_index.json; the width (32) is none of DiT's, so --heads
"$py" "$conv" "$tmp/train.pt" --out "$tmp/dit" --vae "$pub/vae" --labels "$pub/model_index.json" \
    --heads 2 >"$tmp/out" 2>"$tmp/err" || fail "convert train.pt: exit status $?"
expect_in out "$tmp/dit: from its \"ema\" entry of $tmp/train.pt: depth 2, width 32, 2 heads, patch 2, latent 8, learned sigma, 10 classes"
expect_in out "sampler ddpm"
[ -f "$tmp/dit/vae/diffusion_pytorch_model.safetensors" ] && [ ! -L "$tmp/dit/vae" ] ||
    fail "convert train.pt: the VAE was not copied"
"$cli" rpc --device cpu -m "$tmp/dit" -r 0 -o "$tmp/v.f32" latent_forward \
    "{\"t\": [$(cat "$tmp/t")], \"y\": [$(cat "$tmp/y")], \"h\": 8, \"w\": 8}" \
    "@$tmp/fwd.x.f32" >"$tmp/out" 2>"$tmp/err" || fail "latent_forward: exit status $?"
"$py" - "$tmp/v.f32" "$tmp/fwd.orig.f32" <<'PY' || fail "latent_forward of the converted model against fwd.orig"
import sys
import numpy as np
g = np.fromfile(sys.argv[1], "<f4"); w = np.fromfile(sys.argv[2], "<f4")
if g.shape != w.shape:
    print("%d floats, want %d" % (g.size, w.size)); sys.exit(1)
e = np.abs(g - w).max() / np.abs(w).max()
print("relative error %.3g" % e)
sys.exit(0 if e <= 1e-4 else 1)
PY
"$cli" generate --device cpu -m "$tmp/dit" -p "golden retriever" -s 2 --steps 2 \
    -o "$tmp/p.png" >"$tmp/out" 2>"$tmp/err" || fail "generate -m converted: exit status $?"
expect_in out "$tmp/p.png: 16x16, seed 2, 2 steps"
"$py" - "$tmp/p.png" <<'PY' || fail "generate -m converted: not a 16x16 RGB PNG"
import struct, sys
d = open(sys.argv[1], 'rb').read()
w, h, depth, color = struct.unpack('>IIBB', d[16:26])
sys.exit(0 if (w, h, depth, color) == (16, 16, 8, 2) else 1)
PY

# 2. a bare state dict with DDP's "module." prefix and no pos_embed (so
# --image-size), as SiT (Heun), the VAE symlinked, labels one per line
"$py" "$conv" "$tmp/bare.pt" --out "$tmp/sit" --vae "$pub" --link-vae --labels "$tmp/labels.txt" \
    --heads 2 --image-size 64 --sit --sampler heun >"$tmp/out" 2>"$tmp/err" || fail "convert bare.pt: exit status $?"
expect_in out "from the checkpoint itself of $tmp/bare.pt"
expect_in out "sampler heun"
[ -L "$tmp/sit/vae" ] || fail "--link-vae: vae/ is not a symlink"
grep -F '"sampling_method": "heun"' "$tmp/sit/scheduler/scheduler_config.json" >/dev/null ||
    fail "SiT scheduler config not written"
"$cli" generate --device cpu -m "$tmp/sit" -p "class number 7" -s 1 --steps 2 \
    -o "$tmp/s.png" >"$tmp/out" 2>"$tmp/err" || fail "generate -m converted SiT: exit status $?"
expect_in out "$tmp/s.png: 16x16, seed 1, 2 steps"

# 3. errors
"$py" "$conv" "$tmp/bare.pt" --out "$tmp/e0" --vae "$pub/vae" --labels "$tmp/labels.txt" \
    --heads 2 >"$tmp/out" 2>"$tmp/err" && fail "no pos_embed, no --image-size: exit status 0"
expect_in err "convert_pt.py: $tmp/bare.pt: no pos_embed tensor to read the latent size from: give --image-size"
"$py" "$conv" "$tmp/train.pt" --out "$tmp/e1" --vae "$pub/vae" --labels "$tmp/labels.txt" \
    >"$tmp/out" 2>"$tmp/err" && fail "no --heads for width 32: exit status 0"
expect_in err "convert_pt.py: $tmp/train.pt: width 32 is none of DiT's/SiT's (384, 768, 1024, 1152): give the head count with --heads"
"$py" "$conv" "$tmp/train.pt" --out "$tmp/e2" --vae "$tmp" --heads 2 --labels "$tmp/labels.txt" \
    >"$tmp/out" 2>"$tmp/err" && fail "--vae without config.json: exit status 0"
expect_in err "convert_pt.py: $tmp: no config.json: --vae takes a diffusers AutoencoderKL directory"
printf 'one\ntwo\n' >"$tmp/short.txt"
"$py" "$conv" "$tmp/train.pt" --out "$tmp/e3" --vae "$pub/vae" --heads 2 --labels "$tmp/short.txt" \
    >"$tmp/out" 2>"$tmp/err" && fail "2 labels for 10 classes: exit status 0"
expect_in err "convert_pt.py: $tmp/short.txt: 2 labels, the model has 10 classes: ids 0..9 needed"
"$py" "$conv" "$tmp/train.pt" --out "$tmp/e4" --vae "$pub/vae" --heads 2 --sampler euler \
    >"$tmp/out" 2>"$tmp/err" && fail "euler without --sit: exit status 0"
expect_in err "convert_pt.py: --sampler euler is for SiT (--sit) checkpoints"
"$py" "$conv" "$pub/vae/config.json" --out "$tmp/e5" --vae "$pub/vae" --heads 2 \
    >"$tmp/out" 2>"$tmp/err" && fail "not a checkpoint: exit status 0"
expect_in err "convert_pt.py: $pub/vae/config.json: cannot load:"

exit $status
