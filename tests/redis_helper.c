/*
 * redis_helper.c - redis-server and dexec-worker processes for the
 * discovery and external suites, stopped whatever happens to the test:
 * each child gets PR_SET_PDEATHSIG (the test crashed or Check killed it on
 * a timeout) and an exit handler stops the ones still running (a failed
 * assertion exits the test process).
 */
#include "config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "redis_helper.h"

#define MAX_CHILDREN 64

static pid_t children[MAX_CHILDREN];
static char tmpdir[256];
static int exit_hook;

double test_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[600];

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (unlink(path) != 0 && errno == EISDIR)
            remove_tree(path);
    }
    closedir(d);
    rmdir(dir);
}

static void stop_pid(pid_t pid)
{
    int st;

    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 500; i++) {
        if (waitpid(pid, &st, WNOHANG) != 0)
            return;
        sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
}

static void forget_child(pid_t pid)
{
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (children[i] == pid)
            children[i] = 0;
}

static void at_exit(void)
{
    /* SIGTERM first (SIGKILL after 5 s): a node agent removes its private
     * directory only when it is allowed to exit */
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] > 0) {
            stop_pid(children[i]);
            children[i] = 0;
        }
    }
    if (tmpdir[0] != '\0')
        remove_tree(tmpdir);
}

static void remember_child(pid_t pid)
{
    if (!exit_hook) {
        atexit(at_exit);
        exit_hook = 1;
    }
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] == 0) {
            children[i] = pid;
            return;
        }
    }
}

const char *test_tmpdir(void)
{
    if (tmpdir[0] == '\0') {
        const char *base = getenv("TMPDIR");

        snprintf(tmpdir, sizeof(tmpdir), "%s/dexec-test-XXXXXX",
                 base != NULL && *base != '\0' ? base : "/tmp");
        if (mkdtemp(tmpdir) == NULL) {
            fprintf(stderr, "mkdtemp %s: %s\n", tmpdir, strerror(errno));
            abort();
        }
        if (!exit_hook) {
            atexit(at_exit);
            exit_hook = 1;
        }
    }
    return tmpdir;
}

/* Forks and execs argv with stdout to out_fd (or /dev/null) and stderr to
 * errfile; the child dies with us. */
