"""Convert an original DiT or SiT .pt checkpoint into a pipeline directory
that `dexec generate -m DIR` loads (doc/model.md "Published models").

/usr/bin/python3 contrib/published/convert_pt.py CKPT.pt --out DIR --vae VAE
    [--link-vae] [--labels FILE] [--heads N] [--image-size PX]
    [--sit] [--sampler ddpm|ddim|euler|heun]

- The state dict is checkpoint["ema"] when present (what DiT's and SiT's
  find_model() take), else checkpoint["model"] (a training checkpoint
  without EMA), else the checkpoint itself (the released
  DiT-XL-2-256x256.pt and SiT-XL-2-256x256.pt are bare EMA state dicts).
  A "module." prefix (DistributedDataParallel) is removed.
- The transformer is written unchanged, under DiT's/SiT's own tensor names,
  as DIR/transformer/diffusion_pytorch_model.safetensors with a diffusers
  config.json read off the tensors: depth (blocks.N), width and patch
  (x_embedder.proj.weight [D, C, p, p]), learned sigma
  (final_layer.linear.weight [p*p*out, D]), classes
  (y_embedder.embedding_table.weight [K + 1, D]: the last row is the null
  class), latent size (pos_embed [1, T, D], else --image-size / 8). The
  head count is not in the tensors: --heads, else DiT's and SiT's configs
  by width (B 768: 12, S 384: 6, L 1024: 16, XL 1152: 16).
  F32 and F16 tensors keep their dtype; BF16 ones are written as F32
  (numpy has no bfloat16).
- The VAE (--vae): a diffusers AutoencoderKL directory (config.json and
  diffusion_pytorch_model.safetensors, or .bin, which is converted), e.g.
  a clone of stabilityai/sd-vae-ft-ema, or a pipeline directory holding
  vae/. Copied into DIR/vae, or symlinked with --link-vae.
- id2label (--labels): a JSON file, either {"0": "tench, Tinca tinca", ...}
  or a model_index.json holding "id2label", or a text file of one class
  name per line; else torchvision's ImageNet categories (Debian's
  python3-torchvision) when the model has 1000 classes.
- The sampler: DiT's DDPM (--sampler ddpm|ddim); with --sit, SiT's
  flow-matching path and Euler (--sampler euler|heun).
"""
import argparse
import json
import os
import re
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import published as P  # noqa: E402
import safetensors_io  # noqa: E402

HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}


def die(msg):
    sys.exit("convert_pt.py: " + msg)


def state_dict(ckpt, path):
    if isinstance(ckpt, dict) and "ema" in ckpt:
        sd, where = ckpt["ema"], "its \"ema\" entry"
    elif isinstance(ckpt, dict) and "model" in ckpt and isinstance(ckpt["model"], dict):
        sd, where = ckpt["model"], "its \"model\" entry"
    else:
        sd, where = ckpt, "the checkpoint itself"
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        die("%s: %s is not a state dict of tensors (expected a DiT/SiT checkpoint: "
            "a state dict, or a dict with \"ema\" or \"model\")" % (path, where))
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
    if "x_embedder.proj.weight" not in sd:
        die("%s: %s has no x_embedder.proj.weight: not a DiT/SiT transformer "
            "(a diffusers DiTTransformer2DModel needs no conversion)" % (path, where))
    return sd, where


