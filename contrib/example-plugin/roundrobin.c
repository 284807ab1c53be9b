/*
 * roundrobin.c - an example third-party executor for dexec that deals
 * requests across its workers round robin. Two ways to get workers:
 *  - connect: to the addresses listed in the configuration file's
 *    `roundrobin = { workers = [ ... ]; }` or in $ROUNDROBIN_WORKERS
 *    (comma-separated; it wins over the file), unix:/PATH or tcp:HOST:PORT
 *    in rank order; close only disconnects (like "external", minus the
 *    registry);
 *  - spawn ($ROUNDROBIN_SPAWN=N, when no worker addresses are given): N
 *    dexec-worker processes it owns, started with libdexec's process
 *    services (<dexec/process.h>): rank i sees GPU i only, and may be
 *    confined to $ROUNDROBIN_CPUS CPUs of its own and $ROUNDROBIN_MEMORY
 *    bytes; they die with the engine, and close stops them with the
 *    shutdown ladder and timeouts.shutdown_grace.
 *
 * Its settings (the "roundrobin" section) are declared in the descriptor:
 * dexec validates them with the file's line numbers, lists them in
 * `dexec config keys`, and this code reads them with dexec_config_get_*.
 *
 * Built out of tree against the installed headers only (see Makefile):
 *     cc -shared -fPIC -fvisibility=hidden $(pkg-config --cflags dexec) \
 *        -o dexec_roundrobin.so roundrobin.c $(pkg-config --libs dexec)
 * and loaded by path:
 *     dexec generate --backend ./dexec_roundrobin.so -p "a boot"
 */
#define _POSIX_C_SOURCE 200809L /* strdup, with -std=c11 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/socket.h>
#include <unistd.h>

#include <dexec/plugin.h>
#include <dexec/process.h>
#include <dexec/rpc.h>

#define ENV_WORKERS "ROUNDROBIN_WORKERS"
#define ENV_SPAWN "ROUNDROBIN_SPAWN"
#define ENV_CPUS "ROUNDROBIN_CPUS"
#define ENV_MEMORY "ROUNDROBIN_MEMORY"

/* The executor's state; the core only ever sees a pointer to it. */
struct dexec_executor {
    const dexec_host *host;
    dexec_group *group;
    int n;
    dexec_process **procs; /* spawn mode: rank i's worker; NULL in connect mode */
    double grace;          /* timeouts.shutdown_grace */
};

static double left(double deadline)
{
    double l = deadline - dexec_now();

    return l > 0 ? l : 0;
}

/* Joins a list with commas; NULL for an empty list (or no memory). */
static char *join(const char *const *items, size_t n)
{
    size_t len = 1;
    char *s;

    for (size_t i = 0; i < n; i++)
        len += strlen(items[i]) + 1;
    if (n == 0 || (s = calloc(1, len)) == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            strcat(s, ",");
        strcat(s, items[i]);
    }
    return s;
}

/* Splits $ROUNDROBIN_WORKERS, else roundrobin.workers, into *n addresses.
 * The array and *storage (which holds the strings) are the caller's to
 * free; NULL when neither says anything. */
static char **split_workers(const dexec_config *cfg, int *n, char **storage)
{
    const char *env = getenv(ENV_WORKERS);
    const char *const *items = NULL;
    char **v, *joined = NULL;
    size_t count = 0;
    int cap = 1;

    *n = 0;
    *storage = NULL;
    if (env == NULL || *env == '\0') {
        if (dexec_config_get_list(cfg, "roundrobin.workers", &count, &items) != DEXEC_OK)
            return NULL;
        env = joined = join(items, count);
        if (env == NULL)
            return NULL;
    }
    for (const char *p = env; *p != '\0'; p++)
        cap += *p == ',';
    *storage = strdup(env);
    free(joined);
    v = calloc((size_t)cap + 1, sizeof(*v));
    if (*storage == NULL || v == NULL) {
        free(*storage);
        *storage = NULL;
        free(v);
        return NULL;
    }
    for (char *tok = strtok(*storage, ","); tok != NULL; tok = strtok(NULL, ","))
        v[(*n)++] = tok;
    return v;
}

