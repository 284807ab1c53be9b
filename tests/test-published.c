/*
 * test-published.c - the "published" suite: the latent models' ops
 * (conv2d, group_norm, nearest upsampling, LayerNorm with eps) against
 * naive double references, and the published DiT (both tensor layouts),
 * the VAE decoder and the four samplers against the golden tensors made
 * by the PyTorch twin (contrib/published/make_golden.py); then a diffusers
 * pipeline directory through the model API, and its errors.
 */
#include <config.h>

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dit.h"
#include "kernels.h"
#include "latent.h"
#include "ops.h"
#include "pipeline.h"
#include "safetensors.h"
#include "sampler.h"
#include "test-kernels-util.h"
#include "vae.h"

#define TOL_OP 1e-5
#define TOL_GOLD 1e-4

static dxk_backend *cpu(void)
{
    dxk_backend *be = NULL;
    char err[256];

    ck_assert_int_eq(dxk_backend_cpu(&be, err, sizeof err), DEXEC_OK);
    return be;
}

static float *fbuf(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof *p);

    ck_assert_ptr_nonnull(p);
    return p;
}

static double *dbuf(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof *p);

    ck_assert_ptr_nonnull(p);
    return p;
}

/* ---- ops ------------------------------------------------------------- */

/* 3x3 convolutions of 16 or more channels in and out go through Winograd
 * F(4x4, 3x3) (ops_cpu.c): odd sizes (partial 4x4 blocks), more tiles in a
 * row than one transform group (W 70: 18 tiles), bias and none. */
START_TEST(test_conv2d_winograd)
{
    static const int shapes[][5] = {{2, 16, 13, 11, 16}, {1, 24, 9, 70, 17}, {1, 32, 4, 4, 48}};
    dxk_backend *be = cpu();
    uint64_t seed = 11;
    size_t s;

    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int B = shapes[s][0], Ci = shapes[s][1], H = shapes[s][2], W = shapes[s][3];
        const int Co = shapes[s][4], withb = (int)(s % 2 == 0);
        float *x = fbuf((size_t)B * Ci * H * W), *w = fbuf((size_t)Co * Ci * 9);
        float *b = fbuf(Co), *y = fbuf((size_t)B * Co * H * W);
        double *ref = dbuf((size_t)B * Co * H * W), e;
        int n, o, oy, ox, c, ky, kx;

        tk_fill(&seed, x, (size_t)B * Ci * H * W, -1, 1);
        tk_fill(&seed, w, (size_t)Co * Ci * 9, -1, 1);
        tk_fill(&seed, b, Co, -1, 1);
        for (n = 0; n < B; n++)
            for (o = 0; o < Co; o++)
                for (oy = 0; oy < H; oy++)
                    for (ox = 0; ox < W; ox++) {
                        double acc = withb ? b[o] : 0.0;

                        for (c = 0; c < Ci; c++)
                            for (ky = 0; ky < 3; ky++)
                                for (kx = 0; kx < 3; kx++) {
                                    int iy = oy + ky - 1, ix = ox + kx - 1;

                                    if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                        acc += (double)w[((o * Ci + c) * 3 + ky) * 3 + kx] *
                                               x[((n * Ci + c) * H + iy) * W + ix];
                                }
                        ref[((n * Co + o) * H + oy) * W + ox] = acc;
                    }
        be->conv2d(be, y, x, w, withb ? b : NULL, B, Ci, H, W, Co, 3);
        ck_assert_int_eq(be->sync(be, NULL, 0), DEXEC_OK);
        e = tk_rel_err(y, ref, (size_t)B * Co * H * W);
        fprintf(stderr, "winograd %dx%dx%dx%d -> %d: relative error %.3g\n", B, Ci, H, W, Co, e);
        ck_assert_double_le(e, TOL_OP);
        free(x);
        free(w);
        free(b);
        free(y);
        free(ref);
    }
    dxk_backend_free(be);
}
END_TEST

/* The CPU backend's fused 3x3 convolution (dxk_cpu_conv3: GroupNorm,
 * SiLU and nearest 2x upsampling applied as the Winograd input transform,
 * or the direct convolution's row loads, read the input, the residual
 * added as the output is written) against a double reference and against
 * the same ops run one by one; odd sizes, a row of more tiles than one
 * transform group, B = 2. */
