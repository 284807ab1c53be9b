/*
 * bench-rpc.c - round-trip cost of collective_rpc("get_rank") through the
 * engine with 1, 2 and 4 mp workers, measured side by side with a raw
 * unix-socket ping-pong of the same payload size and a Python executor of
 * the reference design (multiprocessing workers, pickled messages over
 * pipes), plus the engine's own overhead per step. Prints a markdown table.
 *
 *   bench-rpc [ITERATIONS [RUNS]]   (run it through `make bench`; RUNS default 5)
 *
 * Environment: BENCH_RPC_SPIN_US sets the engine's mp.spin_us (default: the
 * engine's, -1: auto); BENCH_RPC_ONE_CPU=1 runs the caller, the ranks and
 * the raw peers all on one CPU (every hop a context switch there: the CPU
 * cost of each side shows, not the wake-ups across CPUs);
 * BENCH_RPC_RAW_TIMERS=1 gives the raw fan-out dexec's timers (the
 * caller's recv bounded by a 2 ms SO_RCVTIMEO, each echo waiting in poll
 * with a 1 s timeout before its read), to tell their cost from the
 * protocol's.
 *
 * Placement (the same for both sides of the comparison): the calling
 * thread runs alone on the last CPU the bench may use, in the raw and the
 * dexec phases alike; the engine is created from a thread that may use
 * only the other CPUs, so the mp executor places its ranks on those by its
 * default (mp.cpus_per_rank = 0), and each raw echo process gets the CPU
 * affinity of the rank it stands for. Unpinned, the caller's CPU relative
 * to the peers' decided between a same-CPU context switch (~5 us) and a
 * cross-CPU wake-up of a halted vCPU (~50 us) phase by phase, and the
 * figures were bimodal.
 */
#include "config.h"

#include <sched.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
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
 * framing, no encoding: write to every peer, then read every reply. The
 * peers are echo processes on unix socketpairs. */
typedef struct raw_peers {
    int n;
    int timers; /* BENCH_RPC_RAW_TIMERS */
    int fd[8];
    pid_t pid[8];
    size_t size;
    char *buf;
} raw_peers;

/* The echo processes run where the engine's ranks run: peer p gets the
 * CPU affinity of rank p (cpus[p]; the mp executor pins each rank to its
 * share of the host's CPUs by default, mp.cpus_per_rank), so both sides of
 * the comparison are placed alike. */
static void raw_open(raw_peers *rp, int peers, size_t size, const cpu_set_t *cpus)
{
    int sv[8][2];

    memset(rp, 0, sizeof(*rp));
    rp->n = peers;
    rp->timers = getenv("BENCH_RPC_RAW_TIMERS") != NULL && getenv("BENCH_RPC_RAW_TIMERS")[0] == '1';
    rp->size = size;
    rp->buf = calloc(1, size);
    for (int p = 0; p < peers; p++) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[p]) != 0) {
            perror("bench-rpc: socketpair");
            exit(1);
        }
        rp->pid[p] = fork();
        if (rp->pid[p] == 0) {
            /* keep only our end: the parent's ends (or earlier peers would
             * never see EOF) and the engine's sockets go */
            for (int fd = 3; fd < 1024; fd++)
                if (fd != sv[p][1])
                    close(fd);
            if (cpus != NULL && sched_setaffinity(0, sizeof(cpus[p]), &cpus[p]) != 0)
                _exit(1);
            for (;;) {
                size_t got = 0;

                while (got < size) {
                    ssize_t n;

                    if (rp->timers) {
                        /* the worker's loop: poll with its tick's timeout */
                        struct pollfd pf = {.fd = sv[p][1], .events = POLLIN};

                        if (poll(&pf, 1, 1000) == 0)
                            continue;
                    }
                    n = read(sv[p][1], rp->buf + got, size - got);

                    if (n <= 0)
                        _exit(0);
                    got += (size_t)n;
                }
                if (write(sv[p][1], rp->buf, size) != (ssize_t)size)
                    _exit(0);
            }
        }
        close(sv[p][1]);
        rp->fd[p] = sv[p][0];
        if (rp->timers) {
            /* the engine's read: recv bounded by 2 ms, then again */
            struct timeval tv = {.tv_sec = 0, .tv_usec = 2000};

            setsockopt(rp->fd[p], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        }
    }
}