/* A whole number from the environment; dflt when unset. -1 when bad. */
static long long env_count(const char *name, long long dflt)
{
    const char *v = getenv(name);
    char *end;
    long long n;

    if (v == NULL || *v == '\0')
        return dflt;
    n = strtoll(v, &end, 10);
    return *end == '\0' && n >= 0 ? n : -1;
}

/* Spawn mode: starts n workers on socketpairs (their fd 3), rank i on GPU
 * i, each on its own ncpus CPUs when ncpus > 0, within memory bytes when
 * memory > 0. The group owns the connections, ex->procs the processes. */
static dexec_status spawn_workers(struct dexec_executor *ex, long long ncpus, long long memory,
                                  char *err, size_t errlen)
{
    const char *model = "fashion-dit", *device = "auto";
    char taken[4096] = "";
    dexec_status st = DEXEC_OK;

    dexec_config_get_string(ex->host->config, "model", &model);
    dexec_config_get_string(ex->host->config, "device", &device);
    ex->procs = calloc((size_t)ex->n, sizeof(*ex->procs));
    if (ex->procs == NULL)
        return DEXEC_ENOMEM;
    for (int r = 0; r < ex->n && st == DEXEC_OK; r++) {
        char rank_s[16], gpu_s[16], label[32], cpus[1024] = "", msg[512];
        char *argv[] = {(char *)ex->host->worker_path, "--listen", "fd:3", "--rank", rank_s,
                        "--model", (char *)model, "--device", (char *)device, NULL};
        dexec_spawn_args a = {.struct_size = sizeof(a), .argv = argv, .stdout_fd = -1,
                              .cpus = cpus, .visible_gpus = gpu_s, .memory_bytes = memory,
                              .component = "roundrobin", .label = label};
        dexec_conn *c;
        int sv[2];

        snprintf(rank_s, sizeof(rank_s), "%d", r);
        snprintf(gpu_s, sizeof(gpu_s), "%d", r);
        snprintf(label, sizeof(label), "rank %d", r);
        /* disjoint CPU sets: each rank avoids what the ranks before it got */
        if (ncpus > 0) {
            st = dexec_cpus_pick((int)ncpus, taken[0] ? taken : NULL, cpus, sizeof(cpus), msg,
                                 sizeof(msg));
            if (st != DEXEC_OK) {
                dexec_errorf(err, errlen, ENV_CPUS "=%lld for rank %d: %s", ncpus, r, msg);
                break;
            }
            snprintf(taken + strlen(taken), sizeof(taken) - strlen(taken), "%s%s",
                     taken[0] ? "," : "", cpus);
        }
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
            dexec_errorf(err, errlen, "socketpair: %s", strerror(errno));
            st = DEXEC_EIO;
            break;
        }
        a.ctl_fd = sv[1];
        st = dexec_process_spawn(&a, &ex->procs[r], err, errlen);
        close(sv[1]);
        if (st == DEXEC_OK && dexec_conn_from_fd(sv[0], label, &c) == DEXEC_OK)
            dexec_group_set(ex->group, r, c);
        else if (st == DEXEC_OK)
            st = DEXEC_ENOMEM;
        if (st != DEXEC_OK)
            close(sv[0]);
    }
    return st;
}

/* Spawn mode: the shutdown ladder for every rank at once. */
static void stop_workers(struct dexec_executor *ex)
{
    dexec_conn **conns;

    if (ex->procs == NULL)
        return;
    conns = calloc((size_t)ex->n, sizeof(*conns));
    for (int r = 0; conns != NULL && r < ex->n; r++)
        conns[r] = dexec_group_conn(ex->group, r);
    dexec_process_stop_all(ex->procs, conns, (size_t)ex->n, ex->grace);
    free(conns);
}

static void destroy(struct dexec_executor *ex)
{
    dexec_group_free(ex->group);
    for (int r = 0; ex->procs != NULL && r < ex->n; r++)
        dexec_process_free(ex->procs[r]);
    free(ex->procs);
    free(ex);
}

