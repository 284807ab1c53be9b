"""Measure the class-conditional quality of generated Fashion-MNIST images.

An independent small CNN classifier (trained on the Fashion-MNIST training
set, cached in /tmp) judges whether each generated image shows the class it
was asked for. Prints a per-class markdown table: classifier accuracy on the
real test images, on the generated images, and their ratio; plus a Frechet
distance between classifier features of generated and real test images.

Images either come from a directory of PNGs named CLASSINDEX_*.png (e.g.
written by `dexec generate`) or are generated here with the PyTorch sampler
from a model file:

  /usr/bin/python3 contrib/train/quality.py --model models/fashion-dit.safetensors \
      --per-class 50 --sheet doc/model-contact-sheet.png
  /usr/bin/python3 contrib/train/quality.py --images DIR --sheet sheet.png
"""
import argparse
import glob
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dit  # noqa: E402
import fmnist  # noqa: E402


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)
        self.drop = nn.Dropout(0.3)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)   # 14x14
        x = F.max_pool2d(F.relu(self.c2(x)), 2)   # 7x7
        x = F.relu(self.c3(x))
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.fc2(self.drop(self.features(x)))


def to_input(u8):
    """uint8 [N,28,28] -> float [N,1,28,28] in [-1,1]."""
    return torch.from_numpy(np.asarray(u8, dtype=np.float32) / 127.5 - 1.0).unsqueeze(1)


def get_classifier(path, epochs, seed=0):
    clf = Classifier()
    if os.path.exists(path):
        clf.load_state_dict(torch.load(path))
        clf.eval()
        return clf
    torch.manual_seed(seed)
    xs, ys = fmnist.load("train")
    X, Y = to_input(xs), torch.from_numpy(ys)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    N = X.shape[0]
    t0 = time.time()
    for ep in range(epochs):
        clf.train()
        perm = torch.randperm(N)
        for i in range(0, N, 128):
            idx = perm[i:i + 128]
            x = X[idx]
            # light augmentation: random horizontal flip + 1-pixel shifts
            flip = torch.rand(x.shape[0]) < 0.5
            x[flip] = x[flip].flip(-1)
            dx, dy = np.random.randint(-1, 2, size=2)
            x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
            loss = F.cross_entropy(clf(x), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print("classifier epoch %d loss %.4f (%.0fs)" % (ep + 1, loss.item(), time.time() - t0),
              file=sys.stderr, flush=True)
    clf.eval()
    torch.save(clf.state_dict(), path)
    return clf


@torch.no_grad()
def classify(clf, u8):
    preds, feats = [], []
    for i in range(0, len(u8), 500):
        x = to_input(u8[i:i + 500])
        f = clf.features(x)
        feats.append(f.numpy().astype(np.float64))
        preds.append(clf.fc2(f).argmax(1).numpy())
    return np.concatenate(preds), np.concatenate(feats)


def frechet(f1, f2):
    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    # tr sqrt(s1 s2) via the symmetric form sqrt(s1)^T s2 sqrt(s1)
    w, V = np.linalg.eigh(s1)
    r1 = (V * np.sqrt(np.clip(w, 0, None))) @ V.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def load_png_dir(d):
    from PIL import Image
    imgs, labels = [], []
    for f in sorted(glob.glob(os.path.join(d, "*.png"))):
        m = re.match(r"(\d+)_", os.path.basename(f))
        if not m:
            continue
        im = Image.open(f).convert("L")
        if im.size != (28, 28):
            im = im.resize((28, 28), Image.BILINEAR)
        imgs.append(np.asarray(im, dtype=np.uint8))
        labels.append(int(m.group(1)))
    if not imgs:
        raise SystemExit("no CLASSINDEX_*.png images in %s" % d)
    return np.stack(imgs), np.array(labels)


@torch.no_grad()
def generate(model, md, per_class, steps, guidance, seed, batch=100):
    shift = float(md["dexec.sigma_shift"])
    K = int(md["dexec.num_classes"])
    S = int(md["dexec.image_size"])
    C = int(md["dexec.in_channels"])
    labels = np.repeat(np.arange(K), per_class)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(labels), C, S, S, generator=g)
    out = []
    for i in range(0, len(labels), batch):
        y = torch.from_numpy(labels[i:i + batch])
        x = dit.sample(model, noise[i:i + batch], y, steps, guidance, shift=shift)
        out.append(dit.to_pixels(x)[:, 0].numpy())
    return np.concatenate(out), labels


