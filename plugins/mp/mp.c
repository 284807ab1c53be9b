/*
 * mp.c - the "mp" executor: spawns num_gpus dexec-worker processes on this
 * host, one rank each (rank i sees only GPU i), talks to each over a
 * socketpair, and owns them.
 *
 * Ownership rules, so that no worker outlives its engine:
 *  - each child asks the kernel for SIGKILL when its parent dies
 *    (PR_SET_PDEATHSIG, from libdexec's spawner thread, so the engine
 *    may be created on any thread), and exits on EOF of its control socket;
 *  - a worker that dies is noticed through EOF at once, and every call
 *    waiting on it fails naming the rank, pid and exit status or signal;
 *  - shutdown: shutdown RPC, grace, SIGTERM, grace, SIGKILL, reap, the
 *    grace being timeouts.shutdown_grace (dexec_process_stop_all).
 *
 * Recovery (<dexec/group.h>, doc/configuration.md "Recovery"): a dead
 * rank is started again (max_restarts) by mp_restart on the group's
 * restart thread, with the same rank, model and device; the requests it
 * held are dealt again (max_task_retries); a hung rank (timeouts.stall)
 * is killed with SIGKILL by mp_kill and then handled as a death. The
 * processes replaced are kept, reaped, until the executor is freed: the
 * dead connection's death callback still points at them. With
 * mp.launcher = "srun" ranks are not restarted (the step is one unit).
 *
 * Spawning, confining and stopping are libdexec's process services
 * (<dexec/process.h>), shared with ray_actor and the node agent.
 *
 * With mp.launcher = "srun" the ranks are one Slurm job step instead
 * (<dexec/srun.h>): one task per rank (rank = SLURM_PROCID, one GPU per
 * task unless device = "cpu"), each reached over TCP with a token made for
 * this engine. The same rules hold: each worker exits when the engine's
 * connection to it closes (--owned), srun dies with the engine, and
 * shutdown is the shutdown RPC, grace, scancel, SIGKILL of srun.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <dexec/plugin.h>
#include <dexec/process.h>
#include <dexec/rpc.h>
#include <dexec/srun.h>

struct dexec_executor {
    const dexec_host *host;
    int n;
    dexec_process **proc; /* per rank; reaped once by whoever gets there first */
    dexec_group *group;
    double grace;
    dexec_srun *srun; /* mp.launcher = "srun": the step hosting every rank */
    const char *model, *device; /* the configuration's strings */
    double init_t;
    pthread_mutex_t plock;     /* proc[] and old[] against mp_kill */
    dexec_process **old;       /* replaced by restarts; freed in destroy */
    size_t nold;
    /* mp.cpus_per_rank: each rank's CPU list ("" none) and thread count (0 none) */
    char (*cpus)[256];
    int threads;
    /* timeouts.write, timeouts.health, mp.spin_us (as seconds; spin_auto:
     * mp.spin_us = -1): applied to every rank's connection once it is
     * ready, a restarted one's too */
    double write_t, health_t, spin_s;
    int spin_auto;
    /* every rank's CPUs, one list ("" when a rank is not pinned) */
    char cpus_all[4096];
};

/* mp.spin_us = -1: how long a caller spins, where it may (conn_settings). */
#define SPIN_AUTO_S 50e-6

static void conn_settings(const struct dexec_executor *ex, dexec_conn *c)
{
    dexec_conn_set_timeouts(c, ex->write_t, ex->health_t);
    if (!ex->spin_auto) {
        dexec_conn_set_spin(c, ex->spin_s);
    } else {
        /* only while the waiting thread runs on a CPU no rank of this
         * engine is pinned to (whichever ranks the call waits on: a rank
         * left out may be computing): one with its own CPU stays awake
         * for the reply, one that shares a rank's would take the CPU from
         * it. Ranks that are not pinned (mp.cpus_per_rank = -1, srun) may
         * run anywhere: no spinning. */
        const char *cpus = ex->srun == NULL ? ex->cpus_all : NULL;

        if (dexec_conn_set_spin_auto(c, SPIN_AUTO_S, cpus) != DEXEC_OK)
            dexec_conn_set_spin(c, 0);
    }
}

static double left_s(double deadline)
{
    double l = deadline - dexec_now();

    return l > 0 ? l : 0;
}

