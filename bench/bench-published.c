/*
 * bench-published.c - one transformer forward pass (batch 2: the guided
 * sampler's cond + uncond) and one VAE decode of a published latent model
 * (a pipeline directory, doc/model.md "Published models") on the CPU
 * backend, as seconds and GFLOP/s, next to OpenBLAS SGEMM on a large
 * square product measured in the same run. bench-published.sh runs it
 * beside PyTorch running the twin (bench-published-torch.py).
 *
 *   bench-published DIR [REPS [VAE_LATENT_SIDE [SGEMM_N]]]
 *
 * Each figure is the best of REPS (default 2) after one warm-up run; the
 * SGEMM rate is the best of three measurements (before, between, after).
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#pragma weak openblas_get_corename
char *openblas_get_corename(void);

#include "dit.h"
#include "kernels.h"
#include "ops.h"
#include "pipeline.h"
#include "sampler.h"

/* CPU seconds of every thread of the process: on a shared host, what the
 * forward cost in CPU time is less sensitive to the other load than its
 * wall time (spinning threads count too). */
static double cpu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double sgemm_gflops(int n)
{
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b);
    float *c = malloc((size_t)n * n * sizeof *c);
    double t, best = 1e30;
    int rep;

    if (a == NULL || b == NULL || c == NULL) {
        free(a);
        free(b);
        free(c);
        return 0;
    }
    dxk_noise(1, 0, a, (size_t)n * n);
    dxk_noise(1, 1, b, (size_t)n * n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    for (rep = 0; rep < 3; rep++) {
        t = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        t = now() - t;
        if (t < best)
            best = t;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * n * n * (double)n / best / 1e9;
}

/* Where one forward pass's time goes: the block loop of the forward
 * (dit.c dx_forward_published, one image pair, every block's real weights)
 * run op by op with a clock around each call, summed per op class over the
 * blocks; then the four linear shapes of a block run alone through cblas
 * on fresh buffers (weights reused, so in cache where they fit). The
 * workspace must hold a forward's activations (run one first). */
enum { OP_ADA, OP_LN, OP_QKV, OP_ATT, OP_PROJ, OP_RES, OP_FC1, OP_GELU, OP_FC2, OP_N };

static void breakdown(dxk_dit *m, dxk_dit_ws *ws, int B)
{
    static const char *names[OP_N] = {
        "adaLN modulation (M=B)", "LayerNorm + modulate", "qkv linear", "attention", "proj linear",
        "gated residuals",        "fc1 linear",           "GELU",       "fc2 linear"};
    const dxk_dit_config *c = &m->cfg;
    dxk_backend *be = m->be;
    const int D = c->hidden_size, Mh = D * c->mlp_ratio, T = ws->tn, BT = B * T;
    const double fl[OP_N] = {
        2.0 * B * 6 * D * D,      0, 2.0 * BT * 3.0 * D * D,    4.0 * B * (double)T * T * D,
        2.0 * BT * (double)D * D, 0, 2.0 * BT * (double)Mh * D, 0,
        2.0 * BT * (double)Mh * D};
    const int shp[4][4] = {{OP_QKV, 3 * D, D}, {OP_PROJ, D, D}, {OP_FC1, Mh, D}, {OP_FC2, D, Mh}};
    double tm[OP_N] = {0}, t, tot = 0;
    int i, k;

#define TIMED(op, call)                                                                            \
    do {                                                                                           \
        t = now();                                                                                 \
        call;                                                                                      \
        tm[op] += now() - t;                                                                       \
    } while (0)
    for (i = 0; i < c->depth; i++) {
        const dxk_dit_block *b = &m->blocks[i];
        const float *mod = ws->mod;

        TIMED(OP_ADA, if (!dxk_cpu_linear_few(be, ws->mod, ws->sc, b->ada.w, b->ada.b, B, 6 * D, D))
                          dxk_linear_run(be, ws->mod, ws->sc, &b->ada, B, 6 * D, D));
        TIMED(OP_LN, be->ln_modulate(be, ws->xn, ws->x, mod, mod + D, 6 * D, B, T, D));
        TIMED(OP_QKV, dxk_linear_run(be, ws->qkv, ws->xn, &b->qkv, BT, 3 * D, D));
        TIMED(OP_ATT, be->attention(be, ws->att, ws->qkv, ws->scratch, B, T, c->num_heads, D));
        TIMED(OP_PROJ, dxk_linear_run(be, ws->xn, ws->att, &b->proj, BT, D, D));
        TIMED(OP_RES, be->gated_residual(be, ws->x, ws->xn, mod + 2 * D, 6 * D, B, T, D));
        TIMED(OP_LN, be->ln_modulate_eps(be, ws->xn, ws->x, mod + 3 * D, mod + 4 * D, 6 * D, B, T,
                                         D, (float)c->norm_eps));
        TIMED(OP_FC1, dxk_linear_run(be, ws->hid, ws->xn, &b->fc1, BT, Mh, D));
        TIMED(OP_GELU, be->gelu_tanh(be, ws->hid, (size_t)BT * Mh));
        TIMED(OP_FC2, dxk_linear_run(be, ws->xn, ws->hid, &b->fc2, BT, D, Mh));
        TIMED(OP_RES, be->gated_residual(be, ws->x, ws->xn, mod + 5 * D, 6 * D, B, T, D));
    }
#undef TIMED
    for (k = 0; k < OP_N; k++)
        tot += tm[k];
    printf("dexec forward by op (the %d blocks op by op, one clock per call): %.3f s\n", c->depth,
           tot);
    for (k = 0; k < OP_N; k++) {
        printf("  %-24s %8.1f ms %5.1f %%", names[k], tm[k] * 1e3, 100.0 * tm[k] / tot);
        if (fl[k] > 0)
            printf("  %6.1f GFLOP/s", c->depth * fl[k] / tm[k] / 1e9);
        printf("\n");
    }
    for (k = 0; k < 4; k++) {
        const int N = shp[k][1], K = shp[k][2];
        float *a = malloc((size_t)BT * K * sizeof *a), *w = malloc((size_t)N * K * sizeof *w);
        float *y = malloc((size_t)BT * N * sizeof *y);
        double best = 1e30, bestb = 1e30;
        int rep;

        if (a == NULL || w == NULL || y == NULL) {
            free(a);
            free(w);
            free(y);
            return;
        }
        dxk_noise(1, 2, a, (size_t)BT * K);
        dxk_noise(1, 3, w, (size_t)N * K);
        /* alternated: OpenBLAS threading one call, and the backend's
         * linear (its own split of the columns over its pool) */
        for (rep = 0; rep < 8; rep++) {
            t = now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, BT, N, K, 1, a, K, w, K, 0, y, N);
            t = now() - t;
            if (rep > 0 && t < best)
                best = t;
            t = now();
            be->linear(be, y, a, w, NULL, BT, N, K);
            t = now() - t;
            if (rep > 0 && t < bestb)
                bestb = t;
        }
        printf("  %dx%dx%d alone (%s): cblas_sgemm %.2f ms, %.1f GFLOP/s; backend linear "
               "%.2f ms, %.1f GFLOP/s; in the forward %.2f ms\n",
               BT, N, K, names[shp[k][0]], best * 1e3, 2.0 * BT * (double)N * K / best / 1e9,
               bestb * 1e3, 2.0 * BT * (double)N * K / bestb / 1e9, tm[shp[k][0]] / c->depth * 1e3);
        free(a);
        free(w);
        free(y);
    }
}

