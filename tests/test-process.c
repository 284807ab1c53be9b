/*
 * test-process.c - libdexec's process services (<dexec/process.h>): the
 * API on its own (spawn errors, exit descriptions, the ladder, parent
 * death across threads), and executors that own workers through it: the
 * example third-party plugin (contrib/example-plugin/roundrobin.c, built
 * here against the public headers only) and mp.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dexec/dexec.h>
#include <dexec/process.h>
#include <dexec/rpc.h>

/* AddressSanitizer reserves terabytes of address space: a worker built
 * with it cannot start under RLIMIT_AS */
#if defined(__SANITIZE_ADDRESS__)
#define MEMORY_LIMIT_TESTABLE 0
#else
#define MEMORY_LIMIT_TESTABLE 1
#endif
#define MEMORY_LIMIT 4294967296LL

/* ---- helpers ------------------------------------------------------------------- */

static void proc_status(pid_t pid, const char *key, char *out, size_t len)
{
    char path[64], line[512];
    FILE *f;

    out[0] = '\0';
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "re");
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, key, strlen(key)) == 0 && line[strlen(key)] == ':') {
            snprintf(out, len, "%s",
                     line + strlen(key) + 1 + strspn(line + strlen(key) + 1, " \t"));
            out[strcspn(out, "\n")] = '\0';
            break;
        }
    }
    fclose(f);
}

/* Gone: no such process, or a zombie nobody reaped yet. */
static int process_gone(pid_t pid)
{
    char state[64];

    proc_status(pid, "State", state, sizeof(state));
    return state[0] == '\0' || state[0] == 'Z' || state[0] == 'X';
}

static int wait_gone(pid_t pid, double timeout)
{
    double deadline = dexec_now() + timeout;

    while (!process_gone(pid)) {
        if (dexec_now() > deadline)
            return 0;
        usleep(10000);
    }
    return 1;
}

/* The value of NAME in /proc/PID/environ, or "" (NULL when unset). */
static const char *proc_env(pid_t pid, const char *name, char *out, size_t len)
{
    char path[64], buf[65536];
    size_t n, nl = strlen(name);
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
    f = fopen(path, "re");
    if (f == NULL)
        return NULL;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (size_t off = 0; off < n; off += strlen(buf + off) + 1) {
        if (strncmp(buf + off, name, nl) == 0 && buf[off + nl] == '=') {
            snprintf(out, len, "%s", buf + off + nl + 1);
            return out;
        }
    }
    return NULL;
}

/* 1 when pid runs under RLIMIT_AS = bytes, or in a cgroup whose
 * memory.max = bytes. */
static int memory_limited(pid_t pid, long long bytes)
{
    char path[600], line[512], cg[512] = "", want[32];
    int limited = 0;
    FILE *f;

    snprintf(want, sizeof(want), "%lld", bytes);
    snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
    f = fopen(path, "re");
    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "Max address space", 17) == 0)
            limited |= strstr(line, want) != NULL;
    fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
    f = fopen(path, "re");
    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "0::", 3) == 0 && strstr(line, "dexec-child-") != NULL)
            snprintf(cg, sizeof(cg), "%s", line + 3);
    fclose(f);
    if (cg[0] != '\0') {
        char val[64] = "";

        cg[strcspn(cg, "\n")] = '\0';
        snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.max", cg);
        f = fopen(path, "re");
        if (f != NULL) {
            limited |= fgets(val, sizeof(val), f) != NULL && strtoll(val, NULL, 10) == bytes;
            fclose(f);
        }
    }
    return limited;
}

static char *example_plugin(void)
{
    static char path[1024];
    const char *b = getenv("DEXEC_TEST_BUILDDIR");

    snprintf(path, sizeof(path), "%s/plugins/.libs/dexec_roundrobin.so", b != NULL ? b : ".");
    return path;
}

/* An engine on backend (a name or a path), num_gpus ranks, CPU device,
 * shutdown_grace grace (<= 0: the default). NULL with err on failure. */
