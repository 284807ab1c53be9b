"""Train the small DiT on Fashion-MNIST with flow matching (time-bounded).

/usr/bin/python3 contrib/train/train.py --minutes 100 --out models/fashion-dit.safetensors
"""
import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dit  # noqa: E402
import fmnist  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=100.0, help="wall-clock training budget")
    ap.add_argument("--out", default="models/fashion-dit.safetensors")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0, help="save EMA weights this often")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--t-sampling", choices=["logit-normal", "uniform"], default="logit-normal")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=int, default=4)
    ap.add_argument("--sigma-shift", type=float, default=1.0)
    ap.add_argument("--default-steps", type=int, default=20)
    ap.add_argument("--default-guidance", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", default="", help="safetensors file to start from (EMA weights)")
    ap.add_argument("--max-steps", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    xs, ys = fmnist.load("train")
    X = torch.from_numpy(xs.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)  # [N,1,28,28] in [-1,1]
    Y = torch.from_numpy(ys)
    N = X.shape[0]
    K = 10

    model = dit.DiT(image_size=28, in_channels=1, patch_size=args.patch, hidden_size=args.hidden,
                    depth=args.depth, num_heads=args.heads, mlp_ratio=args.mlp_ratio, num_classes=K)
    prev_steps, prev_wall, history = 0, 0.0, ""
    if args.resume:
        m2, md2 = dit.load_model(args.resume)
        model.load_state_dict(m2.state_dict())
        prev_steps = int(md2.get("train.steps", "0"))
        prev_wall = float(md2.get("train.wall_seconds", "0"))
        history = md2.get("train.history", "") or (
            "steps 0-%d: lr %s batch %s t_sampling %s" % (prev_steps, md2.get("train.lr", "?"),
                                                         md2.get("train.batch_size", "?"),
                                                         md2.get("train.t_sampling", "?")))
    md_prev_epochs = md2.get("train.epochs", "0") if args.resume else "0"
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    nparams = sum(p.numel() for p in model.parameters())
    print("params %d (%.2f MB F32)" % (nparams, nparams * 4 / 1e6), flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            betas=(0.9, 0.999))

    t0 = time.time()
    deadline = t0 + args.minutes * 60.0
    next_ckpt = t0 + args.ckpt_minutes * 60.0
    step = 0
    loss_avg = None
    perm = rng.permutation(N)
    pos = 0
    epoch = 0

    def save(final=False):
        wall = time.time() - t0
        extra = {
            "train.dataset": "fashion-mnist (60000 train images)",
            "train.objective": "flow matching: x_t=(1-s)x0+s*noise, v=noise-x0, t=1000s",
            "train.t_sampling": args.t_sampling,
            "train.p_uncond": args.p_uncond,
            "train.batch_size": args.batch,
            "train.optimizer": "AdamW(betas=0.9,0.999)",
            "train.lr": args.lr,
            "train.warmup_steps": args.warmup,
            "train.weight_decay": args.weight_decay,
            "train.ema_decay": args.ema,
            "train.weights": "EMA",
            "train.seed": args.seed,
            "train.steps": prev_steps + step,
            "train.epochs": "%.2f" % (float(md_prev_epochs) + step * args.batch / N),
            "train.wall_seconds": "%.0f" % (prev_wall + wall),
            "train.history": (history + "; " if history else "") + "steps %d-%d: lr %g batch %d t_sampling %s%s" % (
                prev_steps, prev_steps + step, args.lr, args.batch, args.t_sampling,
                " (resumed from EMA weights, fresh AdamW state)" if args.resume else ""),
            "train.final_loss": "%.5f" % (loss_avg if loss_avg is not None else float("nan")),
            "train.complete": "true" if final else "false",
            "train.resumed_from": args.resume or "none",
        }
        md = dit.metadata_for(ema, sigma_shift=args.sigma_shift, default_steps=args.default_steps,
                              default_guidance=args.default_guidance, extra=extra)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        dit.save_model(ema, args.out, md)
        print("saved %s at step %d (%.0fs, loss %.4f)" % (args.out, step, wall, loss_avg or 0), flush=True)

    model.train()
    while time.time() < deadline and (args.max_steps == 0 or step < args.max_steps):
        if pos + args.batch > N:
            perm = rng.permutation(N)
            pos = 0
            epoch += 1
        idx = torch.from_numpy(perm[pos:pos + args.batch])
        pos += args.batch
        x0 = X[idx]
        y = Y[idx].clone()
        B = x0.shape[0]
        drop = torch.rand(B) < args.p_uncond
        y[drop] = K
        if args.t_sampling == "logit-normal":
            s = torch.sigmoid(torch.randn(B))
        else:
            s = torch.rand(B)
        noise = torch.randn_like(x0)
        sb = s.view(B, 1, 1, 1)
        xt = (1 - sb) * x0 + sb * noise
        target = noise - x0
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        for g in opt.param_groups:
            g["lr"] = lr
        pred = model(xt, s * 1000.0, y)
        loss = torch.mean((pred - target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        d = min(args.ema, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        li = loss.item()
        loss_avg = li if loss_avg is None else 0.99 * loss_avg + 0.01 * li
        if step % 50 == 0:
            el = time.time() - t0
            print("step %d epoch %d loss %.4f avg %.4f lr %.2e %.2fs/step elapsed %.1fmin"
                  % (step, epoch, li, loss_avg, lr, el / step, el / 60), flush=True)
        if time.time() >= next_ckpt:
            save()
            next_ckpt = time.time() + args.ckpt_minutes * 60.0
    save(final=True)


if __name__ == "__main__":
    main()