static double raw_call(raw_peers *rp)
{
    double t0 = dexec_now();

    for (int p = 0; p < rp->n; p++)
        if (write(rp->fd[p], rp->buf, rp->size) != (ssize_t)rp->size)
            exit(1);
    for (int p = 0; p < rp->n; p++) {
        size_t got = 0;

        while (got < rp->size) {
            ssize_t n = read(rp->fd[p], rp->buf + got, rp->size - got);

            if (n < 0 && rp->timers && (errno == EAGAIN || errno == EWOULDBLOCK))
                continue;
            if (n <= 0)
                exit(1);
            got += (size_t)n;
        }
    }
    return dexec_now() - t0;
}

static void raw_close(raw_peers *rp)
{
    for (int p = 0; p < rp->n; p++) {
        close(rp->fd[p]);
        waitpid(rp->pid[p], NULL, 0);
    }
    free(rp->buf);
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
        (getenv("BENCH_RPC_SPIN_US") != NULL &&
         dexec_config_set(cfg, "mp.spin_us", getenv("BENCH_RPC_SPIN_US"), err, sizeof(err)) !=
             DEXEC_OK) ||
        dexec_engine_create(cfg, &e, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "bench-rpc: %s\n", err);
        exit(1);
    }
    dexec_config_free(cfg);
    return e;
}

static double engine_call(dexec_engine *e)
{
    dexec_value *r = NULL;
    double t0 = dexec_now(), t;

    if (dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, -1, &r) != DEXEC_OK) {
        fprintf(stderr, "bench-rpc: %s\n", dexec_engine_last_error(e));
        exit(1);
    }
    t = dexec_now() - t0;
    dexec_value_free(r);
    return t;
}

/* The placement above: caller_cpu for the calling thread, rest for the
 * engine's ranks (and the raw peers through theirs). */
typedef struct placement {
    int pinned; /* 0: one CPU only, nothing to separate */
    int caller_cpu;
    cpu_set_t all, rest, caller;
} placement;

static void placement_init(placement *pl)
{
    memset(pl, 0, sizeof(*pl));
    if (sched_getaffinity(0, sizeof(pl->all), &pl->all) != 0 || CPU_COUNT(&pl->all) < 2)
        return;
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &pl->all))
            pl->caller_cpu = i;
    pl->rest = pl->all;
    CPU_CLR(pl->caller_cpu, &pl->rest);
    CPU_ZERO(&pl->caller);
    CPU_SET(pl->caller_cpu, &pl->caller);
    if (getenv("BENCH_RPC_ONE_CPU") != NULL && getenv("BENCH_RPC_ONE_CPU")[0] == '1')
        pl->rest = pl->caller; /* everything on one CPU: the protocol's CPU cost shows */
    pl->pinned = 1;
}

static void pin(const placement *pl, const cpu_set_t *set)
{
    if (pl->pinned && sched_setaffinity(0, sizeof(*set), set) != 0) {
        perror("bench-rpc: sched_setaffinity");
        exit(1);
    }
}

/* "0-3,5" */
static void cpulist(const cpu_set_t *set, char *buf, size_t len)
{
    size_t l = 0;

    buf[0] = '\0';
    for (int i = 0; i < CPU_SETSIZE && l + 16 < len; i++) {
        int j = i;

        if (!CPU_ISSET(i, set))
            continue;
        while (j + 1 < CPU_SETSIZE && CPU_ISSET(j + 1, set))
            j++;
        l += (size_t)snprintf(buf + l, len - l, j > i ? "%s%d-%d" : "%s%d", l ? "," : "", i, j);
        i = j;
    }
}

/* Raw fan-out and collective_rpc measured in alternating blocks of BLOCK
 * calls, so that a change in the host's load (it is shared) falls on both
 * alike; after 1000 warm-up calls of each. */
#define BLOCK 100

