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

int main(int argc, char **argv)
{
    int reps = 2, vside = 32, sg = 2048, i, S;
    dxk_backend *be = NULL;
    dxk_pipeline *p = NULL;
    dxk_dit_ws *ws = NULL;
    char err[1024];
    float *x, *v, *z, *img;
    double t, best_f = 1e30, best_v = 1e30, ff, fv, sgemm;
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
        t = now();
        dxk_dit_forward(p->dit, ws, v, x, ts, y, 2);
        if (be->sync(be, err, sizeof err) != DEXEC_OK) {
            fprintf(stderr, "bench-published: forward: %s\n", err);
            return 1;
        }
        t = now() - t;
        if (i > 0 && t < best_f)
            best_f = t;
    }
    t = sgemm_gflops(sg);
    if (t > sgemm)
        sgemm = t;
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
