/*
 * mp.c - the "mp" executor: spawns num_gpus dexec-worker processes on this
 * host, one rank each (rank i sees only GPU i), talks to each over a
 * socketpair, and owns them.
 *
 * Ownership rules, so that no worker outlives its engine:
 *  - each child asks the kernel for SIGKILL when its parent dies
 *    (PR_SET_PDEATHSIG), and exits on EOF of its control socket;
 *  - a worker that dies is noticed through EOF at once, and every call
 *    waiting on it fails naming the rank, pid and exit status or signal;
 *  - shutdown: shutdown RPC, grace period, SIGTERM, SIGKILL, reap.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <dexec/plugin.h>
#include <dexec/rpc.h>

#include "resources.h"

typedef struct mp_worker {
    int rank;
    dxr_child child; /* pid, exit status, reaped once by whoever gets there first */
} mp_worker;

struct dexec_executor {
    const dexec_host *host;
    int n;
    mp_worker *w;
    dexec_group *group;
    double grace;
};

static double left_s(double deadline)
{
    double l = deadline - dexec_now();

    return l > 0 ? l : 0;
}

/* The connection saw EOF: say how the worker ended. EOF comes a moment
 * before the kernel makes the exit status available, so wait a little. */
static void on_death(void *user, dexec_conn *c, char *buf, size_t len)
{
    mp_worker *w = user;
    char how[128];

    (void)c;
    if (dxr_reap(&w->child, 0.5)) {
        dxr_describe_exit(w->child.status, how, sizeof(how));
        snprintf(buf, len, "worker died: %s", how);
    } else {
        snprintf(buf, len, "worker closed its connection (process still running)");
    }
}

/* Starts rank's worker on one end of a socketpair (its fd 3); rank i sees
 * GPU i only, as its device 0. */
static dexec_status spawn_worker(struct dexec_executor *ex, int rank, const char *model,
                                 const char *device, int *conn_fd, char *err, size_t errlen)
{
    char rank_s[16], gpu_s[16];
    char *argv[] = {(char *)ex->host->worker_path, "--listen", "fd:3", "--rank", rank_s,
                    "--model", (char *)model, "--device", (char *)device, NULL};
    dxr_limits limits = {.cuda_visible = gpu_s};
    dxr_spawn_args args = {.argv = argv, .stdout_fd = -1, .limits = &limits,
                           .component = "mp"};
    dexec_status st;
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        dexec_errorf(err, errlen, "socketpair: %s", strerror(errno));
        return DEXEC_EIO;
    }
    snprintf(rank_s, sizeof(rank_s), "%d", rank);
    snprintf(gpu_s, sizeof(gpu_s), "%d", rank);
    args.ctl_fd = sv[1];
    st = dxr_spawn(&args, &ex->w[rank].child, err, errlen);
    close(sv[1]);
    if (st != DEXEC_OK) {
        /* dxr_spawn released the child record itself */
        ex->w[rank].child.pid = 0;
        close(sv[0]);
        return st == DEXEC_EIO || st == DEXEC_ENOMEM ? st : DEXEC_EINIT;
    }
    ex->w[rank].rank = rank;
    *conn_fd = sv[0];
    return DEXEC_OK;
}

/* Stops every spawned worker: shutdown RPC, grace, then SIGTERM, SIGKILL, reap. */
static void stop_workers(struct dexec_executor *ex)
{
    double deadline = dexec_now() + ex->grace;

    if (ex->group != NULL)
        dexec_group_shutdown(ex->group, deadline);
    for (int r = 0; r < ex->n; r++)
        if (ex->w[r].child.pid > 0)
            dxr_reap(&ex->w[r].child, left_s(deadline));
    for (int r = 0; r < ex->n; r++) {
        char what[32];

        snprintf(what, sizeof(what), "rank %d", r);
        dxr_kill(&ex->w[r].child, 2.0, "mp", what);
    }
}

static void destroy(struct dexec_executor *ex)
{
    dexec_group_free(ex->group);
    for (int r = 0; r < ex->n; r++)
        if (ex->w[r].child.pid > 0)
            dxr_child_release(&ex->w[r].child);
    free(ex->w);
    free(ex);
}

static dexec_status mp_create(const dexec_host *host, dexec_executor **out, char *err,
                              size_t errlen)
{
    struct dexec_executor *ex;
    int64_t n = 1;
    double init_t = 60.0, grace = 5.0;
    const char *model = "fashion-dit", *device = "auto";
    dexec_status st = DEXEC_OK;
    double deadline;
    uint32_t *ids;
    char msg[1024];

    dexec_config_get_int(host->config, "num_gpus", &n);
    dexec_config_get_float(host->config, "timeouts.init", &init_t);
    dexec_config_get_float(host->config, "timeouts.shutdown_grace", &grace);
    dexec_config_get_string(host->config, "model", &model);
    dexec_config_get_string(host->config, "device", &device);
    if (n < 1 || n > 1024) {
        dexec_errorf(err, errlen, "num_gpus = %lld: the mp executor needs 1 or more ranks",
                     (long long)n);
        return DEXEC_EINVAL;
    }
    deadline = dexec_now() + init_t;
    ex = calloc(1, sizeof(*ex));
    if (ex == NULL)
        return DEXEC_ENOMEM;
    ex->host = host;
    ex->n = (int)n;
    ex->grace = grace;
    ex->w = calloc((size_t)n, sizeof(*ex->w));
    ex->group = dexec_group_new((int)n);
    ids = calloc((size_t)n, sizeof(*ids));
    if (ex->w == NULL || ex->group == NULL || ids == NULL) {
        free(ids);
        destroy(ex);
        return DEXEC_ENOMEM;
    }
    for (int r = 0; r < ex->n && st == DEXEC_OK; r++) {
        int fd;
        dexec_conn *c;
        char label[64];

        st = spawn_worker(ex, r, model, device, &fd, err, errlen);
        if (st != DEXEC_OK)
            break;
        snprintf(label, sizeof(label), "rank %d (pid %d)", r, (int)ex->w[r].child.pid);
        if (dexec_conn_from_fd(fd, label, &c) != DEXEC_OK) {
            close(fd);
            st = DEXEC_ENOMEM;
            break;
        }
        dexec_conn_on_death(c, on_death, &ex->w[r]);
        dexec_group_set(ex->group, r, c);
    }
    /* hello, then initialize, on every rank in parallel */
    for (int r = 0; r < ex->n && st == DEXEC_OK; r++) {
        st = dexec_conn_hello(dexec_group_conn(ex->group, r), NULL, left_s(deadline), NULL, msg,
                              sizeof(msg));
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
            dexec_errorf(err, errlen, "rank %d failed to initialize: %s", r, msg);
            st = DEXEC_EINIT;
        } else if (strcmp(dexec_value_as_str(dexec_value_map_get(res, "status"), ""), "ready")) {
            dexec_errorf(err, errlen, "rank %d failed to initialize: %s", r,
                         dexec_value_as_str(dexec_value_map_get(res, "error"), "no reason given"));
            st = DEXEC_EINIT;
        }
        dexec_value_free(res);
    }
    free(ids);
    if (st != DEXEC_OK) {
        stop_workers(ex);
        destroy(ex);
        return st;
    }
    host->log(DEXEC_LOG_INFO, "mp", "%d worker(s) ready", ex->n);
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
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "mp", PACKAGE_VERSION,
                           "local worker processes, one per rank, owned by the engine", &mp_ops)};
