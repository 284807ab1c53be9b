/*
 * process.c - process services (<dexec/process.h>): spawning a child
 * confined to CPUs, GPUs and memory that dies with this process, reaping,
 * describing exits, the shutdown ladder, CPU lists and placement labels.
 *
 * Every fork happens on one spawner thread that libdexec starts on the
 * first spawn and never stops. PR_SET_PDEATHSIG fires when the thread that
 * forked exits, not the process; forking from the caller's thread would
 * kill the children of an engine created on a thread that later returns.
 * The caller prepares everything (argv, environment, descriptors, the
 * cgroup) and hands the job over; the spawner only forks, and the child
 * makes system calls only before exec (the process has other threads).
 *
 * The memory limit is a cgroup v2 memory.max when this process sits in a
 * cgroup v2 hierarchy where it may create a child cgroup with the memory
 * controller enabled (a delegated subtree, a container's own root);
 * otherwise RLIMIT_AS, which bounds address space rather than resident
 * memory. Which one applied is logged, and visible in /proc/PID/cgroup or
 * /proc/PID/limits.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dexec/process.h>
#include <dexec/rpc.h>

#include "internal.h"

extern char **environ;

/* How long a caller waits for the spawner thread, and for a killed child. */
#define SPAWN_WAIT       30.0
#define KILLED_REAP_WAIT 10.0

struct dexec_process {
    pid_t pid;
    pthread_mutex_t lock; /* guards reaped/status: a death callback and shutdown both reap */
    int reaped;
    int status; /* wait status, -1 when unknown */
    dexec_memory_limit memory_how;
    char cgroup[512]; /* made for it, removed by dexec_process_free; or "" */
    char component[32];
    char label[64];
};

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- CPU lists ------------------------------------------------------------------ */

/* "0-3,8" -> set. 0, or -1 on bad text or a CPU >= CPU_SETSIZE. */
int dx_cpulist_parse(const char *s, cpu_set_t *set)
{
    CPU_ZERO(set);
    while (*s != '\0') {
        char *end;
        long a, b;

        if (!isdigit((unsigned char)*s))
            return -1;
        a = b = strtol(s, &end, 10);
        if (*end == '-') {
            if (!isdigit((unsigned char)end[1]))
                return -1;
            b = strtol(end + 1, &end, 10);
        }
        if (a > b || b >= CPU_SETSIZE)
            return -1;
        for (long i = a; i <= b; i++)
            CPU_SET((int)i, set);
        if (*end == ',' && end[1] != '\0')
            end++;
        else if (*end != '\0')
            return -1;
        s = end;
    }
    return 0;
}

/* set -> "0-3,8". 0, or -1 when len is too small. */
static int cpulist_format(const cpu_set_t *set, char *buf, size_t len)
{
    size_t off = 0;

    buf[0] = '\0';
    for (int i = 0; i < CPU_SETSIZE; i++) {
        int j = i, w;

        if (!CPU_ISSET(i, set))
            continue;
        while (j + 1 < CPU_SETSIZE && CPU_ISSET(j + 1, set))
            j++;
        if (j == i)
            w = snprintf(buf + off, len - off, "%s%d", off ? "," : "", i);
        else
            w = snprintf(buf + off, len - off, "%s%d-%d", off ? "," : "", i, j);
        if (w < 0 || (size_t)w >= len - off)
            return -1;
        off += (size_t)w;
        i = j;
    }
    return 0;
}

int dexec_cpus_allowed(void)
{
    cpu_set_t set;

    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return (int)sysconf(_SC_NPROCESSORS_ONLN);
    return CPU_COUNT(&set);
}

dexec_status dexec_cpus_pick(int n, const char *avoid, char *out, size_t outlen, char *err,
                             size_t errlen)
{
    cpu_set_t allowed, busy, pick;
    int avail = 0;

    CPU_ZERO(&busy);
    if (avoid != NULL && dx_cpulist_parse(avoid, &busy) != 0)
        return dx_fail(err, errlen, DEXEC_EINVAL, "bad CPU list '%s' (expected e.g. 0-3,8)", avoid);
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
        return dx_fail(err, errlen, DEXEC_EIO, "sched_getaffinity: %s", strerror(errno));
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &allowed) && !CPU_ISSET(i, &busy))
            avail++;
    if (n > avail)
        return dx_fail(err, errlen, DEXEC_EINVAL, "%d CPUs asked but only %d are available", n,
                       avail);
    CPU_ZERO(&pick);
    for (int i = 0, k = 0; i < CPU_SETSIZE && k < n; i++) {
        if (CPU_ISSET(i, &allowed) && !CPU_ISSET(i, &busy)) {
            CPU_SET(i, &pick);
            k++;
        }
    }
    if (cpulist_format(&pick, out, outlen) != 0)
        return dx_fail(err, errlen, DEXEC_ENOMEM,
                       "the CPU list of %d CPUs does not fit in %zu bytes", n, outlen);
    return DEXEC_OK;
}