static pid_t spawn(char *const *argv, int out_fd, const char *errfile)
{
    pid_t parent, pid;

    /* the children's TMPDIR: removed with everything in it at exit (a
     * killed node agent's private directory goes too) */
    setenv("TMPDIR", test_tmpdir(), 1);
    parent = getpid();
    pid = fork();

    if (pid == 0) {
        int fd;

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        setpgid(0, 0); /* a ^C in the terminal reaches the test, which stops us */
        fd = open("/dev/null", O_RDONLY);
        if (fd >= 0)
            dup2(fd, 0);
        if (out_fd < 0)
            out_fd = open("/dev/null", O_WRONLY);
        dup2(out_fd, 1);
        fd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    if (pid > 0)
        remember_child(pid);
    return pid;
}

/* ---- redis ------------------------------------------------------------------- */

const char *test_redis_skip_reason(void)
{
    const char *s = getenv("REDIS_SERVER");

    if (s == NULL || *s == '\0')
        return "redis-server was not found by configure (install redis-server, or "
               "--disable-redis-tests)";
    if (access(s, X_OK) != 0)
        return "REDIS_SERVER is not an executable";
    return NULL;
}

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static int raw_connect(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = 2};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends words as a RESP array and reads the first line of the reply. */
static int raw_command(int fd, const char *words, char *reply, size_t len)
{
    char buf[2048], copy[1024], *argv[32], *save = NULL;
    int argc = 0;
    size_t off;
    ssize_t n;

    snprintf(copy, sizeof(copy), "%s", words);
    for (char *t = strtok_r(copy, " ", &save); t != NULL && argc < 32;
         t = strtok_r(NULL, " ", &save))
        argv[argc++] = t;
    off = (size_t)snprintf(buf, sizeof(buf), "*%d\r\n", argc);
    for (int i = 0; i < argc && off < sizeof(buf); i++)
        off += (size_t)snprintf(buf + off, sizeof(buf) - off, "$%zu\r\n%s\r\n", strlen(argv[i]),
                                argv[i]);
    if (off >= sizeof(buf) || write(fd, buf, off) != (ssize_t)off)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    if (reply != NULL)
        snprintf(reply, len, "%s", buf);
    return 0;
}

int test_redis_cmd(const test_redis *r, const char *words, char *reply, size_t len)
{
    int fd = raw_connect(r->port), rc = -1;
    char auth[300], line[256];

    if (fd < 0)
        return -1;
    snprintf(auth, sizeof(auth), "AUTH %s", r->password != NULL ? r->password : "");
    if (r->password == NULL || (raw_command(fd, auth, line, sizeof(line)) == 0 && line[0] == '+'))
        rc = raw_command(fd, words, reply, len);
    close(fd);
    return rc;
}

static int answers_ping(const test_redis *r)
{
    char line[256];

    return test_redis_cmd(r, "PING", line, sizeof(line)) == 0 && strcmp(line, "+PONG") == 0;
}

static int start_once(test_redis *r)
{
    char port[16], log[520], *argv[24];
    int i = 0;

    snprintf(port, sizeof(port), "%d", r->port);
    snprintf(log, sizeof(log), "%s/redis.log", r->dir);
    argv[i++] = (char *)getenv("REDIS_SERVER");
    argv[i++] = "--port";
    argv[i++] = port;
    argv[i++] = "--bind";
    argv[i++] = "127.0.0.1";
    argv[i++] = "--save";
    argv[i++] = "";
    argv[i++] = "--appendonly";
    argv[i++] = "no";
    argv[i++] = "--dir";
    argv[i++] = r->dir;
    argv[i++] = "--unixsocket";
    argv[i++] = r->unix_path;
    argv[i++] = "--unixsocketperm";
    argv[i++] = "700";
    if (r->password != NULL) {
        argv[i++] = "--requirepass";
        argv[i++] = (char *)r->password;
    }
    argv[i] = NULL;
    r->pid = spawn(argv, -1, log);
    if (r->pid < 0)
        return -1;
    for (double end = test_now() + 10; test_now() < end;) {
        if (answers_ping(r))
            return 0;
        if (waitpid(r->pid, NULL, WNOHANG) == r->pid) { /* the port was taken meanwhile */
            forget_child(r->pid);
            r->pid = 0;
            return -1;
        }
        sleep_ms(20);
    }
    stop_pid(r->pid);
    forget_child(r->pid);
    r->pid = 0;
    return -1;
}

int test_redis_start(test_redis *r, const char *password)
{
    int fixed = r->port > 0;

    r->password = password;
    if (r->dir[0] == '\0') {
        snprintf(r->dir, sizeof(r->dir), "%s/redis-XXXXXX", test_tmpdir());
        if (mkdtemp(r->dir) == NULL) {
            fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
            return -1;
        }
        snprintf(r->unix_path, sizeof(r->unix_path), "%s/redis.sock", r->dir);
    }
    for (int attempt = 0; attempt < (fixed ? 20 : 5); attempt++) {
        if (!fixed)
            r->port = free_port();
        if (r->port > 0 && start_once(r) == 0) {
            snprintf(r->url, sizeof(r->url), "redis://127.0.0.1:%d/0", r->port);
            return 0;
        }
        if (fixed) /* the old server's port may linger a moment */
            sleep_ms(100);
    }
    fprintf(stderr, "could not start %s (see %s/redis.log)\n", getenv("REDIS_SERVER"), r->dir);
    return -1;
}

void test_redis_stop(test_redis *r)
{
    if (r->pid > 0) {
        stop_pid(r->pid);
        forget_child(r->pid);
        r->pid = 0;
    }
}

int test_redis_restart(test_redis *r)
{
    test_redis_stop(r);
    return test_redis_start(r, r->password);
}

/* ---- workers ------------------------------------------------------------------ */

int test_worker_start(test_worker *w, const char *const *args, double timeout)
{
    static int seq;
    const char *prog = getenv("DEXEC_WORKER");
    char *argv[48];
    int p[2], i = 0, st;
    double end = test_now() + timeout;
    size_t got = 0;

    memset(w, 0, sizeof(*w));
    if (prog == NULL || *prog == '\0') {
        fprintf(stderr, "DEXEC_WORKER is not set\n");
        return -1;
    }
    argv[i++] = (char *)prog;
    for (; args[i - 1] != NULL && i < 44; i++)
        argv[i] = (char *)args[i - 1];
    argv[i++] = "--print-address";
    argv[i] = NULL;
    snprintf(w->errfile, sizeof(w->errfile), "%s/worker-%d-%d.err", test_tmpdir(), (int)getpid(),
             seq++);
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    w->pid = spawn(argv, p[1], w->errfile);
    close(p[1]);
    if (w->pid < 0) {
        close(p[0]);
        return -1;
    }
    while (test_now() < end && got < sizeof(w->address) - 1) {
        fd_set rs;
        struct timeval tv = {.tv_sec = 0, .tv_usec = 50000};
        ssize_t n;

        FD_ZERO(&rs);
        FD_SET(p[0], &rs);
        if (select(p[0] + 1, &rs, NULL, NULL, &tv) <= 0)
            continue;
        n = read(p[0], w->address + got, sizeof(w->address) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        w->address[got] = '\0';
        if (strchr(w->address, '\n') != NULL)
            break;
    }
    close(p[0]);
    if (strchr(w->address, '\n') != NULL) {
        w->address[strcspn(w->address, "\n")] = '\0';
        return 0;
    }
    st = test_worker_wait(w, end - test_now() > 0 ? end - test_now() : 0.1);
    if (st >= 0)
        return WIFEXITED(st) ? (WEXITSTATUS(st) > 0 ? WEXITSTATUS(st) : 255) : 255;
    fprintf(stderr, "worker did not print its address within %.1f s\n", timeout);
    test_worker_stop(w);
    return -1;
}

int test_worker_wait(test_worker *w, double timeout)
{
    double end = test_now() + timeout;
    int st;

    if (w->pid <= 0)
        return -1;
    do {
        pid_t r = waitpid(w->pid, &st, WNOHANG);

        if (r == w->pid) {
            forget_child(w->pid);
            w->pid = 0;
            return st;
        }
        sleep_ms(10);
    } while (test_now() < end);
    return -1;
}

void test_worker_stop(test_worker *w)
{
    if (w->pid > 0) {
        stop_pid(w->pid);
        forget_child(w->pid);
        w->pid = 0;
    }
}

int test_worker_alive(const test_worker *w)
{
    return w->pid > 0 && waitpid(w->pid, NULL, WNOHANG) == 0;
}

const char *test_worker_stderr(const test_worker *w)
{
    static char buf[8192];
    FILE *f = fopen(w->errfile, "r");
    size_t n = 0;

    buf[0] = '\0';
    if (f != NULL) {
        n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
    }
    return buf;
}
