/*
 * vae.h - the decoder of a diffusers AutoencoderKL (the Stable Diffusion
 * VAE that DiT and SiT decode with: sd-vae-ft-ema / -mse): configuration
 * from vae/config.json, weights checked tensor by tensor, and the decode
 * as a sequence of backend ops (convolutions, GroupNorm+SiLU, nearest
 * upsampling and one single-head attention in the mid block).
 */
#ifndef DEXEC_KERNELS_VAE_H
#define DEXEC_KERNELS_VAE_H

#include <stddef.h>

#include <dexec/dexec.h>

#include "dit.h"
#include "ops.h"
#include "safetensors.h"

#define DXK_VAE_MAX_BLOCKS 8

typedef struct dxk_vae_config {
    int latent_channels, out_channels, groups, layers_per_block, nblocks;
    int block_out_channels[DXK_VAE_MAX_BLOCKS];
    int mid_attention;     /* mid_block_add_attention */
    int post_quant_conv;   /* use_post_quant_conv */
    double scaling_factor; /* latents are divided by it before decoding */
    int dtype; /* the convolution and attention weights on the device: DEXEC_DTYPE_F32
                  (0, what dxk_vae_config_json sets) or F16/BF16 (upload_half) */
} dxk_vae_config;

typedef struct dxk_conv {
    const float *w, *b; /* [Cout, Cin, k, k], [Cout] */
    const void *h;      /* half precision (cfg.dtype): the weight, and w NULL */
    int cin, cout, k;   /* k 0: absent (a resnet without shortcut) */
} dxk_conv;

typedef struct dxk_norm {
    const float *g, *b; /* [C] */
} dxk_norm;

typedef struct dxk_resnet {
    dxk_norm norm1, norm2;
    dxk_conv conv1, conv2, shortcut; /* shortcut.w NULL when in == out */
} dxk_resnet;

typedef struct dxk_vae {
    dxk_vae_config cfg;
    dxk_backend *be; /* borrowed */
    dxk_conv post_quant, conv_in, conv_out;
    dxk_resnet mid[2];
    dxk_norm attn_norm, norm_out;
    dxk_linear attn_qkv, attn_out; /* q, k, v fused into [3C, C] */
    dxk_resnet *res;               /* nblocks x (layers_per_block + 1) */
    dxk_conv *up;                  /* nblocks - 1 upsampler convolutions */
    float **uploads;
    size_t nuploads;
    size_t params;
    size_t half_params; /* of which kept in half precision (cfg.dtype) */
} dxk_vae;

/* Reads vae/config.json (path names it in errors): block_out_channels,
 * layers_per_block, latent_channels, out_channels, norm_num_groups,
 * scaling_factor (0.18215 when absent, as diffusers' default), and checks
 * what fixes the architecture (up_block_types all "UpDecoderBlock2D",
 * act_fn "silu", no shift_factor). DEXEC_EINVAL names the field. */
dexec_status dxk_vae_config_json(const char *path, const char *json, dxk_vae_config *cfg,
                                 char *err, size_t errlen);

/* Checks every decoder tensor of st against cfg (diffusers' names; the
 * mid-block attention as to_q/to_k/to_v/to_out.0 or the older
 * query/key/value/proj_attn) and makes them usable on be. The encoder's
 * tensors (encoder.*, quant_conv.*) may be present and are not read. *out
 * keeps pointers into st. Errors: DEXEC_EINVAL naming file and tensor,
 * DEXEC_ENOMEM. */
dexec_status dxk_vae_load(const dxk_safetensors *st, const dxk_vae_config *cfg, dxk_backend *be,
                          dxk_vae **out, char *err, size_t errlen);
void dxk_vae_free(dxk_vae *v);

/* Decodes B latents z (host, [B, latent_channels, h, w], as the sampler
 * leaves them: divided by scaling_factor here) into img (host,
 * [B, out_channels, 8h, 8w] for four blocks: 2^(nblocks-1) per side),
 * values around [-1, 1]. Allocates its activations on the backend for the
 * call (the largest is channels x pixels of the widest stage: 512 x 256^2
 * floats for a 512 px image). Errors: the backend's, in err. */
dexec_status dxk_vae_decode(dxk_vae *v, const float *z, int B, int h, int w, float *img,
                            char *err, size_t errlen);

/* Image side for a latent side. */
int dxk_vae_scale(const dxk_vae_config *cfg);

/* Floating-point operations of one decode of B latents of h x w
 * (convolutions and attention products, 2 per multiply-add). */
double dxk_vae_flops(const dxk_vae_config *cfg, int B, int h, int w);

#endif
