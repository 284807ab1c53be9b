"""Small DiT (class-conditional, flow matching) exactly as doc/model-format.md."""
import json
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import safetensors_io


def layer_norm(x):
    # LayerNorm over D, no affine, eps 1e-6, biased variance.
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t, dim=256):
    half = dim // 2
    k = torch.arange(half, dtype=t.dtype, device=t.device)
    f = torch.exp(-math.log(10000.0) * k / half)
    a = t[:, None] * f[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)


def sincos_1d(d, q):
    """E(d, q): q is a float64 numpy vector -> [len(q), d]."""
    w = 1.0 / 10000.0 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    a = q[:, None] * w[None]
    return np.concatenate([np.sin(a), np.cos(a)], axis=1)


def pos_embed_2d(D, h, w):
    """[h*w, D]; token n = gy*w + gx; first D/2 encodes gy, second D/2 gx."""
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    gy = gy.reshape(-1)
    gx = gx.reshape(-1)
    return np.concatenate([sincos_1d(D // 2, gy), sincos_1d(D // 2, gx)], axis=1)


class PatchEmbed(nn.Module):
    def __init__(self, C, D, p):
        super().__init__()
        self.proj = nn.Conv2d(C, D, p, stride=p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, T, D], n = gy*w + gx


class TimestepEmbedder(nn.Module):
    def __init__(self, D):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, 256))


class LabelEmbedder(nn.Module):
    def __init__(self, K, D):
        super().__init__()
        self.embedding_table = nn.Embedding(K + 1, D)

    def forward(self, y):
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, D, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)

    def forward(self, x):
        B, T, D = x.shape
        hd = D // self.heads
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, T, hd]
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = att.softmax(dim=-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, D)
        return self.proj(o)


class Mlp(nn.Module):
    def __init__(self, D, M):
        super().__init__()
        self.fc1 = nn.Linear(D, M)
        self.fc2 = nn.Linear(M, D)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, D, heads, mlp_ratio):
        super().__init__()
        self.attn = Attention(D, heads)
        self.mlp = Mlp(D, D * mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x, c):
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(layer_norm(x), sh1, sc1))
        x = x + g2.unsqueeze(1) * self.mlp(modulate(layer_norm(x), sh2, sc2))
        return x


class FinalLayer(nn.Module):
    def __init__(self, D, p, C):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.linear = nn.Linear(D, p * p * C)

    def forward(self, x, c):
        sh, sc = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(layer_norm(x), sh, sc))


class DiT(nn.Module):
    def __init__(self, image_size=28, in_channels=1, patch_size=4, hidden_size=128,
                 depth=4, num_heads=4, mlp_ratio=4, num_classes=10):
        super().__init__()
        assert image_size % patch_size == 0 and hidden_size % 4 == 0 and hidden_size % num_heads == 0
        self.cfg = dict(image_size=image_size, in_channels=in_channels, patch_size=patch_size,
                        hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                        mlp_ratio=mlp_ratio, num_classes=num_classes)
        self.C, self.p, self.D, self.K = in_channels, patch_size, hidden_size, num_classes
        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels)
        self._pos_cache = {}
        self.initialize_weights()

    def initialize_weights(self):
        # As in DiT: xavier linears, zero biases, adaLN-Zero.
        def _basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(_basic)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for b in self.blocks:
            nn.init.zeros_(b.adaLN_modulation[-1].weight)
            nn.init.zeros_(b.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def pos_embed(self, h, w, dtype, device):
        key = (h, w, dtype, device)
        if key not in self._pos_cache:
            self._pos_cache[key] = torch.from_numpy(pos_embed_2d(self.D, h, w)).to(dtype=dtype, device=device)
        return self._pos_cache[key]

    def unpatchify(self, x, h, w):
        B = x.shape[0]
        p, C = self.p, self.C
        x = x.reshape(B, h, w, p, p, C)           # feature (py*p + px)*C + c
        x = x.permute(0, 5, 1, 3, 2, 4)           # B, C, gy, py, gx, px
        return x.reshape(B, C, h * p, w * p)

    def forward(self, x, t, y):
        B, C, H, W = x.shape
        h, w = H // self.p, W // self.p
        tok = self.x_embedder(x) + self.pos_embed(h, w, x.dtype, x.device)[None]
        c = self.t_embedder(t.to(x.dtype)) + self.y_embedder(y)
        for b in self.blocks:
            tok = b(tok, c)
        out = self.final_layer(tok, c)
        return self.unpatchify(out, h, w)


def sigmas(n, shift):
    s = [1.0 - i / n for i in range(n + 1)]
    return [shift * v / (1.0 + (shift - 1.0) * v) for v in s]


@torch.no_grad()
def sample(model, noise, y, steps, guidance, shift=1.0, y_neg=None):
    """Euler flow-matching sampler with CFG, as in doc/model-format.md.

    noise: [B,C,H,W]; y, y_neg: LongTensor [B] (y_neg None -> null class K).
    Returns the final x (before conversion to pixels)."""
    x = noise.clone()
    B = x.shape[0]
    if y_neg is None:
        y_neg = torch.full((B,), model.K, dtype=torch.long, device=x.device)
    sg = sigmas(steps, shift)
    for i in range(steps):
        t = torch.full((B,), 1000.0 * sg[i], dtype=x.dtype, device=x.device)
        if guidance == 1.0:
            v = model(x, t, y)
        else:
            vv = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_neg]))
            v_c, v_u = vv[:B], vv[B:]
            v = v_u + guidance * (v_c - v_u)
        x = x + (sg[i + 1] - sg[i]) * v
    return x