/* The connection saw EOF: say how the worker ended. EOF comes a moment
 * before the kernel makes the exit status available, so wait a little. */
static void on_death(void *user, dexec_conn *c, char *buf, size_t len)
{
    dexec_process *p = user;
    char how[128];

    (void)c;
    if (dexec_process_reap(p, 0.5)) {
        dexec_describe_exit(dexec_process_status(p), how, sizeof(how));
        snprintf(buf, len, "worker died: %s", how);
    } else {
        snprintf(buf, len, "worker closed its connection (process still running)");
    }
}

/* 1 when env (NAME=VALUE entries) sets name. */
static int env_has(char *const *env, const char *name)
{
    size_t n = strlen(name);

    for (size_t i = 0; env[i] != NULL; i++)
        if (strncmp(env[i], name, n) == 0 && env[i][n] == '=')
            return 1;
    return 0;
}

/* mp.cpus_per_rank: disjoint CPU lists for the ranks and their thread
 * count. 0 splits this process's CPUs evenly (with more ranks than CPUs:
 * one thread each, and every rank on all of them); N > 0 gives N each;
 * -1 sets nothing. */
static dexec_status split_cpus(struct dexec_executor *ex, char *err, size_t errlen)
{
    int64_t per = 0;
    int have = dexec_cpus_allowed();
    char avoid[4096] = "", perr[512];

    dexec_config_get_int(ex->host->config, "mp.cpus_per_rank", &per);
    if (per < 0)
        return DEXEC_OK;
    if (per == 0 && ex->n > have) {
        /* they share the CPUs this thread may use, said explicitly (a
         * child would inherit the spawner thread's): where the ranks may
         * run is then known (mp.spin_us = -1) */
        ex->threads = 1;
        ex->cpus = calloc((size_t)ex->n, sizeof(*ex->cpus));
        if (ex->cpus == NULL)
            return DEXEC_ENOMEM;
        for (int r = 0; r < ex->n; r++)
            if (dexec_cpus_pick(have, NULL, ex->cpus[r], sizeof(ex->cpus[r]), perr,
                                sizeof(perr)) != DEXEC_OK)
                ex->cpus[r][0] = '\0'; /* not pinned, as before */
        return DEXEC_OK;
    }
    if (per == 0)
        per = have / ex->n;
    if (per * ex->n > have) {
        dexec_errorf(err, errlen,
                     "mp.cpus_per_rank = %lld with %d ranks needs %lld CPUs but only %d are "
                     "available (lower mp.cpus_per_rank, or 0 to split them, or -1)",
                     (long long)per, ex->n, (long long)per * ex->n, have);
        return DEXEC_EINVAL;
    }
    ex->cpus = calloc((size_t)ex->n, sizeof(*ex->cpus));
    if (ex->cpus == NULL)
        return DEXEC_ENOMEM;
    ex->threads = (int)per;
    for (int r = 0; r < ex->n; r++) {
        size_t used = strlen(avoid);
        dexec_status st = dexec_cpus_pick((int)per, avoid[0] ? avoid : NULL, ex->cpus[r],
                                          sizeof(ex->cpus[r]), perr, sizeof(perr));

        if (st != DEXEC_OK) {
            dexec_errorf(err, errlen, "mp.cpus_per_rank = %lld: rank %d: %s", (long long)per,
                         r, perr);
            return st;
        }
        snprintf(avoid + used, sizeof(avoid) - used, "%s%s", used ? "," : "", ex->cpus[r]);
    }
    return DEXEC_OK;
}

/* Starts rank's worker on one end of a socketpair (its fd 3); rank i sees
 * GPU i only, as its device 0. */
