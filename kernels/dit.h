/*
 * dit.h - the diffusion transformer of doc/model-format.md: its
 * configuration (read from the file's metadata), its weights (checked
 * against that configuration) and its forward pass on a backend.
 */
#ifndef DEXEC_KERNELS_DIT_H
#define DEXEC_KERNELS_DIT_H

#include <stddef.h>

#include <dexec/dexec.h>

#include "ops.h"
#include "safetensors.h"

/* Which network a dxk_dit is, by its tensor names and conventions:
 *  - DXK_DIT_DEXEC: the bundled model of doc/model-format.md.
 *  - DXK_DIT_ORIGINAL: DiT (Peebles & Xie) and SiT (Ma et al.) as their
 *    own code names it (x_embedder, t_embedder, y_embedder, blocks.N,
 *    final_layer): position embedding concat(E(gx), E(gy)), timestep
 *    features with frequencies exp(-ln(1e4) k/128), every LayerNorm eps
 *    1e-6.
 *  - DXK_DIT_DIFFUSERS: the same network as diffusers'
 *    DiTTransformer2DModel names it (pos_embed.proj, transformer_blocks.N
 *    with its own norm1.emb, attn1.to_q/k/v, ff.net, proj_out_1/2), with
 *    diffusers' conventions: timestep frequencies exp(-ln(1e4) k/127)
 *    (downscale_freq_shift 1), the MLP's LayerNorm eps norm_eps, each block
 *    conditioned by its own embedders and the final layer by block 0's.
 * See doc/model.md "Published models". */
typedef enum dxk_dit_layout { DXK_DIT_DEXEC = 0, DXK_DIT_ORIGINAL, DXK_DIT_DIFFUSERS } dxk_dit_layout;

typedef struct dxk_dit_config {
    int image_size, in_channels, patch_size, hidden_size, depth, num_heads, mlp_ratio,
        num_classes;
    double sigma_shift;
    int default_steps;
    double default_guidance;
    /* the published models (layout != DXK_DIT_DEXEC) */
    dxk_dit_layout layout;
    int out_channels; /* in_channels, or 2 in_channels with learned sigma */
    double norm_eps;  /* diffusers: the MLP LayerNorm's eps */
} dxk_dit_config;

typedef struct dxk_linear {
    const float *w, *b; /* backend buffers (or the mapping, on host backends) */
} dxk_linear;

typedef struct dxk_dit_block {
    dxk_linear ada, qkv, proj, fc1, fc2;
    dxk_linear t_mlp0, t_mlp2; /* diffusers: the block's own embedders */
    const float *y_table;
} dxk_dit_block;

typedef struct dxk_dit {
    dxk_dit_config cfg;
    dxk_backend *be; /* borrowed */
    dxk_linear x_emb, t_mlp0, t_mlp2, final_ada, final_lin;
    const float *y_table;
    dxk_dit_block *blocks;
    float **uploads; /* buffers holding weight copies on a device backend */
    size_t nuploads;
    size_t params;   /* number of parameters */
} dxk_dit;

/* Activations of one forward pass of B images of H x W. */
typedef struct dxk_dit_ws {
    int B, H, W;
    float *x, *xn, *qkv, *att, *hid, *io, *scratch, *tf, *th, *c, *sc, *mod;
    /* published models: position embedding [T, D], D ones, host features */
    float *pos, *ones, *tf_host;
} dxk_dit_ws;

/* Reads and checks the dexec.* metadata of st. DEXEC_EINVAL names the file
 * and the key. */
dexec_status dxk_dit_config_read(const dxk_safetensors *st, dxk_dit_config *cfg, char *err,
                                 size_t errlen);

/* Checks every tensor against cfg (names the missing, mis-shaped or
 * unexpected tensor) and makes the weights usable on be: in place on a host
 * backend, uploaded otherwise. *out is the caller's (dxk_dit_free), and
 * keeps pointers into st: close st after freeing the model. */
dexec_status dxk_dit_load(const dxk_safetensors *st, const dxk_dit_config *cfg, dxk_backend *be,
                          dxk_dit **out, char *err, size_t errlen);
void dxk_dit_free(dxk_dit *m);

/* Reads a published model's configuration from a diffusers
 * transformer/config.json (path names it in errors): sample_size,
 * in_channels, out_channels, patch_size, num_layers,
 * num_attention_heads, attention_head_dim, num_embeds_ada_norm, norm_eps,
 * and checks the fields that fix the architecture (norm_type
 * "ada_norm_zero", activation_fn "gelu-approximate", ...). The layout is
 * left to dxk_dit_load_published, which tells it from the tensor names.
 * DEXEC_EINVAL names the file and the field. */
dexec_status dxk_dit_config_json(const char *path, const char *json, dxk_dit_config *cfg,
                                 char *err, size_t errlen);

/* Like dxk_dit_load for a published model: tells the layout from the
 * tensor names (x_embedder.proj.weight: original; pos_embed.proj.weight:
 * diffusers), sets cfg->layout, and checks every tensor. Diffusers'
 * separate to_q/to_k/to_v weights are fused into one [3D, D] buffer per
 * block (a copy); everything else is used in place on a host backend. The
 * original layout's pos_embed tensor, when present, is checked for shape
 * and not used (the embedding is computed for every image size). */
dexec_status dxk_dit_load_published(const dxk_safetensors *st, dxk_dit_config *cfg,
                                    dxk_backend *be, dxk_dit **out, char *err, size_t errlen);

/* Activations for B images of H x W (multiples of the patch size). */
dexec_status dxk_dit_ws_alloc(dxk_dit *m, int B, int H, int W, dxk_dit_ws **out, char *err,
                              size_t errlen);
void dxk_dit_ws_free(dxk_dit *m, dxk_dit_ws *ws);

/* v = F(x, t, y) for B <= ws->B images: x is a backend buffer of
 * [B, C, H, W] and v one of [B, out_channels, H, W] (C for the bundled
 * model); t (timesteps as the model was trained: 0..1000 for the bundled
 * model and DiT, 0..1 for SiT) and y (class indices 0..K) are host arrays.
 * Errors surface at the backend's next sync. */
void dxk_dit_forward(dxk_dit *m, dxk_dit_ws *ws, float *v, const float *x, const double *t,
                     const int *y, int B);

/* Floating-point operations of one forward pass of B images of H x W
 * (2 per multiply-add, GEMMs and attention products only). */
double dxk_dit_flops(const dxk_dit_config *cfg, int B, int H, int W);

/* An integer field key of the JSON object o (a config.json read from path)
 * in lo..hi, into *out; dflt when absent or null and dflt >= lo. -1 with a
 * message naming path and key otherwise. Shared by the DiT and VAE config
 * readers. */
struct json_t;
int dxk_json_int(struct json_t *o, const char *path, const char *key, int dflt, int lo, int hi,
                 int *out, char *err, size_t errlen);

#endif
