/*
 * test-kernels.c - the "kernels" suite: every CPU op against a naive
 * double-precision reference, the sampler's sigmas and noise, prompts, and
 * the golden DiT (one forward pass and the 8-step sample made by the
 * PyTorch twin in contrib/train/).
 */
#include <config.h>

#include <cblas.h>
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "dit.h"
#include "kernels.h"
#include "cpu/pool.h"
#include "ops.h"
#include "paths.h"
#include "prompt.h"
#include "safetensors.h"
#include "sampler.h"
#include "test-kernels-util.h"

#define TOL_OP 1e-5

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

#define ck_close(got, ref, n, tol)                                                            \
    do {                                                                                      \
        double e_ = tk_rel_err((got), (ref), (n));                                            \
        ck_assert_msg(e_ <= (tol), "%s: relative error %g > %g", #got, e_, (double)(tol));     \
    } while (0)

/* ---- OpenBLAS core selection ------------------------------------------ */

#pragma weak openblas_get_corename
char *openblas_get_corename(void);

/* OpenBLAS 0.3.21 falls back to its Prescott (SSE3) kernels on CPUs it does
 * not know (Emerald Rapids); dxk_blas_core_reexec (called by main below,
 * as by dexec-worker) re-executes the program with OPENBLAS_CORETYPE set
 * by the CPU's features, unless the user set it. */
START_TEST(test_blas_core)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const char *const old[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                      "Atom", "Nano", "Unknown"};
    const char *env = getenv("OPENBLAS_CORETYPE");
    int user_old = 0;
    dxk_backend *be = cpu();
    const char *core;
    size_t i;

    for (i = 0; env != NULL && i < sizeof old / sizeof old[0]; i++)
        user_old |= strcasecmp(env, old[i]) == 0;
    __builtin_cpu_init();
    if (openblas_get_corename == NULL || user_old || !__builtin_cpu_supports("avx2") ||
        !__builtin_cpu_supports("fma")) {
        fprintf(stderr, "test_blas_core: not checked (no OpenBLAS, OPENBLAS_CORETYPE set to "
                        "an old core, or no AVX2)\n");
        dxk_backend_free(be);
        return;
    }
    core = openblas_get_corename();
    for (i = 0; i < sizeof old / sizeof old[0]; i++)
        ck_assert_msg(strcmp(core, old[i]) != 0, "OpenBLAS runs its %s kernels on an AVX2 CPU",
                      core);
    dxk_backend_free(be);
#endif
}
END_TEST

/* ---- ops against naive references ----------------------------------- */