static dexec_status spawn_worker(struct dexec_executor *ex, int rank, const char *model,
                                 const char *device, int *conn_fd, char *err, size_t errlen)
{
    char rank_s[16], gpu_s[16], label[32];
    const char *dtype = "float32";
    char *argv[] = {(char *)ex->host->worker_path, "--listen", "fd:3", "--rank", rank_s,
                    "--model", (char *)model, "--device", (char *)device, "--dtype", NULL,
                    NULL, NULL};
    dexec_spawn_args args = {.struct_size = sizeof(args), .argv = argv, .stdout_fd = -1,
                             .visible_gpus = gpu_s, .component = "mp", .label = label};
    dexec_status st;
    char **env;
    int sv[2], admin = 0;

    dexec_config_get_bool(ex->host->config, "allow_admin_methods", &admin);
    dexec_config_get_string(ex->host->config, "dtype", &dtype);
    argv[10] = (char *)dtype;
    if (admin)
        argv[11] = "--allow-admin";
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        dexec_errorf(err, errlen, "socketpair: %s", strerror(errno));
        return DEXEC_EIO;
    }
    snprintf(rank_s, sizeof(rank_s), "%d", rank);
    snprintf(gpu_s, sizeof(gpu_s), "%d", rank);
    snprintf(label, sizeof(label), "rank %d", rank);
    args.ctl_fd = sv[1];
    /* runtime_env.env_vars; the rank's CUDA_VISIBLE_DEVICES wins in spawn */
    env = dexec_runtime_env(ex->host->config, NULL, "mp");
    if (env == NULL) {
        close(sv[0]);
        close(sv[1]);
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    if (ex->cpus != NULL && ex->cpus[rank][0] != '\0')
        args.cpus = ex->cpus[rank];
    if (ex->threads > 0 && !env_has(env, "OPENBLAS_NUM_THREADS")) {
        char **grown;
        size_t k = 0;

        while (env[k] != NULL)
            k++;
        grown = realloc(env, (k + 2) * sizeof(*env));
        if (grown != NULL) {
            env = grown;
            env[k + 1] = NULL;
            env[k] = malloc(48);
            if (env[k] != NULL)
                snprintf(env[k], 48, "OPENBLAS_NUM_THREADS=%d", ex->threads);
        }
        if (grown == NULL || env[k] == NULL) {
            dexec_env_free(env);
            close(sv[0]);
            close(sv[1]);
            dexec_errorf(err, errlen, "out of memory");
            return DEXEC_ENOMEM;
        }
    }
    args.env = (const char *const *)env;
    {
        dexec_process *p = NULL;

        st = dexec_process_spawn(&args, &p, err, errlen);
        pthread_mutex_lock(&ex->plock);
        ex->proc[rank] = p;
        pthread_mutex_unlock(&ex->plock);
    }
    dexec_env_free(env);
    close(sv[1]);
    if (st != DEXEC_OK) {
        close(sv[0]);
        return st == DEXEC_EIO || st == DEXEC_ENOMEM ? st : DEXEC_EINIT;
    }
    *conn_fd = sv[0];
    return DEXEC_OK;
}

/* Stops every spawned worker, all ranks at once: shutdown RPC, grace,
 * SIGTERM, grace, SIGKILL, reap; the grace is timeouts.shutdown_grace. */
static void stop_workers(struct dexec_executor *ex)
{
    dexec_group_stop_recovery(ex->group);
    if (ex->srun != NULL) {
        char msg[256];
        uint32_t id;

        /* every rank exits on shutdown; srun then ends with its step */
        for (int r = 0; ex->group != NULL && r < ex->n; r++) {
            dexec_conn *c = dexec_group_conn(ex->group, r);

            if (c != NULL && !dexec_conn_dead(c))
                dexec_conn_send(c, "shutdown", NULL, NULL, NULL, &id, msg, sizeof(msg));
        }
        dexec_srun_stop(ex->srun, ex->grace);
        return;
    }
    dexec_conn **conns = calloc((size_t)ex->n, sizeof(*conns));

    for (int r = 0; conns != NULL && ex->group != NULL && r < ex->n; r++)
        conns[r] = dexec_group_conn(ex->group, r);
    /* without memory for the list the ladder starts at SIGTERM */
    dexec_process_stop_all(ex->proc, conns, (size_t)ex->n, ex->grace);
    free(conns);
}

static void destroy(struct dexec_executor *ex)
{
    dexec_group_free(ex->group);
    for (int r = 0; ex->proc != NULL && r < ex->n; r++)
        dexec_process_free(ex->proc[r]);
    for (size_t i = 0; i < ex->nold; i++)
        dexec_process_free(ex->old[i]);
    free(ex->old);
    free(ex->proc);
    free(ex->cpus);
    pthread_mutex_destroy(&ex->plock);
    dexec_srun_free(ex->srun);
    free(ex);
}

