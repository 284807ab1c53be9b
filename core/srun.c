/*
 * srun.c - dexec workers as one Slurm job step (<dexec/srun.h>): builds the
 * srun command, hands the token over on the tasks' standard input, reads
 * their addresses and srun's messages from one pipe, and ends the step
 * (grace, scancel, SIGKILL) with every wait bounded.
 *
 * srun is started through /bin/sh so that it is found in PATH and gets the
 * token pipe (our fd 3) as its standard input, and its standard error on the
 * same pipe as its standard output:
 *     /bin/sh -c 'exec "$@" <&3 3<&- 2>&1' sh srun --label ... TASK...
 * and each task, through /bin/sh on its node, first says where it runs:
 *     0: dexec-slurm-task JOBID STEPID NODE
 *     0: tcp:0.0.0.0:PORT            (the worker's --print-address)
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dexec/process.h>
#include <dexec/srun.h>

#define COMPONENT "slurm"
#define MARKER "dexec-slurm-task "
#define NMSG 4          /* srun messages kept for error messages */
#define TOOL_WAIT 10.0  /* squeue, scancel */

struct dexec_srun {
    dexec_process *proc;
    pthread_t reader;
    int reader_started;
    int out_fd; /* read end of srun's stdout + stderr */
    volatile int quit;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int ntasks, naddr, eof, own_job, stopped;
    char **addr, **node;
    char job[32], step[48];
    char msgs[NMSG][256];
    int nmsgs;
    char label[64];
    char token[65];
};

static double left(double deadline)
{
    double l = deadline - dexec_now();

    return l > 0 ? l : 0;
}

static char *xstrdup(const char *s)
{
    return strdup(s != NULL ? s : "");
}

/* ---- reading srun's output (its own thread) ----------------------------------------- */

static void keep_message(dexec_srun *s, const char *line)
{
    if (s->nmsgs == NMSG) {
        memmove(s->msgs[0], s->msgs[1], sizeof(s->msgs[0]) * (NMSG - 1));
        s->nmsgs--;
    }
    snprintf(s->msgs[s->nmsgs++], sizeof(s->msgs[0]), "%s", line);
}

/* One line of srun's output. Called with s->lock held. */
static void take_line(dexec_srun *s, const char *line)
{
    const char *p = line + strspn(line, " ");
    char *end;
    long task = strtol(p, &end, 10);

    if (end == p || strncmp(end, ": ", 2) != 0 || task < 0 || task >= s->ntasks) {
        /* srun's own: "srun: job 12 queued and waiting for resources" */
        unsigned long job;

        dexec_log(DEXEC_LOG_INFO, COMPONENT, "%s: %s", s->label, line);
        keep_message(s, line);
        if (s->job[0] == '\0' && sscanf(line, "srun: job %lu queued", &job) == 1)
            snprintf(s->job, sizeof(s->job), "%lu", job);
        return;
    }
    p = end + 2;
    if (strncmp(p, MARKER, strlen(MARKER)) == 0) {
        char job[32], step[16], node[256];

        if (sscanf(p + strlen(MARKER), "%31s %15s %255s", job, step, node) == 3) {
            snprintf(s->job, sizeof(s->job), "%s", job);
            snprintf(s->step, sizeof(s->step), "%s.%s", job, step);
            free(s->node[task]);
            s->node[task] = xstrdup(node);
        }
        return;
    }
    if (strncmp(p, "tcp:", 4) == 0 && s->addr[task] == NULL && s->node[task] != NULL) {
        const char *port = strrchr(p, ':');
        char a[320];

        /* the worker listens on every interface; others reach it by node name */
        snprintf(a, sizeof(a), strchr(s->node[task], ':') ? "tcp:[%s]:%s" : "tcp:%s:%s",
                 s->node[task], port + 1);
        s->addr[task] = xstrdup(a);
        s->naddr++;
        return;
    }
    /* the task's standard error: its log lines, as a local worker's would be */
    fprintf(stderr, "%s\n", p);
}