START_TEST(test_linear)
{
    static const int sizes[][3] = {{1, 1, 1}, {7, 13, 5}, {64, 96, 256}, {33, 17, 300}};
    dxk_backend *be = cpu();
    uint64_t rs = 1;
    size_t s;

    for (s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int M = sizes[s][0], N = sizes[s][1], K = sizes[s][2], i, j, k, withb;

        for (withb = 0; withb < 2; withb++) {
            float *x = fbuf((size_t)M * K), *w = fbuf((size_t)N * K), *b = fbuf(N);
            float *y = fbuf((size_t)M * N);
            double *r = dbuf((size_t)M * N);

            tk_fill(&rs, x, (size_t)M * K, -1, 1);
            tk_fill(&rs, w, (size_t)N * K, -1, 1);
            tk_fill(&rs, b, N, -1, 1);
            for (i = 0; i < M; i++)
                for (j = 0; j < N; j++) {
                    double acc = withb ? b[j] : 0.0;

                    for (k = 0; k < K; k++)
                        acc += (double)x[(size_t)i * K + k] * w[(size_t)j * K + k];
                    r[(size_t)i * N + j] = acc;
                }
            be->linear(be, y, x, w, withb ? b : NULL, M, N, K);
            ck_close(y, r, (size_t)M * N, TOL_OP);
            free(x);
            free(w);
            free(b);
            free(y);
            free(r);
        }
    }
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_ln_modulate)
{
    const int B = 3, T = 5, D = 48, stride = 6 * D;
    dxk_backend *be = cpu();
    float *x = fbuf((size_t)B * T * D), *y = fbuf((size_t)B * T * D), *mod = fbuf((size_t)B * stride);
    double *r = dbuf((size_t)B * T * D);
    uint64_t rs = 2;
    int b, t, d;

    tk_fill(&rs, x, (size_t)B * T * D, -3, 5);
    tk_fill(&rs, mod, (size_t)B * stride, -1, 1);
    for (b = 0; b < B; b++)
        for (t = 0; t < T; t++) {
            const float *xr = x + ((size_t)b * T + t) * D;
            double mean = 0, var = 0;

            for (d = 0; d < D; d++)
                mean += xr[d];
            mean /= D;
            for (d = 0; d < D; d++)
                var += (xr[d] - mean) * (xr[d] - mean);
            var /= D;
            for (d = 0; d < D; d++)
                r[((size_t)b * T + t) * D + d] =
                    (xr[d] - mean) / sqrt(var + 1e-6) * (1.0 + mod[(size_t)b * stride + D + d]) +
                    mod[(size_t)b * stride + d];
        }
    be->ln_modulate(be, y, x, mod, mod + D, stride, B, T, D);
    ck_close(y, r, (size_t)B * T * D, TOL_OP);
    /* in place gives the same */
    be->ln_modulate(be, x, x, mod, mod + D, stride, B, T, D);
    ck_close(x, r, (size_t)B * T * D, TOL_OP);
    free(x);
    free(y);
    free(mod);
    free(r);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_attention)
{
    const int B = 2, T = 19, H = 3, D = 24, hd = D / H;
    dxk_backend *be = cpu();
    float *qkv = fbuf((size_t)B * T * 3 * D), *o = fbuf((size_t)B * T * D);
    float *scratch = fbuf(be->attention_scratch(be, B, T, H));
    double *r = dbuf((size_t)B * T * D), *p = dbuf(T);
    uint64_t rs = 3;
    int b, h, i, j, k;

    tk_fill(&rs, qkv, (size_t)B * T * 3 * D, -2, 2);
    for (b = 0; b < B; b++)
        for (h = 0; h < H; h++)
            for (i = 0; i < T; i++) {
                double mx = -INFINITY, sum = 0;

                for (j = 0; j < T; j++) {
                    double acc = 0;

                    for (k = 0; k < hd; k++)
                        acc += (double)qkv[((size_t)b * T + i) * 3 * D + h * hd + k] *
                               qkv[((size_t)b * T + j) * 3 * D + D + h * hd + k];
                    p[j] = acc / sqrt((double)hd);
                    if (p[j] > mx)
                        mx = p[j];
                }
                for (j = 0; j < T; j++)
                    sum += (p[j] = exp(p[j] - mx));
                for (k = 0; k < hd; k++) {
                    double acc = 0;

                    for (j = 0; j < T; j++)
                        acc += p[j] / sum * qkv[((size_t)b * T + j) * 3 * D + 2 * D + h * hd + k];
                    r[((size_t)b * T + i) * D + h * hd + k] = acc;
                }
            }
    be->attention(be, o, qkv, scratch, B, T, H, D);
    ck_close(o, r, (size_t)B * T * D, TOL_OP);
    free(qkv);
    free(o);
    free(scratch);
    free(r);
    free(p);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_elementwise)
{
    const size_t n = 1000;
    dxk_backend *be = cpu();
    float *x = fbuf(n), *y = fbuf(n), *z = fbuf(n);
    double *r = dbuf(n);
    uint64_t rs = 4;
    size_t i;

    tk_fill(&rs, x, n, -6, 6);
    for (i = 0; i < n; i++) {
        double v = x[i];

        r[i] = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    }
    memcpy(y, x, n * sizeof *y);
    be->gelu_tanh(be, y, n);
    ck_close(y, r, n, TOL_OP);

    for (i = 0; i < n; i++)
        r[i] = x[i] / (1 + exp(-(double)x[i]));
    be->silu(be, y, x, n);
    ck_close(y, r, n, TOL_OP);

    /* saturation, and NaN goes through (a NaN must never look healthy) */
    {
        float e[4] = {100.0f, -100.0f, NAN, 1e30f};

        be->gelu_tanh(be, e, 4);
        ck_assert(e[0] == 100.0f && fabsf(e[1]) < 1e-30f && isnan(e[2]) && e[3] == 1e30f);
        e[2] = NAN;
        be->silu(be, e, e, 4);
        ck_assert(isnan(e[2]));
    }

    tk_fill(&rs, y, n, -1, 1);
    memcpy(z, x, n * sizeof *z);
    for (i = 0; i < n; i++)
        r[i] = x[i] + (double)-0.125f * y[i];
    be->euler(be, z, y, -0.125f, n);
    ck_close(z, r, n, TOL_OP);

    for (i = 0; i < n; i++)
        r[i] = y[i] + 3.5 * ((double)x[i] - y[i]);
    be->cfg_combine(be, z, x, y, 3.5f, n);
    ck_close(z, r, n, TOL_OP);
    free(x);
    free(y);
    free(z);
    free(r);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_timestep_embed)
{
    const double t[3] = {0.0, 123.4567, 1000.0};
    dxk_backend *be = cpu();
    float *o = fbuf(3 * DXK_TFREQ_DIM);
    double *r = dbuf(3 * DXK_TFREQ_DIM);
    int b, k;

    for (b = 0; b < 3; b++)
        for (k = 0; k < 128; k++) {
            double f = exp(-log(10000.0) * k / 128.0);

            r[b * 256 + k] = cos(t[b] * f);
            r[b * 256 + 128 + k] = sin(t[b] * f);
        }
    be->timestep_embed(be, o, t, 3);
    ck_close(o, r, 3 * DXK_TFREQ_DIM, 1e-6);
    free(o);
    free(r);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_patchify_roundtrip)
{
    const int B = 2, C = 3, H = 8, W = 12, p = 4, h = H / p, w = W / p, F = C * p * p;
    const size_t n = (size_t)B * C * H * W;
    dxk_backend *be = cpu();
    float *img = fbuf(n), *tok = fbuf(n), *back = fbuf(n), *tok2 = fbuf(n);
    uint64_t rs = 5;
    int b, gy, gx, c, py, px;

    tk_fill(&rs, img, n, -1, 1);
    be->patchify(be, tok, img, B, C, H, W, p);
    /* (c, py, px) order inside a token */
    for (b = 0; b < B; b++)
        for (gy = 0; gy < h; gy++)
            for (gx = 0; gx < w; gx++)
                for (c = 0; c < C; c++)
                    for (py = 0; py < p; py++)
                        for (px = 0; px < p; px++)
                            ck_assert(tok[((size_t)b * h * w + gy * w + gx) * F +
                                          (c * p + py) * p + px] ==
                                      img[(((size_t)b * C + c) * H + gy * p + py) * W + gx * p +
                                          px]);
    /* unpatchify reads (py, px, c): build that layout and go back */
    for (b = 0; b < B; b++)
        for (gy = 0; gy < h; gy++)
            for (gx = 0; gx < w; gx++)
                for (c = 0; c < C; c++)
                    for (py = 0; py < p; py++)
                        for (px = 0; px < p; px++)
                            tok2[((size_t)b * h * w + gy * w + gx) * F + (py * p + px) * C + c] =
                                img[(((size_t)b * C + c) * H + gy * p + py) * W + gx * p + px];
    be->unpatchify(be, back, tok2, B, C, H, W, p);
    ck_assert(memcmp(back, img, n * sizeof *img) == 0);
    free(img);
    free(tok);
    free(back);
    free(tok2);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_pos_embed_residual_embedding)
{
    const int B = 2, h = 3, w = 5, D = 16, T = h * w, stride = 40;
    dxk_backend *be = cpu();
    float *tok = fbuf((size_t)B * T * D), *y = fbuf((size_t)B * T * D), *g = fbuf(B * stride);
    float *c = fbuf(B * D), *table = fbuf(4 * D);
    double *r = dbuf((size_t)B * T * D);
    const int cls[2] = {3, 0};
    uint64_t rs = 6;
    int b, gy, gx, k, d;

    tk_fill(&rs, tok, (size_t)B * T * D, -1, 1);
    for (b = 0; b < B; b++)
        for (gy = 0; gy < h; gy++)
            for (gx = 0; gx < w; gx++) {
                size_t o = ((size_t)b * T + gy * w + gx) * D;

                for (k = 0; k < D / 4; k++) {
                    double wk = 1.0 / pow(10000.0, k / (D / 4.0));

                    r[o + k] = tok[o + k] + sin(gy * wk);
                    r[o + D / 4 + k] = tok[o + D / 4 + k] + cos(gy * wk);
                    r[o + D / 2 + k] = tok[o + D / 2 + k] + sin(gx * wk);
                    r[o + 3 * D / 4 + k] = tok[o + 3 * D / 4 + k] + cos(gx * wk);
                }
            }
    be->pos_embed_add(be, tok, B, h, w, D);
    ck_close(tok, r, (size_t)B * T * D, TOL_OP);

    tk_fill(&rs, y, (size_t)B * T * D, -1, 1);
    tk_fill(&rs, g, (size_t)B * stride, -1, 1);
    for (b = 0; b < B; b++)
        for (k = 0; k < T; k++)
            for (d = 0; d < D; d++) {
                size_t o = ((size_t)b * T + k) * D + d;

                r[o] = tok[o] + (double)g[b * stride + d] * y[o];
            }
    be->gated_residual(be, tok, y, g, stride, B, T, D);
    ck_close(tok, r, (size_t)B * T * D, TOL_OP);

    tk_fill(&rs, c, (size_t)B * D, -1, 1);
    tk_fill(&rs, table, 4 * (size_t)D, -1, 1);
    for (b = 0; b < B; b++)
        for (d = 0; d < D; d++)
            r[b * D + d] = (double)c[b * D + d] + table[cls[b] * D + d];
    be->add_embedding(be, c, table, cls, B, D);
    ck_close(c, r, (size_t)B * D, TOL_OP);
    free(tok);
    free(y);
    free(g);
    free(c);
    free(table);
    free(r);
    dxk_backend_free(be);
}
END_TEST

