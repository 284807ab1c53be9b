"""PyTorch running the twin (contrib/published/published.py) on the same
pipeline directory and inputs' shapes as bench-published: one transformer
forward pass (batch 2) and one VAE decode, in float32, best of REPS after
one warm-up, with the given thread count (torch.set_num_threads).

/usr/bin/python3 bench/bench-published-torch.py DIR THREADS [REPS [VAE_LATENT_SIDE]]
"""
import json
import os
import sys
import time

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "contrib", "published"))
import published as P  # noqa: E402
import safetensors_io  # noqa: E402


def load(d, sub):
    cfg = json.load(open(os.path.join(d, sub, "config.json")))
    t, _ = safetensors_io.load_file(os.path.join(d, sub, "diffusion_pytorch_model.safetensors"))
    return cfg, {k: torch.from_numpy(v).float() for k, v in t.items()}


def best(fn, reps):
    fn()
    b = 1e30
    for _ in range(reps):
        t = time.perf_counter()
        with torch.no_grad():
            fn()
        b = min(b, time.perf_counter() - t)
    return b


def main():
    d, threads = sys.argv[1], int(sys.argv[2])
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    vside = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    torch.set_num_threads(threads)
    tcfg, tsd = load(d, "transformer")
    layout = "original" if "x_embedder.proj.weight" in tsd else "diffusers"
    S, C = tcfg["sample_size"], tcfg["in_channels"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, C, S, S, generator=g)
    t = torch.tensor([500.0, 500.0])
    y = torch.tensor([207 % tcfg["num_embeds_ada_norm"], tcfg["num_embeds_ada_norm"]])
    tf = best(lambda: P.dit_forward(tsd, tcfg, x, t, y, layout, dtype=torch.float32), reps)
    del tsd
    vcfg, vsd = load(d, "vae")
    z = torch.randn(1, vcfg["latent_channels"], vside, vside, generator=g)
    tv = best(lambda: P.vae_decode(vsd, vcfg, z, dtype=torch.float32), reps)
    print("torch %s, %d threads (%s)" % (torch.__version__, torch.get_num_threads(),
                                         torch.__config__.parallel_info().splitlines()[0]))
    print("torch forward (batch 2): %.3f s" % tf)
    print("torch vae decode (latent %dx%d): %.3f s" % (vside, vside, tv))


if __name__ == "__main__":
    main()