static void *reader_main(void *arg)
{
    dexec_srun *s = arg;
    char buf[8192];
    size_t used = 0;

    while (!s->quit) {
        struct pollfd pf = {.fd = s->out_fd, .events = POLLIN};
        ssize_t n;
        char *nl;

        if (poll(&pf, 1, 100) <= 0)
            continue;
        n = read(s->out_fd, buf + used, sizeof(buf) - 1 - used);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        pthread_mutex_lock(&s->lock);
        if (n <= 0) {
            if (used > 0) {
                buf[used] = '\0';
                take_line(s, buf);
            }
            s->eof = 1;
            pthread_cond_broadcast(&s->cond);
            pthread_mutex_unlock(&s->lock);
            break;
        }
        used += (size_t)n;
        buf[used] = '\0';
        while ((nl = strchr(buf, '\n')) != NULL) {
            *nl = '\0';
            take_line(s, buf);
            used -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, used + 1);
        }
        if (used == sizeof(buf) - 1) { /* a line this long is cut, not waited for */
            take_line(s, buf);
            used = 0;
        }
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
    }
    return NULL;
}

/* ---- the command ----------------------------------------------------------------------- */

typedef struct argvec {
    char **v;
    size_t n, cap;
    int failed;
} argvec;

static void add(argvec *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add(argvec *a, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    if (a->failed)
        return;
    if (a->n + 2 > a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 32;
        char **v = realloc(a->v, cap * sizeof(*v));

        if (v == NULL) {
            a->failed = 1;
            return;
        }
        a->v = v;
        a->cap = cap;
    }
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (s == NULL) {
        a->failed = 1;
        return;
    }
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

static void argvec_free(argvec *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
}

static int set(const char *s)
{
    return s != NULL && s[0] != '\0';
}

static void build_command(const dexec_srun_args *a, argvec *v)
{
    add(v, "/bin/sh");
    add(v, "-c");
    add(v, "exec \"$@\" <&3 3<&- 2>&1");
    add(v, "sh");
    add(v, "srun");
    add(v, "--label");
    add(v, "--kill-on-bad-exit=1");
    add(v, "--ntasks=%d", a->ntasks > 0 ? a->ntasks : 1);
    add(v, "--job-name=%s", set(a->job_name) ? a->job_name : "dexec");
    if (a->cpus_per_task > 0)
        add(v, "--cpus-per-task=%d", a->cpus_per_task);
    if (a->gres_gpus > 0)
        add(v, "--gres=gpu:%d", a->gres_gpus);
    if (a->gpus_per_task > 0)
        add(v, "--gpus-per-task=%d", a->gpus_per_task);
    if (a->memory_bytes > 0)
        add(v, "--mem=%lldM", (long long)((a->memory_bytes + (1 << 20) - 1) >> 20));
    if (set(a->constraint))
        add(v, "--constraint=%s", a->constraint);
    if (set(a->partition))
        add(v, "--partition=%s", a->partition);
    if (set(a->account))
        add(v, "--account=%s", a->account);
    if (set(a->time_limit))
        add(v, "--time=%s", a->time_limit);
    for (size_t i = 0; a->extra != NULL && a->extra[i] != NULL; i++)
        add(v, "%s", a->extra[i]);
    add(v, "/bin/sh");
    add(v, "-c");
    add(v,
        "echo \"" MARKER "$SLURM_JOB_ID $SLURM_STEP_ID ${SLURMD_NODENAME:-$(hostname)}\"; "
        "exec \"$0\" \"$@\" --listen tcp:0.0.0.0:0 --print-address --token-file - "
        "--owned %.0f --rank \"$SLURM_PROCID\"",
        a->owner_wait >= 1 ? a->owner_wait : 1);
    for (size_t i = 0; a->worker_argv[i] != NULL; i++)
        add(v, "%s", a->worker_argv[i]);
}

/* ---- tools (squeue, scancel) ---------------------------------------------------------- */

/* Runs a Slurm command found in PATH, its standard output (first line) into
 * out when out is not NULL; bounded by TOOL_WAIT. 0 when it exited 0. */
static int run_tool(const char *const *args, char *out, size_t outlen)
{
    char *argv[16] = {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>/dev/null"};
    dexec_spawn_args sa = {.struct_size = sizeof(sa), .argv = argv, .stdout_fd = -1,
                           .component = COMPONENT, .label = args[0]};
    dexec_process *p = NULL;
    double deadline = dexec_now() + TOOL_WAIT;
    size_t n = 3, used = 0;
    int pfd[2] = {-1, -1}, ok;

    for (size_t i = 0; args[i] != NULL && n < 15; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    if (out != NULL) {
        out[0] = '\0';
        if (pipe2(pfd, O_CLOEXEC) != 0)
            return -1;
        sa.stdout_fd = pfd[1];
    }
    if (dexec_process_spawn(&sa, &p, NULL, 0) != DEXEC_OK)
        p = NULL;
    if (pfd[1] >= 0)
        close(pfd[1]);
    while (p != NULL && out != NULL && dexec_now() < deadline) {
        struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
        ssize_t r;

        if (poll(&pf, 1, 100) <= 0)
            continue;
        r = read(pfd[0], out + used, outlen - 1 - used);
        if (r <= 0 && !(r < 0 && errno == EINTR))
            break;
        if (r > 0)
            used += (size_t)r;
        out[used] = '\0';
        if (used == outlen - 1)
            break;
    }
    if (pfd[0] >= 0)
        close(pfd[0]);
    if (out != NULL)
        out[strcspn(out, "\n")] = '\0';
    ok = p != NULL && dexec_process_reap(p, left(deadline)) &&
         dexec_process_status(p) == 0;
    dexec_process_free(p);
    return ok ? 0 : -1;
}

/* The job to cancel: the allocation srun made, or the step inside ours. */
static void cancel(dexec_srun *s)
{
    char target[64] = "";
    const char *args[] = {"scancel", target, NULL};

    pthread_mutex_lock(&s->lock);
    if (s->own_job && s->job[0] != '\0')
        snprintf(target, sizeof(target), "%s", s->job);
    else if (s->step[0] != '\0')
        snprintf(target, sizeof(target), "%s", s->step);
    pthread_mutex_unlock(&s->lock);
    if (target[0] == '\0') {
        /* no step yet: srun withdraws its request on SIGTERM */
        dexec_log(DEXEC_LOG_WARN, COMPONENT, "%s: srun (pid %d) still waiting: SIGTERM",
                  s->label, dexec_process_pid(s->proc));
        dexec_process_signal(s->proc, SIGTERM);
        return;
    }
    if (s->step[0] != '\0')
        dexec_log(DEXEC_LOG_WARN, COMPONENT, "%s: step %s still running: scancel %s", s->label,
                  s->step, target);
    else
        dexec_log(DEXEC_LOG_WARN, COMPONENT, "%s: job %s still pending: scancel %s", s->label,
                  s->job, target);
    if (run_tool(args, NULL, 0) != 0)
        dexec_process_signal(s->proc, SIGTERM);
}

/* squeue's reason for a pending job ("PartitionConfig"), or "". */
static void pending_reason(dexec_srun *s, char *buf, size_t len)
{
    char job[32];
    const char *args[] = {"squeue", "-h", "-j", job, "-o", "%r", NULL};

    buf[0] = '\0';
    pthread_mutex_lock(&s->lock);
    snprintf(job, sizeof(job), "%s", s->job);
    pthread_mutex_unlock(&s->lock);
    if (job[0] != '\0')
        run_tool(args, buf, len);
}

void dexec_srun_messages(dexec_srun *s, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->nmsgs && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? "; " : "", s->msgs[i]);
    pthread_mutex_unlock(&s->lock);
}

/* 32 random hex digits. 0, or -1 with errno. */
static int make_token(char *buf, size_t len)
{
    unsigned char raw[16];
    size_t got = 0;

    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof(raw) && 2 * i + 2 < len; i++)
        snprintf(buf + 2 * i, 3, "%02x", raw[i]);
    explicit_bzero(raw, sizeof(raw));
    return 0;
}

static void srun_release(dexec_srun *s)
{
    if (s->reader_started) {
        s->quit = 1;
        pthread_join(s->reader, NULL);
    }
    if (s->out_fd >= 0)
        close(s->out_fd);
    dexec_process_free(s->proc);
    for (int i = 0; i < s->ntasks; i++) {
        free(s->addr[i]);
        free(s->node[i]);
    }
    free(s->addr);
    free(s->node);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    explicit_bzero(s->token, sizeof(s->token));
    free(s);
}

dexec_status dexec_srun_start(const dexec_srun_args *a, double deadline, dexec_srun **out,
                              char *err, size_t errlen)
{
    dexec_srun_args args = {0};
    dexec_spawn_args sa = {.struct_size = sizeof(sa), .component = COMPONENT};
    argvec cmd = {0};
    dexec_srun *s;
    int opipe[2], tpipe[2];
    const char *jobenv = getenv("SLURM_JOB_ID");
    dexec_status st;
    char msgs[1024], why[128];
    int status;
    double started = dexec_now(), waited;

    *out = NULL;
    if (a == NULL || a->struct_size < offsetof(dexec_srun_args, reserved)) {
        dexec_errorf(err, errlen, "dexec_srun_start: struct_size of the arguments is %u, "
                     "expected %zu (initialize it with sizeof(dexec_srun_args))",
                     a != NULL ? a->struct_size : 0, sizeof(dexec_srun_args));
        return DEXEC_EINVAL;
    }
    memcpy(&args, a, a->struct_size < sizeof(args) ? a->struct_size : sizeof(args));
    if (args.worker_argv == NULL || args.worker_argv[0] == NULL ||
        (set(args.token) && (strpbrk(args.token, "\r\n") != NULL || strlen(args.token) > 64))) {
        dexec_errorf(err, errlen, "dexec_srun_start: a worker program is required, and a token "
                                  "is one line of at most 64 bytes");
        return DEXEC_EINVAL;
    }
    if (args.ntasks <= 0)
        args.ntasks = 1;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return DEXEC_ENOMEM;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->out_fd = -1;
    s->ntasks = args.ntasks;
    s->own_job = !set(jobenv);
    if (!s->own_job)
        snprintf(s->job, sizeof(s->job), "%s", jobenv);
    snprintf(s->label, sizeof(s->label), "%s", set(args.label) ? args.label : "srun");
    if (set(args.token)) {
        snprintf(s->token, sizeof(s->token), "%s", args.token);
    } else if (make_token(s->token, sizeof(s->token)) != 0) {
        dexec_errorf(err, errlen, "getrandom: %s", strerror(errno));
        srun_release(s);
        return DEXEC_EIO;
    }
    s->addr = calloc((size_t)s->ntasks, sizeof(*s->addr));
    s->node = calloc((size_t)s->ntasks, sizeof(*s->node));
    build_command(&args, &cmd);
    if (s->addr == NULL || s->node == NULL || cmd.failed) {
        argvec_free(&cmd);
        srun_release(s);
        return DEXEC_ENOMEM;
    }
    if (pipe2(opipe, O_CLOEXEC) != 0) {
        dexec_errorf(err, errlen, "pipe: %s", strerror(errno));
        argvec_free(&cmd);
        srun_release(s);
        return DEXEC_EIO;
    }
    if (pipe2(tpipe, O_CLOEXEC) != 0) {
        dexec_errorf(err, errlen, "pipe: %s", strerror(errno));
        close(opipe[0]);
        close(opipe[1]);
        argvec_free(&cmd);
        srun_release(s);
        return DEXEC_EIO;
    }
    s->out_fd = opipe[0];
    sa.argv = cmd.v;
    sa.ctl_fd = tpipe[0];
    sa.stdout_fd = opipe[1];
    sa.label = s->label;
    st = dexec_process_spawn(&sa, &s->proc, err, errlen);
    argvec_free(&cmd);
    close(opipe[1]);
    close(tpipe[0]);
    if (st == DEXEC_OK) {
        /* a pipe holds far more than a token: this write does not block */
        char line[600];
        int n = snprintf(line, sizeof(line), "%s\n", s->token);

        if (write(tpipe[1], line, (size_t)n) != n)
            st = DEXEC_EIO;
        explicit_bzero(line, sizeof(line));
    }
    close(tpipe[1]);
    if (st != DEXEC_OK) {
        srun_release(s);
        return st;
    }
    if (pthread_create(&s->reader, NULL, reader_main, s) != 0) {
        srun_release(s);
        return DEXEC_ENOMEM;
    }
    s->reader_started = 1;
    dexec_log(DEXEC_LOG_INFO, COMPONENT, "%s: srun (pid %d) asks Slurm for %d task%s%s",
              s->label, dexec_process_pid(s->proc), s->ntasks, s->ntasks == 1 ? "" : "s",
              s->own_job ? " in an allocation of its own" : " in this allocation");

    /* every task's address, srun's end, or the deadline */
    pthread_mutex_lock(&s->lock);
    while (s->naddr < s->ntasks && !s->eof && dexec_now() < deadline) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
    }
    st = s->naddr == s->ntasks ? DEXEC_OK : s->eof ? DEXEC_EINIT : DEXEC_ETIMEDOUT;
    pthread_mutex_unlock(&s->lock);
    waited = dexec_now() - started;
    if (st == DEXEC_OK) {
        dexec_log(DEXEC_LOG_INFO, COMPONENT, "%s: step %s running, task 0 at %s", s->label,
                  s->step, s->addr[0]);
        *out = s;
        return DEXEC_OK;
    }
    if (st == DEXEC_ETIMEDOUT) {
        pending_reason(s, why, sizeof(why));
        dexec_srun_stop(s, 0);
        dexec_srun_messages(s, msgs, sizeof(msgs));
        dexec_errorf(err, errlen,
                     "Slurm did not start the %s within %.0f s (timeouts.init), cancelled it%s%s%s%s%s",
                     s->label, waited,
                     why[0] ? ": job reason " : "", why, msgs[0] ? " (" : "", msgs,
                     msgs[0] ? ")" : "");
        srun_release(s);
        return DEXEC_ETIMEDOUT;
    }
    /* srun ended first: how, and what it said */
    dexec_srun_exited(s, 2.0, &status);
    dexec_srun_stop(s, 0);
    dexec_describe_exit(dexec_process_status(s->proc), why, sizeof(why));
    dexec_srun_messages(s, msgs, sizeof(msgs));
    dexec_errorf(err, errlen, "srun for the %s %s before the step started%s%s%s", s->label, why,
                 msgs[0] ? ": " : "", msgs,
                 WIFEXITED(status) && WEXITSTATUS(status) == 127
                     ? " (is Slurm's srun installed and in PATH?)"
                     : "");
    srun_release(s);
    return DEXEC_EINIT;
}

const char *dexec_srun_address(const dexec_srun *s, int task)
{
    return s != NULL && task >= 0 && task < s->ntasks ? s->addr[task] : NULL;
}

const char *dexec_srun_token(const dexec_srun *s)
{
    return s->token;
}

const char *dexec_srun_step(const dexec_srun *s)
{
    return s->step;
}

const char *dexec_srun_node(const dexec_srun *s, int task)
{
    return s != NULL && task >= 0 && task < s->ntasks ? s->node[task] : NULL;
}

int dexec_srun_exited(dexec_srun *s, double wait_s, int *status)
{
    int done = dexec_process_reap(s->proc, wait_s);

    if (status != NULL)
        *status = done ? dexec_process_status(s->proc) : -1;
    return done;
}

void dexec_srun_stop(dexec_srun *s, double grace_s)
{
    if (s == NULL || s->stopped)
        return;
    s->stopped = 1;
    if (grace_s < 0)
        grace_s = 0;
    if (!dexec_process_reap(s->proc, grace_s)) {
        cancel(s);
        if (!dexec_process_reap(s->proc, grace_s > 1 ? grace_s : 1)) {
            dexec_log(DEXEC_LOG_WARN, COMPONENT, "%s: srun (pid %d) still running: SIGKILL",
                      s->label, dexec_process_pid(s->proc));
            dexec_process_signal(s->proc, SIGKILL);
            dexec_process_reap(s->proc, 10.0);
        }
    }
    /* srun gone: its pipe ends, the reader sees EOF */
    if (s->reader_started) {
        double deadline = dexec_now() + 2.0;

        pthread_mutex_lock(&s->lock);
        while (!s->eof && dexec_now() < deadline) {
            pthread_mutex_unlock(&s->lock);
            usleep(10000);
            pthread_mutex_lock(&s->lock);
        }
        pthread_mutex_unlock(&s->lock);
    }
}

void dexec_srun_free(dexec_srun *s)
{
    if (s == NULL)
        return;
    dexec_srun_stop(s, 0);
    srun_release(s);
}
