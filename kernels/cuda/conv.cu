/*
 * conv.cu - the autoencoder's spatial ops: 2-D convolution (stride 1, zero
 * padding (k-1)/2) as im2col + cuBLAS SGEMM, and nearest 2x upsampling.
 *
 * conv2d_half (half-precision weights) gathers the panel in the weights'
 * type, rounding x as it goes (a 1x1 convolution too), and multiplies with
 * cublasGemmEx accumulating in float32.
 *
 * The im2col panel is the backend's own scratch (dxc.col), grown to the
 * largest band asked for and kept: a decode calls conv2d ~30 times with a
 * handful of shapes. As on the CPU, the panel is made in bands of output
 * rows so that a 512-px decode (128 channels x 3 x 3 x 512 x 512 = 302 M
 * floats unbanded) needs at most DXC_COL_MAX floats.
 */
#include <config.h>

#include <stdio.h>

#include "ops_cuda.h"

/* Floats of the im2col panel: 256 MiB. */
#define DXC_COL_MAX ((size_t)64 << 20)

/* col[(ci*k*k + ky*k + kx), oy*W + ox] = x[ci, r0+oy+ky-pad, ox+kx-pad], 0
 * where the window leaves the image; n = rows*W columns per row. */
template <typename T>
static __global__ void im2col_kernel(T *__restrict__ col, const float *__restrict__ x, int H,
                                     int W, int k, int r0, int rows, size_t total)
{
    const int pad = (k - 1) / 2;
    const size_t n = (size_t)rows * W;

    DXC_FOR_EACH(i, total)
    {
        const size_t kr = i / n, pos = i % n;
        const int ci = (int)(kr / ((size_t)k * k)), kk = (int)(kr % ((size_t)k * k));
        const int ky = kk / k, kx = kk % k;
        const int oy = (int)(pos / W), ox = (int)(pos % W);
        const int iy = r0 + oy + ky - pad, ix = ox + kx - pad;

        dxc_store(&col[i], iy >= 0 && iy < H && ix >= 0 && ix < W
                               ? x[((size_t)ci * H + iy) * W + ix]
                               : 0.0f);
    }
}

/* y[co, i] = b[co] for the HW positions of each of Cout channels */
static __global__ void fill_channels_kernel(float *__restrict__ y, const float *__restrict__ b,
                                            size_t HW, size_t total)
{
    DXC_FOR_EACH(i, total)
    {
        y[i] = b[i / HW];
    }
}

/* The panel for a band of `floats`, grown when needed; NULL (recorded) when
 * the device is out of memory. */
static float *dxc_col(dxc *c, size_t floats)
{
    if (c->col_n >= floats)
        return c->col;
    dxc_free(c, c->col);
    c->col = NULL;
    c->col_n = 0;
    c->col = (float *)dxc_malloc(c, floats * sizeof(float), "the convolution panel (im2col)");
    if (c->col != NULL)
        c->col_n = floats;
    return c->col;
}

/* The panel of one band: float32 for conv2d (none for k = 1: x is the
 * panel), the weights' half type for conv2d_half (x rounded as it is
 * gathered, k = 1 too). */
static bool dxc_panel(dxc *c, void *col, int dtype, const float *xi, int H, int W, int k, int r0,
                      int rows, size_t total)
{
    const unsigned nb = dxc_blocks(total);

    if (dtype == DEXEC_DTYPE_F32)
        im2col_kernel<float><<<nb, DXC_THREADS, 0, c->stream>>>((float *)col, xi, H, W, k, r0,
                                                                 rows, total);
    else if (dtype == DEXEC_DTYPE_F16)
        im2col_kernel<__half><<<nb, DXC_THREADS, 0, c->stream>>>((__half *)col, xi, H, W, k, r0,
                                                                  rows, total);
    else
        im2col_kernel<__nv_bfloat16><<<nb, DXC_THREADS, 0, c->stream>>>(
            (__nv_bfloat16 *)col, xi, H, W, k, r0, rows, total);
    return dxc_launched(c, "im2col (conv2d)");
}

/* conv2d (dtype DEXEC_DTYPE_F32, w float32: cublasSgemm) and conv2d_half
 * (w in dtype: cublasGemmEx, float32 accumulation) */
