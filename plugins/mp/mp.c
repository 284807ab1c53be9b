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
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dexec/plugin.h>
#include <dexec/rpc.h>

extern char **environ;

typedef struct mp_worker {
    struct dexec_executor *ex;
    int rank;
    pid_t pid;
    pthread_mutex_t lock; /* guards reaped/status: the death callback and shutdown both reap */
    int reaped;
    int status;
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

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Reaps w if it has exited, waiting at most `wait_s`. Returns 1 if reaped. */
static int reap(mp_worker *w, double wait_s)
{
    double deadline = dexec_now() + wait_s;
    int done;

    pthread_mutex_lock(&w->lock);
    while (!w->reaped) {
        int st;
        pid_t r = waitpid(w->pid, &st, WNOHANG);

        if (r == w->pid || (r < 0 && errno == ECHILD)) {
            w->reaped = 1;
            w->status = r == w->pid ? st : -1;
            break;
        }
        if (dexec_now() >= deadline)
            break;
        pthread_mutex_unlock(&w->lock);
        sleep_s(0.005);
        pthread_mutex_lock(&w->lock);
    }
    done = w->reaped;
    pthread_mutex_unlock(&w->lock);
    return done;
}

static void describe_exit(int status, char *buf, size_t len)
{
    if (status < 0)
        snprintf(buf, len, "exited (status unknown)");
    else if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "stopped");
}

/* The connection saw EOF: say how the worker ended. EOF comes a moment
 * before the kernel makes the exit status available, so wait a little. */
static void on_death(void *user, dexec_conn *c, char *buf, size_t len)
{
    mp_worker *w = user;
    char how[128];

    (void)c;
    if (reap(w, 0.5)) {
        describe_exit(w->status, how, sizeof(how));
        snprintf(buf, len, "worker died: %s", how);
    } else {
        snprintf(buf, len, "worker closed its connection (process still running)");
    }
}

/* Everything the child needs, prepared before fork: after fork only
 * async-signal-safe calls are allowed (the engine may have threads). */
typedef struct spawn_plan {
    char *argv[16];
    char **envp;
    char rank_s[16], fd_s[16], cuda_env[64];
} spawn_plan;

static char **make_env(const char *cuda_env)
{
    size_t n = 0, k = 0;
    char **envp;

    while (environ[n] != NULL)
        n++;
    envp = calloc(n + 2, sizeof(*envp));
    if (envp == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "CUDA_VISIBLE_DEVICES=", 21) != 0)
            envp[k++] = environ[i];
    envp[k++] = (char *)cuda_env;
    envp[k] = NULL;
    return envp;
}