/* msg without the "rank R: " its worker put first (the caller names the
 * rank itself: saying it twice reads as two ranks). */
static const char *without_rank(const char *msg, int r)
{
    char prefix[32];
    size_t n = (size_t)snprintf(prefix, sizeof(prefix), "rank %d: ", r);

    return strncmp(msg, prefix, n) == 0 ? msg + n : msg;
}

/* A rank's connection saw EOF: its task ended, or the whole step did. */
static void srun_on_death(void *user, dexec_conn *c, char *buf, size_t len)
{
    struct dexec_executor *ex = user;
    char how[128], msgs[512];
    int status;

    (void)c;
    if (dexec_srun_exited(ex->srun, 1.0, &status)) {
        dexec_describe_exit(status, how, sizeof(how));
        dexec_srun_messages(ex->srun, msgs, sizeof(msgs));
        snprintf(buf, len, "worker died: step %s ended, srun %s%s%s", dexec_srun_step(ex->srun),
                 how, msgs[0] ? ": " : "", msgs);
    } else {
        snprintf(buf, len, "worker in step %s closed its connection",
                 dexec_srun_step(ex->srun));
    }
}

/* mp.launcher = "srun": every rank a task of one step, connected over TCP. */
static dexec_status start_srun(struct dexec_executor *ex, const char *model, const char *device,
                               double deadline, char *err, size_t errlen)
{
    const dexec_config *cfg = ex->host->config;
    const char *const *opts = NULL;
    const char *dtype = "float32";
    char *argv[] = {(char *)ex->host->worker_path, "--model", (char *)model, "--device",
                    (char *)device, "--dtype", NULL, NULL};
    char **extra;
    size_t nopts = 0;
    dexec_srun_args sa = {.struct_size = sizeof(sa), .worker_argv = argv, .ntasks = ex->n,
                          .gpus_per_task = strcmp(device, "cpu") != 0,
                          .job_name = "dexec-mp", .label = "mp ranks"};
    dexec_status st;

    dexec_config_get_string(cfg, "dtype", &dtype);
    argv[6] = (char *)dtype;
    dexec_config_get_string(cfg, "slurm.partition", &sa.partition);
    dexec_config_get_string(cfg, "slurm.account", &sa.account);
    dexec_config_get_string(cfg, "slurm.time", &sa.time_limit);
    dexec_config_get_list(cfg, "slurm.options", &nopts, &opts);
    extra = calloc(nopts + 1, sizeof(*extra));
    if (extra == NULL)
        return DEXEC_ENOMEM;
    for (size_t i = 0; i < nopts; i++)
        extra[i] = (char *)opts[i];
    sa.extra = extra;
    sa.owner_wait = left_s(deadline) + 1;
    st = dexec_srun_start(&sa, deadline, &ex->srun, err, errlen);
    free(extra);
    for (int r = 0; r < ex->n && st == DEXEC_OK; r++) {
        const char *addr = dexec_srun_address(ex->srun, r);
        char label[300], msg[1024];
        dexec_conn *c;

        snprintf(label, sizeof(label), "rank %d (Slurm step %s on %s)", r,
                 dexec_srun_step(ex->srun), dexec_srun_node(ex->srun, r));
        st = dexec_conn_connect(addr, left_s(deadline), &c, msg, sizeof(msg));
        if (st != DEXEC_OK) {
            dexec_errorf(err, errlen, "%s at %s: %s", label, addr, msg);
            return DEXEC_EINIT;
        }
        dexec_conn_set_label(c, label);
        dexec_conn_on_death(c, srun_on_death, ex);
        dexec_group_set(ex->group, r, c);
    }
    return st;
}

