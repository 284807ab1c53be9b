/*
 * layernorm.cu - LayerNorm without affine parameters followed by the adaLN
 * modulation of a DiT block: y = LN(x) * (1 + scale_b) + shift_b, one
 * block of threads per token.
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
                                          const float *scale, int mod_stride, int T, int D)
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
    /* eps 1e-6 and the biased variance, as PyTorch's LayerNorm */
    rs = (float)(1.0 / sqrt((double)dxc_block_reduce(q, false) / D + 1e-6));
    for (d = threadIdx.x; d < D; d += blockDim.x)
        yr[d] = (xr[d] - mean) * rs * (1.0f + sc[d]) + sh[d];
}

void dxc_ln_modulate(dxk_backend *be, float *y, const float *x, const float *shift,
                     const float *scale, int mod_stride, int B, int T, int D)
{
    dxc *c = dxc_of(be);
    size_t rows = (size_t)B * T;
    /* 3 to 6 elements per thread at the usual widths (384 to 1152) */
    int threads = D >= 1024 ? 256 : 128;

    if (B <= 0 || T <= 0 || D <= 0 || !dxc_enter(be))
        return;
    ln_modulate_kernel<<<(unsigned)rows, threads, 0, c->stream>>>(y, x, shift, scale, mod_stride,
                                                                  T, D);
    dxc_launched(c, "ln_modulate");
}
