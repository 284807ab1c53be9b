/*
 * roundrobin.c - an example third-party executor for dexec: connects to
 * workers at the addresses listed in the configuration file's
 * `roundrobin = { workers = [ ... ]; }` or in $ROUNDROBIN_WORKERS
 * (comma-separated; it wins over the file), unix:/PATH or tcp:HOST:PORT in
 * rank order, deals requests across them round robin and never stops them
 * (like "external", minus the registry).
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/plugin.h>
#include <dexec/rpc.h>

#define ENV_WORKERS "ROUNDROBIN_WORKERS"

/* The executor's state; the core only ever sees a pointer to it. */
struct dexec_executor {
    const dexec_host *host;
    dexec_group *group;
    int n;
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

static dexec_status rr_create(const dexec_host *host, dexec_executor **out, char *err,
                              size_t errlen)
{
    struct dexec_executor *ex;
    double init_t = 60.0, health_t = 5.0, connect_t = 10.0, deadline;
    const char *token_file = "";
    char *token = NULL, **addrs, *storage;
    dexec_status st = DEXEC_OK;
    int n;

    dexec_config_get_float(host->config, "timeouts.init", &init_t);
    dexec_config_get_float(host->config, "timeouts.health", &health_t);
    dexec_config_get_string(host->config, "token_file", &token_file);
    /* our own setting (the default above applies if a host loaded us
     * without a configuration that names us) */
    dexec_config_get_float(host->config, "roundrobin.connect_timeout", &connect_t);
    deadline = dexec_now() + init_t;

    addrs = split_workers(host->config, &n, &storage);
    if (n == 0) {
        dexec_errorf(err, errlen,
                     "no workers: set roundrobin.workers in the configuration file, or " ENV_WORKERS
                     ", to the worker addresses in rank order (unix:/PATH or tcp:HOST:PORT)");
        free(storage);
        free(addrs);
        return DEXEC_EINVAL;
    }
    if (token_file != NULL && *token_file != '\0')
        st = dexec_token_read(token_file, &token, err, errlen);
    ex = calloc(1, sizeof(*ex));
    if (st == DEXEC_OK && ex == NULL)
        st = DEXEC_ENOMEM;
    if (st == DEXEC_OK) {
        ex->host = host;
        ex->n = n;
        ex->group = dexec_group_new(n);
        if (ex->group == NULL)
            st = DEXEC_ENOMEM;
    }
    /* connect and hello each worker; the group owns the connections */
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
        if (ex != NULL)
            dexec_group_free(ex->group);
        free(ex);
        return st;
    }
    host->log(DEXEC_LOG_INFO, "roundrobin", "%d worker(s) connected", n);
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

/* dexec_group_generate deals request i to rank i mod n: round robin. */
static dexec_status rr_add_requests(dexec_executor *ex, const dexec_request *reqs, size_t n,
                                    dexec_output *outs, double timeout,
                                    dexec_progress_fn progress, void *user, char *err,
                                    size_t errlen)
{
    return dexec_group_generate(ex->group, reqs, n, outs, timeout, progress, user, err, errlen);
}

static dexec_status rr_check_health(dexec_executor *ex, double timeout, char *err, size_t errlen)
{
    return dexec_group_check_health(ex->group, timeout, err, errlen);
}

/* Disconnects only: the workers belong to whoever started them. */
static void rr_shutdown(dexec_executor *ex)
{
    if (ex == NULL)
        return;
    dexec_group_free(ex->group);
    free(ex);
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
                           "example: workers at the addresses in roundrobin.workers", &rr_ops),
    .settings = &rr_settings_table};