/* ---- memory: a child cgroup v2 --------------------------------------------- */

/* The cgroup v2 directory this process is in, from /proc/self/cgroup ("0::PATH")
 * and the cgroup2 mount in /proc/self/mountinfo. 0 or -1. */
static int own_cgroup_dir(char *dir, size_t len)
{
    char line[4096], path[4096] = "", mnt[1024] = "", root[1024] = "";
    FILE *f = fopen("/proc/self/cgroup", "re");
    int found = 0;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "0::", 3) == 0) {
            snprintf(path, sizeof(path), "%s", line + 3);
            path[strcspn(path, "\n")] = '\0';
            found = 1;
        }
    }
    fclose(f);
    if (!found)
        return -1;
    f = fopen("/proc/self/mountinfo", "re");
    if (f == NULL)
        return -1;
    found = 0;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        /* ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER */
        char *sep = strstr(line, " - ");

        if (sep == NULL || strncmp(sep + 3, "cgroup2 ", 8) != 0)
            continue;
        found = sscanf(line, "%*s %*s %*s %1023s %1023s", root, mnt) == 2;
    }
    fclose(f);
    if (!found)
        return -1;
    /* a mount of a sub-tree: paths in /proc/self/cgroup are relative to the
     * hierarchy's root, the mount shows only what is below its root */
    if (strcmp(root, "/") != 0 && strncmp(path, root, strlen(root)) == 0)
        memmove(path, path + strlen(root), strlen(path + strlen(root)) + 1);
    if ((size_t)snprintf(dir, len, "%s%s", mnt, strcmp(path, "/") == 0 ? "" : path) >= len)
        return -1;
    return 0;
}

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    ssize_t n;
    int e;

    if (fd < 0)
        return -1;
    n = write(fd, text, strlen(text));
    e = errno;
    close(fd);
    errno = e;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* Makes a child cgroup with memory.max = bytes and opens its cgroup.procs
 * for the child to join. On failure says why in why and returns -1. */
static int cgroup_prepare(int64_t bytes, char *dir, size_t dirlen, int *procs_fd, char *why,
                          size_t whylen)
{
    static int counter;
    char own[1024], file[600], val[32];
    int id = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);

    *procs_fd = -1;
    if (own_cgroup_dir(own, sizeof(own)) != 0) {
        snprintf(why, whylen, "this process is not in a cgroup v2 hierarchy");
        return -1;
    }
    if ((size_t)snprintf(dir, dirlen, "%s/dexec-child-%d-%d", own, (int)getpid(), id) >= dirlen) {
        snprintf(why, whylen, "the cgroup path %s is too long", own);
        dir[0] = '\0';
        return -1;
    }
    if (mkdir(dir, 0755) != 0) {
        snprintf(why, whylen, "cannot create %s: %s", dir, strerror(errno));
        dir[0] = '\0';
        return -1;
    }
    snprintf(file, sizeof(file), "%s/memory.max", dir);
    snprintf(val, sizeof(val), "%lld", (long long)bytes);
    if (access(file, W_OK) != 0) {
        snprintf(why, whylen, "the memory controller is not enabled for children of %s", own);
        goto fail;
    }
    if (write_file(file, val) != 0) {
        snprintf(why, whylen, "cannot write %s: %s", file, strerror(errno));
        goto fail;
    }
    /* swap would let the child exceed the limit it was given */
    snprintf(file, sizeof(file), "%s/memory.swap.max", dir);
    if (access(file, W_OK) == 0)
        write_file(file, "0");
    snprintf(file, sizeof(file), "%s/cgroup.procs", dir);
    *procs_fd = open(file, O_WRONLY | O_CLOEXEC);
    if (*procs_fd < 0) {
        snprintf(why, whylen, "cannot open %s: %s", file, strerror(errno));
        goto fail;
    }
    return 0;
fail:
    rmdir(dir);
    dir[0] = '\0';
    return -1;
}

/* ---- the spawner thread ---------------------------------------------------------- */

/* What the child failed at, sent back through the exec pipe. */
enum child_stage { STAGE_EXEC = 1, STAGE_CGROUP, STAGE_RLIMIT, STAGE_AFFINITY, STAGE_FD };

/* One fork, prepared by the caller and owned by the job: the spawner may
 * finish it after a caller that gave up has returned. */
