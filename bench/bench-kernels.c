/*
 * bench-kernels.c - time per denoising step of a model on the CPU backend,
 * as GFLOP/s next to OpenBLAS SGEMM on a large square product measured in
 * the same run, and the memory a worker holds: peak RSS against weights +
 * activations (weights are mapped, so they show up as file pages, not as
 * anonymous memory).
 *
 *   bench-kernels MODEL.safetensors [STEPS [SGEMM_N]]
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "dit.h"
#include "ops.h"
#include "safetensors.h"
#include "sampler.h"

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* kB fields of /proc/self/status */
static long long status_kb(const char *field)
{
    char line[256];
    size_t n = strlen(field);
    long long v = -1;
    FILE *f = fopen("/proc/self/status", "re");

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, field, n) == 0 && line[n] == ':')
            v = strtoll(line + n + 1, NULL, 10);
    fclose(f);
    return v;
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
    const char *path;
    int steps = 5, sg = 2048, i;
    dxk_safetensors *st = NULL;
    dxk_dit_config cfg;
    dxk_backend *be = NULL;
    dxk_dit *dit = NULL;
    dxk_dit_ws *ws = NULL;
    char err[1024];
    float *x, *v, *xin;
    double sgemm, t, best = 1e30, total = 0, flops;
    size_t n, used, peak;
    long long hwm, anon, file;
    int y[2] = {0, 0};
    double ts[2] = {500, 500};

    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: bench-kernels MODEL.safetensors [STEPS [SGEMM_N]]\n");
        return 2;
    }
    path = argv[1];
    if (argc > 2)
        steps = atoi(argv[2]);
    if (argc > 3)
        sg = atoi(argv[3]);
    if (steps < 1 || sg < 64) {
        fprintf(stderr, "bench-kernels: STEPS >= 1 and SGEMM_N >= 64\n");
        return 2;
    }
    dexec_log_set_level(DEXEC_LOG_WARN);
    if (dxk_st_open(path, &st, err, sizeof err) != DEXEC_OK ||
        dxk_dit_config_read(st, &cfg, err, sizeof err) != DEXEC_OK ||
        dxk_backend_cpu(&be, err, sizeof err) != DEXEC_OK ||
        dxk_dit_load(st, &cfg, be, &dit, err, sizeof err) != DEXEC_OK ||
        dxk_dit_ws_alloc(dit, 2, cfg.image_size, cfg.image_size, &ws, err, sizeof err) !=
            DEXEC_OK) {
        fprintf(stderr, "bench-kernels: %s\n", err);
        return 1;
    }
    y[1] = cfg.num_classes;
    n = (size_t)cfg.in_channels * cfg.image_size * cfg.image_size;
    x = be->alloc(be, n);
    xin = be->alloc(be, 2 * n);
    v = be->alloc(be, 2 * n);
    if (x == NULL || xin == NULL || v == NULL) {
        fprintf(stderr, "bench-kernels: out of memory\n");
        return 1;
    }
    dxk_noise(1, 0, x, n);
    /* one step of the guided sampler: a batch of 2 (cond, uncond), the
     * CFG combination and the Euler update; the first is a warm-up */
    for (i = 0; i <= steps; i++) {
        t = now();
        be->copy(be, xin, x, n);
        be->copy(be, xin + n, x, n);
        dxk_dit_forward(dit, ws, v, xin, ts, y, 2);
        be->cfg_combine(be, v, v, v + n, 4.0f, n);
        be->euler(be, x, v, -0.01f, n);
        be->sync(be, err, sizeof err);
        t = now() - t;
        if (i == 0)
            continue;
        total += t;
        if (t < best)
            best = t;
    }
    flops = dxk_dit_flops(&cfg, 2, cfg.image_size, cfg.image_size);
    /* memory before the SGEMM run, whose matrices would count in the peak */
    be->memory(be, &used, &peak);
    hwm = status_kb("VmHWM");
    anon = status_kb("RssAnon");
    file = status_kb("RssFile");
    sgemm = sgemm_gflops(sg);
    printf("model %s: %dx%d C=%d p=%d D=%d depth=%d heads=%d tokens=%d params=%zu\n", path,
           cfg.image_size, cfg.image_size, cfg.in_channels, cfg.patch_size, cfg.hidden_size,
           cfg.depth, cfg.num_heads,
           (cfg.image_size / cfg.patch_size) * (cfg.image_size / cfg.patch_size), dit->params);
    printf("  step (CFG batch 2): best %.2f ms, mean %.2f ms over %d steps, %.2f GFLOP/step\n",
           best * 1e3, total / steps * 1e3, steps, flops / 1e9);
    printf("  DiT %.1f GFLOP/s (best step) vs SGEMM %dx%d %.1f GFLOP/s: %.0f%%\n",
           flops / best / 1e9, sg, sg, sgemm, 100.0 * flops / best / 1e9 / sgemm);
    printf("  memory: weights %.1f MiB (mapped, copied %.1f MiB), activations %.1f MiB; "
           "peak RSS %.1f MiB (anon %.1f MiB, file %.1f MiB now)\n",
           dit->params * 4.0 / 1048576.0, st->copied_bytes / 1048576.0, peak / 1048576.0,
           hwm / 1024.0, anon / 1024.0, file / 1024.0);
    be->release(be, x);
    be->release(be, xin);
    be->release(be, v);
    dxk_dit_ws_free(dit, ws);
    dxk_dit_free(dit);
    dxk_backend_free(be);
    dxk_st_close(st);
    return 0;
}
