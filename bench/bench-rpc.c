/*
 * bench-rpc.c - round-trip cost of collective_rpc("get_rank") through the
 * engine with 1, 2 and 4 mp workers, measured side by side with a raw
 * unix-socket ping-pong of the same payload size and a Python executor of
 * the reference design (multiprocessing workers, pickled messages over
 * pipes), plus the engine's own overhead per step. Prints a markdown table.
 *
 *   bench-rpc [ITERATIONS]      (run it through `make bench`)
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dexec/dexec.h>
#include <dexec/rpc.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

typedef struct stats {
    double median_us, p99_us;
} stats;

static stats summarize(double *t, int n)
{
    stats s;

    qsort(t, (size_t)n, sizeof(double), cmp_double);
    s.median_us = t[n / 2] * 1e6;
    s.p99_us = t[(int)(n * 0.99)] * 1e6;
    return s;
}

/* The size of the frame collective_rpc("get_rank") sends to each worker. */
static size_t request_frame_size(void)
{
    dexec_value *m = dexec_value_array(), *p = dexec_value_array();
    char *buf;
    size_t len;

    dexec_value_array_push(p, dexec_value_str("get_rank"));
    dexec_value_array_push(p, dexec_value_array());
    dexec_value_array_push(p, dexec_value_map());
    dexec_value_array_push(m, dexec_value_int(0));
    dexec_value_array_push(m, dexec_value_int(1000));
    dexec_value_array_push(m, dexec_value_str("execute_rpc"));
    dexec_value_array_push(m, p);
    dexec_value_to_msgpack(m, &buf, &len);
    free(buf);
    dexec_value_free(m);
    return len + 4;
}

/* The floor: the same fan-out done with bare blocking read/write, no
 * framing, no encoding: write to every peer, then read every reply. */
static stats raw_pingpong(int peers, size_t size, int iters)
{
    int sv[8][2];
    char *buf = calloc(1, size);
    double *t = calloc((size_t)iters, sizeof(double));
    pid_t pid[8];
    stats s;

    for (int p = 0; p < peers; p++) {
        socketpair(AF_UNIX, SOCK_STREAM, 0, sv[p]);
        pid[p] = fork();
        if (pid[p] == 0) {
            /* drop every parent end, or earlier peers would never see EOF */
            for (int q = 0; q <= p; q++)
                close(sv[q][0]);
            for (;;) {
                size_t got = 0;

                while (got < size) {
                    ssize_t n = read(sv[p][1], buf + got, size - got);

                    if (n <= 0)
                        _exit(0);
                    got += (size_t)n;
                }
                if (write(sv[p][1], buf, size) != (ssize_t)size)
                    _exit(0);
            }
        }
        close(sv[p][1]);
    }
    for (int i = -1000; i < iters; i++) {
        double t0 = dexec_now();

        for (int p = 0; p < peers; p++)
            if (write(sv[p][0], buf, size) != (ssize_t)size)
                exit(1);
        for (int p = 0; p < peers; p++) {
            size_t got = 0;

            while (got < size) {
                ssize_t n = read(sv[p][0], buf + got, size - got);

                if (n <= 0)
                    exit(1);
                got += (size_t)n;
            }
        }
        if (i >= 0)
            t[i] = dexec_now() - t0;
    }
    for (int p = 0; p < peers; p++) {
        close(sv[p][0]);
        waitpid(pid[p], NULL, 0);
    }
    s = summarize(t, iters);
    free(t);
    free(buf);
    return s;
}

static dexec_engine *open_engine(int ranks)
{
    dexec_config *cfg;
    dexec_engine *e = NULL;
    char err[1024], n[16];

    snprintf(n, sizeof(n), "%d", ranks);
    if (dexec_config_load(NULL, &cfg, err, sizeof(err)) != DEXEC_OK ||
        dexec_config_set(cfg, "num_gpus", n, err, sizeof(err)) != DEXEC_OK ||
        dexec_config_set(cfg, "device", "cpu", err, sizeof(err)) != DEXEC_OK ||
        dexec_engine_create(cfg, &e, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "bench-rpc: %s\n", err);
        exit(1);
    }
    dexec_config_free(cfg);
    return e;
}