typedef struct spawn_job {
    char **argv, **envp;   /* deep copies */
    int ctl_fd, stdout_fd; /* our own CLOEXEC duplicates, or -1 */
    int procs_fd;          /* cgroup.procs to join, or -1 */
    int use_rlimit;
    struct rlimit rl;
    int use_affinity;
    cpu_set_t cpus;
    int pipe_w; /* exec pipe, write end (the child's) */
    pid_t parent;
    /* result, under g_spawn.lock */
    int done, abandoned;
    pid_t pid;
    int fork_errno;
    struct spawn_job *next;
} spawn_job;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* a job queued */
    pthread_cond_t done; /* a job forked */
    pid_t running_in;    /* the process whose spawner thread runs; 0: none */
    spawn_job *queue;
} g_spawn = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0,
             NULL};
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

/* fork() of the whole process (by anyone) keeps the lock consistent; the
 * child has no spawner thread and no callers waiting. */
static void atfork_prepare(void)
{
    pthread_mutex_lock(&g_spawn.lock);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&g_spawn.lock);
}

static void atfork_child(void)
{
    g_spawn.running_in = 0;
    g_spawn.queue = NULL;
    pthread_cond_init(&g_spawn.wake, NULL);
    pthread_cond_init(&g_spawn.done, NULL);
    pthread_mutex_unlock(&g_spawn.lock);
}

static void atfork_register(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static void job_free(spawn_job *j)
{
    if (j == NULL)
        return;
    if (j->argv != NULL)
        dx_strv_free(j->argv);
    if (j->envp != NULL)
        dx_strv_free(j->envp);
    if (j->ctl_fd >= 0)
        close(j->ctl_fd);
    if (j->stdout_fd >= 0)
        close(j->stdout_fd);
    if (j->procs_fd >= 0)
        close(j->procs_fd);
    if (j->pipe_w >= 0)
        close(j->pipe_w);
    free(j);
}

/* In the child: report what failed and exit. */
static void child_fail(int pipe_fd, int stage)
{
    int msg[2] = {stage, errno};
    ssize_t n = write(pipe_fd, msg, sizeof(msg));

    (void)n;
    _exit(127);
}

/* In the child, after fork: system calls only. */
static void child_exec(const spawn_job *j)
{
    sigset_t none;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != j->parent)
        _exit(127); /* the parent died before we could ask */
    /* the spawner thread blocks every signal; the program must not inherit that */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* "0" moves the writer itself */
    if (j->procs_fd >= 0 && write(j->procs_fd, "0", 1) != 1)
        child_fail(j->pipe_w, STAGE_CGROUP);
    if (j->use_rlimit && setrlimit(RLIMIT_AS, &j->rl) != 0)
        child_fail(j->pipe_w, STAGE_RLIMIT);
    if (j->use_affinity && sched_setaffinity(0, sizeof(j->cpus), &j->cpus) != 0)
        child_fail(j->pipe_w, STAGE_AFFINITY);
    /* the duplicates are >= 10, so neither dup2 clobbers the other's source;
     * dup2 clears CLOEXEC on the target */
    if (j->stdout_fd >= 0 && dup2(j->stdout_fd, 1) < 0)
        child_fail(j->pipe_w, STAGE_FD);
    if (j->ctl_fd >= 0 && dup2(j->ctl_fd, 3) < 0)
        child_fail(j->pipe_w, STAGE_FD);
    execve(j->argv[0], j->argv, j->envp);
    child_fail(j->pipe_w, STAGE_EXEC);
}

static void *spawner_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_spawn.lock);
    for (;;) {
        spawn_job *j;
        pid_t pid;
        int e;

        /* idle until a job comes: this thread lives as long as the process */
        while (g_spawn.queue == NULL)
            pthread_cond_wait(&g_spawn.wake, &g_spawn.lock);
        j = g_spawn.queue;
        g_spawn.queue = j->next;
        /* fork without the lock: atfork_prepare takes it */
        pthread_mutex_unlock(&g_spawn.lock);
        pid = fork();
        if (pid == 0)
            child_exec(j);
        e = errno;
        close(j->pipe_w);
        j->pipe_w = -1;
        pthread_mutex_lock(&g_spawn.lock);
        if (j->abandoned) {
            /* its caller gave up waiting: nobody will own this child */
            if (pid > 0) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
            }
            job_free(j);
            continue;
        }
        j->pid = pid;
        j->fork_errno = pid < 0 ? e : 0;
        j->done = 1;
        pthread_cond_broadcast(&g_spawn.done);
    }
    return NULL;
}