def contact_sheet(imgs, labels, path, per_row=8, scale=2, gap=2):
    from PIL import Image
    K = 10
    S = imgs.shape[1]
    cell = S * scale + gap
    sheet = np.full((K * cell + gap, per_row * cell + gap), 255, dtype=np.uint8)
    for k in range(K):
        sel = imgs[labels == k][:per_row]
        for j, im in enumerate(sel):
            big = np.kron(im, np.ones((scale, scale), dtype=np.uint8))
            sheet[gap + k * cell:gap + k * cell + S * scale, gap + j * cell:gap + j * cell + S * scale] = big
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(sheet, mode="L").save(path)


def report(clf, real_pred, real_y, real_feat, imgs, labels, title):
    pred, feat = classify(clf, imgs)
    names = dit.CLASS_NAMES
    lines = ["### " + title, "",
             "| class | name | n | real acc | generated acc | ratio |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for k in range(10):
        mr = real_y == k
        mg = labels == k
        ra = (real_pred[mr] == k).mean()
        ga = (pred[mg] == k).mean() if mg.any() else float("nan")
        lines.append("| %d | %s | %d | %.1f%% | %.1f%% | %.2f |" % (k, names[k], mg.sum(), 100 * ra, 100 * ga, ga / ra))
    ra = (real_pred == real_y).mean()
    ga = (pred == labels).mean()
    lines.append("| all | | %d | %.1f%% | %.1f%% | **%.2f** |" % (len(labels), 100 * ra, 100 * ga, ga / ra))
    # Frechet distance in classifier feature space vs. class-balanced real test images
    rng = np.random.default_rng(0)
    ridx = np.concatenate([rng.choice(np.where(real_y == k)[0], (labels == k).sum(), replace=False)
                           for k in range(10)])
    fd = frechet(feat, real_feat[ridx])
    # reference: two disjoint real subsets of the same size
    ridx2 = np.concatenate([rng.choice(np.setdiff1d(np.where(real_y == k)[0], ridx), (labels == k).sum(), replace=False)
                            for k in range(10)])
    fd_rr = frechet(real_feat[ridx2], real_feat[ridx])
    lines += ["", "Frechet distance in classifier-feature space: generated vs real test = %.2f "
              "(real vs real, same size: %.2f)." % (fd, fd_rr)]
    return "\n".join(lines), ga / ra


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", help="directory of CLASSINDEX_*.png images")
    ap.add_argument("--model", help="model file: generate with the PyTorch sampler")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--steps", type=int, default=0, help="0: the model's dexec.default_steps")
    ap.add_argument("--guidance", default="", help="comma list; empty: dexec.default_guidance")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheet", default="", help="write a contact sheet PNG (10 classes x 8)")
    ap.add_argument("--save-dir", default="", help="also save generated PNGs as CLASS_NNNN.png")
    ap.add_argument("--classifier", default="/tmp/fmnist-classifier.pt")
    ap.add_argument("--classifier-epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.images and not args.model:
        ap.error("give --images DIR or --model FILE")

    clf = get_classifier(args.classifier, args.classifier_epochs)
    tx, ty = fmnist.load("test")
    real_pred, real_feat = classify(clf, tx)
    print("classifier accuracy on the 10000 real test images: %.2f%%" % (100 * (real_pred == ty).mean()))
    print()

    if args.images:
        imgs, labels = load_png_dir(args.images)
        txt, _ = report(clf, real_pred, ty, real_feat, imgs, labels, "images from %s" % args.images)
        print(txt)
        if args.sheet:
            contact_sheet(imgs, labels, args.sheet)
        return

    model, md = dit.load_model(args.model)
    steps = args.steps or int(md["dexec.default_steps"])
    gl = [float(g) for g in args.guidance.split(",")] if args.guidance else [float(md["dexec.default_guidance"])]
    summary = []
    for g in gl:
        t0 = time.time()
        imgs, labels = generate(model, md, args.per_class, steps, g, args.seed)
        dt = time.time() - t0
        txt, ratio = report(clf, real_pred, ty, real_feat, imgs, labels,
                            "%s, PyTorch sampler, %d steps, guidance %g, seed %d (%d images, %.0fs)"
                            % (os.path.basename(args.model), steps, g, args.seed, len(labels), dt))
        print(txt)
        print()
        summary.append((g, ratio))
        if args.sheet and len(gl) == 1:
            contact_sheet(imgs, labels, args.sheet)
        if args.save_dir:
            from PIL import Image
            os.makedirs(args.save_dir, exist_ok=True)
            for i, (im, k) in enumerate(zip(imgs, labels)):
                Image.fromarray(im, mode="L").save(os.path.join(args.save_dir, "%d_g%g_%04d.png" % (k, g, i)))
    if len(summary) > 1:
        for g, r in summary:
            print("guidance %g: generated/real accuracy ratio %.3f" % (g, r))


if __name__ == "__main__":
    main()