START_TEST(test_conv3_fused)
{
    /* B, Cin, H, W (output), Cout, G (0: no GroupNorm), silu, up2, acc */
    static const int cases[][9] = {{2, 16, 13, 11, 16, 4, 1, 0, 0},
                                   {1, 32, 10, 70, 24, 8, 0, 0, 1},
                                   {2, 16, 12, 18, 16, 0, 0, 1, 0},
                                   {1, 24, 8, 38, 20, 6, 1, 1, 1},
                                   /* fewer than 16 out: the direct convolution, one band
                                    * of 16 rows and a part of another */
                                   {2, 16, 21, 13, 3, 4, 1, 0, 0},
                                   {1, 5, 18, 10, 7, 5, 0, 1, 1},
                                   {1, 3, 5, 7, 2, 0, 0, 0, 0}};
    dxk_backend *be = cpu();
    uint64_t seed = 23;
    size_t s;

    for (s = 0; s < sizeof cases / sizeof cases[0]; s++) {
        const int B = cases[s][0], Ci = cases[s][1], H = cases[s][2], W = cases[s][3];
        const int Co = cases[s][4], G = cases[s][5], silu = cases[s][6], up2 = cases[s][7];
        const int acc = cases[s][8], Hs = up2 ? H / 2 : H, Ws = up2 ? W / 2 : W;
        const size_t nx = (size_t)B * Ci * Hs * Ws, ny = (size_t)B * Co * H * W;
        const size_t nin = (size_t)B * Ci * H * W;
        float *x = fbuf(nx), *w = fbuf((size_t)Co * Ci * 9), *b = fbuf(Co), *y = fbuf(ny);
        float *y0 = fbuf(ny), *g = fbuf(Ci), *bt = fbuf(Ci), *t = fbuf(nin), *u = fbuf(ny);
        double *xin = dbuf(nin), *ref = dbuf(ny), e1, e2, e3;
        const dxk_conv_pre pre = {G ? g : NULL, G ? bt : NULL, G, silu, 1e-6f, up2, acc};
        int n, c, gi, iy, ix, o, oy, ox, ky, kx;

        tk_fill(&seed, x, nx, -2, 3);
        tk_fill(&seed, w, (size_t)Co * Ci * 9, -1, 1);
        tk_fill(&seed, b, Co, -1, 1);
        tk_fill(&seed, y0, ny, -1, 1);
        tk_fill(&seed, g, Ci, 0.5f, 1.5f);
        tk_fill(&seed, bt, Ci, -1, 1);
        /* the convolution's input, in double */
        for (n = 0; n < B; n++)
            for (gi = 0; gi < (G ? G : 1); gi++) {
                const int c0 = G ? gi * (Ci / G) : 0, c1 = G ? c0 + Ci / G : Ci;
                double mean = 0, var = 0;

                for (c = c0; c < c1; c++)
                    for (iy = 0; iy < Hs * Ws; iy++)
                        mean += x[((size_t)n * Ci + c) * Hs * Ws + iy];
                mean /= (double)(c1 - c0) * Hs * Ws;
                for (c = c0; c < c1; c++)
                    for (iy = 0; iy < Hs * Ws; iy++)
                        var += pow(x[((size_t)n * Ci + c) * Hs * Ws + iy] - mean, 2);
                var /= (double)(c1 - c0) * Hs * Ws;
                for (c = c0; c < c1; c++)
                    for (iy = 0; iy < H; iy++)
                        for (ix = 0; ix < W; ix++) {
                            double v = x[(((size_t)n * Ci + c) * Hs + (up2 ? iy / 2 : iy)) * Ws +
                                         (up2 ? ix / 2 : ix)];

                            if (G) {
                                v = (v - mean) / sqrt(var + 1e-6) * g[c] + bt[c];
                                if (silu)
                                    v = v / (1 + exp(-v));
                            }
                            xin[(((size_t)n * Ci + c) * H + iy) * W + ix] = v;
                        }
            }
        for (n = 0; n < B; n++)
            for (o = 0; o < Co; o++)
                for (oy = 0; oy < H; oy++)
                    for (ox = 0; ox < W; ox++) {
                        const size_t k = (((size_t)n * Co + o) * H + oy) * W + ox;
                        double a = b[o] + (acc ? y0[k] : 0.0);

                        for (c = 0; c < Ci; c++)
                            for (ky = 0; ky < 3; ky++)
                                for (kx = 0; kx < 3; kx++) {
                                    iy = oy + ky - 1;
                                    ix = ox + kx - 1;
                                    if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                        a += (double)w[((o * Ci + c) * 3 + ky) * 3 + kx] *
                                             xin[(((size_t)n * Ci + c) * H + iy) * W + ix];
                                }
                        ref[k] = a;
                    }
        /* fused */
        memcpy(y, y0, ny * sizeof *y);
        ck_assert_int_eq(dxk_cpu_conv3(be, y, x, w, b, B, Ci, H, W, Co, &pre), 1);
        ck_assert_int_eq(be->sync(be, NULL, 0), DEXEC_OK);
        e1 = tk_rel_err(y, ref, ny);
        /* the same ops one by one */
        if (up2)
            be->upsample_nearest2x(be, t, x, B, Ci, Hs, Ws);
        else
            memcpy(t, x, nx * sizeof *t);
        if (G)
            be->group_norm(be, t, t, g, bt, B, Ci, H * W, G, 1e-6f, silu);
        be->conv2d(be, u, t, w, b, B, Ci, H, W, Co, 3);
        if (acc)
            be->euler(be, u, y0, 1.0f, ny);
        ck_assert_int_eq(be->sync(be, NULL, 0), DEXEC_OK);
        e2 = tk_rel_err(u, ref, ny);
        for (e3 = 0, o = 0; (size_t)o < ny; o++)
            if (fabs((double)y[o] - u[o]) > e3)
                e3 = fabs((double)y[o] - u[o]);
        fprintf(stderr,
                "fused conv3 %dx%dx%dx%d -> %d (G %d silu %d up2 %d acc %d): relative error %.3g, "
                "op by op %.3g, largest difference %.3g\n",
                B, Ci, H, W, Co, G, silu, up2, acc, e1, e2, e3);
        ck_assert_double_le(e1, TOL_OP);
        ck_assert_double_le(e2, TOL_OP);
        free(x);
        free(w);
        free(b);
        free(y);
        free(y0);
        free(g);
        free(bt);
        free(t);
        free(u);
        free(xin);
        free(ref);
    }
    dxk_backend_free(be);
}
END_TEST

/* dxk_cpu_conv3 does nothing, and says so, where the ops must run one by
 * one: fewer than 16 channels in with 16 or more out (im2col), an odd
 * size with upsampling, channels not a multiple of the groups, another
 * backend. */
