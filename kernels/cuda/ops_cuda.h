/*
 * ops_cuda.h - the state the .cu files of the CUDA backend share, and the
 * ops each of them implements. Internal to kernels/cuda: together these
 * files are the device plugin "cuda" (dexec_cuda.so, <dexec/device.h>),
 * whose only exported symbol is the descriptor in ops_cuda.cu; the worker
 * reaches it through kernels/backend.c, which loads the module at run
 * time. It is the only object of dexec that links libcublas/libcudart,
 * and it calls no libdexec function.
 *
 * Everything runs on one stream per backend; cuBLAS is bound to it. An op
 * first asks dxc_enter() (false after a failure: ops then do nothing),
 * queues its kernels, and checks the launch with dxc_launched(); faults
 * inside a kernel surface at the next sync.
 *
 * ops_cuda.cu holds the descriptor, the device object, buffers, errors,
 * the linear layers and the half-precision weights (upload_half,
 * linear_half); attention.cu, layernorm.cu (LayerNorm, GroupNorm),
 * elementwise.cu, embed.cu and conv.cu (convolution, upsampling) the
 * other ops. local.am builds them into dexec_cuda.so when
 * configure found nvcc; without it there is no module, and device = cuda
 * fails naming the directories searched. tests/test-cuda.c compares every
 * op with the CPU backend through the module, and tests/gpu/run.sh checks
 * and times them with nothing but the CUDA toolkit (its --build-only runs
 * in make check wherever nvcc was found).
 */
#ifndef DEXEC_KERNELS_CUDA_OPS_CUDA_H
#define DEXEC_KERNELS_CUDA_OPS_CUDA_H

#include <math.h>
#include <stddef.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

/* ops.h is a C header: its functions keep C linkage */
extern "C" {
#include "ops.h"
}

/* Per-image scalars that ops take from the host (timesteps, class
 * indices) travel as kernel arguments in batches of this many: no staging
 * buffer, and nothing to wait for before the host array is reused. */
#define DXC_HOST_ARGS 64

/* Threads per block of the element-wise kernels. */
#define DXC_THREADS 256

typedef struct dxc_alloc {
    void *p;
    size_t bytes;
} dxc_alloc;

typedef struct dxc {
    int gpu;
    cudaStream_t stream;
    cublasHandle_t blas;
    dexec_status fail; /* sticky first failure */
    char msg[256];
    /* every cudaMalloc of the backend, so release() knows sizes and
     * memory() can answer */
    dxc_alloc *allocs;
    size_t nallocs, cap;
    size_t used, peak; /* bytes; atomic, memory() may run on another thread */
    /* position embedding of the last grid asked for: computing T*D sines
     * in double at every step would cost more than the addition */
    float *pos;
    int pos_h, pos_w, pos_d;
    /* conv2d's im2col panel (conv.cu), kept between calls */
    float *col;
    size_t col_n; /* floats */
    /* linear_half's input rounded to the weights' type, kept between calls */
    void *xh;
    size_t xh_n; /* elements of 2 bytes */
} dxc;

static inline dxc *dxc_of(dxk_backend *be)
{
    return (dxc *)be->priv;
}

/* Records the first failure; later ones are dropped (they are usually
 * consequences of the first). */
void dxc_fail(dxc *c, dexec_status s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* False when e is an error (recorded with what, naming the operation). */
bool dxc_cuda_ok(dxc *c, cudaError_t e, const char *what);
bool dxc_blas_ok(dxc *c, cublasStatus_t s, const char *what);

/* False when the backend has failed; otherwise makes its GPU current for
 * the calling thread (ops may come from any one thread at a time). */
bool dxc_enter(dxk_backend *be);

/* Checks that the kernel just queued was accepted (bad launch
 * configuration, no kernel image for this GPU). */
bool dxc_launched(dxc *c, const char *kernel);

/* Device memory counted in memory(); NULL (recorded) when out of memory. */
void *dxc_malloc(dxc *c, size_t bytes, const char *what);
void dxc_free(dxc *c, void *p);

/* Blocks for a grid-stride loop over n elements, and the loop. */
unsigned dxc_blocks(size_t n);
#define DXC_FOR_EACH(i, n)                                                                        \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                      \
         i += (size_t)gridDim.x * blockDim.x)