def to_pixels(x):
    return torch.clamp(torch.round((x + 1.0) * 127.5), 0, 255).to(torch.uint8)


CLASS_NAMES = ["t-shirt/top", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot"]

VOCAB = {
    "t-shirt/top": 0, "t-shirt": 0, "tshirt": 0, "tee": 0, "top": 0,
    "trouser": 1, "trousers": 1, "pants": 1, "jeans": 1, "slacks": 1,
    "pullover": 2, "sweater": 2, "jumper": 2, "sweatshirt": 2,
    "dress": 3, "gown": 3, "frock": 3,
    "coat": 4, "jacket": 4, "overcoat": 4,
    "sandal": 5, "sandals": 5, "flip-flop": 5, "flip-flops": 5,
    "shirt": 6, "blouse": 6,
    "sneaker": 7, "sneakers": 7, "trainer": 7, "trainers": 7, "shoe": 7, "shoes": 7,
    "bag": 8, "handbag": 8, "purse": 8, "backpack": 8,
    "ankle boot": 9, "ankle boots": 9, "boot": 9, "boots": 9,
}


def metadata_for(model, sigma_shift=1.0, default_steps=20, default_guidance=4.0, extra=None):
    cfg = model.cfg
    md = {
        "dexec.format": "dit",
        "dexec.image_size": str(cfg["image_size"]),
        "dexec.in_channels": str(cfg["in_channels"]),
        "dexec.patch_size": str(cfg["patch_size"]),
        "dexec.hidden_size": str(cfg["hidden_size"]),
        "dexec.depth": str(cfg["depth"]),
        "dexec.num_heads": str(cfg["num_heads"]),
        "dexec.mlp_ratio": str(cfg["mlp_ratio"]),
        "dexec.num_classes": str(cfg["num_classes"]),
        "dexec.sigma_shift": repr(float(sigma_shift)),
        "dexec.default_steps": str(int(default_steps)),
        "dexec.default_guidance": repr(float(default_guidance)),
    }
    if cfg["num_classes"] == 10:
        md["dexec.class_names"] = json.dumps(CLASS_NAMES)
        md["dexec.vocab"] = json.dumps(VOCAB)
    else:
        names = ["class%d" % i for i in range(cfg["num_classes"])]
        md["dexec.class_names"] = json.dumps(names)
        md["dexec.vocab"] = json.dumps({n: i for i, n in enumerate(names)})
    if extra:
        md.update({k: str(v) for k, v in extra.items()})
    return md


def save_model(model, path, metadata, dtype=torch.float32):
    tensors = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    safetensors_io.save_file(tensors, path, metadata)


def load_model(path, dtype=torch.float32):
    tensors, md = safetensors_io.load_file(path)
    model = DiT(image_size=int(md["dexec.image_size"]), in_channels=int(md["dexec.in_channels"]),
                patch_size=int(md["dexec.patch_size"]), hidden_size=int(md["dexec.hidden_size"]),
                depth=int(md["dexec.depth"]), num_heads=int(md["dexec.num_heads"]),
                mlp_ratio=int(md["dexec.mlp_ratio"]), num_classes=int(md["dexec.num_classes"]))
    sd = {k: torch.from_numpy(np.array(v, dtype=np.float64 if dtype == torch.float64 else np.float32))
          for k, v in tensors.items()}
    model.load_state_dict(sd, strict=True)
    model.to(dtype)
    model.eval()
    return model, md