/* Hello and initialize on rank's new connection, until deadline. */
static dexec_status init_rank(dexec_conn *c, int r, double deadline, double init_t, char *err,
                              size_t errlen)
{
    dexec_value *res = NULL;
    char msg[1024];
    uint32_t id;
    dexec_status st;

    st = dexec_conn_hello(c, NULL, left_s(deadline), NULL, msg, sizeof(msg));
    if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "%s", msg);
        return st;
    }
    st = dexec_conn_send(c, "initialize", NULL, NULL, NULL, &id, err, errlen);
    if (st != DEXEC_OK)
        return st;
    st = dexec_conn_wait(c, id, deadline, &res, msg, sizeof(msg));
    if (st == DEXEC_ETIMEDOUT) {
        dexec_errorf(err, errlen, "rank %d did not initialize within %.3g s (timeouts.init)", r,
                     init_t);
    } else if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "rank %d failed to initialize: %s", r, without_rank(msg, r));
        st = DEXEC_EINIT;
    } else if (strcmp(dexec_value_as_str(dexec_value_map_get(res, "status"), ""), "ready")) {
        dexec_errorf(err, errlen, "rank %d failed to initialize: %s", r,
                     without_rank(dexec_value_as_str(dexec_value_map_get(res, "error"),
                                                     "no reason given"),
                                  r));
        st = DEXEC_EINIT;
    }
    dexec_value_free(res);
    return st;
}

/* The group's restart of a dead rank (its own thread): the old process is
 * reaped (SIGKILL first if it still runs: it closed its connection or was
 * declared hung), a new one is spawned with the same rank, model, device
 * and GPU, and initialized within timeouts.init. */
static dexec_status mp_restart(void *user, int rank, dexec_conn **out, char *err, size_t errlen)
{
    struct dexec_executor *ex = user;
    double deadline = dexec_now() + ex->init_t;
    dexec_process *old;
    dexec_process **grown;
    dexec_conn *c;
    dexec_status st;
    char label[64];
    int fd;

    pthread_mutex_lock(&ex->plock);
    old = ex->proc[rank];
    grown = realloc(ex->old, (ex->nold + 1) * sizeof(*grown));
    if (grown == NULL) {
        pthread_mutex_unlock(&ex->plock);
        return DEXEC_ENOMEM;
    }
    ex->old = grown;
    ex->old[ex->nold++] = old;
    ex->proc[rank] = NULL;
    pthread_mutex_unlock(&ex->plock);
    if (old != NULL && !dexec_process_reap(old, 0)) {
        dexec_process_signal(old, SIGKILL);
        dexec_process_reap(old, 5.0);
    }
    st = spawn_worker(ex, rank, ex->model, ex->device, &fd, err, errlen);
    if (st != DEXEC_OK)
        return st;
    snprintf(label, sizeof(label), "rank %d (pid %d)", rank, dexec_process_pid(ex->proc[rank]));
    if (dexec_conn_from_fd(fd, label, &c) != DEXEC_OK) {
        close(fd);
        return DEXEC_ENOMEM;
    }
    dexec_conn_on_death(c, on_death, ex->proc[rank]);
    st = init_rank(c, rank, deadline, ex->init_t, err, errlen);
    if (st != DEXEC_OK) {
        dexec_process_stop(ex->proc[rank], c, 0);
        dexec_conn_free(c);
        return st;
    }
    conn_settings(ex, c);
    *out = c;
    return DEXEC_OK;
}

/* The group declared rank hung: SIGKILL; EOF follows and it is a death. */
static void mp_kill(void *user, int rank)
{
    struct dexec_executor *ex = user;

    pthread_mutex_lock(&ex->plock);
    if (ex->proc[rank] != NULL)
        dexec_process_signal(ex->proc[rank], SIGKILL);
    pthread_mutex_unlock(&ex->plock);
}