START_TEST(test_conv3_fused_declines)
{
    dxk_backend *be = cpu();
    float x[16 * 4 * 4] = {0}, w[16 * 16 * 9] = {0}, y[16 * 8 * 8];
    const dxk_conv_pre up = {NULL, NULL, 0, 0, 0.0f, 1, 0};
    const dxk_conv_pre gn = {w, w, 5, 1, 1e-6f, 0, 0};
    void (*saved)(dexec_device *, float *, const float *, const float *, const float *, int, int,
                  int, int, int, int) = be->conv2d;

    y[0] = 7.0f;
    ck_assert_int_eq(dxk_cpu_conv3(be, y, x, w, NULL, 1, 8, 4, 4, 16, NULL), 0);
    ck_assert_int_eq(dxk_cpu_conv3(be, y, x, w, NULL, 1, 16, 4, 4, 8, &gn), 0);
    ck_assert_int_eq(dxk_cpu_conv3(be, y, x, w, NULL, 1, 16, 7, 8, 16, &up), 0);
    ck_assert_int_eq(dxk_cpu_conv3(be, y, x, w, NULL, 1, 16, 4, 4, 16, &gn), 0);
    be->conv2d = NULL; /* not the CPU backend's own op */
    ck_assert_int_eq(dxk_cpu_conv3(be, y, x, w, NULL, 1, 16, 4, 4, 16, NULL), 0);
    ck_assert_int_eq(dxk_cpu_conv3(NULL, y, x, w, NULL, 1, 16, 4, 4, 16, NULL), 0);
    be->conv2d = saved;
    ck_assert_float_eq(y[0], 7.0f); /* untouched */
    ck_assert_int_eq(dxk_cpu_conv3(be, y, x, w, NULL, 1, 16, 8, 8, 16, &up), 1);
    ck_assert_float_eq(y[0], 0.0f);
    ck_assert_int_eq(be->sync(be, NULL, 0), DEXEC_OK);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_conv2d)
{
    static const int ks[2] = {1, 3};
    dxk_backend *be = cpu();
    uint64_t seed = 7;
    const int B = 2, Ci = 5, H = 7, W = 6, Co = 4;
    int ki;

    for (ki = 0; ki < 2; ki++) {
        const int k = ks[ki], pad = (k - 1) / 2;
        float *x = fbuf((size_t)B * Ci * H * W), *w = fbuf((size_t)Co * Ci * k * k);
        float *b = fbuf(Co), *y = fbuf((size_t)B * Co * H * W);
        double *ref = dbuf((size_t)B * Co * H * W);
        int n, o, oy, ox, c, ky, kx;

        tk_fill(&seed, x, (size_t)B * Ci * H * W, -1, 1);
        tk_fill(&seed, w, (size_t)Co * Ci * k * k, -1, 1);
        tk_fill(&seed, b, Co, -1, 1);
        for (n = 0; n < B; n++)
            for (o = 0; o < Co; o++)
                for (oy = 0; oy < H; oy++)
                    for (ox = 0; ox < W; ox++) {
                        double s = b[o];

                        for (c = 0; c < Ci; c++)
                            for (ky = 0; ky < k; ky++)
                                for (kx = 0; kx < k; kx++) {
                                    int iy = oy + ky - pad, ix = ox + kx - pad;

                                    if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                        s += (double)w[((o * Ci + c) * k + ky) * k + kx] *
                                             x[((n * Ci + c) * H + iy) * W + ix];
                                }
                        ref[((n * Co + o) * H + oy) * W + ox] = s;
                    }
        be->conv2d(be, y, x, w, b, B, Ci, H, W, Co, k);
        ck_assert_int_eq(be->sync(be, NULL, 0), DEXEC_OK);
        ck_assert_double_le(tk_rel_err(y, ref, (size_t)B * Co * H * W), TOL_OP);
        free(x);
        free(w);
        free(b);
        free(y);
        free(ref);
    }
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_group_norm)
{
    dxk_backend *be = cpu();
    uint64_t seed = 11;
    const int B = 2, C = 6, HW = 35, G = 3, cpg = C / G;
    const size_t n = (size_t)B * C * HW;
    float *x = fbuf(n), *y = fbuf(n), *g = fbuf(C), *bt = fbuf(C);
    double *ref = dbuf(n), *ref2 = dbuf(n);
    int b, gi, c, i, silu;

    tk_fill(&seed, x, n, -3, 5);
    tk_fill(&seed, g, C, 0.5f, 1.5f);
    tk_fill(&seed, bt, C, -1, 1);
    for (b = 0; b < B; b++)
        for (gi = 0; gi < G; gi++) {
            double mean = 0, var = 0;

            for (c = gi * cpg; c < (gi + 1) * cpg; c++)
                for (i = 0; i < HW; i++)
                    mean += x[(b * C + c) * HW + i];
            mean /= cpg * HW;
            for (c = gi * cpg; c < (gi + 1) * cpg; c++)
                for (i = 0; i < HW; i++)
                    var += pow(x[(b * C + c) * HW + i] - mean, 2);
            var /= cpg * HW;
            for (c = gi * cpg; c < (gi + 1) * cpg; c++)
                for (i = 0; i < HW; i++) {
                    size_t k = ((size_t)b * C + c) * HW + i;
                    double v = (x[k] - mean) / sqrt(var + 1e-6) * g[c] + bt[c];

                    ref[k] = v;
                    ref2[k] = v / (1 + exp(-v));
                }
        }
    for (silu = 0; silu < 2; silu++) {
        be->group_norm(be, y, x, g, bt, B, C, HW, G, 1e-6f, silu);
        ck_assert_int_eq(be->sync(be, NULL, 0), DEXEC_OK);
        ck_assert_double_le(tk_rel_err(y, silu ? ref2 : ref, n), TOL_OP);
    }
    /* in place */
    memcpy(y, x, n * sizeof *y);
    be->group_norm(be, y, y, g, bt, B, C, HW, G, 1e-6f, 0);
    ck_assert_double_le(tk_rel_err(y, ref, n), TOL_OP);
    free(x);
    free(y);
    free(g);
    free(bt);
    free(ref);
    free(ref2);
    dxk_backend_free(be);
}
END_TEST

/* max over y of |y - ref| / sum |terms| for y = x w^T + b, x M x K, w N x K,
 * the reference in double */
static double linear_rel_err(const float *y, const float *x, const float *w, const float *b,
                             int M, int N, int K)
{
    double maxrel = 0;

    for (int i = 0; i < M; i++)
        for (int n = 0; n < N; n++) {
            double ref = b[n], mag = fabs(b[n]);

            for (int k = 0; k < K; k++) {
                ref += (double)x[(size_t)i * K + k] * w[(size_t)n * K + k];
                mag += fabs((double)x[(size_t)i * K + k] * w[(size_t)n * K + k]);
            }
            if (fabs(y[(size_t)i * N + n] - ref) / mag > maxrel)
                maxrel = fabs(y[(size_t)i * N + n] - ref) / mag;
        }
    return maxrel;
}

/* The CPU backend's linear splits its output columns over the backend's
 * pool (ops_cpu.c cpu_linear): a row's result must not depend on how many
 * rows share the call (sequence-parallel shards, a cfg pair's batch of
 * one against two), and must match a double reference. N is not a
 * multiple of the split's 64 columns. */