def transformer_config(sd, path, heads, image_size):
    D, C, p, p2 = sd["x_embedder.proj.weight"].shape
    depth = 1 + max([int(m.group(1)) for m in
                     (re.match(r"blocks\.(\d+)\.", k) for k in sd) if m] + [-1])
    if depth < 1:
        die("%s: no blocks.N tensors" % path)
    need = ("final_layer.linear.weight", "y_embedder.embedding_table.weight")
    for k in need:
        if k not in sd:
            die("%s: tensor %s missing" % (path, k))
    out = sd["final_layer.linear.weight"].shape[0] // (p * p)
    K = sd["y_embedder.embedding_table.weight"].shape[0] - 1
    if "pos_embed" in sd:
        T = sd["pos_embed"].shape[1]
        g = int(round(T ** 0.5))
        if g * g != T:
            die("%s: pos_embed has %d tokens, not a square grid" % (path, T))
        side = g * p
    elif image_size:
        side = image_size // 8
    else:
        die("%s: no pos_embed tensor to read the latent size from: give --image-size" % path)
    if heads is None:
        heads = HEADS_BY_WIDTH.get(D)
        if heads is None:
            die("%s: width %d is none of DiT's/SiT's (384, 768, 1024, 1152): "
                "give the head count with --heads" % (path, D))
    if D % heads:
        die("%s: width %d is not a multiple of --heads %d" % (path, D, heads))
    return P.dit_config(sample_size=side, patch=p, in_ch=C, learn_sigma=(out == 2 * C),
                        depth=depth, heads=heads, head_dim=D // heads, classes=K)


def read_labels(path, K):
    if path is None:
        labels = P.imagenet_labels(K)
        if labels["0"] == "class0":
            die("no --labels and no ImageNet category names for %d classes "
                "(apt-get install python3-torchvision, or give --labels FILE)" % K)
        return labels
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        js = json.loads(text)
        if isinstance(js, dict) and "id2label" in js:
            js = js["id2label"]
        if isinstance(js, list):
            js = {str(i): n for i, n in enumerate(js)}
        labels = {str(k): str(v) for k, v in js.items()}
    except ValueError:
        labels = {str(i): n.strip() for i, n in
                  enumerate(line for line in text.splitlines() if line.strip())}
    if sorted(labels) != sorted(str(i) for i in range(K)):
        die("%s: %d labels, the model has %d classes: ids 0..%d needed"
            % (path, len(labels), K, K - 1))
    return labels


def vae_source(src):
    if os.path.isdir(os.path.join(src, "vae")):
        src = os.path.join(src, "vae")
    if not os.path.isfile(os.path.join(src, "config.json")):
        die("%s: no config.json: --vae takes a diffusers AutoencoderKL directory "
            "(e.g. a clone of stabilityai/sd-vae-ft-ema)" % src)
    return src


def place_vae(src, dst, link):
    cfg = os.path.join(src, "config.json")
    st = os.path.join(src, "diffusion_pytorch_model.safetensors")
    binf = os.path.join(src, "diffusion_pytorch_model.bin")
    if os.path.lexists(dst):
        die("%s exists: remove it first" % dst)
    if os.path.isfile(st):
        if link:
            os.symlink(os.path.abspath(src), dst)
        else:
            os.makedirs(dst)
            shutil.copy(cfg, dst)
            shutil.copy(st, dst)
        return
    if not os.path.isfile(binf):
        die("%s: neither diffusion_pytorch_model.safetensors nor .bin" % src)
    if link:
        die("%s: only a .bin file: --link-vae needs a .safetensors one "
            "(leave out --link-vae to convert it)" % src)
    sd = torch.load(binf, map_location="cpu")
    os.makedirs(dst)
    shutil.copy(cfg, dst)
    safetensors_io.save_file({k: (v.float() if v.dtype == torch.bfloat16 else v).contiguous()
                              for k, v in sd.items() if k.startswith(("decoder.", "post_quant"))},
                             os.path.join(dst, "diffusion_pytorch_model.safetensors"),
                             {"format": "pt"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True, help="the pipeline directory to write (new)")
    ap.add_argument("--vae", required=True, help="a diffusers AutoencoderKL directory")
    ap.add_argument("--link-vae", action="store_true", help="symlink the VAE, do not copy")
    ap.add_argument("--labels", help="id2label: JSON or one class name per line")
    ap.add_argument("--heads", type=int)
    ap.add_argument("--image-size", type=int, help="pixels; only when there is no pos_embed")
    ap.add_argument("--sit", action="store_true", help="a SiT checkpoint (flow matching)")
    ap.add_argument("--sampler", choices=("ddpm", "ddim", "euler", "heun"))
    args = ap.parse_args()
    flow = ("euler", "heun")
    sampler = args.sampler or ("euler" if args.sit else "ddpm")
    if args.sit != (sampler in flow):
        die("--sampler %s is for %s checkpoints" % (sampler, "SiT (--sit)" if sampler in flow
                                                      else "DiT (without --sit)"))
    if os.path.exists(args.out) and os.listdir(args.out):
        die("%s exists and is not empty" % args.out)
    vae = vae_source(args.vae)
    try:
        ckpt = torch.load(args.checkpoint, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - report any unpickling failure
        die("%s: cannot load: %s" % (args.checkpoint, e))
    sd, where = state_dict(ckpt, args.checkpoint)
    tcfg = transformer_config(sd, args.checkpoint, args.heads, args.image_size)
    labels = read_labels(args.labels, tcfg["num_embeds_ada_norm"])
    sd = {k: (v.float() if v.dtype == torch.bfloat16 else v).contiguous() for k, v in sd.items()}
    if args.sit:
        sched = dict(P.SIT_SCHEDULER, sampling_method=sampler)
    else:
        sched = dict(P.DDPM_SCHEDULER, dexec_sampler=sampler)
    os.makedirs(args.out, exist_ok=True)
    place_vae(vae, os.path.join(args.out, "vae"), args.link_vae)
    P.write_pipeline(args.out, tcfg, sd, None, None, labels, sched)
    print("%s: from %s of %s: depth %d, width %d, %d heads, patch %d, latent %d, %s, "
          "%d classes, %d parameters, sampler %s"
          % (args.out, where, args.checkpoint, tcfg["num_layers"],
             tcfg["num_attention_heads"] * tcfg["attention_head_dim"],
             tcfg["num_attention_heads"], tcfg["patch_size"], tcfg["sample_size"],
             "learned sigma" if tcfg["out_channels"] == 2 * tcfg["in_channels"] else "no sigma",
             tcfg["num_embeds_ada_norm"], sum(v.numel() for v in sd.values()), sampler))


if __name__ == "__main__":
    main()
