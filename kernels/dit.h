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

typedef struct dxk_dit_config {
    int image_size, in_channels, patch_size, hidden_size, depth, num_heads, mlp_ratio,
        num_classes;
    double sigma_shift;
    int default_steps;
    double default_guidance;
} dxk_dit_config;

typedef struct dxk_linear {
    const float *w, *b; /* backend buffers (or the mapping, on host backends) */
} dxk_linear;

typedef struct dxk_dit_block {
    dxk_linear ada, qkv, proj, fc1, fc2;
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

/* Activations for B images of H x W (multiples of the patch size). */
dexec_status dxk_dit_ws_alloc(dxk_dit *m, int B, int H, int W, dxk_dit_ws **out, char *err,
                              size_t errlen);
void dxk_dit_ws_free(dxk_dit *m, dxk_dit_ws *ws);

/* v = F(x, t, y) for B <= ws->B images: x and v are backend buffers of
 * [B, C, H, W]; t (timesteps) and y (class indices 0..K) are host arrays.
 * Errors surface at the backend's next sync. */
void dxk_dit_forward(dxk_dit *m, dxk_dit_ws *ws, float *v, const float *x, const double *t,
                     const int *y, int B);

/* Floating-point operations of one forward pass of B images of H x W
 * (2 per multiply-add, GEMMs and attention products only). */
double dxk_dit_flops(const dxk_dit_config *cfg, int B, int H, int W);

#endif