static dexec_engine *open_engine(const char *backend, int ranks, double grace, char *err,
                                 size_t errlen)
{
    dexec_config *cfg = NULL;
    dexec_engine *e = NULL;
    char n[32];

    ck_assert_int_eq(dexec_config_load(NULL, &cfg, err, errlen), DEXEC_OK);
    snprintf(n, sizeof(n), "%d", ranks);
    ck_assert_int_eq(dexec_config_set(cfg, "num_gpus", n, err, errlen), DEXEC_OK);
    ck_assert_int_eq(dexec_config_set(cfg, "device", "cpu", err, errlen), DEXEC_OK);
    ck_assert_int_eq(dexec_config_set(cfg, "distributed_executor_backend", backend, err, errlen),
                     DEXEC_OK);
    if (grace > 0) {
        snprintf(n, sizeof(n), "%g", grace);
        ck_assert_int_eq(dexec_config_set(cfg, "timeouts.shutdown_grace", n, err, errlen),
                         DEXEC_OK);
    }
    if (dexec_engine_create(cfg, &e, err, errlen) != DEXEC_OK)
        e = NULL;
    dexec_config_free(cfg);
    return e;
}

static pid_t worker_pid(dexec_engine *e, int rank)
{
    dexec_value *info = NULL;
    pid_t pid;

    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_info", 0, NULL, NULL, rank, &info),
                     DEXEC_OK);
    pid = (pid_t)dexec_value_as_int(dexec_value_map_get(info, "pid"), -1);
    dexec_value_free(info);
    ck_assert_int_gt(pid, 0);
    return pid;
}

static void generate_one(dexec_engine *e)
{
    dexec_request r;
    dexec_output *outs = NULL;

    dexec_request_init(&r);
    r.request_id = "p0";
    r.prompt = "sneaker";
    r.seed = 1;
    r.num_inference_steps = 2;
    ck_assert_int_eq(dexec_engine_step(e, &r, 1, &outs, NULL, NULL), DEXEC_OK);
    ck_assert_msg(outs[0].error == NULL, "generate failed: %s", outs[0].error);
    ck_assert_int_ge((int)outs[0].num_images, 1);
    dexec_outputs_free(outs, 1);
}

/* ---- the API -------------------------------------------------------------------- */

START_TEST(test_spawn_missing_program)
{
    char *argv[] = {"/nonexistent/dexec-worker", NULL};
    dexec_spawn_args a = {.struct_size = sizeof(a), .argv = argv, .component = "test"};
    dexec_process *p = (dexec_process *)&a;
    char err[512];

    ck_assert_int_eq(dexec_process_spawn(&a, &p, err, sizeof(err)), DEXEC_EINIT);
    ck_assert_ptr_null(p);
    ck_assert_str_eq(err, "test: cannot run /nonexistent/dexec-worker: No such file or directory "
                          "(set DEXEC_WORKER to the dexec-worker program to use)");
    argv[0] = "/nonexistent/tool";
    ck_assert_int_eq(dexec_process_spawn(&a, &p, err, sizeof(err)), DEXEC_EINIT);
    ck_assert_str_eq(err, "test: cannot run /nonexistent/tool: No such file or directory");
}
END_TEST