/* ---- half precision (the 1.3 ops: dtype float16 / bfloat16) ---- */

/* The cuBLAS type of a DEXEC_DTYPE_F16 or _BF16 buffer. */
static inline cudaDataType_t dxc_half_type(int dtype)
{
    return dtype == DEXEC_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

/* False (recorded, naming op) unless dtype is DEXEC_DTYPE_F16 or _BF16. */
bool dxc_half_ok(dxc *c, int dtype, const char *op);

/* One float stored as T, rounded to nearest even. */
static __device__ __forceinline__ void dxc_store(float *p, float v)
{
    *p = v;
}
static __device__ __forceinline__ void dxc_store(__half *p, float v)
{
    *p = __float2half_rn(v);
}
static __device__ __forceinline__ void dxc_store(__nv_bfloat16 *p, float v)
{
    *p = __float2bfloat16_rn(v);
}

/* ---- block reductions (blockDim.x a multiple of 32, at most 1024) ---- */

static __device__ __forceinline__ float dxc_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float dxc_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* The sum (or max) of v over the block, returned to every thread. The
 * first barrier lets a kernel call these back to back: part[] is not
 * overwritten before every thread has read the previous result. */
static __device__ __forceinline__ float dxc_block_reduce(float v, bool max)
{
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float identity = max ? -INFINITY : 0.0f;

    v = max ? dxc_warp_max(v) : dxc_warp_sum(v);
    __syncthreads();
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : identity;
        v = max ? dxc_warp_max(v) : dxc_warp_sum(v);
        if (lane == 0)
            part[0] = v;
    }
    __syncthreads();
    return part[0];
}

/* ---- the ops, one file each family ---- */

/* attention.cu */
void dxc_attention(dxk_backend *be, float *out, const float *qkv, float *scratch, int B, int T,
                   int H, int D);
size_t dxc_attention_scratch(dxk_backend *be, int B, int T, int H);

/* layernorm.cu */
void dxc_ln_modulate(dxk_backend *be, float *y, const float *x, const float *shift,
                     const float *scale, int mod_stride, int B, int T, int D);
void dxc_ln_modulate_eps(dxk_backend *be, float *y, const float *x, const float *shift,
                         const float *scale, int mod_stride, int B, int T, int D, float eps);
void dxc_group_norm(dxk_backend *be, float *y, const float *x, const float *gamma,
                    const float *beta, int B, int C, int HW, int G, float eps, int silu);

/* conv.cu */
void dxc_conv2d(dxk_backend *be, float *y, const float *x, const float *w, const float *b, int B,
                int Cin, int H, int W, int Cout, int k);
void dxc_conv2d_half(dxk_backend *be, float *y, const float *x, const void *w, int dtype,
                     const float *b, int B, int Cin, int H, int W, int Cout, int k);
void dxc_upsample_nearest2x(dxk_backend *be, float *y, const float *x, int B, int C, int H,
                            int W);

/* elementwise.cu */
void dxc_gelu_tanh(dxk_backend *be, float *x, size_t n);
void dxc_silu(dxk_backend *be, float *y, const float *x, size_t n);
void dxc_gated_residual(dxk_backend *be, float *x, const float *y, const float *gate,
                        int gate_stride, int B, int T, int D);
void dxc_euler(dxk_backend *be, float *x, const float *v, float dt, size_t n);
void dxc_cfg_combine(dxk_backend *be, float *out, const float *vc, const float *vu, float g,
                     size_t n);

/* embed.cu */
void dxc_timestep_embed(dxk_backend *be, float *out, const double *t, int B);
void dxc_add_embedding(dxk_backend *be, float *c, const float *table, const int *y, int B, int D);
void dxc_patchify(dxk_backend *be, float *tok, const float *img, int B, int C, int H, int W,
                  int p);
void dxc_unpatchify(dxk_backend *be, float *img, const float *tok, int B, int C, int H, int W,
                    int p);
void dxc_pos_embed_add(dxk_backend *be, float *tok, int B, int h, int w, int D);

#endif