/* Starts the spawner thread of this process if it is not running; called
 * with g_spawn.lock held. Its creator may exit: the thread is detached and
 * blocks every signal, so process-directed signals go to other threads. */
static int spawner_start(void)
{
    pthread_attr_t attr;
    pthread_t t;
    sigset_t all, old;
    int rc;

    if (g_spawn.running_in == getpid())
        return 0;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    rc = pthread_create(&t, &attr, spawner_main, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    g_spawn.running_in = getpid();
    return 0;
}

/* Hands j to the spawner and waits for its fork. On success j->pid is set
 * and j is still the caller's; on DEXEC_ETIMEDOUT j now belongs to the
 * spawner. */
static dexec_status spawner_run(spawn_job *j, char *err, size_t errlen)
{
    double deadline = dexec_now() + SPAWN_WAIT;
    struct timespec ts;

    pthread_once(&g_atfork_once, atfork_register);
    pthread_mutex_lock(&g_spawn.lock);
    if (spawner_start() != 0) {
        int e = errno;

        pthread_mutex_unlock(&g_spawn.lock);
        return dx_fail(err, errlen, DEXEC_EIO, "cannot start the spawner thread: %s", strerror(e));
    }
    j->next = NULL;
    {
        spawn_job **pp = &g_spawn.queue;

        while (*pp != NULL)
            pp = &(*pp)->next;
        *pp = j;
    }
    pthread_cond_signal(&g_spawn.wake);
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)SPAWN_WAIT;
    while (!j->done && dexec_now() < deadline)
        if (pthread_cond_timedwait(&g_spawn.done, &g_spawn.lock, &ts) == ETIMEDOUT)
            break;
    if (!j->done) {
        /* still queued: take it back; forking: the spawner disposes of it */
        spawn_job **pp = &g_spawn.queue;

        while (*pp != NULL && *pp != j)
            pp = &(*pp)->next;
        if (*pp == j) {
            *pp = j->next;
            pthread_mutex_unlock(&g_spawn.lock);
            job_free(j);
        } else {
            j->abandoned = 1;
            pthread_mutex_unlock(&g_spawn.lock);
        }
        return dx_fail(err, errlen, DEXEC_ETIMEDOUT,
                       "the spawner thread did not fork within %.0f s (is the system out of "
                       "processes or memory?)",
                       SPAWN_WAIT);
    }
    pthread_mutex_unlock(&g_spawn.lock);
    return DEXEC_OK;
}

/* ---- spawning ------------------------------------------------------------------ */

static char **strv_copy(char *const *v, const char *drop_prefix, const char *add)
{
    size_t n = 0, k = 0;
    char **out;

    while (v[n] != NULL)
        n++;
    out = calloc(n + 2, sizeof(*out));
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (drop_prefix != NULL && strncmp(v[i], drop_prefix, strlen(drop_prefix)) == 0)
            continue;
        if ((out[k++] = strdup(v[i])) == NULL)
            goto fail;
    }
    if (add != NULL && (out[k++] = strdup(add)) == NULL)
        goto fail;
    return out;
fail:
    dx_strv_free(out);
    return NULL;
}

/* Length of the NAME of a "NAME=VALUE" (or bare "NAME") entry. */
static size_t env_name_len(const char *e)
{
    const char *eq = strchr(e, '=');

    return eq != NULL ? (size_t)(eq - e) : strlen(e);
}

/* 1 when env entry e sets the variable named like entry other. */
static int env_same_name(const char *e, const char *other)
{
    size_t n = env_name_len(other);

    return env_name_len(e) == n && strncmp(e, other, n) == 0;
}

/* The child's environment: this process's, then the caller's extra
 * entries over it, then CUDA_VISIBLE_DEVICES (cuda, "NAME=VALUE", or NULL)
 * over both; an extra CUDA_VISIBLE_DEVICES that loses is logged. */
static char **child_env(const char *const *extra, const char *cuda, const char *component,
                        const char *label)
{
    size_t n = 0, k = 0, ne = 0;
    char **out;

    while (environ[n] != NULL)
        n++;
    while (extra != NULL && extra[ne] != NULL)
        ne++;
    out = calloc(n + ne + 2, sizeof(*out));
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        int replaced = cuda != NULL && env_same_name(environ[i], cuda);

        for (size_t x = 0; x < ne && !replaced; x++)
            replaced = strchr(extra[x], '=') != NULL && env_same_name(environ[i], extra[x]);
        if (!replaced && (out[k++] = strdup(environ[i])) == NULL)
            goto fail;
    }
    for (size_t x = 0; x < ne; x++) {
        if (strchr(extra[x], '=') == NULL)
            continue;
        if (cuda != NULL && env_same_name(extra[x], cuda)) {
            dexec_log(DEXEC_LOG_WARN, component,
                      "%s: runtime_env.env_vars sets %s but the executor sets %s for it (its "
                      "GPUs): the executor's value wins",
                      label, extra[x], cuda);
            continue;
        }
        if ((out[k++] = strdup(extra[x])) == NULL)
            goto fail;
    }
    if (cuda != NULL && (out[k++] = strdup(cuda)) == NULL)
        goto fail;
    return out;
