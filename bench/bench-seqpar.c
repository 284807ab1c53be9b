/*
 * bench-seqpar.c - Ulysses sequence parallelism on the CPU backend: the
 * time of one guided forward pass (B = 2: the conditional and
 * unconditional branches of one denoising step) of a model by one rank,
 * by a sequence group of two ranks (threads of this process joined by the
 * in-process communicator of kernels/thread-comm.h), and by two independent
 * one-rank forwards side by side (the host's own two-way scaling, the
 * reference). Every rank uses one OpenBLAS thread.
 *
 *   bench-seqpar MODEL.safetensors [ITERATIONS]
 *
 * Prints the time per step of one image in each layout, the speed-ups and
 * the bytes each rank sends per step. Results: doc/performance.md.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "dit.h"
#include "ops.h"
#include "safetensors.h"
#include "thread-comm.h"

void openblas_set_num_threads(int n);

typedef struct bs_rank {
    const char *path;
    dxk_comm *comm;
    int iters;
    pthread_barrier_t *start; /* all ranks start timing together */
    double seconds;           /* wall time of iters forward passes */
    double cpu;               /* this thread's CPU time for them */
    size_t bytes;             /* sent per forward pass */
    dexec_status s;
    char err[512];
} bs_rank;

static double bs_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double bs_cpu(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *bs_main(void *arg)
{
    bs_rank *r = arg;
    dxk_safetensors *st = NULL;
    dxk_backend *be = NULL;
    dxk_dit *dit = NULL;
    dxk_dit_ws *ws = NULL;
    dxk_dit_config cfg;
    float *x = NULL, *v = NULL, *host;
    double t[2] = {500.0, 500.0}, t0, c0;
    int y[2] = {1, 0}, i, go;
    size_t n = 0;

    r->s = dxk_st_open(r->path, &st, r->err, sizeof r->err);
    if (r->s == DEXEC_OK)
        r->s = dxk_dit_config_read(st, &cfg, r->err, sizeof r->err);
    if (r->s == DEXEC_OK)
        r->s = dxk_backend_cpu(&be, r->err, sizeof r->err);
    if (r->s == DEXEC_OK)
        r->s = dxk_dit_load(st, &cfg, be, &dit, r->err, sizeof r->err);
    if (r->s == DEXEC_OK) {
        dit->seq = r->comm;
        y[1] = cfg.num_classes;
        r->s = dxk_dit_ws_alloc(dit, 2, cfg.image_size, cfg.image_size, &ws, r->err, sizeof r->err);
    }
    if (r->s == DEXEC_OK) {
        n = (size_t)2 * cfg.in_channels * cfg.image_size * cfg.image_size;
        x = be->alloc(be, n);
        v = be->alloc(be, n);
        host = malloc(n * sizeof *host);
        for (i = 0; host != NULL && (size_t)i < n; i++)
            host[i] = (float)((i * 7919) % 2001 - 1000) / 1000.0f;
        if (host != NULL)
            be->upload(be, x, host, n);
        free(host);
        r->bytes = dxk_dit_seq_bytes(dit, ws, 2);
        dxk_dit_forward(dit, ws, v, x, t, y, 2); /* warm-up */
        r->s = dxk_dit_ws_check(ws, r->err, sizeof r->err);
    }
    /* every rank reaches the barrier, failed or not: no one waits forever */
    go = r->s == DEXEC_OK;
    pthread_barrier_wait(r->start);
    t0 = bs_now();
    c0 = bs_cpu();
    for (i = 0; go && i < r->iters && r->s == DEXEC_OK; i++) {
        dxk_dit_forward(dit, ws, v, x, t, y, 2);
        be->sync(be, NULL, 0);
        r->s = dxk_dit_ws_check(ws, r->err, sizeof r->err);
    }
    r->seconds = bs_now() - t0;
    r->cpu = bs_cpu() - c0;
    if (r->s == DEXEC_OK && be != NULL)
        r->s = be->sync(be, r->err, sizeof r->err);
    if (be != NULL) {
        be->release(be, x);
        be->release(be, v);
    }
    if (dit != NULL)
        dxk_dit_ws_free(dit, ws);
    dxk_dit_free(dit);
    if (be != NULL)
        dxk_backend_free(be);
    dxk_st_close(st);
    return NULL;
}

/* n ranks; grouped: one sequence group of n, else n independent ranks.
 * Returns the slowest rank's wall time per forward pass. */
static double bs_run(const char *path, int n, int grouped, int iters, size_t *bytes, double *cpu)
{
    tc_group g;
    tc_rank rk[TC_MAX];
    dxk_comm cm[TC_MAX];
    bs_rank r[TC_MAX];
    pthread_t th[TC_MAX];
    pthread_barrier_t start;
    double worst = 0;
    int i;

    tc_group_init(&g, n, 60000);
    pthread_barrier_init(&start, NULL, (unsigned)n);
    for (i = 0; i < n; i++) {
        memset(&r[i], 0, sizeof r[i]);
        r[i].path = path;
        r[i].iters = iters;
        r[i].start = &start;
        tc_comm(&cm[i], &rk[i], &g, i);
        r[i].comm = grouped && n > 1 ? &cm[i] : NULL;
        if (pthread_create(&th[i], NULL, bs_main, &r[i]) != 0) {
            fprintf(stderr, "bench-seqpar: cannot start a thread\n");
            exit(1);
        }
    }
    for (i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < n; i++) {
        if (r[i].s != DEXEC_OK) {
            fprintf(stderr, "bench-seqpar: rank %d: %s\n", i, r[i].err);
            exit(1);
        }
        if (r[i].seconds > worst)
            worst = r[i].seconds;
        *cpu += r[i].cpu / iters;
    }
    *bytes = r[0].bytes;
    pthread_barrier_destroy(&start);
    tc_group_destroy(&g);
    return worst / iters;
}

int main(int argc, char **argv)
{
    const char *path;
    int iters, round;
    double one, seq2, pair, cpu_one = 1e30, cpu_seq2 = 1e30;
    size_t b1, b2, bp;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: bench-seqpar MODEL.safetensors [ITERATIONS]\n");
        return 2;
    }
    path = argv[1];
    iters = argc > 2 ? atoi(argv[2]) : 5;
    if (iters < 1) {
        fprintf(stderr, "bench-seqpar: ITERATIONS must be a positive integer\n");
        return 2;
    }
    openblas_set_num_threads(1);
    /* the layouts in turn, three rounds, the best time of each: a shared
     * host's other load changes between runs, not within a round */
    one = seq2 = pair = 1e30;
    for (round = 0; round < 3; round++) {
        double ca = 0, cb = 0, cc = 0;
        double a = bs_run(path, 1, 0, iters, &b1, &ca);
        double b = bs_run(path, 2, 1, iters, &b2, &cb);
        double c = bs_run(path, 2, 0, iters, &bp, &cc); /* two steps done per `pair` */

        cpu_one = ca < cpu_one ? ca : cpu_one;
        cpu_seq2 = cb < cpu_seq2 ? cb : cpu_seq2;

        one = a < one ? a : one;
        seq2 = b < seq2 ? b : seq2;
        pair = c < pair ? c : pair;
    }
    printf("model %s, guided step (B = 2), one OpenBLAS thread per rank, best of 3 rounds "
           "of %d iterations\n",
           path, iters);
    printf("one rank:                        %8.1f ms per step\n", one * 1e3);
    printf("sequence = 2:                    %8.1f ms per step  speed-up %.2fx\n", seq2 * 1e3,
           one / seq2);
    printf("two independent ranks (ref.):    %8.1f ms per step  throughput %.2fx\n", pair / 2 * 1e3,
           2 * one / pair);
    printf("sequence = 2 / two-way scaling:  %.2f\n", (one / seq2) / (2 * one / pair));
    printf("CPU time per step, all ranks:    one rank %.1f ms, sequence = 2 %.1f ms (%.2fx)\n",
           cpu_one * 1e3, cpu_seq2 * 1e3, cpu_seq2 / cpu_one);
    printf("bytes sent per step and rank:    %zu (%.2f MiB) to the other rank\n", b2,
           b2 / 1048576.0);
    return 0;
}
