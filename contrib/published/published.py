"""PyTorch twins of the published latent models dexec runs (doc/model.md
"Published models"), written from the reference code's semantics:

- DiT (Peebles & Xie, facebookresearch/DiT models.py) and SiT (Ma et al.,
  willisma/SiT models.py: the same network), with their own tensor names,
  and the same network as diffusers' DiTTransformer2DModel names and runs
  it (per-block embedders, timestep frequencies over half-1, norm_eps on
  the MLP LayerNorm);
- the AutoencoderKL decoder of diffusers (Stable Diffusion's VAE);
- the samplers: DDPM and DDIM over guided-diffusion's linear betas
  respaced as space_timesteps(1000, [n]); Euler and Heun (torchdiffeq's
  heun2) over SiT's linear path, t from 0 (noise) to 1 (data);
- a writer of diffusers pipeline directories (model_index.json with
  id2label, transformer/, vae/, scheduler/).

Random weights, seeded; tensor names and shapes are the published ones.
Debian's python3-torch (1.13), CPU. No diffusers, no safetensors package.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
import safetensors_io  # noqa: E402

# ---------------------------------------------------------------- transformer


def dit_config(sample_size=32, patch=2, in_ch=4, learn_sigma=True, depth=28, heads=16,
               head_dim=72, classes=1000, norm_eps=1e-5):
    """A diffusers transformer/config.json (DiT-XL/2-256 by default)."""
    return {"_class_name": "DiTTransformer2DModel", "activation_fn": "gelu-approximate",
            "attention_bias": True, "attention_head_dim": head_dim, "dropout": 0.0,
            "in_channels": in_ch, "norm_elementwise_affine": False, "norm_eps": norm_eps,
            "norm_type": "ada_norm_zero", "num_attention_heads": heads,
            "num_embeds_ada_norm": classes, "num_layers": depth,
            "out_channels": 2 * in_ch if learn_sigma else in_ch, "patch_size": patch,
            "sample_size": sample_size, "upcast_attention": False}


def dit_random(cfg, seed, dtype=torch.float32):
    """Original-layout state dict (DiT/SiT names) with random, non-zero weights
    (~1/sqrt(fan_in): activations stay O(1); adaLN-Zero would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    D = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    C, Co, p = cfg["in_channels"], cfg["out_channels"], cfg["patch_size"]
    K, M = cfg["num_embeds_ada_norm"], 4 * D

    def w(*shape):
        fan = int(np.prod(shape[1:]))
        return (torch.randn(*shape, generator=g) / math.sqrt(fan)).to(dtype)

    def b(n):
        return (0.1 * torch.randn(n, generator=g)).to(dtype)

    sd = {"x_embedder.proj.weight": w(D, C, p, p), "x_embedder.proj.bias": b(D),
          "t_embedder.mlp.0.weight": w(D, 256), "t_embedder.mlp.0.bias": b(D),
          "t_embedder.mlp.2.weight": w(D, D), "t_embedder.mlp.2.bias": b(D),
          "y_embedder.embedding_table.weight": torch.randn(K + 1, D, generator=g).to(dtype)}
    for i in range(cfg["num_layers"]):
        for name, o, n in (("adaLN_modulation.1", 6 * D, D), ("attn.qkv", 3 * D, D),
                           ("attn.proj", D, D), ("mlp.fc1", M, D), ("mlp.fc2", D, M)):
            sd["blocks.%d.%s.weight" % (i, name)] = w(o, n)
            sd["blocks.%d.%s.bias" % (i, name)] = b(o)
    sd["final_layer.adaLN_modulation.1.weight"] = w(2 * D, D)
    sd["final_layer.adaLN_modulation.1.bias"] = b(2 * D)
    sd["final_layer.linear.weight"] = w(p * p * Co, D)
    sd["final_layer.linear.bias"] = b(p * p * Co)
    return sd


def to_diffusers(sd, cfg, seed=None):
    """Original names -> diffusers names (as diffusers'
    scripts/convert_dit_to_diffusers.py maps them: qkv split into to_q/k/v,
    the embedders copied into every block). With seed, each block's
    embedders get their own random weights instead, so that a test sees
    whether every block reads its own."""
    D = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    out = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"],
           "pos_embed.proj.bias": sd["x_embedder.proj.bias"]}
    for i in range(cfg["num_layers"]):
        pre = "transformer_blocks.%d." % i
        emb = {"norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
               "norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2"}
        for new, old in emb.items():
            for s in ("weight", "bias"):
                t = sd["%s.%s" % (old, s)]
                if g is not None:
                    t = t + 0.1 * torch.randn(t.shape, generator=g).to(t.dtype)
                out[pre + new + "." + s] = t
        t = sd["y_embedder.embedding_table.weight"]
        if g is not None:
            t = t + 0.1 * torch.randn(t.shape, generator=g).to(t.dtype)
        out[pre + "norm1.emb.class_embedder.embedding_table.weight"] = t
        for s in ("weight", "bias"):
            out[pre + "norm1.linear." + s] = sd["blocks.%d.adaLN_modulation.1.%s" % (i, s)]
            q, k, v = sd["blocks.%d.attn.qkv.%s" % (i, s)].chunk(3, dim=0)
            out[pre + "attn1.to_q." + s] = q.contiguous()
            out[pre + "attn1.to_k." + s] = k.contiguous()
            out[pre + "attn1.to_v." + s] = v.contiguous()
            out[pre + "attn1.to_out.0." + s] = sd["blocks.%d.attn.proj.%s" % (i, s)]
            out[pre + "ff.net.0.proj." + s] = sd["blocks.%d.mlp.fc1.%s" % (i, s)]
            out[pre + "ff.net.2." + s] = sd["blocks.%d.mlp.fc2.%s" % (i, s)]
    for s in ("weight", "bias"):
        out["proj_out_1." + s] = sd["final_layer.adaLN_modulation.1." + s]
        out["proj_out_2." + s] = sd["final_layer.linear." + s]
    return out