static dexec_status mp_create(const dexec_host *host, dexec_executor **out, char *err,
                              size_t errlen)
{
    struct dexec_executor *ex;
    int64_t n = 1;
    double init_t = 60.0, grace = 5.0;
    const char *model = "fashion-dit", *device = "auto", *launcher = "local";
    dexec_status st = DEXEC_OK;
    double deadline;
    uint32_t *ids;
    char msg[1024];

    dexec_config_get_int(host->config, "num_gpus", &n);
    dexec_config_get_float(host->config, "timeouts.init", &init_t);
    dexec_config_get_float(host->config, "timeouts.shutdown_grace", &grace);
    dexec_config_get_string(host->config, "model", &model);
    dexec_config_get_string(host->config, "device", &device);
    dexec_config_get_string(host->config, "mp.launcher", &launcher);
    if (n < 1 || n > 1024) {
        dexec_errorf(err, errlen, "num_gpus = %lld: the mp executor needs 1 or more ranks",
                     (long long)n);
        return DEXEC_EINVAL;
    }
    {
        int64_t pc = 1, ps = 1;

        dexec_config_get_int(host->config, "parallel.cfg", &pc);
        dexec_config_get_int(host->config, "parallel.sequence", &ps);
        if (n % (pc * ps) != 0) {
            dexec_errorf(err, errlen,
                         "num_gpus = %lld is not a multiple of parallel.cfg x parallel.sequence "
                         "= %lld x %lld: num_gpus = data-parallel groups x cfg x sequence",
                         (long long)n, (long long)pc, (long long)ps);
            return DEXEC_ECONFIG;
        }
    }
    deadline = dexec_now() + init_t;
    ex = calloc(1, sizeof(*ex));
    if (ex == NULL)
        return DEXEC_ENOMEM;
    ex->host = host;
    ex->n = (int)n;
    ex->grace = grace;
    ex->model = model;
    ex->device = device;
    ex->init_t = init_t;
    pthread_mutex_init(&ex->plock, NULL);
    ex->proc = calloc((size_t)n, sizeof(*ex->proc));
    ex->group = dexec_group_new((int)n);
    ids = calloc((size_t)n, sizeof(*ids));
    if (ex->proc == NULL || ex->group == NULL || ids == NULL) {
        free(ids);
        destroy(ex);
        return DEXEC_ENOMEM;
    }
    if (strcmp(launcher, "srun") == 0)
        st = start_srun(ex, model, device, deadline, err, errlen);
    else
        st = split_cpus(ex, err, errlen);
    if (st == DEXEC_OK && ex->cpus != NULL) {
        /* every rank's CPUs, or "" when one is not pinned or the list
         * does not fit: mp.spin_us = -1 then never spins */
        size_t used = 0;

        for (int r = 0; r < ex->n; r++) {
            int w = snprintf(ex->cpus_all + used, sizeof(ex->cpus_all) - used, "%s%s",
                             used ? "," : "", ex->cpus[r]);

            if (ex->cpus[r][0] == '\0' || w < 0 || (size_t)w >= sizeof(ex->cpus_all) - used) {
                ex->cpus_all[0] = '\0';
                break;
            }
            used += (size_t)w;
        }
    }
    for (int r = 0; ex->srun == NULL && r < ex->n && st == DEXEC_OK; r++) {
        int fd;
        dexec_conn *c;
        char label[64];

        st = spawn_worker(ex, r, model, device, &fd, err, errlen);
        if (st != DEXEC_OK)
            break;
        snprintf(label, sizeof(label), "rank %d (pid %d)", r, dexec_process_pid(ex->proc[r]));
        if (dexec_conn_from_fd(fd, label, &c) != DEXEC_OK) {
            close(fd);
            st = DEXEC_ENOMEM;
            break;
        }
        dexec_conn_on_death(c, on_death, ex->proc[r]);
        dexec_group_set(ex->group, r, c);
    }
    /* hello, then initialize, on every rank in parallel */
    for (int r = 0; r < ex->n && st == DEXEC_OK; r++) {
        st = dexec_conn_hello(dexec_group_conn(ex->group, r),
                              ex->srun != NULL ? dexec_srun_token(ex->srun) : NULL,
                              left_s(deadline), NULL, msg, sizeof(msg));
        if (st != DEXEC_OK)
            dexec_errorf(err, errlen, "%s", msg);
    }
    for (int r = 0; r < ex->n && st == DEXEC_OK; r++)
        st = dexec_conn_send(dexec_group_conn(ex->group, r), "initialize", NULL, NULL, NULL,
                             &ids[r], err, errlen);
    for (int r = 0; r < ex->n && st == DEXEC_OK; r++) {
        dexec_value *res = NULL;
        dexec_conn *c = dexec_group_conn(ex->group, r);

        st = dexec_conn_wait(c, ids[r], deadline, &res, msg, sizeof(msg));
        if (st == DEXEC_ETIMEDOUT) {
            dexec_errorf(err, errlen, "rank %d did not initialize within %.3g s (timeouts.init)",
                         r, init_t);
        } else if (st != DEXEC_OK) {
            dexec_errorf(err, errlen, "rank %d failed to initialize: %s", r, without_rank(msg, r));
            st = DEXEC_EINIT;
        } else if (strcmp(dexec_value_as_str(dexec_value_map_get(res, "status"), ""), "ready")) {
            dexec_errorf(
                err, errlen, "rank %d failed to initialize: %s", r,
                without_rank(dexec_value_as_str(dexec_value_map_get(res, "error"), "no reason given"),
                             r));
            st = DEXEC_EINIT;
        }
        dexec_value_free(res);
    }
    free(ids);
    if (st == DEXEC_OK)
        st = dexec_group_form_from_config(ex->group, host->config, err, errlen);
    if (st != DEXEC_OK) {
        stop_workers(ex);
        destroy(ex);
        return st;
    }
    {
        dexec_group_recovery rec;

        dexec_group_recovery_from_config(host->config, &rec);
        rec.component = "mp";
        rec.restart = ex->srun == NULL ? mp_restart : NULL;
        rec.kill = ex->srun == NULL ? mp_kill : NULL;
        rec.user = ex;
        dexec_group_set_recovery(ex->group, &rec);
        int64_t spin_us = -1;

        /* from here on a rank silent past timeouts.health is probed and,
         * unanswered, reported in the call that waits on it */
        ex->write_t = 30.0;
        ex->health_t = 5.0;
        dexec_config_get_float(host->config, "timeouts.write", &ex->write_t);
        dexec_config_get_float(host->config, "timeouts.health", &ex->health_t);
        dexec_config_get_int(host->config, "mp.spin_us", &spin_us);
        ex->spin_auto = spin_us < 0;
        ex->spin_s = spin_us > 0 ? (double)spin_us * 1e-6 : 0;
        for (int r = 0; r < ex->n; r++)
            conn_settings(ex, dexec_group_conn(ex->group, r));
    }
    host->log(DEXEC_LOG_INFO, "mp", "%d worker(s) ready%s%s", ex->n,
              ex->srun != NULL ? " in Slurm step " : "",
              ex->srun != NULL ? dexec_srun_step(ex->srun) : "");
    *out = ex;
    return DEXEC_OK;
}