START_TEST(test_linear_rows_independent)
{
    dxk_backend *be = cpu();
    const int N = 1000, K = 200, Mmax = 9;
    float *x = fbuf((size_t)Mmax * K), *w = fbuf((size_t)N * K), *b = fbuf(N);
    float *y = fbuf((size_t)Mmax * N), *yr = fbuf((size_t)Mmax * N);
    double maxrel;
    int M, r0;

    dxk_noise(5, 0, x, (size_t)Mmax * K);
    dxk_noise(5, 1, w, (size_t)N * K);
    dxk_noise(5, 2, b, N);
    be->linear(be, y, x, w, b, Mmax, N, K);
    maxrel = linear_rel_err(y, x, w, b, Mmax, N, K);
    ck_assert_msg(maxrel < 1e-6, "linear: relative error %g against double", maxrel);
    for (M = 1; M < Mmax; M++)
        for (r0 = 0; r0 + M <= Mmax; r0 += M) {
            be->linear(be, yr, x + (size_t)r0 * K, w, b, M, N, K);
            ck_assert_msg(memcmp(yr, y + (size_t)r0 * N, (size_t)M * N * sizeof *y) == 0,
                          "linear: rows %d..%d computed %d at a time differ from the same rows "
                          "of one call of %d",
                          r0, r0 + M - 1, M, Mmax);
        }
    /* the few-rows path (the adaLN modulation): same checks */
    ck_assert_int_eq(dxk_cpu_linear_few(be, y, x, w, b, Mmax, N, K), 1);
    maxrel = linear_rel_err(y, x, w, b, Mmax, N, K);
    ck_assert_msg(maxrel < 1e-6, "linear_few: relative error %g against double", maxrel);
    for (M = 1; M < Mmax; M++)
        for (r0 = 0; r0 + M <= Mmax; r0 += M) {
            ck_assert_int_eq(dxk_cpu_linear_few(be, yr, x + (size_t)r0 * K, w, b, M, N, K), 1);
            ck_assert_msg(memcmp(yr, y + (size_t)r0 * N, (size_t)M * N * sizeof *y) == 0,
                          "linear_few: rows %d..%d computed %d at a time differ from the same "
                          "rows of one call of %d",
                          r0, r0 + M - 1, M, Mmax);
        }
    free(x);
    free(w);
    free(b);
    free(y);
    free(yr);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_upsample_and_ln_eps)
{
    dxk_backend *be = cpu();
    float x[2 * 2 * 3], y[2 * 4 * 6], r[4], s0[4] = {0}, s1[4] = {0};
    float t[4] = {1, 2, 3, 6};
    int i, oy, ox;

    for (i = 0; i < 12; i++)
        x[i] = (float)i;
    be->upsample_nearest2x(be, y, x, 1, 2, 2, 3);
    for (i = 0; i < 2; i++)
        for (oy = 0; oy < 4; oy++)
            for (ox = 0; ox < 6; ox++)
                ck_assert_float_eq(y[(i * 4 + oy) * 6 + ox], x[(i * 2 + oy / 2) * 3 + ox / 2]);
    /* mean 3, biased variance 3.5: eps 0.5 makes the scale 1/2 exactly */
    be->ln_modulate_eps(be, r, t, s0, s1, 0, 1, 1, 4, 0.5f);
    ck_assert_float_eq_tol(r[0], -1.0f, 1e-6f);
    ck_assert_float_eq_tol(r[3], 1.5f, 1e-6f);
    dxk_backend_free(be);
}
END_TEST

/* A CPU backend whose struct predates the latent ops. */
START_TEST(test_old_device_refused)
{
    dxk_backend *be = cpu();
    char err[512];
    void (*saved)(dexec_device *, float *, const float *, const float *, const float *, int, int,
                  int, int, int, int) = be->conv2d;

    ck_assert_int_eq(dxk_backend_latent_ops(be, err, sizeof err), DEXEC_OK);
    be->conv2d = NULL;
    ck_assert_int_eq(dxk_backend_latent_ops(be, err, sizeof err), DEXEC_ENOTSUP);
    ck_assert_str_eq(err, "device cpu has no 'conv2d' op, which the latent models (published "
                          "DiT/SiT and their autoencoder) need: use device = \"cpu\" for this "
                          "model, or install a cpu module built with this dexec");
    be->conv2d = saved;
    be->struct_size = DEXEC_DEVICE_SIZE_1_1;
    ck_assert_int_eq(dxk_backend_latent_ops(be, err, sizeof err), DEXEC_ENOTSUP);
    be->struct_size = sizeof *be;
    dxk_backend_free(be);
}
END_TEST

/* ---- golden ---------------------------------------------------------- */

static dxk_safetensors *io_open(void)
{
    char path[1024], err[512];
    dxk_safetensors *st = NULL;

    tk_golden_path(path, sizeof path, "published-io.safetensors");
    ck_assert_msg(dxk_st_open(path, &st, err, sizeof err) == DEXEC_OK, "%s", err);
    return st;
}

static const float *io_get(const dxk_safetensors *st, const char *name, size_t numel)
{
    const dxk_tensor *t = dxk_st_find(st, name);

    ck_assert_msg(t != NULL, "golden tensor %s missing", name);
    ck_assert_uint_eq(t->numel, numel);
    return t->data;
}

static double rel_f(const float *got, const float *ref, size_t n)
{
    return tk_rel_err_f(got, ref, n);
}

static dxk_pipeline *pipe_open(dxk_backend *be)
{
    char dir[1024], err[1024];
    dxk_pipeline *p = NULL;

    tk_golden_path(dir, sizeof dir, "published");
    ck_assert_msg(dxk_pipeline_open(dir, be, DEXEC_DTYPE_F32, &p, err, sizeof err) == DEXEC_OK,
                  "%s", err);
    return p;
}