static void dxc_conv2d_any(dxk_backend *be, float *y, const float *x, const void *w, int dtype,
                           const float *b, int B, int Cin, int H, int W, int Cout, int k)
{
    dxc *c = dxc_of(be);
    const size_t HW = (size_t)H * W, K = (size_t)Cin * k * k;
    const bool lowp = dtype != DEXEC_DTYPE_F32;
    /* elements of the panel per float of the kept buffer */
    const size_t per = lowp ? 2 : 1;
    const float one = 1.0f, zero = 0.0f;
    size_t band;
    void *col = NULL;
    char what[128];
    int img;

    if (B <= 0 || Cin <= 0 || Cout <= 0 || HW == 0 || k <= 0 || k % 2 == 0 || !dxc_enter(be))
        return;
    band = DXC_COL_MAX / (K * (size_t)W);
    if (band < 1)
        band = 1;
    if (band > (size_t)H || (k == 1 && !lowp))
        band = (size_t)H; /* a float32 1x1 convolution needs no panel: one GEMM */
    if ((k > 1 || lowp) && (col = dxc_col(c, (K * band * W + per - 1) / per)) == NULL)
        return;
    for (img = 0; img < B; img++) {
        const float *xi = x + (size_t)img * Cin * HW;
        float *yi = y + (size_t)img * Cout * HW;
        int r0;

        if (b != NULL) {
            size_t total = (size_t)Cout * HW;

            fill_channels_kernel<<<dxc_blocks(total), DXC_THREADS, 0, c->stream>>>(yi, b, HW,
                                                                                    total);
            if (!dxc_launched(c, "fill_channels (conv2d bias)"))
                return;
        }
        for (r0 = 0; r0 < H; r0 += (int)band) {
            const int rows = H - r0 < (int)band ? H - r0 : (int)band;
            const size_t n = (size_t)rows * W;
            const void *panel = xi;
            cublasStatus_t s;

            if (col != NULL) {
                if (!dxc_panel(c, col, dtype, xi, H, W, k, r0, rows, K * n))
                    return;
                panel = col;
            }
            /* row-major y[Cout, n] (row stride HW) = w[Cout, K] col[K, n]
             * (for a float32 k = 1 the panel is x itself, row stride HW);
             * column-major that is y^T (n x Cout) = col^T (n x K) w^T (K x Cout) */
            if (!lowp)
                s = cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)n, Cout, (int)K, &one,
                                (const float *)panel, col != NULL ? (int)n : (int)HW,
                                (const float *)w, (int)K, b != NULL ? &one : &zero,
                                yi + (size_t)r0 * W, (int)HW);
            else
                s = cublasGemmEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)n, Cout, (int)K, &one,
                                 panel, dxc_half_type(dtype), (int)n, w, dxc_half_type(dtype),
                                 (int)K, b != NULL ? &one : &zero, yi + (size_t)r0 * W,
                                 CUDA_R_32F, (int)HW, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS) {
                snprintf(what, sizeof what, "conv2d%s Cin=%d Cout=%d %dx%d k=%d (%s)",
                         lowp ? "_half" : "", Cin, Cout, H, W, k,
                         lowp ? "cublasGemmEx" : "cublasSgemm");
                dxc_blas_ok(c, s, what);
                return;
            }
        }
    }
}

void dxc_conv2d(dxk_backend *be, float *y, const float *x, const float *w, const float *b, int B,
                int Cin, int H, int W, int Cout, int k)
{
    dxc_conv2d_any(be, y, x, w, DEXEC_DTYPE_F32, b, B, Cin, H, W, Cout, k);
}

void dxc_conv2d_half(dxk_backend *be, float *y, const float *x, const void *w, int dtype,
                     const float *b, int B, int Cin, int H, int W, int Cout, int k)
{
    if (dxc_half_ok(dxc_of(be), dtype, "conv2d_half"))
        dxc_conv2d_any(be, y, x, w, dtype, b, B, Cin, H, W, Cout, k);
}

static __global__ void upsample2x_kernel(float *__restrict__ y, const float *__restrict__ x, int H,
                                         int W, size_t total)
{
    DXC_FOR_EACH(i, total)
    {
        const size_t W2 = 2 * (size_t)W, plane = 4 * (size_t)H * W;
        const size_t p = i / plane, r = i % plane;
        const size_t oy = r / W2, ox = r % W2;

        y[i] = x[(p * H + oy / 2) * W + ox / 2];
    }
}

void dxc_upsample_nearest2x(dxk_backend *be, float *y, const float *x, int B, int C, int H, int W)
{
    dxc *c = dxc_of(be);
    size_t total = (size_t)B * C * 4 * H * W;

    if (B <= 0 || C <= 0 || H <= 0 || W <= 0 || !dxc_enter(be))
        return;
    upsample2x_kernel<<<dxc_blocks(total), DXC_THREADS, 0, c->stream>>>(y, x, H, W, total);
    dxc_launched(c, "upsample_nearest2x");
}
