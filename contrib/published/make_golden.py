"""Golden tensors of the published models for `make check` (tests/test-published.c).

/usr/bin/python3 contrib/published/make_golden.py --outdir tests/golden

Writes tests/golden/published/ (a diffusers pipeline directory: a reduced
DiT with learned sigma, diffusers names, its blocks' embedders all
different; a reduced AutoencoderKL decoder), published-orig.safetensors
(the same transformer under DiT's own names) and published-io.safetensors
(inputs and float64 outputs, stored as F32). Weights are random, rounded to
F32 first; everything is then computed in float64 from the stored values.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import published as P  # noqa: E402
import safetensors_io  # noqa: E402


def f64(sd):
    return {k: v.to(torch.float32).to(torch.float64) for k, v in sd.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--outdir", default="tests/golden")
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tcfg = P.dit_config(sample_size=8, patch=2, in_ch=4, learn_sigma=True, depth=2, heads=2,
                        head_dim=16, classes=10, norm_eps=1e-5)
    vcfg = P.vae_config(block_out=(16, 32), layers=1, groups=4)
    orig = P.dit_random(tcfg, args.seed)
    dif = P.to_diffusers(orig, tcfg, seed=args.seed + 1)
    vae = P.vae_random(vcfg, args.seed + 2)
    labels = {str(i): n for i, n in enumerate(
        ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark",
         "golden retriever", "tiger shark, Galeocerdo cuvieri", "hammerhead, hammerhead shark",
         "electric ray, crampfish", "stingray", "cock", "hen"])}
    out = os.path.join(args.outdir, "published")
    P.write_pipeline(out, tcfg, dif, vcfg, vae, labels, P.DDPM_SCHEDULER)
    safetensors_io.save_file({k: v.contiguous() for k, v in orig.items()},
                             os.path.join(args.outdir, "published-orig.safetensors"),
                             {"format": "pt"})
    orig, dif, vae = f64(orig), f64(dif), f64(vae)

    g = torch.Generator().manual_seed(args.seed + 3)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).float().double()

    io = {}
    x = rnd(2, 4, 8, 8)
    t = torch.tensor([999.0, 0.25], dtype=torch.float64)
    y = torch.tensor([3, 10])
    io["fwd.x"], io["fwd.t"], io["fwd.y"] = x, t, y.double()
    io["fwd.orig"] = P.dit_forward(orig, tcfg, x, t, y, "original")
    io["fwd.diffusers"] = P.dit_forward(dif, tcfg, x, t, y, "diffusers")
    io["guided.orig"] = P.guided(orig, tcfg, "original", x[:1], 500.0, 3, 10, 4.0, 3)
    z = rnd(1, 4, 8, 8)
    io["vae.z"] = z
    io["vae.out"] = P.vae_decode(vae, vcfg, z)
    noise = rnd(1, 4, 8, 8)
    step_noise = rnd(4, 4, 8, 8)
    io["sample.noise"], io["sample.step_noise"] = noise, step_noise
    for s in ("ddpm", "ddim", "euler", "heun"):
        io["sample.%s" % s] = P.sample(orig, tcfg, "original", noise, 3, 10, 4, 4.0, 3, s,
                                       step_noise)
    safetensors_io.save_file({k: v.to(torch.float32).contiguous() for k, v in io.items()},
                             os.path.join(args.outdir, "published-io.safetensors"),
                             {"note": "contrib/published/make_golden.py, seed %d" % args.seed})
    for k, v in io.items():
        print("%-20s %-18s max|.| %.4g" % (k, list(v.shape), v.abs().max().item()))


if __name__ == "__main__":
    main()