static stats engine_rpc(dexec_engine *e, int iters)
{
    double *t = calloc((size_t)iters, sizeof(double));
    stats s;

    for (int i = -1000; i < iters; i++) {
        dexec_value *r = NULL;
        double t0 = dexec_now();

        if (dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, -1, &r) != DEXEC_OK) {
            fprintf(stderr, "bench-rpc: %s\n", dexec_engine_last_error(e));
            exit(1);
        }
        if (i >= 0)
            t[i] = dexec_now() - t0;
        dexec_value_free(r);
    }
    s = summarize(t, iters);
    free(t);
    return s;
}

/* Step wall time minus what the worker reports as its own time. */
static stats engine_overhead(dexec_engine *e, int iters)
{
    double *t = calloc((size_t)iters, sizeof(double));
    dexec_request r;
    stats s;

    dexec_request_init(&r);
    r.prompt = "bag";
    r.num_inference_steps = 1;
    for (int i = -20; i < iters; i++) {
        dexec_output *o = NULL;
        double t0 = dexec_now(), wall;

        r.seed = i + 100;
        if (dexec_engine_step(e, &r, 1, &o, NULL, NULL) != DEXEC_OK || o[0].status != DEXEC_OK) {
            fprintf(stderr, "bench-rpc: step failed\n");
            exit(1);
        }
        wall = dexec_now() - t0;
        if (i >= 0)
            t[i] = wall - (o[0].timings.queue_s + o[0].timings.encode_s + o[0].timings.denoise_s +
                           o[0].timings.decode_s);
        dexec_outputs_free(o, 1);
    }
    s = summarize(t, iters);
    free(t);
    return s;
}

/* Runs the Python reference-design executor; it prints "median p99" in us. */
static int python_rpc(int ranks, int iters, stats *s)
{
    char cmd[1024];
    FILE *f;
    int ok;

    snprintf(cmd, sizeof(cmd), "python3 '%s/bench-rpc-python.py' %d %d", BENCH_SRCDIR, ranks,
             iters);
    f = popen(cmd, "r");
    if (f == NULL)
        return -1;
    ok = fscanf(f, "%lf %lf", &s->median_us, &s->p99_us) == 2;
    pclose(f);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 20000;
    size_t size = request_frame_size();
    int ranks[] = {1, 2, 4};

    if (iters < 100)
        iters = 100;
    printf("collective_rpc(\"get_rank\") round trip, %d calls each, %zu-byte request frame, "
           "%ld CPUs\n\n",
           iters, size, sysconf(_SC_NPROCESSORS_ONLN));
    printf("| workers | raw socket fan-out ping-pong median / p99 (us) | dexec median / p99 (us) | "
           "dexec / raw (median) | Python mp+pickle median / p99 (us) |\n");
    printf("| --- | --- | --- | --- | --- |\n");
    for (int k = 0; k < 3; k++) {
        dexec_engine *e = open_engine(ranks[k]);
        stats raw = raw_pingpong(ranks[k], size, iters);
        stats ours = engine_rpc(e, iters);
        stats py = {0, 0};
        int have_py = python_rpc(ranks[k], iters, &py) == 0;

        printf("| %d | %.1f / %.1f | %.1f / %.1f | %.2fx | ", ranks[k], raw.median_us,
               raw.p99_us, ours.median_us, ours.p99_us, ours.median_us / raw.median_us);
        if (have_py)
            printf("%.1f / %.1f |\n", py.median_us, py.p99_us);
        else
            printf("(python3 not available) |\n");
        if (k == 0) {
            stats ov = engine_overhead(e, 500);

            fprintf(stderr, "engine overhead per step (wall - worker time, 1 rank): median %.1f us, "
                            "p99 %.1f us\n",
                    ov.median_us, ov.p99_us);
        }
        dexec_engine_free(e);
    }
    return 0;
}
