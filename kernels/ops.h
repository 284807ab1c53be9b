/*
 * ops.h - the one interface between the DiT (dit.c, sampler.c) and the
 * hardware: a backend is a table of buffer functions and tensor ops. The
 * CPU backend (cpu/ops_cpu.c) and the CUDA backend (cuda/ops_cuda.cu)
 * implement it; the model code never knows which one it drives.
 *
 * Conventions, shared by every backend:
 *  - A "buffer" is a float pointer in the backend's memory (host memory for
 *    the CPU, device memory for CUDA). Every op reads and writes buffers,
 *    except where a parameter is documented as "host" (a handful of scalars
 *    per image that the caller keeps on the host).
 *  - Tensors are dense, row-major, float32. Token tensors are [B, T, D].
 *  - Ops return nothing: a backend whose work is asynchronous (CUDA) can
 *    only learn of a failure later. Failures are sticky: the first one is
 *    kept and sync() reports it; after a failure ops do nothing.
 *  - Ops on one backend are issued from one thread at a time (a model
 *    serves one request at a time); a backend may use threads inside.
 */
#ifndef DEXEC_KERNELS_OPS_H
#define DEXEC_KERNELS_OPS_H

#include <stddef.h>

#include <dexec/dexec.h>

/* Size of the sinusoidal timestep features (doc/model-format.md step 3). */
#define DXK_TFREQ_DIM 256

typedef struct dxk_backend dxk_backend;

struct dxk_backend {
    const char *name;      /* "cpu" or "cuda" */
    char device_name[128]; /* e.g. "NVIDIA H100 80GB HBM3", or the CPU model */
    int host_memory;       /* buffers are host memory: mapped weights can be used in place */
    void *priv;            /* the backend's own state */

    /* ---- buffers ---- */

    /* n floats, uninitialised; NULL when out of memory (also recorded as the
     * sticky error). */
    float *(*alloc)(dxk_backend *be, size_t n);
    void (*release)(dxk_backend *be, float *p); /* NULL is accepted */
    /* host -> buffer, buffer -> host, buffer -> buffer; n floats */
    void (*upload)(dxk_backend *be, float *dst, const float *src, size_t n);
    void (*download)(dxk_backend *be, float *dst, const float *src, size_t n);
    void (*copy)(dxk_backend *be, float *dst, const float *src, size_t n);
    /* Bytes of backend memory held now and at most (0 when unknown). */
    void (*memory)(dxk_backend *be, size_t *used, size_t *peak);

    /* ---- ops ---- */

    /* y[M,N] = x[M,K] W^T + b, W of shape [N,K] (PyTorch Linear); b may be
     * NULL. y must not alias x. */
    void (*linear)(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                   int M, int N, int K);

    /* y[b,t,:] = LN(x[b,t,:]) * (1 + scale_b) + shift_b, LN over D without
     * affine parameters (eps 1e-6, biased variance); shift_b = shift +
     * b*mod_stride, likewise scale. y may alias x. */
    void (*ln_modulate)(dxk_backend *be, float *y, const float *x, const float *shift,
                        const float *scale, int mod_stride, int B, int T, int D);

    /* qkv [B,T,3D] laid out per token as [3, H, D/H] -> out [B,T,D], heads
     * concatenated: per head softmax(q k^T / sqrt(D/H)) v. scratch holds
     * attention_scratch(B,T,H) floats. */
    void (*attention)(dxk_backend *be, float *out, const float *qkv, float *scratch, int B,
                      int T, int H, int D);
    size_t (*attention_scratch)(dxk_backend *be, int B, int T, int H);

    /* x = 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))), in place */
    void (*gelu_tanh)(dxk_backend *be, float *x, size_t n);
    /* y = x * sigmoid(x); y may alias x */
    void (*silu)(dxk_backend *be, float *y, const float *x, size_t n);

    /* out[B, 256] = concat(cos(t f), sin(t f)), f_k = exp(-ln(1e4) k/128),
     * computed in double; t is host memory (B timesteps, in double because
     * float would move t = 1000 s by 6e-5 and the features with it). */
    void (*timestep_embed)(dxk_backend *be, float *out, const double *t, int B);

    /* c[b,:] += table[y[b],:]; y is host memory (B class indices, already
     * checked against the table). */
    void (*add_embedding)(dxk_backend *be, float *c, const float *table, const int *y, int B,
                          int D);

    /* img [B,C,H,W] -> tok [B,T,C*p*p], token n = gy*(W/p)+gx, features in
     * (c,py,px) order. */
    void (*patchify)(dxk_backend *be, float *tok, const float *img, int B, int C, int H, int W,
                     int p);
    /* tok [B,T,p*p*C] (features (py,px,c)) -> img [B,C,H,W] */
    void (*unpatchify)(dxk_backend *be, float *img, const float *tok, int B, int C, int H, int W,
                       int p);

    /* tok[b, gy*w+gx, :] += concat(E(D/2, gy), E(D/2, gx)), the 2-D sin-cos
     * position embedding of doc/model-format.md step 2, computed in double. */
    void (*pos_embed_add)(dxk_backend *be, float *tok, int B, int h, int w, int D);

    /* x[b,t,d] += gate[b*gate_stride + d] * y[b,t,d] */
    void (*gated_residual)(dxk_backend *be, float *x, const float *y, const float *gate,
                           int gate_stride, int B, int T, int D);

    /* x += dt * v (n floats) */
    void (*euler)(dxk_backend *be, float *x, const float *v, float dt, size_t n);
    /* out = vu + g (vc - vu) (n floats); out may alias vc or vu */
    void (*cfg_combine)(dxk_backend *be, float *out, const float *vc, const float *vu, float g,
                        size_t n);

    /* ---- control ---- */

    /* Waits for the work issued so far and reports the first failure since
     * the backend was created (DEXEC_OK, DEXEC_ENOMEM, DEXEC_EIO with the
     * message in err). */
    dexec_status (*sync)(dxk_backend *be, char *err, size_t errlen);
    /* Frees the backend (buffers must have been released). NULL is accepted
     * by dxk_backend_free. */
    void (*destroy)(dxk_backend *be);
};

/* The CPU backend: OpenBLAS SGEMM for every linear and attention product, C
 * loops for the rest. Never fails except for memory (DEXEC_ENOMEM). */
dexec_status dxk_backend_cpu(dxk_backend **out, char *err, size_t errlen);

/* The CUDA backend on device ordinal gpu (cuBLAS + kernels). Returns
 * DEXEC_ENOTSUP "device cuda requested but ..." when this build has no CUDA
 * or no device can be used. */
dexec_status dxk_backend_cuda(int gpu, dxk_backend **out, char *err, size_t errlen);

/* Number of usable CUDA devices; 0 in a build without CUDA, or when the
 * driver reports none (reason, when not NULL, gets the driver's words). */
int dxk_cuda_device_count(char *reason, size_t reasonlen);

void dxk_backend_free(dxk_backend *be);

#endif