static dexec_status spawn_worker(struct dexec_executor *ex, int rank, const char *model,
                                 const char *device, int *conn_fd, char *err, size_t errlen)
{
    mp_worker *w = &ex->w[rank];
    spawn_plan plan;
    int sv[2], ep[2], i = 0, child_errno = 0;
    pid_t parent = getpid(), pid;
    ssize_t n;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        dexec_errorf(err, errlen, "socketpair: %s", strerror(errno));
        return DEXEC_EIO;
    }
    if (pipe2(ep, O_CLOEXEC) != 0) {
        dexec_errorf(err, errlen, "pipe: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return DEXEC_EIO;
    }
    snprintf(plan.rank_s, sizeof(plan.rank_s), "%d", rank);
    snprintf(plan.fd_s, sizeof(plan.fd_s), "fd:%d", 3);
    /* rank i sees GPU i only (as its device 0) */
    snprintf(plan.cuda_env, sizeof(plan.cuda_env), "CUDA_VISIBLE_DEVICES=%d", rank);
    plan.argv[i++] = (char *)ex->host->worker_path;
    plan.argv[i++] = "--listen";
    plan.argv[i++] = plan.fd_s;
    plan.argv[i++] = "--rank";
    plan.argv[i++] = plan.rank_s;
    plan.argv[i++] = "--model";
    plan.argv[i++] = (char *)model;
    plan.argv[i++] = "--device";
    plan.argv[i++] = (char *)device;
    plan.argv[i] = NULL;
    plan.envp = make_env(plan.cuda_env);
    if (plan.envp == NULL) {
        close(sv[0]);
        close(sv[1]);
        close(ep[0]);
        close(ep[1]);
        return DEXEC_ENOMEM;
    }

    pid = fork();
    if (pid == 0) {
        /* child: async-signal-safe calls only */
        int e;

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127); /* the engine died before we could ask */
        if (dup2(sv[1], 3) < 0) /* dup2 clears CLOEXEC on 3 */
            goto fail;
        execve(plan.argv[0], plan.argv, plan.envp);
    fail:
        e = errno;
        n = write(ep[1], &e, sizeof(e));
        _exit(127);
    }
    free(plan.envp);
    close(sv[1]);
    close(ep[1]);
    if (pid < 0) {
        dexec_errorf(err, errlen, "fork: %s", strerror(errno));
        close(sv[0]);
        close(ep[0]);
        return DEXEC_EIO;
    }
    w->pid = pid;
    w->rank = rank;
    /* the pipe closes on exec (EOF, 0 bytes) or carries the errno of a failed exec */
    do {
        n = read(ep[0], &child_errno, sizeof(child_errno));
    } while (n < 0 && errno == EINTR);
    close(ep[0]);
    if (n == (ssize_t)sizeof(child_errno)) {
        close(sv[0]);
        reap(w, 5.0);
        dexec_errorf(err, errlen, "cannot run the worker program %s: %s (set DEXEC_WORKER)",
                     ex->host->worker_path, strerror(child_errno));
        return DEXEC_EINIT;
    }
    *conn_fd = sv[0];
    return DEXEC_OK;
}

/* Stops every spawned worker: shutdown RPC, grace, SIGTERM, SIGKILL, reap. */
static void stop_workers(struct dexec_executor *ex)
{
    double deadline = dexec_now() + ex->grace;

    if (ex->group != NULL)
        dexec_group_shutdown(ex->group, deadline);
    for (int r = 0; r < ex->n; r++)
        if (ex->w[r].pid > 0)
            reap(&ex->w[r], left_s(deadline));
    for (int r = 0; r < ex->n; r++) {
        if (ex->w[r].pid > 0 && !reap(&ex->w[r], 0)) {
            dexec_log(DEXEC_LOG_WARN, "mp", "rank %d (pid %d) did not stop within %.3g s: SIGTERM",
                      r, (int)ex->w[r].pid, ex->grace);
            kill(ex->w[r].pid, SIGTERM);
        }
    }
    for (int r = 0; r < ex->n; r++) {
        if (ex->w[r].pid > 0 && !reap(&ex->w[r], 2.0)) {
            dexec_log(DEXEC_LOG_WARN, "mp", "rank %d (pid %d) ignored SIGTERM: SIGKILL", r,
                      (int)ex->w[r].pid);
            kill(ex->w[r].pid, SIGKILL);
            reap(&ex->w[r], 10.0);
        }
    }
}

static void destroy(struct dexec_executor *ex)
{
    dexec_group_free(ex->group);
    for (int r = 0; r < ex->n; r++)
        pthread_mutex_destroy(&ex->w[r].lock);
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
    for (int r = 0; r < ex->n; r++) {
        pthread_mutex_init(&ex->w[r].lock, NULL);
        ex->w[r].ex = ex;
    }
    for (int r = 0; r < ex->n && st == DEXEC_OK; r++) {
        int fd;
        dexec_conn *c;
        char label[64];

        st = spawn_worker(ex, r, model, device, &fd, err, errlen);
        if (st != DEXEC_OK)
            break;
        snprintf(label, sizeof(label), "rank %d (pid %d)", r, (int)ex->w[r].pid);
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
