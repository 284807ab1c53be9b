/*
 * resources.c - spawning an actor process confined to CPUs, GPUs and
 * memory, and the custom resources that placement matches.
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

#include <dexec/rpc.h>

#include "resources.h"

extern char **environ;

/* What the child failed at, sent back through the exec pipe. */
enum child_stage { STAGE_EXEC = 1, STAGE_CGROUP, STAGE_RLIMIT, STAGE_AFFINITY, STAGE_FD };

int dxr_allowed_cpus(void)
{
    cpu_set_t set;

    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return (int)sysconf(_SC_NPROCESSORS_ONLN);
    return CPU_COUNT(&set);
}

dexec_status dxr_pick_cpus(int n, const cpu_set_t *busy, cpu_set_t *out, char *err,
                           size_t errlen)
{
    cpu_set_t allowed;
    int avail = 0;

    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
        dexec_errorf(err, errlen, "sched_getaffinity: %s", strerror(errno));
        return DEXEC_EIO;
    }
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &allowed) && (busy == NULL || !CPU_ISSET(i, busy)))
            avail++;
    if (n > avail) {
        dexec_errorf(err, errlen, "ray_actor.cpus = %d but only %d CPUs are available", n, avail);
        return DEXEC_EINVAL;
    }
    CPU_ZERO(out);
    for (int i = 0, k = 0; i < CPU_SETSIZE && k < n; i++) {
        if (CPU_ISSET(i, &allowed) && (busy == NULL || !CPU_ISSET(i, busy))) {
            CPU_SET(i, out);
            k++;
        }
    }
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
    if ((size_t)snprintf(dir, dirlen, "%s/dexec-actor-%d-%d", own, (int)getpid(), id) >= dirlen) {
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
    /* swap would let the actor exceed the limit it was given */
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

/* ---- spawning ------------------------------------------------------------------ */

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
        if (cuda_env == NULL || strncmp(environ[i], "CUDA_VISIBLE_DEVICES=", 21) != 0)
            envp[k++] = environ[i];
    if (cuda_env != NULL)
        envp[k++] = (char *)cuda_env;
    envp[k] = NULL;
    return envp;
}

/* In the child: report what failed and exit. */
static void child_fail(int pipe_fd, int stage)
{
    int msg[2] = {stage, errno};
    ssize_t n = write(pipe_fd, msg, sizeof(msg));

    (void)n;
    _exit(127);
}

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

