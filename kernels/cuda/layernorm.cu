/*
 * layernorm.cu - the normalisations: LayerNorm without affine parameters
 * followed by the adaLN modulation of a DiT block, y = LN(x) * (1 +
 * scale_b) + shift_b, one block of threads per token; and the
 * autoencoder's GroupNorm (optionally followed by SiLU), one block of
 * threads per group of one image.
 *
 * Mean and variance take two passes over the row (the row stays in L1):
 * the one-pass E[x^2] - E[x]^2 loses digits when a token's mean is large
 * against its spread, which residual streams of deep blocks do have.
 */
#include <config.h>

#include <math.h>

#include "ops_cuda.h"

/* y may alias x: every element is read in the passes before the last
 * barrier, and the last pass reads and writes each element in one thread. */
static __global__ void ln_modulate_kernel(float *y, const float *x, const float *shift,
                                          const float *scale, int mod_stride, int T, int D,
                                          float eps)
{
    const size_t row = blockIdx.x;
    const size_t b = row / (size_t)T;
    const float *xr = x + row * D;
    float *yr = y + row * D;
    const float *sh = shift + b * mod_stride;
    const float *sc = scale + b * mod_stride;
    float s = 0.0f, q = 0.0f, mean, rs;
    int d;

    for (d = threadIdx.x; d < D; d += blockDim.x)
        s += xr[d];
    mean = (float)((double)dxc_block_reduce(s, false) / D);
    for (d = threadIdx.x; d < D; d += blockDim.x) {
        float e = xr[d] - mean;

        q += e * e;
    }
    /* the biased variance, as PyTorch's LayerNorm */
    rs = (float)(1.0 / sqrt((double)dxc_block_reduce(q, false) / D + (double)eps));
    for (d = threadIdx.x; d < D; d += blockDim.x)
        yr[d] = (xr[d] - mean) * rs * (1.0f + sc[d]) + sh[d];
}

void dxc_ln_modulate_eps(dxk_backend *be, float *y, const float *x, const float *shift,
                         const float *scale, int mod_stride, int B, int T, int D, float eps)
{
    dxc *c = dxc_of(be);
    size_t rows = (size_t)B * T;
    /* 3 to 6 elements per thread at the usual widths (384 to 1152) */
    int threads = D >= 1024 ? 256 : 128;

    if (B <= 0 || T <= 0 || D <= 0 || !dxc_enter(be))
        return;
    ln_modulate_kernel<<<(unsigned)rows, threads, 0, c->stream>>>(y, x, shift, scale, mod_stride,
                                                                  T, D, eps);
    dxc_launched(c, "ln_modulate");
}

/* eps 1e-6, as the bundled model's DiT code */
void dxc_ln_modulate(dxk_backend *be, float *y, const float *x, const float *shift,
                     const float *scale, int mod_stride, int B, int T, int D)
{
    dxc_ln_modulate_eps(be, y, x, shift, scale, mod_stride, B, T, D, 1e-6f);
}

/* The sum of v over the block in double, returned to every thread. A
 * group holds up to 16 channels x 512^2 positions (4 M values): float
 * partial sums of a few thousand values each would lose the digits the
 * CPU backend's double accumulation keeps. */
static __device__ double dxc_block_sum_double(double v)
{
    __shared__ double part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0)
            part[0] = v;
    }
    __syncthreads();
    return part[0];
}

/* block = b*G + g. Two passes for mean and variance (as the CPU backend),
 * a third writes y = x*a_c + sh_c with the channel's affine folded in.
 * y may alias x: every element is read before the last barrier, and the
 * last pass reads and writes each element in one thread. */
static __global__ void group_norm_kernel(float *y, const float *x, const float *gamma,
                                         const float *beta, int C, int HW, int G, float eps,
                                         int silu)
{
    const int b = blockIdx.x / G, g = blockIdx.x % G, cpg = C / G;
    const size_t n = (size_t)cpg * HW;
    const size_t off = ((size_t)b * C + (size_t)g * cpg) * HW;
    const float *xg = x + off;
    float *yg = y + off;
    double s = 0.0, q = 0.0, mean, rs;
    size_t i;

    for (i = threadIdx.x; i < n; i += blockDim.x)
        s += xg[i];
    mean = dxc_block_sum_double(s) / (double)n;
    for (i = threadIdx.x; i < n; i += blockDim.x) {
        double e = xg[i] - mean;

        q += e * e;
    }
    rs = 1.0 / sqrt(dxc_block_sum_double(q) / (double)n + (double)eps);
    for (i = threadIdx.x; i < n; i += blockDim.x) {
        const int cc = g * cpg + (int)(i / (size_t)HW);
        const float a = (float)(gamma[cc] * rs);
        const float sh = (float)(beta[cc] - mean * a);
        float v = xg[i] * a + sh;

        yg[i] = silu ? v / (1.0f + expf(-v)) : v;
    }
}

void dxc_group_norm(dxk_backend *be, float *y, const float *x, const float *gamma,
                    const float *beta, int B, int C, int HW, int G, float eps, int silu)
{
    dxc *c = dxc_of(be);

    if (B <= 0 || G <= 0 || C <= 0 || HW <= 0 || !dxc_enter(be))
        return;
    if (C % G != 0) {
        dxc_fail(c, DEXEC_EINVAL, "group_norm: %d channels are not a multiple of %d groups", C,
                 G);
        return;
    }
    group_norm_kernel<<<(unsigned)((size_t)B * G), 512, 0, c->stream>>>(y, x, gamma, beta, C, HW,
                                                                        G, eps, silu);
    dxc_launched(c, "group_norm");
}