START_TEST(test_spawn_bad_arguments)
{
    char *argv[] = {"", "1", NULL};
    dexec_spawn_args a = {.struct_size = sizeof(a), .argv = argv};
    dexec_process *p = NULL;
    char err[512], want[512];

    ck_assert_int_eq(dexec_process_spawn(&a, &p, err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_str_eq(err, "dexec_process_spawn: argv[0], the program to run, is missing");
    argv[0] = "/bin/sleep";
    a.cpus = "3-1";
    ck_assert_int_eq(dexec_process_spawn(&a, &p, err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_str_eq(err, "process: bad CPU list '3-1' (expected e.g. 0-3,8, CPUs below 1024)");
    a.struct_size = 0;
    ck_assert_int_eq(dexec_process_spawn(&a, &p, err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_ptr_null(p);
    snprintf(want, sizeof(want),
             "dexec_process_spawn: struct_size of the arguments is 0, expected %zu (set it to "
             "sizeof(dexec_spawn_args))",
             sizeof(dexec_spawn_args));
    ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(test_describe_exit)
{
    char buf[128];

    dexec_describe_exit(3 << 8, buf, sizeof(buf));
    ck_assert_str_eq(buf, "exited with status 3");
    dexec_describe_exit(SIGKILL, buf, sizeof(buf));
    ck_assert_str_eq(buf, "killed by signal 9 (Killed)");
    dexec_describe_exit(-1, buf, sizeof(buf));
    ck_assert_str_eq(buf, "exited (status unknown)");
}
END_TEST

START_TEST(test_cpus_pick)
{
    char out[256], err[256];
    int n = dexec_cpus_allowed();

    ck_assert_int_ge(n, 1);
    ck_assert_int_eq(dexec_cpus_pick(1, NULL, out, sizeof(out), err, sizeof(err)), DEXEC_OK);
    ck_assert_msg(out[0] >= '0' && out[0] <= '9' && strchr(out, ',') == NULL, "picked '%s'", out);
    ck_assert_int_eq(dexec_cpus_pick(n + 1, NULL, out, sizeof(out), err, sizeof(err)),
                     DEXEC_EINVAL);
    snprintf(out, sizeof(out), "%d CPUs asked but only %d are available", n + 1, n);
    ck_assert_str_eq(err, out);
    ck_assert_int_eq(dexec_cpus_pick(1, "x", out, sizeof(out), err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_str_eq(err, "bad CPU list 'x' (expected e.g. 0-3,8)");
}
END_TEST

START_TEST(test_resources_labels)
{
    char err[256], buf[128], missing[64];
    dexec_value *want = dexec_resources_parse("gpu_worker,ssd=2", err, sizeof(err));
    dexec_value *have = dexec_resources_parse("gpu_worker=1,ssd=1", err, sizeof(err));

    ck_assert_ptr_nonnull(want);
    ck_assert_ptr_nonnull(have);
    dexec_resources_format(want, buf, sizeof(buf));
    ck_assert_str_eq(buf, "gpu_worker,ssd=2");
    ck_assert_int_eq(dexec_resources_fit(want, have, missing, sizeof(missing)), 0);
    ck_assert_str_eq(missing, "ssd");
    dexec_value_free(want);
    dexec_value_free(have);
    ck_assert_ptr_null(dexec_resources_parse("ssd=-1", err, sizeof(err)));
    ck_assert_str_eq(err, "bad amount of resource ssd: '-1' (a number >= 0)");
}
END_TEST

/* Polls /proc/PID/status until the process ignores sig (its SigIgn mask):
 * 1, or 0 after timeout seconds. */
static int wait_ignores(pid_t pid, int sig, double timeout)
{
    double end = dexec_now() + timeout;
    char path[64], line[256];

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    while (dexec_now() < end) {
        FILE *f = fopen(path, "re");
        unsigned long long mask = 0;

        while (f != NULL && fgets(line, sizeof(line), f) != NULL)
            if (strncmp(line, "SigIgn:", 7) == 0)
                mask = strtoull(line + 7, NULL, 16);
        if (f != NULL)
            fclose(f);
        if (mask & (1ull << (sig - 1)))
            return 1;
        usleep(10000);
    }
    return 0;
}

/* A child that ignores SIGTERM and has no connection: SIGTERM, grace,
 * SIGKILL, reaped; the ladder takes about one grace, not a constant. */
START_TEST(test_ladder_without_connection)
{
    char *argv[] = {"/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done", NULL};
    dexec_spawn_args a = {.struct_size = sizeof(a), .argv = argv, .label = "stubborn"};
    dexec_process *p = NULL;
    char err[512], how[128];
    double t0;

    ck_assert_int_eq(dexec_process_spawn(&a, &p, err, sizeof(err)), DEXEC_OK);
    ck_assert_msg(wait_ignores(dexec_process_pid(p), SIGTERM, 10.0),
                  "the shell did not install its trap");
    ck_assert_int_eq(dexec_process_reap(p, 0), 0);
    t0 = dexec_now();
    dexec_process_stop(p, NULL, 0.3);
    ck_assert_msg(dexec_now() - t0 < 1.0, "the ladder took %.2f s with a 0.3 s grace",
                  dexec_now() - t0);
    ck_assert_int_eq(dexec_process_reap(p, 0), 1);
    dexec_describe_exit(dexec_process_status(p), how, sizeof(how));
    ck_assert_str_eq(how, "killed by signal 9 (Killed)");
    ck_assert_int_eq(dexec_process_signal(p, SIGTERM), -1);
    ck_assert_int_eq(errno, ESRCH);
    dexec_process_free(p);
}
END_TEST

static void *spawn_on_thread(void *arg)
{
    char *argv[] = {"/bin/sleep", "30", NULL};
    dexec_spawn_args a = {.struct_size = sizeof(a), .argv = argv};
    char err[256];

    ck_assert_int_eq(dexec_process_spawn(&a, (dexec_process **)arg, err, sizeof(err)), DEXEC_OK);
    return NULL;
}

/* PR_SET_PDEATHSIG follows the thread that forked: the child of a thread
 * that exits must live on. */
START_TEST(test_child_outlives_spawning_thread)
{
    dexec_process *p = NULL;
    pthread_t t;

    ck_assert_int_eq(pthread_create(&t, NULL, spawn_on_thread, &p), 0);
    pthread_join(t, NULL);
    ck_assert_ptr_nonnull(p);
    usleep(300000);
    ck_assert_msg(!process_gone(dexec_process_pid(p)),
                  "child %d died with the thread that spawned it", dexec_process_pid(p));
    ck_assert_int_eq(dexec_process_reap(p, 0), 0);
    dexec_process_free(p);
}
END_TEST

/* ---- the example plugin (a third-party executor) --------------------------------- */

START_TEST(test_example_plugin_limits)
{
    char err[2048], cpus[256], gpus[64], mem[32];
    dexec_engine *e;
    pid_t pid;

    setenv("ROUNDROBIN_SPAWN", "2", 1);
    setenv("ROUNDROBIN_CPUS", "1", 1);
    snprintf(mem, sizeof(mem), "%lld", MEMORY_LIMIT);
    if (MEMORY_LIMIT_TESTABLE)
        setenv("ROUNDROBIN_MEMORY", mem, 1);
    else
        printf("memory limit not checked: AddressSanitizer build\n");
    unsetenv("ROUNDROBIN_WORKERS");
    e = open_engine(example_plugin(), 2, 0, err, sizeof(err));
    ck_assert_msg(e != NULL, "engine on the example plugin: %s", err);
    for (int r = 0; r < 2; r++) {
        char want[16];

        pid = worker_pid(e, r);
        proc_status(pid, "Cpus_allowed_list", cpus, sizeof(cpus));
        ck_assert_msg(cpus[0] != '\0' && strspn(cpus, "0123456789") == strlen(cpus),
                      "rank %d may run on CPUs '%s', expected one", r, cpus);
        snprintf(want, sizeof(want), "%d", r);
        ck_assert_ptr_nonnull(proc_env(pid, "CUDA_VISIBLE_DEVICES", gpus, sizeof(gpus)));
        ck_assert_str_eq(gpus, want);
        if (MEMORY_LIMIT_TESTABLE)
            ck_assert_msg(memory_limited(pid, MEMORY_LIMIT),
                          "rank %d has neither RLIMIT_AS nor memory.max of %lld", r, MEMORY_LIMIT);
    }
    generate_one(e);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    ck_assert_msg(process_gone(pid), "worker %d still running after close", (int)pid);
    dexec_engine_free(e);
}
END_TEST

/* The engine runs in a forked child that is SIGKILLed: its workers must be
 * gone within 2 s. */
static void check_sigkill_leaves_no_worker(const char *backend)
{
    int p[2];
    pid_t child, pids[2] = {0, 0};
    double t0;

    ck_assert_int_eq(pipe(p), 0);
    child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        char err[2048];
        dexec_engine *e = open_engine(backend, 2, 0, err, sizeof(err));

        if (e == NULL) {
            fprintf(stderr, "engine: %s\n", err);
            _exit(1);
        }
        for (int r = 0; r < 2; r++) {
            pid_t w = worker_pid(e, r);

            if (write(p[1], &w, sizeof(w)) != sizeof(w))
                _exit(1);
        }
        pause();
        _exit(0);
    }
    close(p[1]);
    for (int r = 0; r < 2; r++) {
        if (read(p[0], &pids[r], sizeof(pids[r])) != (ssize_t)sizeof(pids[r])) {
            kill(child, SIGKILL);
            waitpid(child, NULL, 0);
            ck_abort_msg("the engine process did not report its workers");
        }
    }
    close(p[0]);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    t0 = dexec_now();
    while (dexec_now() - t0 < 2.0 && !(process_gone(pids[0]) && process_gone(pids[1])))
        usleep(20000);
    ck_assert_msg(process_gone(pids[0]) && process_gone(pids[1]),
                  "%s: workers %d, %d still running 2 s after their engine was killed", backend,
                  (int)pids[0], (int)pids[1]);
}

START_TEST(test_example_plugin_sigkill_leaves_no_worker)
{
    setenv("ROUNDROBIN_SPAWN", "2", 1);
    unsetenv("ROUNDROBIN_WORKERS");
    check_sigkill_leaves_no_worker(example_plugin());
}
END_TEST

/* With shutdown_grace = 0.2 and a stopped worker (no reply to shutdown,
 * SIGTERM stays pending), close runs the whole ladder: about 2 x 0.2 s,
 * not a constant of its own. */
static void check_ladder_honours_grace(const char *backend)
{
    char err[2048];
    dexec_engine *e = open_engine(backend, 2, 0.2, err, sizeof(err));
    pid_t pid;
    double t0, took;

    ck_assert_msg(e != NULL, "engine on %s: %s", backend, err);
    pid = worker_pid(e, 1);
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);
    t0 = dexec_now();
    dexec_engine_close(e);
    took = dexec_now() - t0;
    if (!process_gone(pid))
        kill(pid, SIGKILL);
    ck_assert_msg(took < 1.5, "%s: close took %.2f s with timeouts.shutdown_grace = 0.2", backend,
                  took);
    ck_assert_msg(took >= 0.3, "%s: close took %.2f s: the grace was not waited", backend, took);
    ck_assert_msg(wait_gone(pid, 1.0), "%s: stopped worker %d survived close", backend, (int)pid);
    dexec_engine_free(e);
}

START_TEST(test_example_plugin_ladder_honours_grace)
{
    setenv("ROUNDROBIN_SPAWN", "2", 1);
    unsetenv("ROUNDROBIN_WORKERS");
    check_ladder_honours_grace(example_plugin());
}
END_TEST

START_TEST(test_mp_ladder_honours_grace)
{
    check_ladder_honours_grace("mp");
}
END_TEST

/* ---- engines created on a thread that exits ------------------------------------- */

typedef struct thread_engine {
    const char *backend;
    dexec_engine *e;
    char err[2048];
} thread_engine;

static void *create_on_thread(void *arg)
{
    thread_engine *t = arg;

    t->e = open_engine(t->backend, 2, 0, t->err, sizeof(t->err));
    return NULL;
}

static void check_engine_outlives_creating_thread(const char *backend)
{
    thread_engine t = {.backend = backend};
    pthread_t th;
    pid_t pids[2];

    ck_assert_int_eq(pthread_create(&th, NULL, create_on_thread, &t), 0);
    pthread_join(th, NULL);
    ck_assert_msg(t.e != NULL, "engine on %s: %s", backend, t.err);
    usleep(300000); /* a parent-death signal would have arrived by now */
    for (int r = 0; r < 2; r++) {
        pids[r] = worker_pid(t.e, r);
        ck_assert_msg(!process_gone(pids[r]), "%s: rank %d died with the creating thread", backend,
                      r);
    }
    ck_assert_int_eq(dexec_engine_check_health(t.e), DEXEC_OK);
    generate_one(t.e);
    ck_assert_int_eq(dexec_engine_close(t.e), DEXEC_OK);
    dexec_engine_free(t.e);
    for (int r = 0; r < 2; r++)
        ck_assert(process_gone(pids[r]));
}

START_TEST(test_mp_engine_outlives_creating_thread)
{
    check_engine_outlives_creating_thread("mp");
}
END_TEST

START_TEST(test_example_plugin_outlives_creating_thread)
{
    setenv("ROUNDROBIN_SPAWN", "2", 1);
    unsetenv("ROUNDROBIN_WORKERS");
    check_engine_outlives_creating_thread(example_plugin());
}
END_TEST

static Suite *process_suite(void)
{
    Suite *s = suite_create("process");
    TCase *tc = tcase_create("api");

    tcase_add_test(tc, test_spawn_missing_program);
    tcase_add_test(tc, test_spawn_bad_arguments);
    tcase_add_test(tc, test_describe_exit);
    tcase_add_test(tc, test_cpus_pick);
    tcase_add_test(tc, test_resources_labels);
    tcase_add_test(tc, test_ladder_without_connection);
    tcase_add_test(tc, test_child_outlives_spawning_thread);
    suite_add_tcase(s, tc);
    tc = tcase_create("executors");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_example_plugin_limits);
    tcase_add_test(tc, test_example_plugin_sigkill_leaves_no_worker);
    tcase_add_test(tc, test_example_plugin_ladder_honours_grace);
    tcase_add_test(tc, test_mp_ladder_honours_grace);
    tcase_add_test(tc, test_mp_engine_outlives_creating_thread);
    tcase_add_test(tc, test_example_plugin_outlives_creating_thread);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(process_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