/* The transformer of the golden pipeline under DiT's own names. */
static dxk_dit *orig_open(dxk_backend *be, dxk_safetensors **st)
{
    char path[1024], err[1024], *json;
    dxk_dit_config cfg;
    dxk_dit *m = NULL;
    FILE *f;
    long len;

    tk_golden_path(path, sizeof path, "published/transformer/config.json");
    f = fopen(path, "re");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    json = calloc((size_t)len + 1, 1);
    ck_assert_uint_eq(fread(json, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    ck_assert_msg(dxk_dit_config_json(path, json, &cfg, err, sizeof err) == DEXEC_OK, "%s", err);
    free(json);
    tk_golden_path(path, sizeof path, "published-orig.safetensors");
    ck_assert_msg(dxk_st_open(path, st, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_msg(dxk_dit_load_published(*st, &cfg, be, &m, err, sizeof err) == DEXEC_OK, "%s",
                  err);
    ck_assert_int_eq(m->cfg.layout, DXK_DIT_ORIGINAL);
    return m;
}

static void check_forward(dxk_dit *m, const dxk_safetensors *io, const char *ref_name)
{
    dxk_backend *be = m->be;
    const size_t nx = 2 * 4 * 8 * 8, nv = 2 * 8 * 8 * 8;
    const float *x = io_get(io, "fwd.x", nx), *t = io_get(io, "fwd.t", 2);
    const float *y = io_get(io, "fwd.y", 2);
    double tt[2] = {t[0], t[1]};
    int yy[2] = {(int)y[0], (int)y[1]};
    dxk_dit_ws *ws = NULL;
    char err[512];
    float *v = fbuf(nv);

    ck_assert_msg(dxk_dit_ws_alloc(m, 2, 8, 8, &ws, err, sizeof err) == DEXEC_OK, "%s", err);
    dxk_dit_forward(m, ws, v, x, tt, yy, 2);
    ck_assert_int_eq(be->sync(be, NULL, 0), DEXEC_OK);
    ck_assert_double_le(rel_f(v, io_get(io, ref_name, nv), nv), TOL_GOLD);
    dxk_dit_ws_free(m, ws);
    free(v);
}

START_TEST(test_forward_original)
{
    dxk_backend *be = cpu();
    dxk_safetensors *io = io_open(), *st = NULL;
    dxk_dit *m = orig_open(be, &st);

    check_forward(m, io, "fwd.orig");
    dxk_dit_free(m);
    dxk_st_close(st);
    dxk_st_close(io);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_forward_diffusers)
{
    dxk_backend *be = cpu();
    dxk_safetensors *io = io_open();
    dxk_pipeline *p = pipe_open(be);

    ck_assert_int_eq(p->dit->cfg.layout, DXK_DIT_DIFFUSERS);
    ck_assert_int_eq(p->dit->cfg.out_channels, 8);
    ck_assert_int_eq(p->sampler, DXK_SAMPLER_DDPM);
    ck_assert_int_eq(p->guide_channels, 4);
    ck_assert_int_eq(p->image_size, 16);
    check_forward(p->dit, io, "fwd.diffusers");
    dxk_pipeline_free(p);
    dxk_st_close(io);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_guided_forward)
{
    dxk_backend *be = cpu();
    dxk_safetensors *io = io_open(), *st = NULL;
    dxk_dit *m = orig_open(be, &st);
    dxk_dit_ws *ws = NULL;
    float *out = fbuf(8 * 64);
    char err[512];

    ck_assert_int_eq(dxk_dit_ws_alloc(m, 2, 8, 8, &ws, err, sizeof err), DEXEC_OK);
    ck_assert_msg(dxk_latent_guided(m, ws, io_get(io, "fwd.x", 2 * 256), 500.0, 3, 10, 4.0, 3,
                                    out, err, sizeof err) == DEXEC_OK,
                  "%s", err);
    ck_assert_double_le(rel_f(out, io_get(io, "guided.orig", 8 * 64), 8 * 64), TOL_GOLD);
    dxk_dit_ws_free(m, ws);
    dxk_dit_free(m);
    dxk_st_close(st);
    dxk_st_close(io);
    dxk_backend_free(be);
    free(out);
}
END_TEST

/* ---- half-precision weights (dtype float16 / bfloat16) ----------------- */

/* The CPU backend posing as a device with the 1.3 ops: "half" weights are
 * float buffers holding values rounded to the type, and linear_half /
 * conv2d_half round their input the same way before the float32 op. It
 * runs the loaders' and the model's half-precision paths (what the CUDA
 * backend gets) where no GPU is. */
static int emu_uploads;

static void *emu_upload_half(dexec_device *be, const float *src, size_t n, int dtype)
{
    float *w = be->alloc(be, n);

    ck_assert_ptr_nonnull(w);
    ck_assert(dtype == DEXEC_DTYPE_F16 || dtype == DEXEC_DTYPE_BF16);
    for (size_t i = 0; i < n; i++)
        w[i] = tk_round_to(src[i], dtype);
    emu_uploads++;
    return w;
}

static float *emu_round(const float *x, size_t n, int dtype)
{
    float *r = fbuf(n);

    for (size_t i = 0; i < n; i++)
        r[i] = tk_round_to(x[i], dtype);
    return r;
}

static void emu_linear_half(dexec_device *be, float *y, const float *x, const void *w, int dtype,
                            const float *b, int M, int N, int K)
{
    float *xr = emu_round(x, (size_t)M * K, dtype);

    be->linear(be, y, xr, (const float *)w, b, M, N, K);
    free(xr);
}

static void emu_conv2d_half(dexec_device *be, float *y, const float *x, const void *w, int dtype,
                            const float *b, int B, int Cin, int H, int W, int Cout, int k)
{
    float *xr = emu_round(x, (size_t)B * Cin * H * W, dtype);

    be->conv2d(be, y, xr, (const float *)w, b, B, Cin, H, W, Cout, k);
    free(xr);
}

static dxk_backend *emu(void)
{
    dxk_backend *be = cpu();

    be->name = "emu";
    be->upload_half = emu_upload_half;
    be->linear_half = emu_linear_half;
    be->conv2d_half = emu_conv2d_half;
    return be;
}

static double half_forward_err(dxk_pipeline *p, dxk_pipeline *ref, const dxk_safetensors *io)
{
    const size_t nx = 2 * 4 * 8 * 8, nv = 2 * 8 * 8 * 8;
    const float *x = io_get(io, "fwd.x", nx), *t = io_get(io, "fwd.t", 2);
    const float *y = io_get(io, "fwd.y", 2);
    double tt[2] = {t[0], t[1]}, e;
    int yy[2] = {(int)y[0], (int)y[1]};
    dxk_pipeline *both[2] = {p, ref};
    float *v[2] = {fbuf(nv), fbuf(nv)};
    char err[512];

    for (int i = 0; i < 2; i++) {
        dxk_dit_ws *ws = NULL;

        ck_assert_msg(dxk_dit_ws_alloc(both[i]->dit, 2, 8, 8, &ws, err, sizeof err) == DEXEC_OK,
                      "%s", err);
        dxk_dit_forward(both[i]->dit, ws, v[i], x, tt, yy, 2);
        ck_assert_int_eq(both[i]->dit->be->sync(both[i]->dit->be, NULL, 0), DEXEC_OK);
        dxk_dit_ws_free(both[i]->dit, ws);
    }
    e = rel_f(v[0], v[1], nv);
    free(v[0]);
    free(v[1]);
    return e;
}

static double half_decode_err(dxk_pipeline *p, dxk_pipeline *ref, const dxk_safetensors *io)
{
    float *img[2] = {fbuf(768), fbuf(768)};
    dxk_pipeline *both[2] = {p, ref};
    char err[512];
    double e;

    for (int i = 0; i < 2; i++)
        ck_assert_msg(dxk_vae_decode(both[i]->vae, io_get(io, "vae.z", 256), 1, 8, 8, img[i], err,
                                     sizeof err) == DEXEC_OK,
                      "%s", err);
    e = rel_f(img[0], img[1], 768);
    free(img[0]);
    free(img[1]);
    return e;
}

/* The golden pipeline (diffusers layout: fused to_q/k/v; a VAE with its
 * mid-block attention) with half-precision weights on the emulating
 * device, against float32 on the CPU: every weight matrix went through
 * upload_half, and the outputs moved by what the type's rounding allows
 * (relative to the tensor's largest value): float16 at most 1e-2,
 * bfloat16 at most 5e-2, and both more than 1e-6 (so the half path ran). */
START_TEST(test_half_weights)
{
    static const int types[2] = {DEXEC_DTYPE_F16, DEXEC_DTYPE_BF16};
    static const double tol[2] = {1e-2, 5e-2};
    dxk_backend *ref_be = cpu(), *be = emu();
    dxk_safetensors *io = io_open();
    dxk_pipeline *ref = pipe_open(ref_be);
    char dir[1024], err[1024];

    tk_golden_path(dir, sizeof dir, "published");
    for (int i = 0; i < 2; i++) {
        dxk_pipeline *p = NULL;
        double ef, ed;

        emu_uploads = 0;
        ck_assert_msg(dxk_pipeline_open(dir, be, types[i], &p, err, sizeof err) == DEXEC_OK,
                      "%s", err);
        /* per block ada, qkv (fused), proj, fc1, fc2, and its own two
         * timestep linears; the patch embedding and the final two; the
         * decoder's convolutions and its attention's two */
        ck_assert_int_gt(emu_uploads, 7 * p->dit->cfg.depth + 3);
        ck_assert_ptr_null(p->dit->blocks[0].qkv.w);
        ck_assert_ptr_nonnull(p->dit->blocks[0].qkv.h);
        ck_assert_ptr_null(p->vae->conv_in.w);
        ck_assert_ptr_nonnull(p->vae->attn_qkv.h);
        /* every matrix, and nothing else: biases, norms, tables stay float32 */
        ck_assert_uint_gt(p->dit->half_params, p->dit->params * 9 / 10);
        ck_assert_uint_lt(p->dit->half_params, p->dit->params);
        ck_assert_uint_gt(p->vae->half_params, p->vae->params * 9 / 10);
        ef = half_forward_err(p, ref, io);
        ed = half_decode_err(p, ref, io);
        fprintf(stderr, "%s weights (emulated): forward %.3g, decode %.3g relative to float32\n",
                dxk_wdtype_name(types[i]), ef, ed);
        ck_assert_double_le(ef, tol[i]);
        ck_assert_double_le(ed, tol[i]);
        ck_assert_double_gt(ef, 1e-6);
        ck_assert_double_gt(ed, 1e-6);
        dxk_pipeline_free(p);
    }
    dxk_pipeline_free(ref);
    dxk_st_close(io);
    dxk_backend_free(be);
    dxk_backend_free(ref_be);
}
END_TEST

/* dtype on a device that computes in float32 only: refused, never a
 * silent float32. */
START_TEST(test_half_refused)
{
    char dir[1024], err[1024];
    dxk_model *m = (dxk_model *)&m;
    dxk_backend *be = cpu();

    tk_golden_path(dir, sizeof dir, "published");
    ck_assert_int_eq(dxk_model_open_dtype(dir, "cpu", "float16", 0, &m, err, sizeof err),
                     DEXEC_ENOTSUP);
    ck_assert_ptr_null(m);
    ck_assert_str_eq(err, "dtype = \"float16\" is not supported on the CPU: the CPU backend "
                          "computes in float32 (float16 and bfloat16 files are converted to "
                          "float32 when loaded); use dtype = \"float32\" (the default), or "
                          "device = \"cuda\"");
    ck_assert_int_eq(dxk_model_open_dtype(dir, "cpu", "bfloat16", 0, &m, err, sizeof err),
                     DEXEC_ENOTSUP);
    ck_assert_msg(strncmp(err, "dtype = \"bfloat16\" is not supported on the CPU: ", 48) == 0,
                  "%s", err);
    ck_assert_int_eq(dxk_model_open_dtype(dir, "cpu", "float64", 0, &m, err, sizeof err),
                     DEXEC_EINVAL);
    ck_assert_str_eq(err, "dtype 'float64' is not one of float32, float16, bfloat16");
    ck_assert_msg(dxk_model_open_dtype(dir, "cpu", "float32", 0, &m, err, sizeof err) == DEXEC_OK,
                  "%s", err);
    ck_assert_str_eq(dxk_model_dtype(m), "float32");
    dxk_model_free(m);

    /* a device module of 1.2 (no half ops) */
    ck_assert_int_eq(dxk_pipeline_open(dir, be, DEXEC_DTYPE_F16, (dxk_pipeline **)&m, err,
                                       sizeof err),
                     DEXEC_ENOTSUP);
    be->name = "old";
    ck_assert_int_eq(dxk_backend_half(be, DEXEC_DTYPE_BF16, err, sizeof err), DEXEC_ENOTSUP);
    ck_assert_str_eq(err, "dtype = \"bfloat16\" is not supported on device old: it keeps no "
                          "half-precision weights; use dtype = \"float32\", or install a old "
                          "module built with this dexec");
    ck_assert_int_eq(dxk_backend_half(be, DEXEC_DTYPE_F32, err, sizeof err), DEXEC_OK);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_vae_decode)
{
    dxk_backend *be = cpu();
    dxk_safetensors *io = io_open();
    dxk_pipeline *p = pipe_open(be);
    float *img = fbuf(3 * 16 * 16);
    char err[512];
    double e;

    ck_assert_int_eq(dxk_vae_scale(&p->vae->cfg), 2);
    ck_assert_msg(dxk_vae_decode(p->vae, io_get(io, "vae.z", 256), 1, 8, 8, img, err,
                                 sizeof err) == DEXEC_OK,
                  "%s", err);
    e = rel_f(img, io_get(io, "vae.out", 768), 768);
    fprintf(stderr, "vae decode: relative error %.3g\n", e);
    ck_assert_double_le(e, TOL_GOLD);
    dxk_pipeline_free(p);
    dxk_st_close(io);
    dxk_backend_free(be);
    free(img);
}
END_TEST


/* The decode as other devices run it, op by op (group_norm, conv2d,
 * upsample_nearest2x, euler): a CPU backend whose conv2d is not its own,
 * so that dxk_cpu_conv3 declines every fused convolution. */
static void (*real_conv2d)(dexec_device *, float *, const float *, const float *, const float *,
                           int, int, int, int, int, int);

static void conv2d_wrapped(dexec_device *be, float *y, const float *x, const float *w,
                           const float *b, int B, int Cin, int H, int W, int Cout, int k)
{
    real_conv2d(be, y, x, w, b, B, Cin, H, W, Cout, k);
}

START_TEST(test_vae_decode_op_by_op)
{
    dxk_backend *be = cpu();
    dxk_safetensors *io = io_open();
    dxk_pipeline *p = pipe_open(be);
    float *img = fbuf(3 * 16 * 16);
    char err[512];
    double e;

    real_conv2d = be->conv2d;
    be->conv2d = conv2d_wrapped;
    ck_assert_int_eq(dxk_cpu_conv3(be, img, img, img, NULL, 1, 16, 4, 4, 16, NULL), 0);
    ck_assert_msg(dxk_vae_decode(p->vae, io_get(io, "vae.z", 256), 1, 8, 8, img, err,
                                 sizeof err) == DEXEC_OK,
                  "%s", err);
    e = rel_f(img, io_get(io, "vae.out", 768), 768);
    fprintf(stderr, "vae decode, op by op: relative error %.3g\n", e);
    ck_assert_double_le(e, TOL_GOLD);
    be->conv2d = real_conv2d;
    dxk_pipeline_free(p);
    dxk_st_close(io);
    dxk_backend_free(be);
    free(img);
}
END_TEST

START_TEST(test_samplers)
{
    static const dxk_sampler which[4] = {DXK_SAMPLER_DDPM, DXK_SAMPLER_DDIM, DXK_SAMPLER_EULER,
                                         DXK_SAMPLER_HEUN};
    dxk_backend *be = cpu();
    dxk_safetensors *io = io_open(), *st = NULL;
    dxk_dit *m = orig_open(be, &st);
    dxk_dit_ws *ws = NULL;
    float out[256];
    char err[512], name[64];
    int i;

    ck_assert_int_eq(dxk_dit_ws_alloc(m, 2, 8, 8, &ws, err, sizeof err), DEXEC_OK);
    for (i = 0; i < 4; i++) {
        dxk_latent_args a;
        double e;

        memset(&a, 0, sizeof a);
        a.noise = io_get(io, "sample.noise", 256);
        a.step_noise = io_get(io, "sample.step_noise", 4 * 256);
        a.h = a.w = 8;
        a.y = 3;
        a.y_neg = 10;
        a.steps = 4;
        a.guidance = 4.0;
        a.guide_channels = 3;
        a.sampler = which[i];
        ck_assert_msg(dxk_latent_sample(m, ws, &a, out, err, sizeof err) == DEXEC_OK, "%s", err);
        snprintf(name, sizeof name, "sample.%s", dxk_sampler_name(which[i]));
        e = rel_f(out, io_get(io, name, 256), 256);
        ck_assert_msg(e <= TOL_GOLD, "%s: relative error %g", name, e);
    }
    dxk_dit_ws_free(m, ws);
    dxk_dit_free(m);
    dxk_st_close(st);
    dxk_st_close(io);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_respace)
{
    int ts[250];
    double acp[250];

    dxk_ddpm_respace(4, ts, acp);
    ck_assert_int_eq(ts[0], 0);
    ck_assert_int_eq(ts[1], 333);
    ck_assert_int_eq(ts[2], 666);
    ck_assert_int_eq(ts[3], 999);
    ck_assert_double_eq_tol(acp[0], 1.0 - 1e-4, 1e-15);
    /* alphas_cumprod at t = 999 of the linear schedule: 4.04e-5 */
    ck_assert_double_eq_tol(acp[3], 4.0358e-5, 1e-8);
    dxk_ddpm_respace(250, ts, acp);
    ck_assert_int_eq(ts[249], 999);
    ck_assert_int_eq(ts[1], 4); /* round(4.012) */
}
END_TEST

/* ---- the model API over a pipeline directory ------------------------- */

START_TEST(test_generate)
{
    char dir[1024], err[1024];
    dxk_model *m = NULL;
    dexec_request req;
    dexec_output a, b;
    dexec_value *info;

    tk_golden_path(dir, sizeof dir, "published");
    ck_assert_msg(dxk_model_open(dir, "cpu", 0, &m, err, sizeof err) == DEXEC_OK, "%s", err);
    dexec_request_init(&req);
    req.prompt = "Golden Retriever";
    req.num_inference_steps = 3;
    req.seed = 5;
    dexec_output_init(&a);
    dexec_output_init(&b);
    ck_assert_msg(dxk_generate(m, &req, &a, NULL, NULL, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_uint_eq(a.num_images, 1);
    ck_assert_int_eq(a.images[0].width, 16);
    ck_assert_int_eq(a.images[0].height, 16);
    ck_assert_int_eq(a.images[0].channels, 3);
    ck_assert_int_eq(a.steps, 3);
    req.prompt = "a photo of a golden retriever";
    ck_assert_msg(dxk_generate(m, &req, &b, NULL, NULL, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_mem_eq(a.images[0].pixels, b.images[0].pixels, 16 * 16 * 3);
    dexec_output_clear(&a);
    dexec_output_clear(&b);

    req.prompt = "Tinca tinca"; /* a synonym of id2label's "tench, Tinca tinca" */
    ck_assert_msg(dxk_generate(m, &req, &a, NULL, NULL, err, sizeof err) == DEXEC_OK, "%s", err);
    dexec_output_clear(&a);

    req.prompt = "zebra";
    ck_assert_int_eq(dxk_generate(m, &req, &a, NULL, NULL, err, sizeof err), DEXEC_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "prompt 'zebra' names no class of this model; known words: "
                                      "tench, tinca tinca, goldfish"));
    req.prompt = "hen";
    req.width = 18;
    ck_assert_int_eq(dxk_generate(m, &req, &a, NULL, NULL, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "image size 18x16: each side must be a multiple of 4 (the VAE's 2 x the "
                          "patch size 2) up to 4096 (0: 16)");
    info = dxk_model_info(m);
    ck_assert_ptr_nonnull(info);
    ck_assert_str_eq(dexec_value_map_get(info, "sampler")->u.str.ptr, "ddpm");
    ck_assert_str_eq(dexec_value_map_get(info, "layout")->u.str.ptr, "diffusers");
    dexec_value_free(info);
    dxk_model_free(m);
}
END_TEST

/* A copy of the golden pipeline in a temporary directory, with files
 * replaced by the test. */
static void scratch_pipeline(char *dir, size_t len)
{
    char src[1024], cmd[4096];

    snprintf(dir, len, "/tmp/dexec-published-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    tk_golden_path(src, sizeof src, "published");
    snprintf(cmd, sizeof cmd, "cp -r '%s'/. '%s'/ && chmod -R u+w '%s'", src, dir, dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[2048];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "we");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void remove_dir(const char *dir)
{
    char cmd[2048];

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(test_pipeline_errors)
{
    char dir[256], err[1024], want[1024];
    dxk_model *m = NULL;

    scratch_pipeline(dir, sizeof dir);
    write_file(dir, "model_index.json",
               "{\"_class_name\": \"DiTPipeline\", \"transformer\": [\"diffusers\", \"x\"], "
               "\"vae\": [\"diffusers\", \"AutoencoderKL\"]}");
    ck_assert_int_eq(dxk_model_open(dir, "cpu", 0, &m, err, sizeof err), DEXEC_EINVAL);
    snprintf(want, sizeof want,
             "%s/model_index.json: no 'id2label' object: the class names are needed to turn "
             "prompts into classes (DiTPipeline.save_pretrained writes them; contrib/published "
             "adds them from torchvision's ImageNet categories)",
             dir);
    ck_assert_str_eq(err, want);
    remove_dir(dir);

    scratch_pipeline(dir, sizeof dir);
    write_file(dir, "transformer/config.json",
               "{\"sample_size\": 8, \"in_channels\": 4, \"out_channels\": 8, \"patch_size\": 2,"
               " \"num_layers\": 3, \"num_attention_heads\": 2, \"attention_head_dim\": 16,"
               " \"num_embeds_ada_norm\": 10}");
    ck_assert_int_eq(dxk_model_open(dir, "cpu", 0, &m, err, sizeof err), DEXEC_EINVAL);
    snprintf(want, sizeof want,
             "%s/transformer/diffusion_pytorch_model.safetensors: tensor "
             "'transformer_blocks.2.norm1.emb.timestep_embedder.linear_1.weight' is missing "
             "(expected shape [32, 256])",
             dir);
    ck_assert_str_eq(err, want);
    write_file(dir, "transformer/config.json",
               "{\"sample_size\": 8, \"in_channels\": 4, \"out_channels\": 5, \"patch_size\": 2,"
               " \"num_layers\": 2, \"num_attention_heads\": 2, \"attention_head_dim\": 16,"
               " \"num_embeds_ada_norm\": 10}");
    ck_assert_int_eq(dxk_model_open(dir, "cpu", 0, &m, err, sizeof err), DEXEC_EINVAL);
    snprintf(want, sizeof want,
             "%s/transformer/config.json: out_channels 5 must be in_channels 4, or twice it "
             "(learned sigma)",
             dir);
    ck_assert_str_eq(err, want);
    remove_dir(dir);

    scratch_pipeline(dir, sizeof dir);
    write_file(dir, "scheduler/scheduler_config.json",
               "{\"_class_name\": \"DDIMScheduler\", \"beta_schedule\": \"scaled_linear\"}");
    ck_assert_int_eq(dxk_model_open(dir, "cpu", 0, &m, err, sizeof err), DEXEC_ENOTSUP);
    write_file(dir, "scheduler/scheduler_config.json",
               "{\"_class_name\": \"DDIMScheduler\", \"dexec_sampler\": \"lms\"}");
    ck_assert_int_eq(dxk_model_open(dir, "cpu", 0, &m, err, sizeof err), DEXEC_EINVAL);
    snprintf(want, sizeof want,
             "%s/scheduler/scheduler_config.json: sampler 'lms' is not one of ddpm, ddim, "
             "euler, heun",
             dir);
    ck_assert_str_eq(err, want);
    write_file(dir, "scheduler/scheduler_config.json", "{\"_class_name\": \"DDIMScheduler\"}");
    ck_assert_msg(dxk_model_open(dir, "cpu", 0, &m, err, sizeof err) == DEXEC_OK, "%s", err);
    dxk_model_free(m);
    remove_dir(dir);
}
END_TEST

static Suite *published_suite(void)
{
    Suite *s = suite_create("published");
    TCase *ops = tcase_create("ops"), *gold = tcase_create("golden"), *api = tcase_create("api");

    tcase_set_timeout(gold, 120);
    tcase_set_timeout(api, 120);
    tcase_add_test(ops, test_conv2d);
    tcase_add_test(ops, test_conv2d_winograd);
    tcase_add_test(ops, test_conv3_fused);
    tcase_add_test(ops, test_conv3_fused_declines);
    tcase_add_test(ops, test_group_norm);
    tcase_add_test(ops, test_upsample_and_ln_eps);
    tcase_add_test(ops, test_linear_rows_independent);
    tcase_add_test(ops, test_old_device_refused);
    tcase_add_test(api, test_half_refused);
    tcase_add_test(gold, test_half_weights);
    tcase_add_test(gold, test_forward_original);
    tcase_add_test(gold, test_forward_diffusers);
    tcase_add_test(gold, test_guided_forward);
    tcase_add_test(gold, test_vae_decode);
    tcase_add_test(gold, test_vae_decode_op_by_op);
    tcase_add_test(gold, test_samplers);
    tcase_add_test(gold, test_respace);
    tcase_add_test(api, test_generate);
    tcase_add_test(api, test_pipeline_errors);
    suite_add_tcase(s, ops);
    suite_add_tcase(s, gold);
    suite_add_tcase(s, api);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(published_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