fail:
    dx_strv_free(out);
    return NULL;
}

char **dexec_runtime_env(const dexec_config *cfg, const char *const *own, const char *component)
{
    const dexec_value *m = NULL;
    size_t n, k = 0;
    char **out;

    if (cfg == NULL || dexec_config_get_map(cfg, "runtime_env.env_vars", &m) != DEXEC_OK)
        m = NULL;
    n = m != NULL ? m->u.map.len : 0;
    out = calloc(n + 1, sizeof(*out));
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const dexec_kv *kv = &m->u.map.items[i];
        const char *v = dexec_value_as_str(kv->val, "");
        int theirs = 0;

        for (size_t o = 0; own != NULL && own[o] != NULL && !theirs; o++)
            if (env_name_len(own[o]) == strlen(kv->key) &&
                strncmp(own[o], kv->key, strlen(kv->key)) == 0) {
                theirs = 1;
                dexec_log(DEXEC_LOG_WARN, component != NULL ? component : "process",
                          "runtime_env.env_vars sets %s=\"%s\" but the executor sets %s itself "
                          "(%s): the executor's value wins",
                          kv->key, v, kv->key, own[o]);
            }
        if (theirs)
            continue;
        if (asprintf(&out[k], "%s=%s", kv->key, v) < 0) {
            out[k] = NULL;
            dx_strv_free(out);
            return NULL;
        }
        k++;
    }
    return out;
}

void dexec_env_free(char **env)
{
    dx_strv_free(env);
}

/* A CLOEXEC duplicate of fd at 10 or above, or -1 for "none" (fd <= 0). */
static int dup_high(int fd)
{
    return fd > 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 10) : -1;
}

/* Reads the exec pipe: 0 once the program runs (EOF), else the stage and
 * errno of the failure. Bounded by SPAWN_WAIT. */
static int read_exec_pipe(int fd, int msg[2])
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    double deadline = dexec_now() + SPAWN_WAIT;
    ssize_t n;

    for (;;) {
        int r = poll(&p, 1, (int)(dx_remaining(deadline) * 1000) + 1);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            msg[0] = STAGE_EXEC;
            msg[1] = ETIMEDOUT;
            return -1;
        }
        n = read(fd, msg, 2 * sizeof(int));
        if (n < 0 && errno == EINTR)
            continue;
        return n == (ssize_t)(2 * sizeof(int)) ? -1 : 0;
    }
}

static void copy_name(char *dst, size_t len, const char *s, const char *dflt)
{
    snprintf(dst, len, "%s", s != NULL && *s != '\0' ? s : dflt);
}

