/*
 * redis_helper.h - processes the discovery and external suites need: a
 * real redis-server on a free loopback port in a temporary directory, and
 * dexec-worker processes. Every process started here dies with the test
 * process (parent-death signal, and an exit handler that stops it), so a
 * failing test leaves nothing running.
 */
#ifndef DEXEC_TEST_REDIS_HELPER_H
#define DEXEC_TEST_REDIS_HELPER_H

#include <stddef.h>
#include <sys/types.h>

typedef struct test_redis {
    pid_t pid;
    int port;
    char dir[400];       /* temporary directory (log, unix socket) */
    char url[128];       /* redis://127.0.0.1:PORT/0 */
    char unix_path[420]; /* DIR/redis.sock */
    const char *password; /* requirepass, or NULL */
} test_redis;

/* NULL when $REDIS_SERVER names a redis-server, else why the suite skips. */
const char *test_redis_skip_reason(void);

/* Starts redis-server (no persistence) on a free loopback port, or on
 * r->port when it is set (a restart), with requirepass when password is
 * not NULL; waits until it answers PING. 0, or -1 with a message on
 * stderr. */
int test_redis_start(test_redis *r, const char *password);
/* SIGTERM, then SIGKILL after 5 s; reaps; removes the directory. */
void test_redis_stop(test_redis *r);
/* Stops and starts again on the same port: an empty server. */
int test_redis_restart(test_redis *r);
/* Runs one command (space-separated words) over a raw connection; the
 * first line of the reply goes to reply. 0, or -1. */
int test_redis_cmd(const test_redis *r, const char *words, char *reply, size_t len);

typedef struct test_worker {
    pid_t pid;
    char address[512];  /* printed by --print-address */
    char errfile[300];  /* its stderr */
} test_worker;

/* Runs $DEXEC_WORKER with args (NULL-terminated, without the program
 * name) plus --print-address and waits up to timeout seconds for the
 * address. Returns 0; or the worker's exit status (> 0) when it exits
 * first (its stderr is in errfile); or -1 on a timeout or error. */
int test_worker_start(test_worker *w, const char *const *args, double timeout);
/* Waits up to timeout seconds for the worker to exit: its wait status,
 * or -1 when it is still running. */
int test_worker_wait(test_worker *w, double timeout);
/* SIGTERM, 5 s, SIGKILL, reap. */
void test_worker_stop(test_worker *w);
/* Nonzero while the worker runs. */
int test_worker_alive(const test_worker *w);
/* The worker's stderr so far (static buffer). */
const char *test_worker_stderr(const test_worker *w);

/* A directory only the test can enter, for unix sockets and token files;
 * removed with its files at exit. */
const char *test_tmpdir(void);

/* How far past a deadline a timed-out call may return on a loaded 2-core
 * machine (scheduling, a context switch or two): tests check deadline +
 * this. The tight figures are in bench/ and doc/performance.md. */
#define TEST_DEADLINE_MARGIN 0.5
/* How long a dexec-worker may take to exec and load the small test model
 * on such a machine, on top of any deadline it then waits for. */
#define TEST_START_MARGIN 5.0

/* Seconds of CLOCK_MONOTONIC. */
double test_now(void);

#endif
