"""Independent, loop-based numpy implementation of doc/model-format.md's
denoiser and sampler, checked against the golden files written by
make_golden.py (which uses the PyTorch module in dit.py).

/usr/bin/python3 contrib/train/check_reference.py tests/golden
"""
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402


def ln(x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6)


def lin(W, b, x):
    return x @ W.T + b


def silu(x):
    return x / (1 + np.exp(-x))


def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def E(d, q):
    w = np.array([1.0 / 10000 ** (k / (d / 2)) for k in range(d // 2)])
    return np.concatenate([np.sin(q * w), np.cos(q * w)])


def forward(P, md, x, t, y):
    C = int(md["dexec.in_channels"]); p = int(md["dexec.patch_size"]); D = int(md["dexec.hidden_size"])
    depth = int(md["dexec.depth"]); heads = int(md["dexec.num_heads"])
    H, W = x.shape[1], x.shape[2]
    h, w = H // p, W // p
    T = h * w
    Wp = P["x_embedder.proj.weight"].reshape(D, C * p * p)
    tok = np.zeros((T, C * p * p))
    for gy in range(h):
        for gx in range(w):
            n = gy * w + gx
            for c in range(C):
                for py in range(p):
                    for px in range(p):
                        tok[n, (c * p + py) * p + px] = x[c, gy * p + py, gx * p + px]
    X = lin(Wp, P["x_embedder.proj.bias"], tok)
    for gy in range(h):
        for gx in range(w):
            X[gy * w + gx] += np.concatenate([E(D // 2, gy), E(D // 2, gx)])
    f = np.array([math.exp(-math.log(10000) * k / 128) for k in range(128)])
    e = np.concatenate([np.cos(t * f), np.sin(t * f)])
    temb = lin(P["t_embedder.mlp.2.weight"], P["t_embedder.mlp.2.bias"],
               silu(lin(P["t_embedder.mlp.0.weight"], P["t_embedder.mlp.0.bias"], e)))
    c = temb + P["y_embedder.embedding_table.weight"][y]
    hd = D // heads
    for i in range(depth):
        b = "blocks.%d." % i
        mod = lin(P[b + "adaLN_modulation.1.weight"], P[b + "adaLN_modulation.1.bias"], silu(c))
        sh1, sc1, g1, sh2, sc2, g2 = [mod[j * D:(j + 1) * D] for j in range(6)]
        a = ln(X) * (1 + sc1) + sh1
        qkv = lin(P[b + "attn.qkv.weight"], P[b + "attn.qkv.bias"], a)  # [T, 3D]
        o = np.zeros((T, D))
        for hh in range(heads):
            q = qkv[:, 0 * D + hh * hd:0 * D + (hh + 1) * hd]
            k = qkv[:, 1 * D + hh * hd:1 * D + (hh + 1) * hd]
            v = qkv[:, 2 * D + hh * hd:2 * D + (hh + 1) * hd]
            s = q @ k.T / math.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o[:, hh * hd:(hh + 1) * hd] = s @ v
        X = X + g1 * lin(P[b + "attn.proj.weight"], P[b + "attn.proj.bias"], o)
        m = ln(X) * (1 + sc2) + sh2
        m = lin(P[b + "mlp.fc2.weight"], P[b + "mlp.fc2.bias"],
                gelu(lin(P[b + "mlp.fc1.weight"], P[b + "mlp.fc1.bias"], m)))
        X = X + g2 * m
    mod = lin(P["final_layer.adaLN_modulation.1.weight"], P["final_layer.adaLN_modulation.1.bias"], silu(c))
    sh, sc = mod[:D], mod[D:]
    out = lin(P["final_layer.linear.weight"], P["final_layer.linear.bias"], ln(X) * (1 + sc) + sh)
    v = np.zeros((C, H, W))
    for gy in range(h):
        for gx in range(w):
            for py in range(p):
                for px in range(p):
                    for cc in range(C):
                        v[cc, gy * p + py, gx * p + px] = out[gy * w + gx, (py * p + px) * C + cc]
    return v


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "tests/golden"
    P, md = safetensors_io.load_file(os.path.join(d, "golden-model.safetensors"))
    P = {k: v.astype(np.float64) for k, v in P.items()}
    G, _ = safetensors_io.load_file(os.path.join(d, "golden-io.safetensors"))
    G = {k: v.astype(np.float64) for k, v in G.items()}
    ok = True
    for bi in range(2):
        v = forward(P, md, G["fwd.x"][bi], G["fwd.t"][bi], int(G["fwd.y"][bi]))
        err = np.abs(v - G["fwd.out"][bi]).max()
        print("fwd[%d] max abs err %.3g" % (bi, err))
        ok &= err < 1e-4
    n = int(G["sample.steps"][0]); g = G["sample.guidance"][0]; shift = float(md["dexec.sigma_shift"])
    y, yn = int(G["sample.y"][0]), int(G["sample.y_neg"][0])
    s = [1 - i / n for i in range(n + 1)]
    s = [shift * v / (1 + (shift - 1) * v) for v in s]
    x = G["sample.noise"][0].copy()
    for i in range(n):
        vc = forward(P, md, x, 1000 * s[i], y)
        vu = forward(P, md, x, 1000 * s[i], yn)
        x = x + (s[i + 1] - s[i]) * (vu + g * (vc - vu))
    err = np.abs(x - G["sample.out"][0]).max()
    print("sample max abs err %.3g (absmax %.3g)" % (err, np.abs(x).max()))
    ok &= err < 1e-3
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
