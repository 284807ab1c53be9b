"""Write the golden model and golden input/output tensors used by the C tests.

/usr/bin/python3 contrib/train/make_golden.py --outdir tests/golden

The model is small and randomly initialised with NON-zero adaLN / final-layer
weights (DiT's adaLN-Zero init would hide most bugs), 3 channels (so that the
(c,py,px) patchify and (py,px,c) unpatchify orders are exercised) and a sigma
shift != 1.  Every input is rounded to F32 first, then everything is computed
in float64 from exactly the F32 values that are stored, and the outputs are
stored as F32.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dit  # noqa: E402
import safetensors_io  # noqa: E402


def f32(t):
    return t.to(torch.float32).to(torch.float64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--outdir", default="tests/golden")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=int, default=4)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--shift", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    model = dit.DiT(image_size=args.image_size, in_channels=args.channels, patch_size=args.patch,
                    hidden_size=args.hidden, depth=args.depth, num_heads=args.heads,
                    mlp_ratio=args.mlp_ratio, num_classes=args.classes)
    # Random, non-zero everything; scaled ~1/sqrt(fan_in) so activations stay O(1).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.1)
            else:
                fan_in = p[0].numel()
                p.normal_(0.0, 1.0 / np.sqrt(fan_in))
        model.y_embedder.embedding_table.weight.normal_(0.0, 1.0)
    model = model.double().eval()
    # Round the weights to F32 (what is stored), keep computing in float64.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(f32(p))

    os.makedirs(args.outdir, exist_ok=True)
    md = dit.metadata_for(model, sigma_shift=args.shift, default_steps=args.steps,
                          default_guidance=args.guidance,
                          extra={"train.note": "golden test model: random weights, not trained",
                                 "train.seed": args.seed})
    dit.save_model(model, os.path.join(args.outdir, "golden-model.safetensors"), md)

    C, S, K = args.channels, args.image_size, args.classes
    g = torch.Generator().manual_seed(args.seed + 1)
    out = {}
    with torch.no_grad():
        # ---- single forward pass ----
        x = f32(torch.randn(2, C, S, S, generator=g, dtype=torch.float64))
        t = f32(torch.tensor([700.0, 123.4567], dtype=torch.float64))
        y = torch.tensor([3, K], dtype=torch.long)  # a class and the null class
        v = model(x, t, y)
        out["fwd.x"] = x
        out["fwd.t"] = t
        out["fwd.y"] = y.to(torch.float64)
        out["fwd.out"] = v
        # intermediates, to help debugging an implementation
        h = S // args.patch
        out["dbg.pos_embed"] = model.pos_embed(h, h, torch.float64, x.device)           # [T, D]
        out["dbg.t_freq"] = dit.timestep_embedding(t, 256)                              # [2, 256]
        c = model.t_embedder(t) + model.y_embedder(y)
        out["dbg.c"] = c                                                                # [2, D]
        tok = model.x_embedder(x) + out["dbg.pos_embed"][None]
        out["dbg.tokens"] = tok                                                         # [2, T, D]
        for i, b in enumerate(model.blocks):
            tok = b(tok, c)
            out["dbg.block%d" % i] = tok                                                # [2, T, D]
        out["dbg.final"] = model.final_layer(tok, c)                                    # [2, T, p*p*C]

        # ---- full sampler ----
        noise = f32(torch.randn(1, C, S, S, generator=g, dtype=torch.float64))
        ys = torch.tensor([7], dtype=torch.long)
        yneg = torch.tensor([2], dtype=torch.long)  # a negative-prompt class (not the null)
        xs = dit.sample(model, noise, ys, args.steps, args.guidance, shift=args.shift, y_neg=yneg)
        out["sample.noise"] = noise
        out["sample.y"] = ys.to(torch.float64)
        out["sample.y_neg"] = yneg.to(torch.float64)
        out["sample.guidance"] = torch.tensor([args.guidance], dtype=torch.float64)
        out["sample.steps"] = torch.tensor([float(args.steps)], dtype=torch.float64)
        out["sample.shift"] = torch.tensor([args.shift], dtype=torch.float64)
        out["sample.sigmas"] = torch.tensor(dit.sigmas(args.steps, args.shift), dtype=torch.float64)
        out["sample.out"] = xs
        out["sample.pixels"] = dit.to_pixels(xs).to(torch.float64)
        # guidance == 1 path (conditional only)
        xs1 = dit.sample(model, noise, ys, args.steps, 1.0, shift=args.shift)
        out["sample_g1.out"] = xs1

    tensors = {k: v.to(torch.float32) for k, v in out.items()}
    safetensors_io.save_file(tensors, os.path.join(args.outdir, "golden-io.safetensors"),
                             {"golden.model": "golden-model.safetensors",
                              "golden.note": "computed in float64 from the stored F32 inputs/weights",
                              "golden.fwd.y": "class indices stored as F32; %d = null" % K,
                              "golden.sample.y_neg": "negative class (uncond branch uses it)",
                              "golden.sample_g1": "same noise/y/steps/shift with guidance 1 "
                                                  "(only the conditional branch)"})
    for k, v in tensors.items():
        print("%-16s %-16s absmax %.4g" % (k, list(v.shape), v.abs().max().item()))


if __name__ == "__main__":
    main()