/* Spawn mode: hello, then initialize (loads the model), on every rank. */
static dexec_status start_workers(struct dexec_executor *ex, double deadline, char *err,
                                  size_t errlen)
{
    dexec_status st = DEXEC_OK;
    char msg[1024];

    for (int r = 0; r < ex->n && st == DEXEC_OK; r++) {
        st = dexec_conn_hello(dexec_group_conn(ex->group, r), NULL, left(deadline), NULL, msg,
                              sizeof(msg));
        if (st != DEXEC_OK)
            dexec_errorf(err, errlen, "rank %d: %s", r, msg);
    }
    for (int r = 0; r < ex->n && st == DEXEC_OK; r++) {
        dexec_value *res = NULL;

        st = dexec_conn_call(dexec_group_conn(ex->group, r), "initialize", NULL, deadline, &res,
                             NULL, NULL, msg, sizeof(msg));
        if (st != DEXEC_OK)
            dexec_errorf(err, errlen, "rank %d failed to initialize: %s", r, msg);
        else if (strcmp(dexec_value_as_str(dexec_value_map_get(res, "status"), ""), "ready")) {
            dexec_errorf(err, errlen, "rank %d failed to initialize: %s", r,
                         dexec_value_as_str(dexec_value_map_get(res, "error"), "no reason given"));
            st = DEXEC_EINIT;
        }
        dexec_value_free(res);
    }
    return st;
}

static dexec_status rr_create(const dexec_host *host, dexec_executor **out, char *err,
                              size_t errlen)
{
    struct dexec_executor *ex;
    double init_t = 60.0, health_t = 5.0, grace = 5.0, connect_t = 10.0, deadline;
    const char *token_file = "";
    char *token = NULL, **addrs, *storage;
    dexec_status st = DEXEC_OK;
    long long spawn = env_count(ENV_SPAWN, 0), ncpus = env_count(ENV_CPUS, 0);
    long long memory = env_count(ENV_MEMORY, 0);
    int n;

    dexec_config_get_float(host->config, "timeouts.init", &init_t);
    dexec_config_get_float(host->config, "timeouts.health", &health_t);
    dexec_config_get_float(host->config, "timeouts.shutdown_grace", &grace);
    dexec_config_get_string(host->config, "token_file", &token_file);
    /* our own setting (the default above applies if a host loaded us
     * without a configuration that names us) */
    dexec_config_get_float(host->config, "roundrobin.connect_timeout", &connect_t);
    deadline = dexec_now() + init_t;

    addrs = split_workers(host->config, &n, &storage);
    if (n == 0 && (spawn < 0 || spawn > 1024 || ncpus < 0 || memory < 0)) {
        dexec_errorf(err, errlen,
                     ENV_SPAWN ", " ENV_CPUS " and " ENV_MEMORY
                     " take a whole number (workers 1..1024, CPUs per worker, bytes)");
        return DEXEC_EINVAL;
    }
    if (n == 0 && spawn == 0) {
        dexec_errorf(err, errlen,
                     "no workers: set roundrobin.workers in the configuration file, or " ENV_WORKERS
                     ", to the worker addresses in rank order (unix:/PATH or tcp:HOST:PORT), "
                     "or " ENV_SPAWN " to a number of workers to start");
        free(storage);
        free(addrs);
        return DEXEC_EINVAL;
    }
    if (n == 0 && token_file != NULL && *token_file != '\0')
        st = dexec_token_read(token_file, &token, err, errlen);
    ex = calloc(1, sizeof(*ex));
    if (st == DEXEC_OK && ex == NULL)
        st = DEXEC_ENOMEM;
    if (st == DEXEC_OK) {
        ex->host = host;
        ex->n = n > 0 ? n : (int)spawn;
        ex->grace = grace;
        ex->group = dexec_group_new(ex->n);
        if (ex->group == NULL)
            st = DEXEC_ENOMEM;
    }
    if (st == DEXEC_OK && n == 0) {
        st = spawn_workers(ex, ncpus, memory, err, errlen);
        if (st == DEXEC_OK)
            st = start_workers(ex, deadline, err, errlen);
    }
    /* connect mode: connect and hello each worker; the group owns the connections */
    for (int i = 0; i < n && st == DEXEC_OK; i++) {
        dexec_conn *c = NULL;
        char msg[1024];

        double t = left(deadline) < connect_t ? left(deadline) : connect_t;

        st = dexec_conn_connect(addrs[i], t, &c, msg, sizeof(msg));
        if (st == DEXEC_OK) {
            dexec_group_set(ex->group, i, c);
            st = dexec_conn_hello(c, token, left(deadline), NULL, msg, sizeof(msg));
        }
        if (st != DEXEC_OK)
            dexec_errorf(err, errlen, "worker %d at %s: %s", i, addrs[i], msg);
    }
    /* the same readiness rule as the built-in executors: rank i is rank i */
    if (st == DEXEC_OK)
        st = dexec_group_check_health(ex->group, health_t, err, errlen);
    free(token);
    free(storage);
    free(addrs);
    if (st != DEXEC_OK) {
        if (ex != NULL) {
            stop_workers(ex);
            destroy(ex);
        }
        return st;
    }
    host->log(DEXEC_LOG_INFO, "roundrobin", "%d worker(s) %s", ex->n,
              ex->procs != NULL ? "started" : "connected");
    *out = ex;
    return DEXEC_OK;
}