static void count_task(void *arg, int task, int thread)
{
    int *hits = arg;

    ck_assert_int_ge(thread, 0);
    ck_assert_int_lt(thread, 3);
    hits[task]++; /* tasks are disjoint: no two threads touch one slot */
}

START_TEST(test_pool)
{
    dxk_pool *p = dxk_pool_new(3, NULL);
    int hits[100], i, round;

    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(dxk_pool_size(p), 3);
    ck_assert_int_eq(dxk_pool_size(NULL), 1);
    ck_assert_ptr_null(dxk_pool_new(1, NULL));
    for (round = 0; round < 50; round++) {
        memset(hits, 0, sizeof hits);
        dxk_pool_run(p, round % 2 ? 100 : 2, count_task, hits);
        for (i = 0; i < 100; i++)
            ck_assert_int_eq(hits[i], i < (round % 2 ? 100 : 2) ? 1 : 0);
    }
    memset(hits, 0, sizeof hits);
    dxk_pool_run(NULL, 7, count_task, hits);
    for (i = 0; i < 7; i++)
        ck_assert_int_eq(hits[i], 1);
    dxk_pool_free(p);
    dxk_pool_free(NULL);
}
END_TEST

START_TEST(test_nan_never_passes)
{
    float got[3] = {1, NAN, 3};
    double ref[3] = {1, 2, 3};

    ck_assert(!(tk_rel_err(got, ref, 3) <= 1e-5));
}
END_TEST

/* ---- sampler --------------------------------------------------------- */

START_TEST(test_sigmas)
{
    const double shifts[3] = {1.0, 2.0, 3.0};
    double s[21];
    int k, i;

    for (k = 0; k < 3; k++) {
        dxk_sigmas(20, shifts[k], s);
        for (i = 0; i <= 20; i++) {
            double u = 1.0 - i / 20.0;

            ck_assert_double_eq_tol(s[i], shifts[k] * u / (1 + (shifts[k] - 1) * u), 1e-15);
        }
        ck_assert_double_eq(s[0], 1.0);
        ck_assert_double_eq(s[20], 0.0);
    }
}
END_TEST

START_TEST(test_noise)
{
    const size_t n = 20001;
    float *a = fbuf(n), *b = fbuf(n), *c = fbuf(n), *head = fbuf(7);
    double mean = 0, var = 0;
    size_t i;

    dxk_noise(42, 0, a, n);
    dxk_noise(42, 0, b, n);
    ck_assert(memcmp(a, b, n * sizeof *a) == 0);
    dxk_noise(42, 1, c, n);
    ck_assert(memcmp(a, c, n * sizeof *a) != 0);
    dxk_noise(43, 0, c, n);
    ck_assert(memcmp(a, c, n * sizeof *a) != 0);
    /* element e depends on e only, not on how many are drawn */
    dxk_noise(42, 0, head, 7);
    ck_assert(memcmp(a, head, 7 * sizeof *a) == 0);
    for (i = 0; i < n; i++) {
        ck_assert(isfinite(a[i]));
        mean += a[i];
    }
    mean /= n;
    for (i = 0; i < n; i++)
        var += (a[i] - mean) * (a[i] - mean);
    var /= n;
    ck_assert_msg(fabs(mean) < 0.03 && fabs(var - 1) < 0.05, "mean %g var %g", mean, var);
    /* pinned values: the definition in sampler.h is a contract */
    ck_assert_uint_eq(dxk_splitmix64(0), UINT64_C(0xE220A8397B1DCDAF));
    free(a);
    free(b);
    free(c);
    free(head);
}
END_TEST

START_TEST(test_to_pixel)
{
    ck_assert_uint_eq(dxk_to_pixel(-1.0f), 0);
    ck_assert_uint_eq(dxk_to_pixel(-5.0f), 0);
    ck_assert_uint_eq(dxk_to_pixel(1.0f), 255);
    ck_assert_uint_eq(dxk_to_pixel(7.0f), 255);
    ck_assert_uint_eq(dxk_to_pixel(0.0f), 128); /* 127.5 rounds half to even */
    ck_assert_uint_eq(dxk_to_pixel(NAN), 0);
}
END_TEST

/* ---- golden model ----------------------------------------------------- */

typedef struct golden {
    dxk_safetensors *model, *io;
    dxk_dit_config cfg;
    dxk_backend *be;
    dxk_dit *dit;
} golden;

