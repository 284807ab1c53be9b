/*
 * dit.h - the diffusion transformer of doc/model-format.md: its
 * configuration (read from the file's metadata), its weights (checked
 * against that configuration) and its forward pass on a backend.
 */
#ifndef DEXEC_KERNELS_DIT_H
#define DEXEC_KERNELS_DIT_H

#include <stddef.h>

#include <dexec/dexec.h>

#include "comm.h"
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
    /* how the loader keeps the weight matrices on the device: DEXEC_DTYPE_F32
     * (0, what the config readers set), or F16/BF16 through upload_half()
     * (the caller checks that the device has it: dxk_backend_half) */
    int dtype;
} dxk_dit_config;

typedef struct dxk_linear {
    const float *w, *b; /* backend buffers (or the mapping, on host backends) */
    /* with a half-precision dtype (dxk_dit_config.dtype): the weight as
     * upload_half() made it, and w NULL; b stays float32 */
    const void *h;
    int dtype; /* DEXEC_DTYPE_* of h */
} dxk_linear;

/* y[M,N] = x[M,K] W^T + b through be->linear(), or be->linear_half() when
 * l holds a half-precision weight. */
void dxk_linear_run(dxk_backend *be, float *y, const float *x, const dxk_linear *l, int M, int N,
                    int K);

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
    size_t half_params; /* of which kept in half precision (cfg.dtype) */
    /* Ulysses sequence parallelism: the communicator of this rank's
     * sequence group (NULL or size 1: alone), borrowed; set by
     * dxk_model_set_parallel. Workspaces take it when allocated. */
    dxk_comm *seq;
} dxk_dit;

/* Activations of one forward pass of B images of H x W.
 *
 * With a sequence communicator of size S (rank r), the T = (H/p)(W/p)
 * tokens of each image are split in S contiguous shards: rank r holds
 * tokens t0 = floor(r T / S) .. floor((r+1) T / S) - 1 (tn of them, at
 * most tmax = ceil(T / S)), and x, xn, hid, qkv, att are [B, tn, ...]
 * (the shard of every image, image after image). Attention is computed
 * over all T tokens for the H/S heads r H/S .. (r+1) H/S - 1: qkvh is
 * [B, T, 3 D/S] and att2 [B, T, D/S]; host buffers ha, hb, hc stage the
 * exchanges (the collectives move host memory). */
typedef struct dxk_dit_ws {
    int B, H, W;
    float *x, *xn, *qkv, *att, *hid, *io, *scratch, *tf, *th, *c, *sc, *mod;
    /* position embedding [T, D] and D ones (published models; and the
     * bundled layout under sequence parallelism, to add a shard's rows),
     * host timestep features (published models) */
    float *pos, *ones, *tf_host;
    /* sequence parallelism (S = 1: alone, t0 = 0, tn = tmax = T) */
    dxk_comm *seq;
    int S, rank, t0, tn, tmax;
    float *qkvh, *att2;    /* backend buffers, S > 1 only */
    float *ha, *hb, *hc;   /* host buffers of nh floats each, S > 1 only */
    size_t nh;
    dexec_status status;   /* a collective's failure (sticky), see dxk_dit_ws_check */
    char err[512];
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

/* Activations for B images of H x W (multiples of the patch size), split
 * over m->seq when it has more than one rank. Errors: DEXEC_EINVAL for a
 * size that is not a multiple of the patch, or fewer tokens than sequence
 * ranks ("sequence = 64 is more than the 49 tokens of a 28x28 image"). */
dexec_status dxk_dit_ws_alloc(dxk_dit *m, int B, int H, int W, dxk_dit_ws **out, char *err,
                              size_t errlen);
void dxk_dit_ws_free(dxk_dit *m, dxk_dit_ws *ws);

/* v = F(x, t, y) for B <= ws->B images: x is a backend buffer of
 * [B, C, H, W] and v one of [B, out_channels, H, W] (C for the bundled
 * model); t (timesteps as the model was trained: 0..1000 for the bundled
 * model and DiT, 0..1 for SiT) and y (class indices 0..K) are host arrays.
 * Backend errors surface at the backend's next sync.
 *
 * With ws->S > 1 every rank of the sequence group must call this with the
 * same x, t, y and B: each computes its token shard through the blocks
 * (patch embedding with the shard's positions, adaLN, MLP, final layer
 * stay local); around each attention an all-to-all swaps token shards for
 * head shards (B tn 3D floats out and in per rank) and a second one swaps
 * back (B tn D); at the end an all-gather of the final layer's
 * [B, tmax, p p out_channels] shard gives every rank the full v. A
 * collective's failure is kept in ws (dxk_dit_ws_check); the forward then
 * stops and later forwards on ws do nothing. */
void dxk_dit_forward(dxk_dit *m, dxk_dit_ws *ws, float *v, const float *x, const double *t,
                     const int *y, int B);

/* DEXEC_OK, or the collective failure a forward on ws met, with its
 * message in err ("sequence parallelism, rank 1 of 2: all-to-all before
 * the attention of block 3: ..."). */
dexec_status dxk_dit_ws_check(const dxk_dit_ws *ws, char *err, size_t errlen);

/* Bytes one rank sends to the others per forward pass of B images with
 * ws's split (its blocks of the all-to-alls and of the final all-gather
 * that go to the S - 1 other ranks, padding of short shards included); 0
 * when S = 1. */
size_t dxk_dit_seq_bytes(const dxk_dit *m, const dxk_dit_ws *ws, int B);

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

/* Refuses a sequence group of S ranks that does not divide the model's
 * heads (Ulysses splits the heads across the group): EINVAL with
 * "parallel.sequence = S does not divide the H attention heads of this
 * model: use one of D" (D: the divisors of H up to 64). DEXEC_OK when S
 * divides H. */
dexec_status dxk_dit_check_heads(int S, int heads, char *err, size_t errlen);

#endif