static int rr_num_ranks(const dexec_executor *ex)
{
    return ex->n;
}

static dexec_status rr_collective_rpc(dexec_executor *ex, const char *method, double timeout,
                                      const dexec_value *args, const dexec_value *kwargs,
                                      int unique_reply_rank, dexec_value **replies, char *err,
                                      size_t errlen)
{
    return dexec_group_collective_rpc(ex->group, method, timeout, args, kwargs,
                                      unique_reply_rank, replies, err, errlen);
}

/* dexec_group_generate deals each request to the least loaded rank: on
 * idle workers, request i to rank i mod n (round robin). */
static dexec_status rr_add_requests(dexec_executor *ex, const dexec_request *reqs, size_t n,
                                    dexec_output *outs, double timeout,
                                    dexec_progress_fn progress, void *user, char *err,
                                    size_t errlen)
{
    return dexec_group_generate(ex->group, reqs, n, outs, timeout, progress, user, err, errlen);
}

/* ABI 1.2: the engine names the slot (today: the rank) that is free, one
 * dispatcher per slot, so every rank stays busy; the group runs the
 * requests there, or on a live rank when that one died. */
static dexec_status rr_add_requests_on(dexec_executor *ex, int slot, const dexec_request *reqs,
                                       size_t n, dexec_output *outs, double timeout,
                                       dexec_progress_fn progress, void *user, char *err,
                                       size_t errlen)
{
    return dexec_group_generate_on(ex->group, slot, reqs, n, outs, timeout, progress, user, err,
                                   errlen);
}

static dexec_status rr_check_health(dexec_executor *ex, double timeout, char *err, size_t errlen)
{
    return dexec_group_check_health(ex->group, timeout, err, errlen);
}

/* Spawn mode: stops the workers it started (shutdown RPC, grace, SIGTERM,
 * grace, SIGKILL, reap). Connect mode: disconnects only, the workers
 * belong to whoever started them. */
static void rr_shutdown(dexec_executor *ex)
{
    if (ex == NULL)
        return;
    stop_workers(ex);
    destroy(ex);
}

static const dexec_executor_ops rr_ops = {
    .struct_size = sizeof(dexec_executor_ops),
    .flags = DEXEC_EXECUTOR_MULTI_NODE,
    .create = rr_create,
    .num_ranks = rr_num_ranks,
    .collective_rpc = rr_collective_rpc,
    .add_requests = rr_add_requests,
    .check_health = rr_check_health,
    .shutdown = rr_shutdown,
    .add_requests_on = rr_add_requests_on,
};

/* The section "roundrobin" of the configuration file is ours. */
static const dexec_setting rr_settings[] = {
    {.name = "workers",
     .type = DEXEC_SETTING_LIST,
     .range = "list of unix:/PATH or tcp:HOST:PORT",
     .doc = "worker addresses in rank order ($ROUNDROBIN_WORKERS overrides)"},
    {.name = "connect_timeout",
     .type = DEXEC_SETTING_FLOAT,
     .flags = DEXEC_SETTING_ABOVE_MIN,
     .def = "10.0",
     .fmin = 0,
     .fmax = 3600,
     .doc = "seconds to wait for one worker to accept the connection"},
};

static const dexec_settings rr_settings_table = {DEXEC_SETTINGS_INIT("roundrobin", rr_settings)};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "roundrobin", "1.1",
                           "example: workers at roundrobin.workers, or $ROUNDROBIN_SPAWN of its own",
                           &rr_ops),
    .settings = &rr_settings_table};