int main(int argc, char **argv)
{
    int reps = 2, vside = 32, sg = 2048, i, S;
    dxk_backend *be = NULL;
    dxk_pipeline *p = NULL;
    dxk_dit_ws *ws = NULL;
    char err[1024];
    float *x, *v, *z, *img;
    double t, tc, best_f = 1e30, best_v = 1e30, best_fc = 1e30, ff, fv, sgemm;
    int y[2];
    double ts[2] = {500, 500};
    size_t n, nz, ni;

    dxk_blas_core_reexec(argv); /* OpenBLAS kernels as the worker gets them */
    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: bench-published DIR [REPS [VAE_LATENT_SIDE [SGEMM_N]]]\n");
        return 2;
    }
    if (argc > 2)
        reps = atoi(argv[2]);
    if (argc > 3)
        vside = atoi(argv[3]);
    if (argc > 4)
        sg = atoi(argv[4]);
    if (reps < 1 || vside < 1 || sg < 64) {
        fprintf(stderr, "bench-published: REPS >= 1, VAE_LATENT_SIDE >= 1, SGEMM_N >= 64\n");
        return 2;
    }
    dexec_log_set_level(DEXEC_LOG_WARN);
    if (dxk_backend_cpu(&be, err, sizeof err) != DEXEC_OK ||
        dxk_pipeline_open(argv[1], be, DEXEC_DTYPE_F32, &p, err, sizeof err) != DEXEC_OK) {
        fprintf(stderr, "bench-published: %s\n", err);
        return 1;
    }
    S = p->dit->cfg.image_size;
    if (dxk_dit_ws_alloc(p->dit, 2, S, S, &ws, err, sizeof err) != DEXEC_OK) {
        fprintf(stderr, "bench-published: %s\n", err);
        return 1;
    }
    y[0] = 207;
    if (y[0] >= p->dit->cfg.num_classes)
        y[0] = 0;
    y[1] = p->dit->cfg.num_classes;
    n = (size_t)p->dit->cfg.in_channels * S * S;
    nz = (size_t)p->vae->cfg.latent_channels * vside * vside;
    ni = (size_t)3 * (size_t)dxk_vae_scale(&p->vae->cfg) * vside *
         (size_t)dxk_vae_scale(&p->vae->cfg) * vside;
    x = be->alloc(be, 2 * n);
    v = be->alloc(be, 2 * (size_t)p->dit->cfg.out_channels * S * S);
    z = malloc(nz * sizeof *z);
    img = malloc(ni * sizeof *img);
    if (x == NULL || v == NULL || z == NULL || img == NULL) {
        fprintf(stderr, "bench-published: out of memory\n");
        return 1;
    }
    dxk_noise(1, 0, x, 2 * n);
    dxk_noise(1, 1, z, nz);
    /* SGEMM before, between and after the two measurements, the best
     * kept: on a shared host the load changes within a run, and one
     * measurement taken at a busy moment would flatter the shares */
    sgemm = sgemm_gflops(sg);
    for (i = 0; i <= reps; i++) {
        tc = cpu_now();
        t = now();
        dxk_dit_forward(p->dit, ws, v, x, ts, y, 2);
        if (be->sync(be, err, sizeof err) != DEXEC_OK) {
            fprintf(stderr, "bench-published: forward: %s\n", err);
            return 1;
        }
        t = now() - t;
        tc = cpu_now() - tc;
        if (i > 0 && t < best_f)
            best_f = t;
        if (i > 0 && tc < best_fc)
            best_fc = tc;
    }
    t = sgemm_gflops(sg);
    if (t > sgemm)
        sgemm = t;
    if (getenv("BENCH_BREAKDOWN") != NULL && *getenv("BENCH_BREAKDOWN") != '0')
        breakdown(p->dit, ws, 2);
    for (i = 0; i <= reps; i++) {
        t = now();
        if (dxk_vae_decode(p->vae, z, 1, vside, vside, img, err, sizeof err) != DEXEC_OK) {
            fprintf(stderr, "bench-published: decode: %s\n", err);
            return 1;
        }
        t = now() - t;
        if (i > 0 && t < best_v)
            best_v = t;
    }
    ff = dxk_dit_flops(&p->dit->cfg, 2, S, S);
    fv = dxk_vae_flops(&p->vae->cfg, 1, vside, vside);
    t = sgemm_gflops(sg);
    if (t > sgemm)
        sgemm = t;
    printf("dexec model %s: latent %dx%d, D=%d depth=%d heads=%d patch=%d, %zu parameters\n",
           argv[1], S, S, p->dit->cfg.hidden_size, p->dit->cfg.depth, p->dit->cfg.num_heads,
           p->dit->cfg.patch_size, p->dit->params);
    printf("dexec forward (batch 2): %.3f s, %.1f GFLOP, %.1f GFLOP/s, %.0f%% of SGEMM\n", best_f,
           ff / 1e9, ff / best_f / 1e9, 100.0 * ff / best_f / 1e9 / sgemm);
    printf("dexec forward CPU time: %.3f s over all threads (best of %d)\n", best_fc, reps);
    printf("dexec vae decode (latent %dx%d -> %dx%d): %.3f s, %.1f GFLOP, %.1f GFLOP/s, "
           "%.0f%% of SGEMM\n",
           vside, vside, vside * dxk_vae_scale(&p->vae->cfg), vside * dxk_vae_scale(&p->vae->cfg),
           best_v, fv / 1e9, fv / best_v / 1e9, 100.0 * fv / best_v / 1e9 / sgemm);
    printf("dexec sgemm %dx%d: %.1f GFLOP/s (OpenBLAS core %s)\n", sg, sg, sgemm,
           openblas_get_corename ? openblas_get_corename() : "unknown");
    be->release(be, x);
    be->release(be, v);
    free(z);
    free(img);
    dxk_dit_ws_free(p->dit, ws);
    dxk_pipeline_free(p);
    dxk_backend_free(be);
    return 0;
}