static void measure_pair(const placement *pl, int ranks, size_t size, int iters, stats *raw,
                         stats *ours, char *where, size_t wlen, char (*rank_cpus)[64])
{
    raw_peers rp;
    dexec_engine *e;
    double *tr = calloc((size_t)iters, sizeof(double));
    double *te = calloc((size_t)iters, sizeof(double));

    cpu_set_t cpus[8];
    dexec_value *info = NULL;

    /* the ranks inherit this thread's CPUs: all but the caller's */
    pin(pl, &pl->rest);
    e = open_engine(ranks);
    pin(pl, &pl->caller);
    if (dexec_engine_collective_rpc(e, "get_info", 0, NULL, NULL, -1, &info) != DEXEC_OK) {
        fprintf(stderr, "bench-rpc: %s\n", dexec_engine_last_error(e));
        exit(1);
    }
    for (int r = 0; r < ranks; r++) {
        pid_t pid = (pid_t)dexec_value_as_int(
            dexec_value_map_get(dexec_value_array_get(info, (size_t)r), "pid"), -1);

        if (pid <= 0 || sched_getaffinity(pid, sizeof(cpus[r]), &cpus[r]) != 0) {
            fprintf(stderr, "bench-rpc: no CPU affinity of rank %d\n", r);
            exit(1);
        }
        if (rank_cpus != NULL)
            cpulist(&cpus[r], rank_cpus[r], sizeof(rank_cpus[r]));
        if (where != NULL) {
            size_t l = strlen(where);

            if (l + 2 < wlen) {
                snprintf(where + l, wlen - l, "%s", r ? "; " : "");
                l = strlen(where);
                cpulist(&cpus[r], where + l, wlen - l);
            }
        }
    }
    dexec_value_free(info);
    raw_open(&rp, ranks, size, cpus);
    for (int i = 0; i < 1000; i++) {
        raw_call(&rp);
        engine_call(e);
    }
    for (int i = 0; i < iters; i += BLOCK) {
        int n = iters - i < BLOCK ? iters - i : BLOCK;

        for (int j = 0; j < n; j++)
            tr[i + j] = raw_call(&rp);
        for (int j = 0; j < n; j++)
            te[i + j] = engine_call(e);
    }
    *raw = summarize(tr, iters);
    *ours = summarize(te, iters);
    raw_close(&rp);
    dexec_engine_free(e);
    pin(pl, &pl->all);
    free(tr);
    free(te);
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

/* Runs the Python reference-design executor; it prints "median p99" in us.
 * With a placement, its parent and workers are placed like the caller and
 * the ranks (rank_cpus: each rank's CPU list). */
static int python_rpc(const placement *pl, int ranks, int iters, char (*rank_cpus)[64],
                      stats *s)
{
    char cmd[2048];
    FILE *f;
    int ok;
    size_t l;

    l = (size_t)snprintf(cmd, sizeof(cmd), "python3 '%s/bench-rpc-python.py' %d %d",
                         BENCH_SRCDIR, ranks, iters);
    if (pl->pinned) {
        l += (size_t)snprintf(cmd + l, sizeof(cmd) - l, " %d", pl->caller_cpu);
        for (int r = 0; r < ranks && l < sizeof(cmd); r++)
            l += (size_t)snprintf(cmd + l, sizeof(cmd) - l, " %s", rank_cpus[r]);
    }
    f = popen(cmd, "r");
    if (f == NULL)
        return -1;
    ok = fscanf(f, "%lf %lf", &s->median_us, &s->p99_us) == 2;
    pclose(f);
    return ok ? 0 : -1;
}

/* The target: at most 1.3x the raw fan-out's median and 2x its
 * p99, at 1, 2 and 4 workers, in every one of the runs. */
#define TARGET_MEDIAN 1.3
#define TARGET_P99 2.0

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 20000;
    int runs = argc > 2 ? atoi(argv[2]) : 5;
    size_t size = request_frame_size();
    int ranks[] = {1, 2, 4};
    int runs_met = 0, streak = 0, best_streak = 0;
    int k_met[3] = {0, 0, 0}, k_streak[3] = {0, 0, 0}, k_best[3] = {0, 0, 0};
    double loadavg[3] = {0, 0, 0};
    char where[3][256] = {"", "", ""}, cpus[256];
    char rank_cpus[3][8][64];
    placement pl;

    if (iters < 100)
        iters = 100;
    if (runs < 1)
        runs = 1;
    placement_init(&pl);
    if (getloadavg(loadavg, 3) < 0)
        loadavg[0] = -1;
    printf("collective_rpc(\"get_rank\") round trip, %d calls each (raw and dexec in alternating "
           "blocks of %d), %zu-byte request frame, %ld CPUs, mp.spin_us = %s, load average %.2f "
           "at the start%s\n\n",
           iters, BLOCK, size, sysconf(_SC_NPROCESSORS_ONLN),
           getenv("BENCH_RPC_SPIN_US") != NULL ? getenv("BENCH_RPC_SPIN_US") : "-1 (auto, default)",
           loadavg[0],
           getenv("BENCH_RPC_RAW_TIMERS") != NULL && getenv("BENCH_RPC_RAW_TIMERS")[0] == '1'
               ? "; the raw fan-out with dexec's timers (BENCH_RPC_RAW_TIMERS=1)"
               : "");
    printf("| run | workers | raw fan-out median / p99 (us) | dexec median / p99 (us) | "
           "dexec / raw median | dexec / raw p99 | target |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- |\n");
    for (int run = 1; run <= runs; run++) {
        int met = 1;

        for (int k = 0; k < 3; k++) {
            stats raw, ours;
            double rm, rp;
            int ok;

            measure_pair(&pl, ranks[k], size, iters, &raw, &ours, run == 1 ? where[k] : NULL,
                         sizeof(where[k]), run == 1 ? rank_cpus[k] : NULL);
            rm = ours.median_us / raw.median_us;
            rp = ours.p99_us / raw.p99_us;
            ok = rm <= TARGET_MEDIAN && rp <= TARGET_P99;
            met &= ok;
            k_met[k] += ok;
            k_streak[k] = ok ? k_streak[k] + 1 : 0;
            if (k_streak[k] > k_best[k])
                k_best[k] = k_streak[k];
            printf("| %d | %d | %.1f / %.1f | %.1f / %.1f | %.2fx | %.2fx | %s |\n", run,
                   ranks[k], raw.median_us, raw.p99_us, ours.median_us, ours.p99_us, rm, rp,
                   ok ? "met" : "not met");
            fflush(stdout);
        }
        runs_met += met;
        streak = met ? streak + 1 : 0;
        if (streak > best_streak)
            best_streak = streak;
    }
    if (getloadavg(loadavg, 3) < 0)
        loadavg[0] = -1;
    if (pl.pinned) {
        cpulist(&pl.rest, cpus, sizeof(cpus));
        printf("\nplacement: the calling thread on CPU %d in both phases; the ranks (and each raw "
               "peer like its rank) on CPUs %s as the mp executor splits them: 1 worker: %s; "
               "2 workers: %s; 4 workers: %s\n",
               pl.caller_cpu, cpus, where[0], where[1], where[2]);
    } else {
        printf("\nplacement: one CPU only, the caller and the ranks share it\n");
    }
    printf("\nverdict (dexec <= %.1fx the raw median and <= %.0fx its p99, %d runs in a row): ",
           TARGET_MEDIAN, TARGET_P99, runs);
    for (int k = 0; k < 3; k++)
        printf("%d worker%s: %s (met in %d of %d runs, %d in a row); ", ranks[k],
               ranks[k] == 1 ? "" : "s", k_best[k] == runs ? "MET" : "NOT MET", k_met[k], runs,
               k_best[k]);
    printf("all three in the same runs: met in %d of %d, %d in a row; %s (load average %.2f at "
           "the end)\n",
           runs_met, runs, best_streak, runs_met == runs ? "MET" : "NOT MET", loadavg[0]);

    /* The Python design (placed alike) and the engine's own overhead per
     * step, once. */
    printf("\n| workers | Python mp+pickle median / p99 (us), placed alike |\n| --- | --- |\n");
    for (int k = 0; k < 3; k++) {
        stats py = {0, 0};

        if (python_rpc(&pl, ranks[k], iters, rank_cpus[k], &py) == 0)
            printf("| %d | %.1f / %.1f |\n", ranks[k], py.median_us, py.p99_us);
        else
            printf("| %d | (python3 not available) |\n", ranks[k]);
    }
    {
        dexec_engine *e = open_engine(1);
        stats ov = engine_overhead(e, 500);

        printf("\nengine overhead per step (wall - worker time, 1 rank, 500 steps): median %.1f us, "
               "p99 %.1f us\n",
               ov.median_us, ov.p99_us);
        dexec_engine_free(e);
    }
    return 0;
}