static int mp_num_ranks(const dexec_executor *ex)
{
    return ex->n;
}

static dexec_status mp_collective_rpc(dexec_executor *ex, const char *method, double timeout,
                                      const dexec_value *args, const dexec_value *kwargs,
                                      int unique_reply_rank, dexec_value **replies, char *err,
                                      size_t errlen)
{
    return dexec_group_collective_rpc(ex->group, method, timeout, args, kwargs,
                                      unique_reply_rank, replies, err, errlen);
}

static dexec_status mp_add_requests(dexec_executor *ex, const dexec_request *reqs, size_t n,
                                    dexec_output *outs, double timeout,
                                    dexec_progress_fn progress, void *user, char *err,
                                    size_t errlen)
{
    return dexec_group_generate(ex->group, reqs, n, outs, timeout, progress, user, err, errlen);
}

static dexec_status mp_add_requests_on(dexec_executor *ex, int slot, const dexec_request *reqs,
                                       size_t n, dexec_output *outs, double timeout,
                                       dexec_progress_fn progress, void *user, char *err,
                                       size_t errlen)
{
    return dexec_group_generate_on(ex->group, slot, reqs, n, outs, timeout, progress, user, err,
                                   errlen);
}

static dexec_status mp_rank_stats(dexec_executor *ex, int rank, dexec_rank_stats *out)
{
    return dexec_group_rank_stats(ex->group, rank, out);
}

static dexec_status mp_check_health(dexec_executor *ex, double timeout, char *err, size_t errlen)
{
    return dexec_group_check_health(ex->group, timeout, err, errlen);
}

static void mp_shutdown(dexec_executor *ex)
{
    if (ex == NULL)
        return;
    stop_workers(ex);
    destroy(ex);
}

static const dexec_executor_ops mp_ops = {
    .struct_size = sizeof(dexec_executor_ops),
    .flags = DEXEC_EXECUTOR_OWNS_WORKERS,
    .create = mp_create,
    .num_ranks = mp_num_ranks,
    .collective_rpc = mp_collective_rpc,
    .add_requests = mp_add_requests,
    .check_health = mp_check_health,
    .shutdown = mp_shutdown,
    .add_requests_on = mp_add_requests_on,
    .rank_stats = mp_rank_stats,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "mp", PACKAGE_VERSION,
                           "local worker processes, one per rank, owned by the engine", &mp_ops)};