dexec_status dexec_process_spawn(const dexec_spawn_args *a, dexec_process **out, char *err,
                                 size_t errlen)
{
    dexec_spawn_args args = {0};
    dexec_process *p;
    spawn_job *j;
    char *cuda_env = NULL, why[1200] = "";
    int ep[2], msg[2];
    dexec_status st;

    *out = NULL;
    if (a == NULL || a->struct_size < offsetof(dexec_spawn_args, reserved))
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "dexec_process_spawn: struct_size of the arguments is %u, expected %zu "
                       "(set it to sizeof(dexec_spawn_args))",
                       a != NULL ? a->struct_size : 0, sizeof(dexec_spawn_args));
    memcpy(&args, a, a->struct_size < sizeof(args) ? a->struct_size : sizeof(args));
    if (args.argv == NULL || args.argv[0] == NULL || args.argv[0][0] == '\0')
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "dexec_process_spawn: argv[0], the program to run, is missing");
    p = calloc(1, sizeof(*p));
    j = calloc(1, sizeof(*j));
    if (p == NULL || j == NULL) {
        free(p);
        free(j);
        return DEXEC_ENOMEM;
    }
    p->status = -1;
    pthread_mutex_init(&p->lock, NULL);
    copy_name(p->component, sizeof(p->component), args.component, "process");
    copy_name(p->label, sizeof(p->label), args.label, "child");
    j->ctl_fd = j->stdout_fd = j->procs_fd = j->pipe_w = -1;
    j->parent = getpid();
    if (args.cpus != NULL && args.cpus[0] != '\0') {
        if (dx_cpulist_parse(args.cpus, &j->cpus) != 0 || CPU_COUNT(&j->cpus) == 0) {
            st = dx_fail(err, errlen, DEXEC_EINVAL,
                         "%s: bad CPU list '%s' (expected e.g. 0-3,8, CPUs below %d)", p->component,
                         args.cpus, CPU_SETSIZE);
            goto fail;
        }
        j->use_affinity = 1;
    }
    if (args.memory_bytes > 0) {
        if (cgroup_prepare(args.memory_bytes, p->cgroup, sizeof(p->cgroup), &j->procs_fd, why,
                           sizeof(why)) == 0) {
            p->memory_how = DEXEC_MEMORY_CGROUP;
        } else {
            p->memory_how = DEXEC_MEMORY_RLIMIT;
            j->use_rlimit = 1;
            j->rl.rlim_cur = j->rl.rlim_max = (rlim_t)args.memory_bytes;
        }
    }
    if (args.visible_gpus != NULL) {
        size_t len = strlen(args.visible_gpus) + 32;

        cuda_env = malloc(len);
        if (cuda_env == NULL) {
            st = DEXEC_ENOMEM;
            goto fail;
        }
        snprintf(cuda_env, len, "CUDA_VISIBLE_DEVICES=%s", args.visible_gpus);
    }
    j->argv = strv_copy(args.argv, NULL, NULL);
    j->envp = child_env(args.env, cuda_env, p->component, p->label);
    free(cuda_env);
    if (j->argv == NULL || j->envp == NULL) {
        st = DEXEC_ENOMEM;
        goto fail;
    }
    j->ctl_fd = dup_high(args.ctl_fd);
    j->stdout_fd = dup_high(args.stdout_fd);
    if ((args.ctl_fd > 0 && j->ctl_fd < 0) || (args.stdout_fd > 0 && j->stdout_fd < 0)) {
        st = dx_fail(err, errlen, DEXEC_EIO, "%s: cannot duplicate the %s descriptor: %s",
                     p->component, j->ctl_fd < 0 && args.ctl_fd > 0 ? "control" : "stdout",
                     strerror(errno));
        goto fail;
    }
    if (pipe2(ep, O_CLOEXEC) != 0) {
        st = dx_fail(err, errlen, DEXEC_EIO, "%s: pipe: %s", p->component, strerror(errno));
        goto fail;
    }
    j->pipe_w = ep[1];
    st = spawner_run(j, err, errlen);
    if (st != DEXEC_OK) {
        j = NULL; /* freed, or the spawner's now */
        close(ep[0]);
        goto fail;
    }
    if (j->pid < 0) {
        close(ep[0]);
        st = dx_fail(err, errlen, DEXEC_EIO, "%s: fork: %s", p->component, strerror(j->fork_errno));
        goto fail;
    }
    p->pid = j->pid;
    job_free(j);
    j = NULL;
    /* the pipe closes on exec (EOF, 0 bytes) or carries what failed */
    if (read_exec_pipe(ep[0], msg) != 0) {
        const char *what = msg[0] == STAGE_CGROUP     ? "cannot join the memory cgroup"
                           : msg[0] == STAGE_RLIMIT   ? "cannot set RLIMIT_AS"
                           : msg[0] == STAGE_AFFINITY ? "cannot set the CPU affinity"
                           : msg[0] == STAGE_FD       ? "cannot set up its descriptors"
                                                      : "cannot run the program";

        close(ep[0]);
        if (msg[0] == STAGE_EXEC)
            dexec_errorf(err, errlen, "%s: cannot run %s: %s%s", p->component, args.argv[0],
                         strerror(msg[1]),
                         strstr(args.argv[0], "dexec-worker") != NULL
                             ? " (set DEXEC_WORKER to the dexec-worker program to use)"
                             : "");
        else
            dexec_errorf(err, errlen, "%s: %s: %s: %s", p->component, p->label, what,
                         strerror(msg[1]));
        dexec_process_free(p); /* kills and reaps it */
        return DEXEC_EINIT;
    }
    close(ep[0]);
    if (p->memory_how == DEXEC_MEMORY_CGROUP)
        dexec_log(DEXEC_LOG_INFO, p->component,
                  "%s pid %d: memory limited to %lld bytes by cgroup v2 %s/memory.max", p->label,
                  (int)p->pid, (long long)args.memory_bytes, p->cgroup);
    else if (p->memory_how == DEXEC_MEMORY_RLIMIT)
        dexec_log(DEXEC_LOG_WARN, p->component,
                  "%s pid %d: memory limited to %lld bytes of address space (RLIMIT_AS), "
                  "not resident memory: no cgroup v2 limit is possible here (%s)",
                  p->label, (int)p->pid, (long long)args.memory_bytes, why);
    *out = p;
    return DEXEC_OK;