def sincos_1d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def pos_embed(D, h, w):
    """get_2d_sincos_pos_embed: meshgrid(grid_w, grid_h), first half from grid[0] (x)."""
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    return np.concatenate([sincos_1d(D // 2, gx.reshape(-1)), sincos_1d(D // 2, gy.reshape(-1))],
                          axis=1)


def t_features(t, shift):
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - shift))
    a = t.to(torch.float64)[:, None] * freqs[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)


def ln(x, eps):
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def dit_forward(sd, cfg, x, t, y, layout, dtype=torch.float64):
    """One forward pass, float64 (or dtype: bench/ runs it in float32 with x
    and sd already so). layout: 'original' or 'diffusers' (sd in that
    layout's names). Returns [B, out_channels, H, W]."""
    sd = {k: v.to(dtype) for k, v in sd.items()}
    D = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    Hh, p, Co = cfg["num_attention_heads"], cfg["patch_size"], cfg["out_channels"]
    B, C, H, W = x.shape
    h, w = H // p, W // p
    dif = layout == "diffusers"
    pe = "pos_embed.proj" if dif else "x_embedder.proj"
    tok = F.conv2d(x, sd[pe + ".weight"], sd[pe + ".bias"], stride=p).flatten(2).transpose(1, 2)
    tok = tok + torch.from_numpy(pos_embed(D, h, w)).to(dtype)[None]
    tf = t_features(t, 1 if dif else 0).to(dtype)

    def cond(t0, t2, table):
        c = F.linear(F.silu(F.linear(tf, sd[t0 + ".weight"], sd[t0 + ".bias"])),
                     sd[t2 + ".weight"], sd[t2 + ".bias"])
        return c + sd[table][y]

    def attn(xn, wq, bq, wo, bo):
        qkv = F.linear(xn, wq, bq).reshape(B, h * w, 3, Hh, D // Hh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // Hh), dim=-1) @ v
        return F.linear(a.transpose(1, 2).reshape(B, h * w, D), wo, bo)

    if not dif:
        c = cond("t_embedder.mlp.0", "t_embedder.mlp.2", "y_embedder.embedding_table.weight")
    mlp_eps = cfg.get("norm_eps", 1e-5) if dif else 1e-6
    for i in range(cfg["num_layers"]):
        if dif:
            pre = "transformer_blocks.%d." % i
            c = cond(pre + "norm1.emb.timestep_embedder.linear_1",
                     pre + "norm1.emb.timestep_embedder.linear_2",
                     pre + "norm1.emb.class_embedder.embedding_table.weight")
            ada = (sd[pre + "norm1.linear.weight"], sd[pre + "norm1.linear.bias"])
            wq = torch.cat([sd[pre + "attn1.to_%s.weight" % n] for n in "qkv"])
            bq = torch.cat([sd[pre + "attn1.to_%s.bias" % n] for n in "qkv"])
            wo, bo = sd[pre + "attn1.to_out.0.weight"], sd[pre + "attn1.to_out.0.bias"]
            f1 = (sd[pre + "ff.net.0.proj.weight"], sd[pre + "ff.net.0.proj.bias"])
            f2 = (sd[pre + "ff.net.2.weight"], sd[pre + "ff.net.2.bias"])
        else:
            pre = "blocks.%d." % i
            ada = (sd[pre + "adaLN_modulation.1.weight"], sd[pre + "adaLN_modulation.1.bias"])
            wq, bq = sd[pre + "attn.qkv.weight"], sd[pre + "attn.qkv.bias"]
            wo, bo = sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"]
            f1 = (sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"])
            f2 = (sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])
        m = F.linear(F.silu(c), *ada).chunk(6, dim=1)
        xn = ln(tok, 1e-6) * (1 + m[1][:, None]) + m[0][:, None]
        tok = tok + m[2][:, None] * attn(xn, wq, bq, wo, bo)
        xn = ln(tok, mlp_eps) * (1 + m[4][:, None]) + m[3][:, None]
        tok = tok + m[5][:, None] * F.linear(F.gelu(F.linear(xn, *f1), approximate="tanh"), *f2)
    if dif:
        c = cond("transformer_blocks.0.norm1.emb.timestep_embedder.linear_1",
                 "transformer_blocks.0.norm1.emb.timestep_embedder.linear_2",
                 "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight")
        fa = (sd["proj_out_1.weight"], sd["proj_out_1.bias"])
        fl = (sd["proj_out_2.weight"], sd["proj_out_2.bias"])
    else:
        fa = (sd["final_layer.adaLN_modulation.1.weight"], sd["final_layer.adaLN_modulation.1.bias"])
        fl = (sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    shift, scale = F.linear(F.silu(c), *fa).chunk(2, dim=1)
    out = F.linear(ln(tok, 1e-6) * (1 + scale[:, None]) + shift[:, None], *fl)
    out = out.reshape(B, h, w, p, p, Co)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(B, Co, H, W)


def guided(sd, cfg, layout, x, t, y, y_neg, g, gc):
    """The sampler's model call (the model sees float32 inputs): [x; x] batched with (y, y_neg); channels
    below gc guided (DiT's forward_with_cfg with gc = 3), the rest the cond
    branch's. x [1, C, h, w] -> [1, out_channels, h, w]."""
    if g == 1.0:
        return dit_forward(sd, cfg, x, torch.tensor([t], dtype=torch.float64), torch.tensor([y]),
                           layout)
    out = dit_forward(sd, cfg, torch.cat([x, x]), torch.tensor([t, t], dtype=torch.float64),
                      torch.tensor([y, y_neg]), layout)
    c, u = out[:1].clone(), out[1:]
    c[:, :gc] = u[:, :gc] + g * (c[:, :gc] - u[:, :gc])
    return c


# ------------------------------------------------------------------- samplers


def respace(n):
    """space_timesteps(1000, [n]) and the respaced alphas_cumprod."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    acp = np.cumprod(1.0 - betas)
    stride = (1000 - 1) / (n - 1) if n > 1 else 1
    cur, ts = 0.0, []
    for _ in range(n):
        ts.append(round(cur))
        cur += stride
    return ts, acp[ts]


def sample(sd, cfg, layout, noise, y, y_neg, steps, g, gc, sampler, step_noise=None):
    """noise [1, C, h, w] float64 -> the final latent. step_noise [steps, C, h, w]
    (DDPM: the noise added after model call s)."""
    C = cfg["in_channels"]
    x = noise.clone()
    if sampler in ("euler", "heun"):
        for i in range(steps):
            t0, t1 = i / steps, (i + 1) / steps
            v = guided(sd, cfg, layout, x.float().double(), t0, y, y_neg, g, gc)[:, :C]
            if sampler == "euler":
                x = x + (t1 - t0) * v
            else:
                v2 = guided(sd, cfg, layout, (x + (t1 - t0) * v).float().double(), t1, y, y_neg,
                            g, gc)[:, :C]
                x = x + 0.5 * (t1 - t0) * (v + v2)
        return x
    ts, acp = respace(steps)
    acp_prev = np.append(1.0, acp[:-1])
    betas = 1.0 - acp / acp_prev
    pv = betas * (1.0 - acp_prev) / (1.0 - acp)
    plv = np.log(np.append(pv[1], pv[1:]))
    for s, i in enumerate(range(steps - 1, -1, -1)):
        out = guided(sd, cfg, layout, x.float().double(), float(ts[i]), y, y_neg, g, gc)
        eps = out[:, :C]
        x0 = math.sqrt(1.0 / acp[i]) * x - math.sqrt(1.0 / acp[i] - 1.0) * eps
        if sampler == "ddim":
            e2 = (math.sqrt(1.0 / acp[i]) * x - x0) / math.sqrt(1.0 / acp[i] - 1.0)
            x = x0 * math.sqrt(acp_prev[i]) + math.sqrt(1.0 - acp_prev[i]) * e2
        else:
            c1 = betas[i] * math.sqrt(acp_prev[i]) / (1.0 - acp[i])
            c2 = (1.0 - acp_prev[i]) * math.sqrt(1.0 - betas[i]) / (1.0 - acp[i])
            mean = c1 * x0 + c2 * x
            if out.shape[1] == 2 * C:
                frac = (out[:, C:] + 1) / 2
                logv = frac * math.log(betas[i]) + (1 - frac) * plv[i]
            else:
                logv = torch.full_like(x, math.log(betas[i]))
            x = mean + (torch.exp(0.5 * logv) * step_noise[s][None] if i > 0 else 0)
    return x


# ------------------------------------------------------------------------ VAE


def vae_config(block_out=(128, 256, 512, 512), layers=2, latent=4, groups=32, scaling=0.18215):
    n = len(block_out)
    return {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": list(block_out),
            "down_block_types": ["DownEncoderBlock2D"] * n, "in_channels": 3,
            "latent_channels": latent, "layers_per_block": layers, "norm_num_groups": groups,
            "out_channels": 3, "sample_size": 256, "scaling_factor": scaling,
            "up_block_types": ["UpDecoderBlock2D"] * n}


def vae_random(cfg, seed, old_attention_names=False, dtype=torch.float32):
    """The decoder half of an AutoencoderKL state dict (diffusers names)."""
    g = torch.Generator().manual_seed(seed)
    bo, L, lat = cfg["block_out_channels"], cfg["layers_per_block"] + 1, cfg["latent_channels"]

    def w(*shape):
        return (torch.randn(*shape, generator=g) / math.sqrt(int(np.prod(shape[1:])))).to(dtype)

    def b(n, s=0.1):
        return (s * torch.randn(n, generator=g)).to(dtype)

    sd = {}

    def conv(name, o, i, k):
        sd[name + ".weight"] = w(o, i, k, k)
        sd[name + ".bias"] = b(o)

    def norm(name, c):
        sd[name + ".weight"] = (1.0 + 0.1 * torch.randn(c, generator=g)).to(dtype)
        sd[name + ".bias"] = b(c)

    def res(name, i, o):
        norm(name + ".norm1", i)
        conv(name + ".conv1", o, i, 3)
        norm(name + ".norm2", o)
        conv(name + ".conv2", o, o, 3)
        if i != o:
            conv(name + ".conv_shortcut", o, i, 1)

    conv("post_quant_conv", lat, lat, 1)
    top = bo[-1]
    conv("decoder.conv_in", top, lat, 3)
    res("decoder.mid_block.resnets.0", top, top)
    a = "decoder.mid_block.attentions.0."
    norm(a + "group_norm", top)
    names = ("query", "key", "value", "proj_attn") if old_attention_names else \
        ("to_q", "to_k", "to_v", "to_out.0")
    for n in names:
        sd[a + n + ".weight"] = w(top, top)
        sd[a + n + ".bias"] = b(top)
    res("decoder.mid_block.resnets.1", top, top)
    prev = top
    for i, oc in enumerate(reversed(bo)):
        for j in range(L):
            res("decoder.up_blocks.%d.resnets.%d" % (i, j), prev if j == 0 else oc, oc)
        if i < len(bo) - 1:
            conv("decoder.up_blocks.%d.upsamplers.0.conv" % i, oc, oc, 3)
        prev = oc
    norm("decoder.conv_norm_out", bo[0])
    conv("decoder.conv_out", 3, bo[0], 3)
    return sd


def vae_decode(sd, cfg, z, dtype=torch.float64):
    """diffusers' AutoencoderKL.decode(z / scaling_factor), float64 (or
    dtype, with z and sd already so)."""
    sd = {k: v.to(dtype) for k, v in sd.items()}
    G, bo = cfg["norm_num_groups"], cfg["block_out_channels"]
    L = cfg["layers_per_block"] + 1

    def conv(x, name, pad):
        return F.conv2d(x, sd[name + ".weight"], sd[name + ".bias"], padding=pad)

    def gn(x, name):
        return F.group_norm(x, G, sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)

    def res(x, name):
        h = conv(F.silu(gn(x, name + ".norm1")), name + ".conv1", 1)
        h = conv(F.silu(gn(h, name + ".norm2")), name + ".conv2", 1)
        if name + ".conv_shortcut.weight" in sd:
            x = conv(x, name + ".conv_shortcut", 0)
        return x + h

    x = conv(z / cfg["scaling_factor"], "post_quant_conv", 0)
    x = conv(x, "decoder.conv_in", 1)
    x = res(x, "decoder.mid_block.resnets.0")
    a = "decoder.mid_block.attentions.0."
    names = ("to_q", "to_k", "to_v", "to_out.0") if a + "to_q.weight" in sd else \
        ("query", "key", "value", "proj_attn")
    B, C, H, W = x.shape
    hs = gn(x, a + "group_norm").reshape(B, C, H * W).transpose(1, 2)
    q, k, v = (F.linear(hs, sd[a + n + ".weight"], sd[a + n + ".bias"]) for n in names[:3])
    att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(C), dim=-1) @ v
    att = F.linear(att, sd[a + names[3] + ".weight"], sd[a + names[3] + ".bias"])
    x = x + att.transpose(1, 2).reshape(B, C, H, W)
    x = res(x, "decoder.mid_block.resnets.1")
    for i in range(len(bo)):
        for j in range(L):
            x = res(x, "decoder.up_blocks.%d.resnets.%d" % (i, j))
        if i < len(bo) - 1:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = conv(x, "decoder.up_blocks.%d.upsamplers.0.conv" % i, 1)
    x = F.silu(gn(x, "decoder.conv_norm_out"))
    return conv(x, "decoder.conv_out", 1)


# ------------------------------------------------------------ directory writer


def imagenet_labels(K):
    """id2label: torchvision's ImageNet category list (Debian's
    python3-torchvision) when K is 1000 and it is installed, else class<i>."""
    if K == 1000:
        try:
            from torchvision.models import ResNet50_Weights
            cats = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
            return {str(i): c for i, c in enumerate(cats)}
        except Exception:  # noqa: BLE001 - optional dependency
            pass
    return {str(i): "class%d" % i for i in range(K)}


def write_pipeline(outdir, tcfg, tsd, vcfg, vsd, id2label, scheduler):
    """A diffusers-layout directory dexec opens with -m outdir. vcfg None:
    the caller places vae/ itself (convert_pt.py)."""
    for sub in ("transformer", "vae", "scheduler"):
        if sub == "vae" and vcfg is None:
            continue
        os.makedirs(os.path.join(outdir, sub), exist_ok=True)
    with open(os.path.join(outdir, "model_index.json"), "w") as f:
        json.dump({"_class_name": "DiTPipeline", "_diffusers_version": "0.30.0",
                   "id2label": id2label, "scheduler": ["diffusers", scheduler["_class_name"]],
                   "transformer": ["diffusers", tcfg["_class_name"]],
                   "vae": ["diffusers", "AutoencoderKL"]}, f, indent=1)
    for sub, cfg, sd in (("transformer", tcfg, tsd), ("vae", vcfg, vsd)):
        if cfg is None:
            continue
        with open(os.path.join(outdir, sub, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        safetensors_io.save_file({k: v.contiguous() for k, v in sd.items()},
                                 os.path.join(outdir, sub, "diffusion_pytorch_model.safetensors"),
                                 {"format": "pt"})
    with open(os.path.join(outdir, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(scheduler, f, indent=1)


DDPM_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
                  "beta_start": 0.0001, "num_train_timesteps": 1000}
SIT_SCHEDULER = {"_class_name": "SiTTransport", "path_type": "Linear", "prediction": "velocity",
                 "sampling_method": "euler"}