static void golden_open(golden *g)
{
    char path[4096], err[512];

    memset(g, 0, sizeof *g);
    tk_golden_path(path, sizeof path, "golden-model.safetensors");
    ck_assert_msg(dxk_st_open(path, &g->model, err, sizeof err) == DEXEC_OK, "%s", err);
    tk_golden_path(path, sizeof path, "golden-io.safetensors");
    ck_assert_msg(dxk_st_open(path, &g->io, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_msg(dxk_dit_config_read(g->model, &g->cfg, err, sizeof err) == DEXEC_OK, "%s", err);
    g->be = cpu();
    ck_assert_msg(dxk_dit_load(g->model, &g->cfg, g->be, &g->dit, err, sizeof err) == DEXEC_OK,
                  "%s", err);
}

static void golden_close(golden *g)
{
    dxk_dit_free(g->dit);
    dxk_backend_free(g->be);
    dxk_st_close(g->model);
    dxk_st_close(g->io);
}

static const float *gt(const golden *g, const char *name, size_t numel)
{
    const dxk_tensor *t = dxk_st_find(g->io, name);

    ck_assert_msg(t != NULL, "golden tensor %s missing", name);
    ck_assert_uint_eq(t->numel, numel);
    return t->data;
}

static double f2d_rel(const float *got, const float *ref, size_t n)
{
    return tk_rel_err_f(got, ref, n);
}

START_TEST(test_golden_config)
{
    golden g;

    golden_open(&g);
    ck_assert_int_eq(g.cfg.image_size, 16);
    ck_assert_int_eq(g.cfg.in_channels, 3);
    ck_assert_int_eq(g.cfg.patch_size, 4);
    ck_assert_int_eq(g.cfg.hidden_size, 64);
    ck_assert_int_eq(g.cfg.depth, 2);
    ck_assert_int_eq(g.cfg.num_heads, 4);
    ck_assert_int_eq(g.cfg.num_classes, 10);
    ck_assert_double_eq(g.cfg.sigma_shift, 2.0);
    ck_assert_int_eq(g.cfg.default_steps, 8);
    golden_close(&g);
}
END_TEST

START_TEST(test_golden_forward)
{
    const size_t n = 2 * 3 * 16 * 16;
    golden g;
    dxk_dit_ws *ws;
    const float *x, *t, *y, *ref;
    double td[2];
    int yi[2];
    float *v = fbuf(n);
    char err[256];
    double e;

    golden_open(&g);
    x = gt(&g, "fwd.x", n);
    t = gt(&g, "fwd.t", 2);
    y = gt(&g, "fwd.y", 2);
    ref = gt(&g, "fwd.out", n);
    td[0] = t[0];
    td[1] = t[1];
    yi[0] = (int)y[0];
    yi[1] = (int)y[1];
    ck_assert_int_eq(yi[1], 10);
    ck_assert_int_eq(dxk_dit_ws_alloc(g.dit, 2, 16, 16, &ws, err, sizeof err), DEXEC_OK);
    dxk_dit_forward(g.dit, ws, v, x, td, yi, 2);
    ck_assert_int_eq(g.be->sync(g.be, err, sizeof err), DEXEC_OK);
    e = f2d_rel(v, ref, n);
    printf("golden forward: relative error %.3g\n", e);
    ck_assert_msg(e <= 1e-4, "forward: relative error %g", e);
    /* the intermediate the forward pass does not keep: one check of the
     * position embedding through the op, against the golden table */
    {
        const float *pos = gt(&g, "dbg.pos_embed", 16 * 64);
        float *z = fbuf(16 * 64);

        g.be->pos_embed_add(g.be, z, 1, 4, 4, 64);
        e = f2d_rel(z, pos, 16 * 64);
        ck_assert_msg(e <= 1e-6, "pos_embed: relative error %g", e);
        free(z);
    }
    dxk_dit_ws_free(g.dit, ws);
    free(v);
    golden_close(&g);
}
END_TEST

/* A device backend keeps its own copy of the weights: the CPU backend told
 * that its memory is not the host's takes that path (alloc + upload of
 * every tensor), which the CUDA backend relies on. */
START_TEST(test_golden_forward_uploaded)
{
    const size_t n = 2 * 3 * 16 * 16;
    char path[4096], err[512];
    dxk_safetensors *st, *io;
    dxk_dit_config cfg;
    dxk_backend *be = cpu();
    dxk_dit *dit;
    dxk_dit_ws *ws;
    const dxk_tensor *x, *t, *ref;
    float *v = fbuf(n);
    double td[2];
    int yi[2] = {3, 10};
    size_t used, peak;

    be->host_memory = 0;
    tk_golden_path(path, sizeof path, "golden-model.safetensors");
    ck_assert_int_eq(dxk_st_open(path, &st, err, sizeof err), DEXEC_OK);
    tk_golden_path(path, sizeof path, "golden-io.safetensors");
    ck_assert_int_eq(dxk_st_open(path, &io, err, sizeof err), DEXEC_OK);
    ck_assert_int_eq(dxk_dit_config_read(st, &cfg, err, sizeof err), DEXEC_OK);
    ck_assert_msg(dxk_dit_load(st, &cfg, be, &dit, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_uint_eq(dit->nuploads, st->ntensors);
    be->memory(be, &used, &peak);
    ck_assert_uint_eq(used, dit->params * sizeof(float));
    /* the copies, not the mapping, are what the model reads */
    ck_assert_ptr_ne(dit->y_table, dxk_st_find(st, "y_embedder.embedding_table.weight")->data);
    x = dxk_st_find(io, "fwd.x");
    t = dxk_st_find(io, "fwd.t");
    ref = dxk_st_find(io, "fwd.out");
    td[0] = t->data[0];
    td[1] = t->data[1];
    ck_assert_int_eq(dxk_dit_ws_alloc(dit, 2, 16, 16, &ws, err, sizeof err), DEXEC_OK);
    dxk_dit_forward(dit, ws, v, x->data, td, yi, 2);
    ck_assert_int_eq(be->sync(be, err, sizeof err), DEXEC_OK);
    ck_assert_msg(tk_rel_err_f(v, ref->data, n) <= 1e-4, "uploaded: %g",
                  tk_rel_err_f(v, ref->data, n));
    dxk_dit_ws_free(dit, ws);
    dxk_dit_free(dit);
    be->memory(be, &used, &peak);
    ck_assert_uint_eq(used, 0);
    dxk_backend_free(be);
    dxk_st_close(st);
    dxk_st_close(io);
    free(v);
}
END_TEST

static void golden_sample(double guidance, const char *ref_name, int check_pixels)
{
    const size_t n = 3 * 16 * 16;
    golden g;
    dxk_dit_ws *ws;
    dxk_sample_args a;
    const float *sig, *ref;
    double s[9], e;
    float *x = fbuf(n);
    char err[256];
    int i;

    golden_open(&g);
    sig = gt(&g, "sample.sigmas", 9);
    dxk_sigmas(8, 2.0, s);
    for (i = 0; i <= 8; i++)
        ck_assert_double_eq_tol(s[i], sig[i], 1e-7);
    ck_assert_int_eq(dxk_dit_ws_alloc(g.dit, 2, 16, 16, &ws, err, sizeof err), DEXEC_OK);
    memset(&a, 0, sizeof a);
    a.noise = gt(&g, "sample.noise", n);
    a.H = a.W = 16;
    a.y = (int)gt(&g, "sample.y", 1)[0];
    a.y_neg = guidance == 1.0 ? 10 : (int)gt(&g, "sample.y_neg", 1)[0];
    a.steps = (int)gt(&g, "sample.steps", 1)[0];
    a.guidance = guidance;
    a.shift = gt(&g, "sample.shift", 1)[0];
    ck_assert_int_eq(a.steps, 8);
    ck_assert_int_eq(dxk_sample(g.dit, ws, &a, x, err, sizeof err), DEXEC_OK);
    ref = gt(&g, ref_name, n);
    e = f2d_rel(x, ref, n);
    printf("golden %s: relative error %.3g\n", ref_name, e);
    ck_assert_msg(e <= 1e-4, "%s: relative error %g", ref_name, e);
    if (check_pixels) {
        const float *px = gt(&g, "sample.pixels", n);

        /* a pixel may differ only where x sits on a rounding boundary */
        for (i = 0; (size_t)i < n; i++) {
            double u = ((double)ref[i] + 1.0) * 127.5;

            if (fabs(u - floor(u) - 0.5) > 1e-3)
                ck_assert_msg(dxk_to_pixel(x[i]) == (uint8_t)px[i], "pixel %d: %u != %g", i,
                              dxk_to_pixel(x[i]), px[i]);
        }
    }
    dxk_dit_ws_free(g.dit, ws);
    free(x);
    golden_close(&g);
}

START_TEST(test_golden_sample)
{
    golden_sample(3.0, "sample.out", 1);
}
END_TEST

START_TEST(test_golden_sample_g1)
{
    golden_sample(1.0, "sample_g1.out", 0);
}
END_TEST

/* ---- prompts ----------------------------------------------------------- */

static dxk_vocab *golden_vocab(dxk_safetensors **st)
{
    char path[4096], err[512];
    dxk_vocab *v = NULL;

    tk_golden_path(path, sizeof path, "golden-model.safetensors");
    ck_assert_msg(dxk_st_open(path, st, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_msg(dxk_vocab_load(*st, 10, &v, err, sizeof err) == DEXEC_OK, "%s", err);
    return v;
}

START_TEST(test_prompt)
{
    dxk_safetensors *st;
    dxk_vocab *v = golden_vocab(&st);
    char err[2048], *norm;
    int c = -1;

    norm = dxk_prompt_normalize("  A   Red\tSNEAKER \n");
    ck_assert_str_eq(norm, "a red sneaker");
    free(norm);
    ck_assert_int_eq(dxk_prompt_class(v, NULL, &c, err, sizeof err), DEXEC_OK);
    ck_assert_int_eq(c, 10);
    ck_assert_int_eq(dxk_prompt_class(v, "   ", &c, err, sizeof err), DEXEC_OK);
    ck_assert_int_eq(c, 10);
    ck_assert_int_eq(dxk_prompt_class(v, "Ankle  Boot", &c, err, sizeof err), DEXEC_OK);
    ck_assert_int_eq(c, 9);
    ck_assert_int_eq(dxk_prompt_class(v, "T-Shirt/Top", &c, err, sizeof err), DEXEC_OK);
    ck_assert_int_eq(c, 0);
    ck_assert_int_eq(dxk_prompt_class(v, "a photo of a red sneaker, please", &c, err, sizeof err),
                     DEXEC_OK);
    ck_assert_int_eq(c, 7);
    /* "t-shirt" is one word: "shirt" (class 6) is not found inside it */
    ck_assert_int_eq(dxk_prompt_class(v, "a plain t-shirt", &c, err, sizeof err), DEXEC_OK);
    ck_assert_int_eq(c, 0);
    /* several words, one class */
    ck_assert_int_eq(dxk_prompt_class(v, "boots, ankle boot", &c, err, sizeof err), DEXEC_OK);
    ck_assert_int_eq(c, 9);
    /* a part of a word is not a word */
    ck_assert_int_eq(dxk_prompt_class(v, "bagel", &c, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "prompt 'bagel' names no class of this model; known words: "
                          "t-shirt/top, t-shirt, tshirt, tee, top, trouser, trousers, pants, "
                          "jeans, slacks, pullover, sweater, jumper, sweatshirt, dress, gown, "
                          "frock, coat, jacket, overcoat, sandal, sandals, flip-flop, flip-flops, "
                          "shirt, blouse, sneaker, sneakers, trainer, trainers, shoe, shoes, bag, "
                          "handbag, purse, backpack, ankle boot, ankle boots, boot, boots");
    ck_assert_int_eq(dxk_prompt_class(v, "a bag and a coat", &c, err, sizeof err), DEXEC_EINVAL);
    {
        const char *want = "prompt 'a bag and a coat' names several classes: 'coat' (coat), "
                           "'bag' (bag); known words: t-shirt/top,";

        ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);
    }
    dxk_vocab_free(v);
    dxk_st_close(st);
}
END_TEST

/* ---- the kernels.h entry points ----------------------------------------- */

static void golden_model_path(char *out, size_t len)
{
    tk_golden_path(out, len, "golden-model.safetensors");
}

START_TEST(test_resolve)
{
    char path[4096], err[4096], dir[4096];
    const char *src = getenv("DEXEC_TEST_SRCDIR");

    ck_assert_int_eq(dxk_resolve_model("/x/y.safetensors", path, sizeof path, err, sizeof err),
                     DEXEC_OK);
    ck_assert_str_eq(path, "/x/y.safetensors");
    ck_assert_int_eq(dxk_resolve_model("m.safetensors", path, sizeof path, err, sizeof err),
                     DEXEC_OK);
    ck_assert_str_eq(path, "m.safetensors");
    ck_assert_int_eq(dxk_resolve_model("", path, sizeof path, err, sizeof err), DEXEC_EINVAL);
    snprintf(dir, sizeof dir, "/nonexistent-a::%s/golden", src ? src : ".");
    setenv("DEXEC_MODEL_PATH", dir, 1);
    ck_assert_msg(dxk_resolve_model("golden-model", path, sizeof path, err, sizeof err) ==
                      DEXEC_OK,
                  "%s", err);
    snprintf(dir, sizeof dir, "%s/golden/golden-model.safetensors", src ? src : ".");
    ck_assert_str_eq(path, dir);
    setenv("DEXEC_MODEL_PATH", "/nonexistent-a:/nonexistent-b", 1);
    ck_assert_int_eq(dxk_resolve_model("nope", path, sizeof path, err, sizeof err),
                     DEXEC_ENOTFOUND);
    snprintf(dir, sizeof dir,
             "model 'nope' not found (searched /nonexistent-a/nope.safetensors, "
             "/nonexistent-b/nope.safetensors, %s/models/nope.safetensors): give a path to a "
             ".safetensors file or add its directory to DEXEC_MODEL_PATH",
             DEXEC_PKGDATADIR);
    ck_assert_str_eq(err, dir);
}
END_TEST

START_TEST(test_devices)
{
    char path[4096], err[1024];
    dxk_model *m = NULL;

    golden_model_path(path, sizeof path);
    ck_assert_msg(dxk_model_open(path, "auto", 0, &m, err, sizeof err) == DEXEC_OK, "%s", err);
    if (dxk_cuda_device_count(NULL, 0) == 0)
        ck_assert_str_eq(dxk_model_device(m), "cpu");
    dxk_model_free(m);
    ck_assert_int_eq(dxk_model_open(path, "cpu", 0, &m, err, sizeof err), DEXEC_OK);
    ck_assert_str_eq(dxk_model_device(m), "cpu");
    dxk_model_free(m);
    ck_assert_int_eq(dxk_model_open(path, "tpu", 0, &m, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "device 'tpu' is not one of auto, cpu, cuda");
    ck_assert_ptr_null(m);
    if (dxk_cuda_device_count(NULL, 0) == 0) {
        ck_assert_int_eq(dxk_model_open(path, "cuda", 0, &m, err, sizeof err), DEXEC_ENOTSUP);
        ck_assert_msg(strncmp(err, "device cuda requested but ", 26) == 0, "%s", err);
        ck_assert_ptr_null(m);
    }
    ck_assert_int_eq(dxk_model_open("/nonexistent/m.safetensors", "cpu", 0, &m, err, sizeof err),
                     DEXEC_ENOTFOUND);
    ck_assert_str_eq(err, "/nonexistent/m.safetensors: cannot open: No such file or directory");
}
END_TEST

/* Without dexec_cuda.so on the search path: device cuda fails naming the
 * module and every directory searched, auto runs on the CPU. (Runs in its
 * own child: the module, once loaded by a test, stays loaded.) */
START_TEST(test_cuda_module_missing)
{
    char path[4096], err[4096], want[4096], dir[] = "/tmp/dexec-test-nomodule.XXXXXX";
    dxk_model *m = NULL;

    /* The installed plugin directory is always searched last: after `make
     * install` it holds the module, and this case cannot be made here. */
    if (access(DEXEC_PLUGINDIR "/dexec_cuda.so", F_OK) == 0) {
        fprintf(stderr, "test_cuda_module_missing: not run: %s/dexec_cuda.so is installed\n",
                DEXEC_PLUGINDIR);
        return;
    }
    ck_assert_ptr_nonnull(mkdtemp(dir));
    setenv("DEXEC_PLUGIN_PATH", dir, 1);
    golden_model_path(path, sizeof path);
    ck_assert_int_eq(dxk_model_open(path, "cuda", 0, &m, err, sizeof err), DEXEC_ENOTSUP);
    ck_assert_ptr_null(m);
    snprintf(want, sizeof want,
             "device cuda requested but the CUDA module is not installed: plugin 'cuda' not "
             "found: no dexec_cuda.so in %s, %s (set DEXEC_PLUGIN_PATH or plugin_path, or give "
             "the plugin's path); install dexec's CUDA module (dexec_cuda.so, built when "
             "configure finds nvcc and cuBLAS), or use device = \"cpu\"",
             dir, DEXEC_PLUGINDIR);
    rmdir(dir);
    ck_assert_str_eq(err, want);
    ck_assert_int_eq(dxk_cuda_device_count(err, sizeof err), 0);
    ck_assert_msg(strncmp(err, "the CUDA module is not installed: ", 34) == 0, "%s", err);
    ck_assert_int_eq(dxk_model_open(path, "auto", 0, &m, err, sizeof err), DEXEC_OK);
    ck_assert_str_eq(dxk_model_device(m), "cpu");
    dxk_model_free(m);
}
END_TEST

/* With the module but no usable device (no driver, or no GPU), device cuda
 * fails with the module's reason and what to do. */
START_TEST(test_cuda_no_device)
{
    char path[4096], err[1024], reason[512], want[1024];
    dxk_model *m = NULL;

    if (dxk_cuda_device_count(reason, sizeof reason) > 0)
        return; /* a GPU host: the cuda suite covers it */
    if (strncmp(reason, "the CUDA module is not", 22) == 0) {
        /* a build without CUDA: test_cuda_module_missing covers it */
        ck_assert_msg(strstr(reason, "dexec_cuda.so") != NULL, "%s", reason);
        return;
    }
    golden_model_path(path, sizeof path);
    ck_assert_int_eq(dxk_model_open(path, "cuda", 0, &m, err, sizeof err), DEXEC_ENOTSUP);
    ck_assert_ptr_null(m);
    snprintf(want, sizeof want, "device cuda requested but no CUDA device can be used: %s; ",
             reason);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);
    ck_assert_msg(strstr(err, ", or use device = \"cpu\"") != NULL, "%s", err);
}
END_TEST

static dxk_model *open_golden(void)
{
    char path[4096], err[1024];
    dxk_model *m = NULL;

    golden_model_path(path, sizeof path);
    ck_assert_msg(dxk_model_open(path, "cpu", 0, &m, err, sizeof err) == DEXEC_OK, "%s", err);
    return m;
}

static int steps_seen;

static int count_steps(void *user, int image, int step, int total)
{
    ck_assert_int_ge(image, 0);
    ck_assert_int_le(step, total);
    steps_seen++;
    /* a non-NULL user asks to stop after that many steps */
    return user != NULL && steps_seen >= *(const int *)user;
}

START_TEST(test_generate_determinism)
{
    dxk_model *m = open_golden();
    dexec_request r;
    dexec_output a, b, c;
    char err[1024];

    dexec_request_init(&r);
    r.prompt = "sneaker";
    r.seed = 7;
    r.num_outputs_per_prompt = 2;
    dexec_output_init(&a);
    dexec_output_init(&b);
    dexec_output_init(&c);
    steps_seen = 0;
    ck_assert_msg(dxk_generate(m, &r, &a, count_steps, NULL, err, sizeof err) == DEXEC_OK, "%s",
                  err);
    ck_assert_int_eq(steps_seen, 2 * 8);
    ck_assert_uint_eq(a.num_images, 2);
    ck_assert_int_eq(a.steps, 8);
    ck_assert_double_eq(a.guidance_scale, 3.0);
    ck_assert_int_eq(a.seed, 7);
    ck_assert_int_eq(a.images[0].width, 16);
    ck_assert_int_eq(a.images[0].height, 16);
    ck_assert_int_eq(a.images[0].channels, 3);
    /* the two images of one request differ (own noise) */
    ck_assert(memcmp(a.images[0].pixels, a.images[1].pixels, 16 * 16 * 3) != 0);
    /* same seed: identical bytes, and image 0 is the same asked alone */
    r.num_outputs_per_prompt = 1;
    ck_assert_int_eq(dxk_generate(m, &r, &b, NULL, NULL, err, sizeof err), DEXEC_OK);
    ck_assert(memcmp(a.images[0].pixels, b.images[0].pixels, 16 * 16 * 3) == 0);
    /* another seed: another image */
    r.seed = 8;
    ck_assert_int_eq(dxk_generate(m, &r, &c, NULL, NULL, err, sizeof err), DEXEC_OK);
    ck_assert(memcmp(a.images[0].pixels, c.images[0].pixels, 16 * 16 * 3) != 0);
    dexec_output_clear(&a);
    dexec_output_clear(&b);
    dexec_output_clear(&c);
    /* a step callback that says stop ends the request at that boundary */
    {
        int stop_after = 3;

        steps_seen = 0;
        ck_assert_int_eq(dxk_generate(m, &r, &a, count_steps, &stop_after, err, sizeof err),
                         DEXEC_ECANCELED);
        ck_assert_str_eq(err, "cancelled after step 3 of 8");
        ck_assert_int_eq(steps_seen, 3);
        ck_assert_uint_eq(a.num_images, 0);
        dexec_output_clear(&a);
    }
    dxk_model_free(m);
}
END_TEST

/* Executors give workers different thread counts (ray_actor's cpus, mp's
 * whole host): the pixels of a seed must not depend on it. */
START_TEST(test_generate_thread_count)
{
    char path[4096], err[1024];
    dxk_model *m1 = NULL, *m4 = NULL;
    int saved = openblas_get_num_threads();
    dexec_request r;
    dexec_output a, b;

    golden_model_path(path, sizeof path);
    openblas_set_num_threads(1);
    ck_assert_msg(dxk_model_open(path, "cpu", 0, &m1, err, sizeof err) == DEXEC_OK, "%s", err);
    openblas_set_num_threads(4);
    ck_assert_msg(dxk_model_open(path, "cpu", 0, &m4, err, sizeof err) == DEXEC_OK, "%s", err);
    dexec_request_init(&r);
    r.prompt = "dress";
    r.seed = 123;
    r.height = 32;
    r.width = 32;
    r.num_outputs_per_prompt = 2;
    dexec_output_init(&a);
    dexec_output_init(&b);
    openblas_set_num_threads(1);
    ck_assert_int_eq(dxk_generate(m1, &r, &a, NULL, NULL, err, sizeof err), DEXEC_OK);
    openblas_set_num_threads(4);
    ck_assert_int_eq(dxk_generate(m4, &r, &b, NULL, NULL, err, sizeof err), DEXEC_OK);
    ck_assert(memcmp(a.images[0].pixels, b.images[0].pixels, 32 * 32 * 3) == 0);
    ck_assert(memcmp(a.images[1].pixels, b.images[1].pixels, 32 * 32 * 3) == 0);
    openblas_set_num_threads(saved);
    dexec_output_clear(&a);
    dexec_output_clear(&b);
    dxk_model_free(m1);
    dxk_model_free(m4);
}
END_TEST

/* A model file truncated while the model has it mapped: the request fails
 * naming the file (no SIGBUS death), and so does every later one. */
START_TEST(test_truncated_model_file)
{
    char src[4096], path[4096], err[2048];
    dxk_model *m = NULL;
    dexec_request r;
    dexec_output o;
    FILE *in, *out;
    int c;

    golden_model_path(src, sizeof src);
    snprintf(path, sizeof path, "%s/dexec-trunc-%d.safetensors",
             getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp", (int)getpid());
    in = fopen(src, "rb");
    out = fopen(path, "wb");
    ck_assert_ptr_nonnull(in);
    ck_assert_ptr_nonnull(out);
    while ((c = fgetc(in)) != EOF)
        fputc(c, out);
    fclose(in);
    ck_assert_int_eq(fclose(out), 0);

    dxk_st_catch_sigbus();
    ck_assert_msg(dxk_model_open(path, "cpu", 0, &m, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(truncate(path, 4096), 0);
    memset(&o, 0, sizeof o);
    dexec_request_init(&r);
    r.seed = 1;
    r.num_inference_steps = 2;
    ck_assert_int_eq(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err), DEXEC_EIO);
    ck_assert_msg(strncmp(err, path, strlen(path)) == 0 &&
                      strstr(err, ": the model file changed on disk while in use (its data at "
                                  "byte ") != NULL,
                  "%s", err);
    ck_assert_ptr_null(o.images);
    /* still refused: the zeros must never reach an image */
    ck_assert_int_eq(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err), DEXEC_EIO);
    dxk_model_free(m);
    unlink(path);
}
END_TEST

START_TEST(test_generate_errors)
{
    dxk_model *m = open_golden();
    dexec_request r;
    dexec_output o;
    char err[2048];

    dexec_output_init(&o);
    dexec_request_init(&r);
    r.seed = 1;
    r.height = 18;
    ck_assert_int_eq(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err), DEXEC_EINVAL);
    /* width x height, as everywhere else */
    ck_assert_str_eq(err, "image size 16x18 is not a multiple of the model's patch size 4");
    r.height = 5000;
    ck_assert_int_eq(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "image size 0x5000 (width x height): each must be in 1..4096 (0: 16)");
    r.height = 0;
    r.num_outputs_per_prompt = 65;
    ck_assert_int_eq(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "num_outputs_per_prompt 65 is outside 1..64");
    r.num_outputs_per_prompt = 0;
    r.guidance_scale = NAN;
    ck_assert_int_eq(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "guidance_scale nan is outside 0..100 (negative: the model's 3)");
    r.guidance_scale = -1;
    r.seed = -1;
    ck_assert_int_eq(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "seed -1 is negative: the engine resolves random seeds first");
    r.seed = 1;
    r.num_inference_steps = 1001;
    ck_assert_int_eq(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "num_inference_steps 1001 is outside 1..1000 (0: the model's 8)");
    r.num_inference_steps = 0;
    r.prompt = "spaceship";
    ck_assert_int_eq(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err), DEXEC_EINVAL);
    ck_assert_msg(strncmp(err, "prompt 'spaceship' names no class of this model; known words: "
                               "t-shirt/top, ",
                          75) == 0,
                  "%s", err);
    r.prompt = "bag";
    r.negative_prompt = "spaceship";
    ck_assert_int_eq(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err), DEXEC_EINVAL);
    ck_assert_msg(strncmp(err, "negative_prompt: prompt 'spaceship' names no class", 50) == 0,
                  "%s", err);
    ck_assert_uint_eq(o.num_images, 0);
    /* negative means the default, as zero does (kernels.h) */
    r.negative_prompt = NULL;
    r.prompt = "boot";
    r.height = -1;
    r.num_inference_steps = -3;
    r.num_outputs_per_prompt = -2;
    ck_assert_msg(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(o.steps, 8);
    ck_assert_uint_eq(o.num_images, 1);
    ck_assert_int_eq(o.images[0].height, 16);
    dexec_output_clear(&o);
    dexec_output_init(&o);
    /* a size other than the native one, unconditional, guidance 1 */
    r.negative_prompt = NULL;
    r.prompt = "";
    r.height = 8;
    r.width = 24;
    r.guidance_scale = 1.0;
    r.num_inference_steps = 2;
    ck_assert_msg(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(o.images[0].width, 24);
    ck_assert_int_eq(o.images[0].height, 8);
    dexec_output_clear(&o);
    dxk_model_free(m);
}
END_TEST

START_TEST(test_model_info)
{
    dxk_model *m = open_golden();
    dexec_value *v = dxk_model_info(m);
    const dexec_value *md, *mem;

    ck_assert_ptr_nonnull(v);
    ck_assert_str_eq(dexec_value_as_str(dexec_value_map_get(v, "device"), ""), "cpu");
    /* 2 blocks of D=64: the parameter count of the PyTorch twin */
    ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(v, "parameters"), 0), 185264);
    md = dexec_value_map_get(v, "metadata");
    ck_assert_str_eq(dexec_value_as_str(dexec_value_map_get(md, "dexec.format"), ""), "dit");
    mem = dexec_value_map_get(v, "memory");
    ck_assert_int_gt(dexec_value_as_int(dexec_value_map_get(mem, "rss"), 0), 0);
    dexec_value_free(v);
    dxk_model_free(m);
}
END_TEST

static Suite *kernels_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *ops = tcase_create("ops"), *smp = tcase_create("sampler");
    TCase *gold = tcase_create("golden"), *api = tcase_create("model");

    tcase_add_test(ops, test_blas_core);
    tcase_add_test(ops, test_linear);
    tcase_add_test(ops, test_ln_modulate);
    tcase_add_test(ops, test_attention);
    tcase_add_test(ops, test_elementwise);
    tcase_add_test(ops, test_timestep_embed);
    tcase_add_test(ops, test_patchify_roundtrip);
    tcase_add_test(ops, test_pos_embed_residual_embedding);
    tcase_add_test(ops, test_nan_never_passes);
    tcase_add_test(ops, test_pool);
    tcase_add_test(smp, test_sigmas);
    tcase_add_test(smp, test_noise);
    tcase_add_test(smp, test_to_pixel);
    tcase_add_test(gold, test_golden_config);
    tcase_add_test(gold, test_golden_forward);
    tcase_add_test(gold, test_golden_forward_uploaded);
    tcase_add_test(gold, test_golden_sample);
    tcase_add_test(gold, test_golden_sample_g1);
    tcase_add_test(api, test_prompt);
    tcase_add_test(api, test_resolve);
    tcase_add_test(api, test_devices);
    tcase_add_test(api, test_cuda_module_missing);
    tcase_add_test(api, test_cuda_no_device);
    tcase_add_test(api, test_generate_determinism);
    tcase_add_test(api, test_generate_thread_count);
    tcase_add_test(api, test_generate_errors);
    tcase_add_test(api, test_truncated_model_file);
    tcase_add_test(api, test_model_info);
    suite_add_tcase(s, ops);
    suite_add_tcase(s, smp);
    suite_add_tcase(s, gold);
    suite_add_tcase(s, api);
    return s;
}

int main(int argc, char **argv)
{
    SRunner *sr;
    int failed;

    (void)argc;
    /* as dexec-worker does: test_blas_core checks the outcome */
    dxk_blas_core_reexec(argv);
    sr = srunner_create(kernels_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