fail:
    job_free(j);
    dexec_process_free(p);
    return st;
}

/* ---- reaping and stopping ------------------------------------------------------- */

int dexec_process_pid(const dexec_process *p)
{
    return (int)p->pid;
}

dexec_memory_limit dexec_process_memory_limit(const dexec_process *p)
{
    return p->memory_how;
}

const char *dexec_process_cgroup(const dexec_process *p)
{
    return p->cgroup;
}

int dexec_process_reap(dexec_process *p, double wait_s)
{
    double deadline = dexec_now() + wait_s;
    int done;

    pthread_mutex_lock(&p->lock);
    while (!p->reaped && p->pid > 0) {
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);

        if (r == p->pid || (r < 0 && errno == ECHILD)) {
            p->reaped = 1;
            p->status = r == p->pid ? st : -1;
            break;
        }
        if (dexec_now() >= deadline)
            break;
        pthread_mutex_unlock(&p->lock);
        sleep_s(0.005);
        pthread_mutex_lock(&p->lock);
    }
    done = p->reaped || p->pid <= 0;
    pthread_mutex_unlock(&p->lock);
    return done;
}

int dexec_process_status(const dexec_process *p)
{
    int st;

    pthread_mutex_lock((pthread_mutex_t *)&p->lock);
    st = p->reaped ? p->status : -1;
    pthread_mutex_unlock((pthread_mutex_t *)&p->lock);
    return st;
}