dexec_status dxr_spawn(const dxr_spawn_args *a, dxr_child *c, char *err, size_t errlen)
{
    const dxr_limits *lim = a->limits;
    char **envp, *cuda_env = NULL, why[1200] = "";
    int ep[2], procs_fd = -1, msg[2];
    struct rlimit rl = {0, 0};
    pid_t parent = getpid(), pid;
    ssize_t n;

    memset(c, 0, sizeof(*c));
    c->status = -1;
    pthread_mutex_init(&c->lock, NULL);
    if (lim->memory > 0) {
        if (cgroup_prepare(lim->memory, c->cgroup, sizeof(c->cgroup), &procs_fd, why,
                           sizeof(why)) == 0) {
            c->memory_how = DXR_MEM_CGROUP;
        } else {
            c->memory_how = DXR_MEM_RLIMIT;
            rl.rlim_cur = rl.rlim_max = (rlim_t)lim->memory;
        }
    }
    if (lim->cuda_visible != NULL) {
        size_t len = strlen(lim->cuda_visible) + 32;

        cuda_env = malloc(len);
        if (cuda_env != NULL)
            snprintf(cuda_env, len, "CUDA_VISIBLE_DEVICES=%s", lim->cuda_visible);
    }
    envp = make_env(cuda_env);
    if (envp == NULL || (lim->cuda_visible != NULL && cuda_env == NULL)) {
        free(envp);
        free(cuda_env);
        if (procs_fd >= 0)
            close(procs_fd);
        dxr_child_release(c);
        return DEXEC_ENOMEM;
    }
    if (pipe2(ep, O_CLOEXEC) != 0) {
        dexec_errorf(err, errlen, "pipe: %s", strerror(errno));
        free(envp);
        free(cuda_env);
        if (procs_fd >= 0)
            close(procs_fd);
        dxr_child_release(c);
        return DEXEC_EIO;
    }

    pid = fork();
    if (pid == 0) {
        /* child: system calls only (the parent may have threads) */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127); /* the parent died before we could ask */
        /* "0" moves the writer itself */
        if (procs_fd >= 0 && write(procs_fd, "0", 1) != 1)
            child_fail(ep[1], STAGE_CGROUP);
        if (c->memory_how == DXR_MEM_RLIMIT && setrlimit(RLIMIT_AS, &rl) != 0)
            child_fail(ep[1], STAGE_RLIMIT);
        if (lim->ncpus > 0 && sched_setaffinity(0, sizeof(lim->cpus), &lim->cpus) != 0)
            child_fail(ep[1], STAGE_AFFINITY);
        if (a->stdout_fd >= 0 && dup2(a->stdout_fd, 1) < 0)
            child_fail(ep[1], STAGE_FD);
        if (a->ctl_fd == 3) {
            if (fcntl(3, F_SETFD, 0) != 0) /* keep it across exec */
                child_fail(ep[1], STAGE_FD);
        } else if (a->ctl_fd >= 0 && dup2(a->ctl_fd, 3) < 0) { /* dup2 clears CLOEXEC */
            child_fail(ep[1], STAGE_FD);
        }
        execve(a->argv[0], a->argv, envp);
        child_fail(ep[1], STAGE_EXEC);
    }
    free(envp);
    free(cuda_env);
    close(ep[1]);
    if (procs_fd >= 0)
        close(procs_fd);
    if (pid < 0) {
        dexec_errorf(err, errlen, "fork: %s", strerror(errno));
        close(ep[0]);
        dxr_child_release(c);
        return DEXEC_EIO;
    }
    c->pid = pid;
    /* the pipe closes on exec (EOF, 0 bytes) or carries what failed */
    do {
        n = read(ep[0], msg, sizeof(msg));
    } while (n < 0 && errno == EINTR);
    close(ep[0]);
    if (n == (ssize_t)sizeof(msg)) {
        const char *what = msg[0] == STAGE_CGROUP     ? "cannot join the memory cgroup"
                           : msg[0] == STAGE_RLIMIT   ? "cannot set RLIMIT_AS"
                           : msg[0] == STAGE_AFFINITY ? "cannot set the CPU affinity"
                           : msg[0] == STAGE_FD       ? "cannot set up its descriptors"
                                                      : "cannot run the worker program";

        dxr_reap(c, 5.0);
        if (msg[0] == STAGE_EXEC)
            dexec_errorf(err, errlen, "cannot run the worker program %s: %s (set DEXEC_WORKER)",
                         a->argv[0], strerror(msg[1]));
        else
            dexec_errorf(err, errlen, "actor process: %s: %s", what, strerror(msg[1]));
        dxr_child_release(c);
        return DEXEC_EINIT;
    }
    if (c->memory_how == DXR_MEM_CGROUP)
        dexec_log(DEXEC_LOG_INFO, a->component,
                  "actor pid %d: memory limited to %lld bytes by cgroup v2 %s/memory.max",
                  (int)pid, (long long)lim->memory, c->cgroup);
    else if (c->memory_how == DXR_MEM_RLIMIT)
        dexec_log(DEXEC_LOG_WARN, a->component,
                  "actor pid %d: memory limited to %lld bytes of address space (RLIMIT_AS), "
                  "not resident memory: no cgroup v2 limit is possible here (%s)",
                  (int)pid, (long long)lim->memory, why);
    return DEXEC_OK;
}

int dxr_reap(dxr_child *c, double wait_s)
{
    double deadline = dexec_now() + wait_s;
    int done;

    pthread_mutex_lock(&c->lock);
    while (!c->reaped && c->pid > 0) {
        int st;
        pid_t r = waitpid(c->pid, &st, WNOHANG);

        if (r == c->pid || (r < 0 && errno == ECHILD)) {
            c->reaped = 1;
            c->status = r == c->pid ? st : -1;
            break;
        }
        if (dexec_now() >= deadline)
            break;
        pthread_mutex_unlock(&c->lock);
        sleep_s(0.005);
        pthread_mutex_lock(&c->lock);
    }
    done = c->reaped;
    pthread_mutex_unlock(&c->lock);
    return done;
}

void dxr_kill(dxr_child *c, double term_wait_s, const char *component, const char *what)
{
    if (c->pid <= 0 || dxr_reap(c, 0))
        return;
    dexec_log(DEXEC_LOG_WARN, component, "%s (pid %d) is still running: SIGTERM", what,
              (int)c->pid);
    kill(c->pid, SIGTERM);
    if (dxr_reap(c, term_wait_s))
        return;
    dexec_log(DEXEC_LOG_WARN, component, "%s (pid %d) ignored SIGTERM: SIGKILL", what,
              (int)c->pid);
    kill(c->pid, SIGKILL);
    dxr_reap(c, 10.0);
}

void dxr_child_release(dxr_child *c)
{
    if (c->cgroup[0] != '\0') {
        /* a reaped process leaves its cgroup a moment later */
        for (int i = 0; i < 100 && rmdir(c->cgroup) != 0 && errno == EBUSY; i++)
            sleep_s(0.01);
        c->cgroup[0] = '\0';
    }
    pthread_mutex_destroy(&c->lock);
}

void dxr_describe_exit(int status, char *buf, size_t len)
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

dexec_value *dxr_resources_parse(const char *text, char *err, size_t errlen)
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
                dexec_errorf(err, errlen, "bad amount of resource %s: '%s' (a number >= 0)",
                             name, num);
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

int dxr_resources_fit(const dexec_value *want, const dexec_value *have, char *missing,
                      size_t len)
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

void dxr_resources_format(const dexec_value *want, char *buf, size_t len)
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
