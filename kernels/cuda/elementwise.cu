/*
 * elementwise.cu - the memory-bound ops of the CUDA backend: GELU (tanh
 * approximation), SiLU, the gated residual of a DiT block, the Euler update
 * and the classifier-free guidance combination. Each is one grid-stride
 * kernel; the formulas are those of the CPU backend, operation for
 * operation, so the two agree to a few ulp.
 */
#include <config.h>

#include <math.h>

#include "ops_cuda.h"

static __global__ void gelu_tanh_kernel(float *x, size_t n)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */

    DXC_FOR_EACH(i, n)
    {
        float v = x[i];

        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

void dxc_gelu_tanh(dxk_backend *be, float *x, size_t n)
{
    dxc *c = dxc_of(be);

    if (n == 0 || !dxc_enter(be))
        return;
    gelu_tanh_kernel<<<dxc_blocks(n), DXC_THREADS, 0, c->stream>>>(x, n);
    dxc_launched(c, "gelu_tanh");
}

static __global__ void silu_kernel(float *y, const float *x, size_t n)
{
    DXC_FOR_EACH(i, n)
    {
        float v = x[i];

        y[i] = v / (1.0f + expf(-v));
    }
}

void dxc_silu(dxk_backend *be, float *y, const float *x, size_t n)
{
    dxc *c = dxc_of(be);

    if (n == 0 || !dxc_enter(be))
        return;
    silu_kernel<<<dxc_blocks(n), DXC_THREADS, 0, c->stream>>>(y, x, n);
    dxc_launched(c, "silu");
}

static __global__ void gated_residual_kernel(float *__restrict__ x, const float *__restrict__ y,
                                             const float *__restrict__ gate, int gate_stride,
                                             size_t per_image, int D, size_t n)
{
    DXC_FOR_EACH(i, n)
    {
        size_t b = i / per_image;

        x[i] += gate[b * gate_stride + i % D] * y[i];
    }
}

void dxc_gated_residual(dxk_backend *be, float *x, const float *y, const float *gate,
                        int gate_stride, int B, int T, int D)
{
    dxc *c = dxc_of(be);
    size_t per_image = (size_t)T * D, n = (size_t)B * per_image;

    if (B <= 0 || n == 0 || !dxc_enter(be))
        return;
    gated_residual_kernel<<<dxc_blocks(n), DXC_THREADS, 0, c->stream>>>(x, y, gate, gate_stride,
                                                                         per_image, D, n);
    dxc_launched(c, "gated_residual");
}

static __global__ void euler_kernel(float *__restrict__ x, const float *__restrict__ v, float dt,
                                    size_t n)
{
    DXC_FOR_EACH(i, n)
    {
        x[i] += dt * v[i];
    }
}

void dxc_euler(dxk_backend *be, float *x, const float *v, float dt, size_t n)
{
    dxc *c = dxc_of(be);

    if (n == 0 || !dxc_enter(be))
        return;
    euler_kernel<<<dxc_blocks(n), DXC_THREADS, 0, c->stream>>>(x, v, dt, n);
    dxc_launched(c, "euler");
}

/* out may alias vc or vu: each element is read before it is written, in
 * the same thread. */
static __global__ void cfg_combine_kernel(float *out, const float *vc, const float *vu, float g,
                                          size_t n)
{
    DXC_FOR_EACH(i, n)
    {
        float u = vu[i];

        out[i] = u + g * (vc[i] - u);
    }
}

void dxc_cfg_combine(dxk_backend *be, float *out, const float *vc, const float *vu, float g,
                     size_t n)
{
    dxc *c = dxc_of(be);

    if (n == 0 || !dxc_enter(be))
        return;
    cfg_combine_kernel<<<dxc_blocks(n), DXC_THREADS, 0, c->stream>>>(out, vc, vu, g, n);
    dxc_launched(c, "cfg_combine");
}
