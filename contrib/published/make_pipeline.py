"""Write a diffusers-layout pipeline directory with random weights, shaped
like a published model, for the full-size check and the benchmarks
(doc/model.md "Published models").

/usr/bin/python3 contrib/published/make_pipeline.py --out /tmp/DiT-XL-2-256
    [--image-size 256|512] [--layout diffusers|original] [--sampler ddpm|ddim|euler|heun]
    [--seed N] [--depth N]

DiT-XL/2 (depth 28, hidden 1152, 16 heads, patch 2, learned sigma, 1000
classes) and the sd-vae-ft-ema decoder (block_out_channels 128, 256, 512,
512; 2 layers per block; 32 groups). id2label comes from Debian's
python3-torchvision ImageNet categories (required here: prompts resolve
through them). --layout original keeps DiT's own tensor names (what a
converted .pt checkpoint has); --sampler euler/heun writes SiT's scheduler.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import published as P  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--image-size", type=int, default=256, choices=(256, 512))
    ap.add_argument("--layout", default="diffusers", choices=("diffusers", "original"))
    ap.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddim", "euler", "heun"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth", type=int, default=28,
                    help="transformer blocks (28: DiT-XL/2; fewer for a quicker benchmark)")
    args = ap.parse_args()
    labels = P.imagenet_labels(1000)
    if labels["0"] == "class0":
        sys.exit("make_pipeline.py: needs the ImageNet category names: "
                 "apt-get install python3-torchvision")
    t0 = time.time()
    tcfg = P.dit_config(sample_size=args.image_size // 8, depth=args.depth)
    sd = P.dit_random(tcfg, args.seed)
    if args.layout == "diffusers":
        sd = P.to_diffusers(sd, tcfg)
    vcfg = P.vae_config()
    vae = P.vae_random(vcfg, args.seed + 1)
    if args.sampler in ("euler", "heun"):
        sched = dict(P.SIT_SCHEDULER, sampling_method=args.sampler)
    else:
        sched = dict(P.DDPM_SCHEDULER, dexec_sampler=args.sampler)
    P.write_pipeline(args.out, tcfg, sd, vcfg, vae, labels, sched)
    n = sum(v.numel() for v in sd.values())
    print("%s: transformer %d parameters (%s names), vae decoder %d, %.0f s"
          % (args.out, n, args.layout, sum(v.numel() for v in vae.values()), time.time() - t0))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