int dexec_process_signal(dexec_process *p, int sig)
{
    int rc;

    /* under the lock: a reaped pid may belong to somebody else already */
    pthread_mutex_lock(&p->lock);
    if (p->reaped || p->pid <= 0) {
        errno = ESRCH;
        rc = -1;
    } else {
        rc = kill(p->pid, sig);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void dexec_describe_exit(int status, char *buf, size_t len)
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

/* Reaps what has exited among procs until all have or deadline passes.
 * Returns how many still run. */
static size_t reap_until(dexec_process *const *procs, size_t n, double deadline)
{
    for (;;) {
        size_t left = 0;

        for (size_t i = 0; i < n; i++)
            if (procs[i] != NULL && !dexec_process_reap(procs[i], 0))
                left++;
        if (left == 0 || dexec_now() >= deadline)
            return left;
        sleep_s(0.005);
    }
}

static void signal_left(dexec_process *const *procs, size_t n, int sig, double grace_s,
                        const char *why)
{
    for (size_t i = 0; i < n; i++) {
        if (procs[i] == NULL || dexec_process_reap(procs[i], 0))
            continue;
        dexec_log(DEXEC_LOG_WARN, procs[i]->component, "%s (pid %d) %s after %.3g s: %s",
                  procs[i]->label, (int)procs[i]->pid, why, grace_s,
                  sig == SIGTERM ? "SIGTERM" : "SIGKILL");
        dexec_process_signal(procs[i], sig);
    }
}

void dexec_process_stop_all(dexec_process *const *procs, struct dexec_conn *const *conns, size_t n,
                            double grace_s)
{
    uint32_t *ids = calloc(n > 0 ? n : 1, sizeof(*ids));
    char *sent = calloc(n > 0 ? n : 1, 1);
    size_t nsent = 0;
    double deadline;
    char msg[256];

    if (!(grace_s > 0))
        grace_s = 0;
    deadline = dexec_now() + grace_s;
    /* 1. ask: the shutdown RPC on every live connection at once */
    for (size_t i = 0; conns != NULL && ids != NULL && sent != NULL && i < n; i++) {
        if (conns[i] == NULL || dexec_conn_dead(conns[i]) ||
            (procs[i] != NULL && dexec_process_reap(procs[i], 0)))
            continue;
        sent[i] = dexec_conn_send(conns[i], "shutdown", NULL, NULL, NULL, &ids[i], msg,
                                  sizeof(msg)) == DEXEC_OK;
        nsent += sent[i] != 0;
    }
    for (size_t i = 0; i < n && nsent > 0; i++)
        if (sent[i])
            dexec_conn_wait(conns[i], ids[i], deadline, NULL, msg, sizeof(msg));
    free(ids);
    free(sent);
    /* 2. the grace to exit; nothing to wait for when nobody was asked */
    if (reap_until(procs, n, nsent > 0 ? deadline : 0) == 0)
        return;
    /* 3. SIGTERM, the grace again */
    signal_left(procs, n, SIGTERM, grace_s,
                nsent > 0 ? "still running" : "has no connection to ask it to stop");
    if (reap_until(procs, n, dexec_now() + grace_s) == 0)
        return;
    /* 4. SIGKILL cannot be ignored: the wait is for the kernel only */
    signal_left(procs, n, SIGKILL, grace_s, "ignored SIGTERM");
    if (reap_until(procs, n, dexec_now() + KILLED_REAP_WAIT) == 0)
        return;
    for (size_t i = 0; i < n; i++)
        if (procs[i] != NULL && !dexec_process_reap(procs[i], 0))
            dexec_log(DEXEC_LOG_ERROR, procs[i]->component,
                      "%s (pid %d) survived SIGKILL for %.0f s (stuck in the kernel?): "
                      "not reaped",
                      procs[i]->label, (int)procs[i]->pid, KILLED_REAP_WAIT);
}

void dexec_process_stop(dexec_process *p, struct dexec_conn *conn, double grace_s)
{
    dexec_process_stop_all(&p, conn != NULL ? &conn : NULL, 1, grace_s);
}

void dexec_process_free(dexec_process *p)
{
    if (p == NULL)
        return;
    if (p->pid > 0 && !dexec_process_reap(p, 0)) {
        dexec_process_signal(p, SIGKILL);
        dexec_process_reap(p, KILLED_REAP_WAIT);
    }
    if (p->cgroup[0] != '\0') {
        /* a reaped process leaves its cgroup a moment later */
        for (int i = 0; i < 100 && rmdir(p->cgroup) != 0 && errno == EBUSY; i++)
            sleep_s(0.01);
    }
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* ---- custom resources ------------------------------------------------------------ */

static int resource_name_ok(const char *s, size_t len)
{
    if (len == 0 || !isalpha((unsigned char)s[0]))
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && strchr("_-:.", s[i]) == NULL)
            return 0;
    return 1;
}

dexec_value *dexec_resources_parse(const char *text, char *err, size_t errlen)
{
    dexec_value *m = dexec_value_map();
    const char *p = text != NULL ? text : "";

    while (m != NULL && *p != '\0') {
        size_t len = strcspn(p, ",");
        size_t nlen = strcspn(p, "=,");
        char name[128];
        double amount = 1.0;

        if (nlen >= sizeof(name) || !resource_name_ok(p, nlen)) {
            dexec_errorf(err, errlen,
                         "bad resource '%.*s': expected NAME or NAME=AMOUNT, NAME a letter "
                         "then letters, digits, '_', '-', ':' or '.'",
                         (int)len, p);
            dexec_value_free(m);
            return NULL;
        }
        memcpy(name, p, nlen);
        name[nlen] = '\0';
        if (nlen < len) {
            char num[64], *end;

            snprintf(num, sizeof(num), "%.*s", (int)(len - nlen - 1), p + nlen + 1);
            amount = strtod(num, &end);
            if (num[0] == '\0' || *end != '\0' || !(amount >= 0) || !isfinite(amount)) {
                dexec_errorf(err, errlen, "bad amount of resource %s: '%s' (a number >= 0)", name,
                             num);
                dexec_value_free(m);
                return NULL;
            }
        }
        if (dexec_value_map_set(m, name, dexec_value_float(amount)) != 0) {
            dexec_value_free(m);
            return NULL;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    return m;
}

int dexec_resources_fit(const dexec_value *want, const dexec_value *have, char *missing, size_t len)
{
    if (want == NULL || want->type != DEXEC_VAL_MAP)
        return 1;
    for (size_t i = 0; i < want->u.map.len; i++) {
        const dexec_kv *kv = &want->u.map.items[i];
        double asked = dexec_value_as_float(kv->val, 0);
        double offered = dexec_value_as_float(dexec_value_map_get(have, kv->key), 0);

        if (asked > 0 && offered + 1e-9 < asked) {
            snprintf(missing, len, "%s", kv->key);
            return 0;
        }
    }
    return 1;
}

void dexec_resources_format(const dexec_value *want, char *buf, size_t len)
{
    size_t off = 0;

    buf[0] = '\0';
    if (want == NULL || want->type != DEXEC_VAL_MAP)
        return;
    for (size_t i = 0; i < want->u.map.len && off < len; i++) {
        const dexec_kv *kv = &want->u.map.items[i];
        double v = dexec_value_as_float(kv->val, 0);
        int w;

        if (v == 1.0)
            w = snprintf(buf + off, len - off, "%s%s", off ? "," : "", kv->key);
        else
            w = snprintf(buf + off, len - off, "%s%s=%g", off ? "," : "", kv->key, v);
        if (w < 0)
            break;
        off += (size_t)w;
    }
}
