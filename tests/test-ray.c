/*
 * test-ray.c - the ray_actor executor with real processes: one actor per
 * engine hosting every rank, its resources observed on the live process,
 * its death and the engine's death, and placement on node agents
 * registered in a real redis-server.
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dexec/dexec.h>
#include <dexec/rpc.h>

#include "redis_helper.h"

#define STEPS 2

static char model_path[1024];

static void setup(void)
{
    const char *src = getenv("DEXEC_TEST_SRCDIR");

    snprintf(model_path, sizeof(model_path), "%s/golden/golden-model.safetensors",
             src != NULL ? src : ".");
    unsetenv("DEXEC_NODE_RESOURCES");
}

/* An engine from configuration text on top of a CPU ray_actor setup.
 * Returns the status; *e is set on success, err has the message. */
static dexec_status try_engine(int ranks, const char *extra, dexec_engine **e, char *err,
                               size_t errlen)
{
    char text[4096];
    dexec_config *cfg = NULL;
    dexec_status st;

    /* extra may name its own model and device */
    snprintf(text, sizeof(text),
             "%s%s%s%snum_gpus = %d;\n"
             "distributed_executor_backend = \"ray_actor\";\n"
             "%s\n%s\n",
             extra != NULL && strstr(extra, "model =") ? "" : "model = \"",
             extra != NULL && strstr(extra, "model =") ? "" : model_path,
             extra != NULL && strstr(extra, "model =") ? "" : "\";\n",
             extra != NULL && strstr(extra, "device =") ? "" : "device = \"cpu\";\n", ranks,
             extra != NULL && strstr(extra, "timeouts =")
                 ? ""
                 : "timeouts = { init = 30.0; shutdown_grace = 2.0; };",
             extra != NULL ? extra : "");
    st = dexec_config_parse(text, "test", &cfg, err, errlen);
    ck_assert_msg(st == DEXEC_OK, "config: %s", err);
    *e = NULL;
    st = dexec_engine_create(cfg, e, err, errlen);
    dexec_config_free(cfg);
    return st;
}

static dexec_engine *open_engine(int ranks, const char *extra)
{
    dexec_engine *e;
    char err[2048];

    if (try_engine(ranks, extra, &e, err, sizeof(err)) != DEXEC_OK)
        ck_abort_msg("engine create failed: %s", err);
    return e;
}

static pid_t actor_pid(dexec_engine *e, int rank)
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


/* The value of NAME in /proc/PID/environ into out ("" when unset). */
static void proc_env(pid_t pid, const char *name, char *out, size_t len)
{
    char path[64], buf[65536];
    size_t n, nl = strlen(name);
    FILE *f;

    out[0] = '\0';
    snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
    f = fopen(path, "re");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
        if (strncmp(buf + i, name, nl) == 0 && buf[i + nl] == '=') {
            snprintf(out, len, "%s", buf + i + nl + 1);
            return;
        }
}

/* A line "Key:\tvalue" of /proc/PID/status, or "" when absent. */
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
            snprintf(out, len, "%s", line + strlen(key) + 1 + strspn(line + strlen(key) + 1,
                                                                      " \t"));
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

    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 1;
    proc_status(pid, "State", state, sizeof(state));
    return state[0] == '\0' || state[0] == 'Z' || state[0] == 'X';
}

static int wait_gone(pid_t pid, double timeout)
{
    double deadline = test_now() + timeout;

    while (!process_gone(pid)) {
        if (test_now() > deadline)
            return 0;
        waitpid(pid, NULL, WNOHANG); /* ours when we are its subreaper */
        usleep(10000);
    }
    return 1;
}

/* Live children of this process (Check runs each test in a fork of its own). */
static int count_children(void)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    int n = 0;
    char ppid[32], want[32];

    snprintf(want, sizeof(want), "%d", (int)getpid());
    ck_assert_ptr_nonnull(d);
    while ((de = readdir(d)) != NULL) {
        pid_t pid = (pid_t)atoi(de->d_name);

        if (pid <= 0 || process_gone(pid))
            continue;
        proc_status(pid, "PPid", ppid, sizeof(ppid));
        n += strcmp(ppid, want) == 0;
    }
    closedir(d);
    return n;
}

static void make_requests(dexec_request *r, size_t n, char ids[][16])
{
    for (size_t i = 0; i < n; i++) {
        dexec_request_init(&r[i]);
        snprintf(ids[i], 16, "r%zu", i);
        r[i].request_id = ids[i];
        r[i].prompt = i % 2 ? "bag" : "sneaker";
        r[i].seed = 7 + (int64_t)i;
        r[i].num_inference_steps = STEPS;
    }
}

static void generate_and_check(dexec_engine *e, int ranks)
{
    enum { N = 4 };
    dexec_request reqs[N];
    char ids[N][16];
    dexec_output *outs = NULL;

    make_requests(reqs, N, ids);
    ck_assert_int_eq(dexec_engine_step(e, reqs, N, &outs, NULL, NULL), DEXEC_OK);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(outs[i].status == DEXEC_OK, "request %d: %s", i,
                      outs[i].error != NULL ? outs[i].error : "");
        ck_assert_str_eq(outs[i].request_id, ids[i]);
        /* request i < ranks on rank i (the engine gives each free rank the
         * next request); the rest on whichever rank was free first */
        if (i < ranks)
            ck_assert_int_eq(outs[i].rank, i);
        ck_assert_int_ge(outs[i].rank, 0);
        ck_assert_int_lt(outs[i].rank, ranks);
        ck_assert_uint_eq(outs[i].num_images, 1);
        ck_assert_int_eq(outs[i].steps, STEPS);
        ck_assert_int_eq(outs[i].seed, 7 + i);
    }
    dexec_outputs_free(outs, N);
}

/* ---- local mode ---------------------------------------------------------------------- */

START_TEST(test_local_generate_one_rank)
{
    dexec_engine *e = open_engine(1, NULL);

    ck_assert_int_eq(dexec_engine_num_ranks(e), 1);
    generate_and_check(e, 1);
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_OK);
    dexec_engine_free(e);
}
END_TEST

START_TEST(test_local_generate_two_ranks_one_actor)
{
    dexec_engine *e = open_engine(2, NULL);
    dexec_value *r = NULL;
    pid_t pid;

    generate_and_check(e, 2);
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, -1, &r),
                     DEXEC_OK);
    ck_assert_int_eq(r->u.arr.len, 2);
    ck_assert_int_eq(dexec_value_as_int(r->u.arr.items[0], -1), 0);
    ck_assert_int_eq(dexec_value_as_int(r->u.arr.items[1], -1), 1);
    dexec_value_free(r);
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, 1, &r), DEXEC_OK);
    ck_assert_int_eq(dexec_value_as_int(r, -1), 1);
    dexec_value_free(r);
    /* one process hosts both ranks, and it is the engine's only child */
    pid = actor_pid(e, 0);
    ck_assert_int_eq(actor_pid(e, 1), pid);
    ck_assert_int_eq(count_children(), 1);
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    ck_assert_msg(process_gone(pid), "actor %d still running after close", (int)pid);
    ck_assert_int_eq(count_children(), 0);
    dexec_engine_free(e);
}
END_TEST

/* AddressSanitizer reserves terabytes of address space: an actor built
 * with it cannot start under RLIMIT_AS */
#if defined(__SANITIZE_ADDRESS__)
#define MEMORY_LIMIT_TESTABLE 0
#else
#define MEMORY_LIMIT_TESTABLE 1
#endif

START_TEST(test_local_resources_on_live_actor)
{
    dexec_engine *e = open_engine(2, MEMORY_LIMIT_TESTABLE
                                         ? "ray_actor = { cpus = 1; memory = 4294967296L; };"
                                         : "ray_actor = { cpus = 1; };");
    pid_t pid = actor_pid(e, 0);
    char cpus[64], path[300], line[512], cg[512] = "";
    int limited = 0;
    FILE *f;

    /* affinity: exactly one CPU */
    proc_status(pid, "Cpus_allowed_list", cpus, sizeof(cpus));
    ck_assert_msg(strspn(cpus, "0123456789") == strlen(cpus) && cpus[0] != '\0',
                  "actor may run on CPUs %s, expected one", cpus);
    if (!MEMORY_LIMIT_TESTABLE) {
        printf("memory limit not checked: AddressSanitizer build\n");
        dexec_engine_free(e);
        return;
    }
    /* memory: RLIMIT_AS, or memory.max of its own cgroup v2 */
    snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
    f = fopen(path, "re");
    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "Max address space", 17) == 0)
            limited |= strstr(line, "4294967296") != NULL;
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
            limited |= fgets(val, sizeof(val), f) != NULL && strtoll(val, NULL, 10) == 4294967296LL;
            fclose(f);
        }
    }
    ck_assert_msg(limited, "actor %d has neither RLIMIT_AS nor memory.max of 4 GiB", (int)pid);
    generate_and_check(e, 2);
    dexec_engine_free(e);
}
END_TEST

START_TEST(test_local_too_many_cpus)
{
    dexec_engine *e;
    char err[1024], extra[128], want[128];
    cpu_set_t set;
    int n;

    sched_getaffinity(0, sizeof(set), &set);
    n = CPU_COUNT(&set);
    snprintf(extra, sizeof(extra), "ray_actor = { cpus = %d; };", n + 6);
    snprintf(want, sizeof(want), "ray_actor.cpus = %d but only %d CPUs are available", n + 6, n);
    ck_assert_int_eq(try_engine(1, extra, &e, err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_ptr_null(e);
    ck_assert_msg(strstr(err, want) != NULL, "got: %s", err);
    ck_assert_int_eq(count_children(), 0);
}
END_TEST

/* ray.init(num_cpus=...): an actor asking for more than declared is
 * refused at create, naming both numbers, and nothing is left running */
START_TEST(test_local_more_cpus_than_ray_init_declares)
{
    dexec_engine *e;
    char err[1024];

    ck_assert_int_eq(try_engine(1, "ray_actor = { cpus = 2; };\nray_init = { num_cpus = 1; };",
                                &e, err, sizeof(err)),
                     DEXEC_EINVAL);
    ck_assert_ptr_null(e);
    {
        /* the engine adds the plugin's file to a create error */
        const char *want = "ray_actor: ray_actor.cpus = 2 but ray_init.num_cpus = 1: the actor "
                           "asks for more CPUs than this host declares (lower ray_actor.cpus or "
                           "raise ray_init.num_cpus) (plugin ";
        const char *tail = "/dexec_ray_actor.so)";

        ck_assert_msg(strncmp(err, want, strlen(want)) == 0 && strlen(err) > strlen(tail) &&
                          strcmp(err + strlen(err) - strlen(tail), tail) == 0,
                      "%s", err);
    }
    ck_assert_int_eq(count_children(), 0);
    ck_assert_int_eq(try_engine(1, "ray_actor = { gpus = 1; };\nray_init = { num_gpus = 0; };",
                                &e, err, sizeof(err)),
                     DEXEC_EINVAL);
    {
        const char *want = "ray_actor: ray_actor.gpus = 1 but ray_init.num_gpus = 0: the actor "
                           "asks for more GPUs than this host declares (lower ray_actor.gpus or "
                           "raise ray_init.num_gpus) (plugin ";

        ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);
    }
    /* within what is declared, it starts */
    e = open_engine(1, "ray_actor = { cpus = 1; gpus = 0; };\n"
                       "ray_init = { num_cpus = 1; num_gpus = 0; };");
    dexec_engine_free(e);
}
END_TEST

/* runtime_env.env_vars reach the actor's environment; the actor's own
 * CUDA_VISIBLE_DEVICES wins over the one asked for there */
START_TEST(test_local_runtime_env)
{
    dexec_engine *e = open_engine(2, "ray_actor = { gpus = 0; };\n"
                                     "runtime_env = { env_vars = { DEXEC_TEST_VAR = \"a b,c\"; "
                                     "CUDA_VISIBLE_DEVICES = \"7\"; }; };");
    pid_t pid = actor_pid(e, 0);
    char v[256];

    proc_env(pid, "DEXEC_TEST_VAR", v, sizeof(v));
    ck_assert_str_eq(v, "a b,c");
    proc_env(pid, "CUDA_VISIBLE_DEVICES", v, sizeof(v));
    ck_assert_str_eq(v, "");
    ck_assert_int_eq(actor_pid(e, 1), pid);
    dexec_engine_free(e);
}
END_TEST

START_TEST(test_local_too_few_gpus)
{
    char text[2048], err[1024];
    dexec_config *cfg;
    dexec_engine *e = NULL;

    snprintf(text, sizeof(text),
             "model = \"%s\"; device = \"cuda\"; num_gpus = 2;\n"
             "distributed_executor_backend = \"ray_actor\"; ray_actor = { gpus = 1; };\n",
             model_path);
    ck_assert_int_eq(dexec_config_parse(text, "test", &cfg, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_create(cfg, &e, err, sizeof(err)), DEXEC_EINVAL);
    dexec_config_free(cfg);
    ck_assert_msg(strstr(err, "ray_actor.gpus = 1 but num_gpus = 2: each rank needs its own GPU") !=
                      NULL,
                  "got: %s", err);
}
END_TEST

START_TEST(test_local_labels_must_be_offered)
{
    dexec_engine *e;
    char err[1024];

    ck_assert_int_eq(try_engine(1, "ray_actor = { resources = { gpu_worker = 1; }; };", &e, err,
                                sizeof(err)),
                     DEXEC_ENOTFOUND);
    ck_assert_msg(strstr(err, "ray_actor.resources asks for {gpu_worker} but this host does not "
                              "offer gpu_worker") != NULL,
                  "got: %s", err);
    ck_assert_int_eq(count_children(), 0);
    setenv("DEXEC_NODE_RESOURCES", "gpu_worker=2,ssd", 1);
    e = open_engine(1, "ray_actor = { resources = { gpu_worker = 1; }; };");
    generate_and_check(e, 1);
    dexec_engine_free(e);
}
END_TEST

/* dtype = "float16" with device = "auto": the actor gets --dtype (a node
 * agent in spawn_actor) and opens the model that way. Without a GPU the
 * worker's own refusal comes back (not the engine's "does not pass dtype",
 * which an actor started without --dtype would cause); with one, every
 * rank reports float16. */
static void check_half_dtype(int ranks, const char *extra)
{
    char conf[1024], err[2048];
    dexec_engine *e = NULL;
    dexec_status st;

    snprintf(conf, sizeof(conf), "device = \"auto\"; dtype = \"float16\";\n%s",
             extra != NULL ? extra : "");
    st = try_engine(ranks, conf, &e, err, sizeof(err));
    if (st == DEXEC_OK) {
        dexec_value *args = dexec_value_array(), *r = NULL;

        ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_info", 0, args, NULL, -1, &r),
                         DEXEC_OK);
        for (int i = 0; i < ranks; i++)
            ck_assert_str_eq(dexec_value_as_str(dexec_value_map_get(
                                                    dexec_value_array_get(r, (size_t)i), "dtype"),
                                                ""),
                             "float16");
        dexec_value_free(r);
        dexec_value_free(args);
        dexec_engine_free(e);
        return;
    }
    ck_assert_msg(strstr(err, "dtype = \"float16\" is not supported on the CPU: the CPU backend "
                              "computes in float32") != NULL,
                  "got: %s", err);
    ck_assert_msg(strstr(err, "does not pass dtype") == NULL, "got: %s", err);
}

START_TEST(test_local_dtype_reaches_actor)
{
    check_half_dtype(2, NULL);
    ck_assert_int_eq(count_children(), 0);
}
END_TEST

START_TEST(test_local_init_error_leaves_nothing)
{
    dexec_engine *e;
    char err[2048];

    ck_assert_int_eq(try_engine(2, "model = \"/nonexistent/none.safetensors\";", &e, err,
                                sizeof(err)),
                     DEXEC_EINIT);
    ck_assert_msg(strstr(err, "failed to initialize: rank 0: ") != NULL &&
                      strstr(err, "/nonexistent/none.safetensors") != NULL,
                  "got: %s", err);
    ck_assert_int_eq(count_children(), 0);
}
END_TEST

START_TEST(test_local_error_reply_names_rank)
{
    dexec_engine *e = open_engine(2, "allow_admin_methods = true;");
    dexec_value *args = dexec_value_array(), *r = NULL;

    dexec_value_array_push(args, dexec_value_str("/nonexistent/other.safetensors"));
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "load_model", 0, args, NULL, -1, &r),
                     DEXEC_EWORKER);
    ck_assert_msg(strncmp(dexec_engine_last_error(e), "collective_rpc load_model: rank ", 32) == 0,
                  "got: %s", dexec_engine_last_error(e));
    dexec_value_free(args);
    dexec_engine_free(e);
}
END_TEST

START_TEST(test_local_rpc_timeout_names_method)
{
    dexec_engine *e = open_engine(1, "allow_admin_methods = true;");
    dexec_value *args = dexec_value_array(), *r = NULL;
    double t0 = test_now();

    dexec_value_array_push(args, dexec_value_float(5.0));
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "debug_sleep", 0.3, args, NULL, -1, &r),
                     DEXEC_ETIMEDOUT);
    ck_assert_double_lt(test_now() - t0, 0.3 + TEST_DEADLINE_MARGIN);
    ck_assert_msg(strstr(dexec_engine_last_error(e), "collective_rpc debug_sleep: no reply from "
                                                     "actor (pid ") != NULL,
                  "got: %s", dexec_engine_last_error(e));
    dexec_value_free(args);
    dexec_engine_free(e);
}
END_TEST

typedef struct sleeper {
    dexec_engine *e;
    dexec_status st;
    char msg[1024];
    double done_at;
} sleeper;

static void *sleep_call(void *arg)
{
    sleeper *s = arg;
    dexec_value *args = dexec_value_array(), *r = NULL;

    dexec_value_array_push(args, dexec_value_float(30.0));
    s->st = dexec_engine_collective_rpc(s->e, "debug_sleep", 60.0, args, NULL, -1, &r);
    s->done_at = test_now();
    snprintf(s->msg, sizeof(s->msg), "%s", dexec_engine_last_error(s->e));
    dexec_value_free(args);
    dexec_value_free(r);
    return NULL;
}

START_TEST(test_local_kill9_fails_calls_within_a_second)
{
    sleeper s = {.e = open_engine(2, "allow_admin_methods = true; max_restarts = 0;")};
    pid_t pid = actor_pid(s.e, 0);
    pthread_t t;
    double killed;
    char want[64];

    pthread_create(&t, NULL, sleep_call, &s);
    usleep(300000);
    killed = test_now();
    kill(pid, SIGKILL);
    pthread_join(t, NULL);
    ck_assert_int_eq(s.st, DEXEC_EWORKER);
    ck_assert_double_lt(s.done_at - killed, 1.0);
    snprintf(want, sizeof(want), "actor (pid %d): actor died: killed by signal 9", (int)pid);
    ck_assert_msg(strstr(s.msg, want) != NULL, "got: %s", s.msg);
    ck_assert_int_eq(dexec_engine_check_health(s.e), DEXEC_EUNHEALTHY);
    ck_assert_msg(strstr(dexec_engine_last_error(s.e), want) != NULL, "got: %s",
                  dexec_engine_last_error(s.e));
    dexec_engine_free(s.e);
    ck_assert_int_eq(count_children(), 0);
}
END_TEST

/* ---- recovery: the actor (all ranks) restarted, lost requests re-dealt ---- */

/* stderr (where dexec_log writes) goes to a file the test reads back. */
static char log_path[64];

static void capture_log(void)
{
    int fd;

    snprintf(log_path, sizeof(log_path), "/tmp/test-ray-log-XXXXXX");
    fd = mkstemp(log_path);
    ck_assert_int_ge(fd, 0);
    dup2(fd, 2);
    close(fd);
}

/* How many times needle is in the captured log. */
static int log_count(const char *needle)
{
    char buf[65536];
    FILE *f = fopen(log_path, "r");
    size_t n;
    int count = 0;

    if (f == NULL)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (const char *p = buf; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        count++;
    return count;
}

static int log_has(const char *needle)
{
    char buf[65536];
    FILE *f = fopen(log_path, "r");
    size_t n;

    if (f == NULL)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* Sends sig to victim when request on_req reports its first step, then
 * notes when the death line reached the log, from the others' progress. */
typedef struct killer {
    pid_t victim;
    size_t on_req;
    int sig;
    double killed_at, logged_at;
    const char *death_line;
    volatile int stop;
    pthread_t th;
} killer;

/* Notes when the death line reaches the log (the step may send no
 * progress meanwhile). */
static void *log_watch(void *arg)
{
    killer *k = arg;

    while (!k->stop && k->logged_at == 0) {
        if (k->killed_at > 0 && log_has(k->death_line))
            k->logged_at = test_now();
        usleep(10000);
    }
    return NULL;
}

static void watch_start(killer *k)
{
    pthread_create(&k->th, NULL, log_watch, k);
}

static void watch_stop(killer *k)
{
    k->stop = 1;
    pthread_join(k->th, NULL);
}

static void on_kill_progress(void *user, size_t req, int image, int step, int total)
{
    killer *k = user;

    (void)image;
    (void)total;
    if (k->killed_at == 0 && req == k->on_req && step >= 1) {
        kill(k->victim, k->sig);
        k->killed_at = test_now();
    }
}

#define RB 16 /* requests of the recovery tests (-b 16) */
#define PIXELS(im) ((size_t)(im)->width * (im)->height * (im)->channels)

static void recovery_requests(dexec_request *r, char ids[][16])
{
    make_requests(r, RB, ids);
    for (int i = 0; i < RB; i++)
        r[i].num_inference_steps = 12;
}

/* kill -9 (or SIGSTOP with a low timeouts.stall) of the actor mid-step:
 * every image of the step with the undisturbed pixels, the death logged
 * as it happens, a new actor (new pid) serving the next step. */
static void actor_recovers(int sig)
{
    dexec_engine *e;
    dexec_request reqs[RB];
    char ids[RB][16], line[160];
    dexec_output *ref = NULL, *outs = NULL;
    killer k = {.on_req = 1, .sig = sig};
    pid_t pid, pid2;

    capture_log();
    e = open_engine(2, "max_restarts = 1; max_task_retries = 1;\n"
                       "timeouts = { init = 30.0; shutdown_grace = 2.0; stall = 2.0; };");
    recovery_requests(reqs, ids);
    ck_assert_int_eq(dexec_engine_step(e, reqs, RB, &ref, NULL, NULL), DEXEC_OK);
    pid = actor_pid(e, 0);
    k.victim = pid;
    if (sig == SIGKILL)
        snprintf(line, sizeof(line), "actor (pid %d): actor died: killed by signal 9", (int)pid);
    else
        snprintf(line, sizeof(line), "actor (pid %d): nothing heard for ", (int)pid);
    k.death_line = line;
    watch_start(&k);
    ck_assert_int_eq(dexec_engine_step(e, reqs, RB, &outs, on_kill_progress, &k), DEXEC_OK);
    watch_stop(&k);
    ck_assert_msg(k.killed_at > 0, "the signal was never sent");
    ck_assert_msg(k.logged_at > 0, "the death was not logged while the step ran");
    ck_assert_msg(k.logged_at - k.killed_at < (sig == SIGKILL ? 1.0 : 10.0),
                  "death logged %.3f s after the signal", k.logged_at - k.killed_at);
    for (int i = 0; i < RB; i++) {
        ck_assert_msg(outs[i].status == DEXEC_OK, "request %d: %s", i, outs[i].error);
        ck_assert_str_eq(outs[i].request_id, ids[i]);
        ck_assert_msg(memcmp(outs[i].images[0].pixels, ref[i].images[0].pixels, PIXELS(&ref[i].images[0])) == 0,
                      "request %d (rank %d): other pixels than the undisturbed run", i,
                      outs[i].rank);
    }
    dexec_outputs_free(outs, RB);
    ck_assert_msg(log_has("; restarting it (restart 1 of 1)"), "the restart was not logged");
    ck_assert_msg(log_has("actor restarted in "), "the restart was not logged");
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_OK);
    pid2 = actor_pid(e, 1);
    ck_assert_int_ne(pid2, pid);
    ck_assert_int_eq(actor_pid(e, 0), pid2);
    ck_assert_int_eq(dexec_engine_step(e, reqs, RB, &outs, NULL, NULL), DEXEC_OK);
    for (int i = 0; i < RB; i++) {
        ck_assert_msg(outs[i].status == DEXEC_OK, "request %d: %s", i, outs[i].error);
        if (i < 2)
            ck_assert_int_eq(outs[i].rank, i);
        ck_assert(memcmp(outs[i].images[0].pixels, ref[i].images[0].pixels, PIXELS(&ref[i].images[0])) == 0);
    }
    dexec_outputs_free(outs, RB);
    dexec_outputs_free(ref, RB);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    ck_assert_msg(process_gone(pid2), "restarted actor %d still running after close", (int)pid2);
    dexec_engine_free(e);
    ck_assert_int_eq(count_children(), 0);
    unlink(log_path);
}

START_TEST(test_local_kill9_actor_restarted)
{
    actor_recovers(SIGKILL);
}
END_TEST

START_TEST(test_local_sigstop_actor_hung)
{
    actor_recovers(SIGSTOP);
}
END_TEST

/* max_restarts = 0: the step's requests fail at once with the death. */
START_TEST(test_local_kill9_no_restart_fails_fast)
{
    dexec_engine *e;
    dexec_request reqs[RB];
    char ids[RB][16], line[160], want[160];
    dexec_output *outs = NULL;
    killer k = {.on_req = 1, .sig = SIGKILL};
    double done_at;
    dexec_status st;
    pid_t pid;

    capture_log();
    e = open_engine(2, "max_restarts = 0; max_task_retries = 0;");
    recovery_requests(reqs, ids);
    /* the request the kill waits for runs long enough that the kill lands
     * in it (12 steps of the small model could finish, reply included,
     * before its first progress reached the callback) */
    reqs[1].num_inference_steps = 300;
    pid = actor_pid(e, 0);
    k.victim = pid;
    snprintf(line, sizeof(line), "actor (pid %d): actor died: killed by signal 9", (int)pid);
    k.death_line = line;
    watch_start(&k);
    /* the actor hosts both ranks: every request not finished at the kill is
     * lost (each completes on its own, so one that finished first, on a
     * loaded machine, is kept); with all of them lost the step fails */
    st = dexec_engine_step(e, reqs, RB, &outs, on_kill_progress, &k);
    done_at = test_now();
    usleep(100000);
    watch_stop(&k);
    ck_assert_msg(k.killed_at > 0 && done_at - k.killed_at < 1.0,
                  "step returned %.3f s after the kill", done_at - k.killed_at);
    ck_assert_msg(k.logged_at > 0 && k.logged_at - k.killed_at < 1.0, "not logged at once: %s",
                  line);
    /* one line for the one death, not one per lost request (each slot's
     * call, each image of the batch, sees it) */
    ck_assert_int_eq(log_count("not restarted (max_restarts = 0)"), 1);
    snprintf(want, sizeof(want), "generate: actor (pid %d): actor died: killed by signal 9",
             (int)pid);
    if (st == DEXEC_EWORKER) {
        ck_assert_msg(strstr(dexec_engine_last_error(e), want) != NULL, "got: %s",
                      dexec_engine_last_error(e));
    } else {
        ck_assert_int_eq(st, DEXEC_OK);
        ck_assert_int_eq(outs[1].status, DEXEC_EWORKER);
        for (int i = 0; i < RB; i++)
            ck_assert_msg(outs[i].status == DEXEC_OK ||
                              (outs[i].status == DEXEC_EWORKER &&
                               strstr(outs[i].error, want) != NULL),
                          "request %d: %s", i, outs[i].error);
        dexec_outputs_free(outs, RB);
    }
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_EUNHEALTHY);
    /* said as mp says a dead worker ("Worker 0 unhealthy: rank 0 (pid P): ..."):
     * dexec serve's 503 read "the engine is unhealthy: unhealthy: actor ..." */
    snprintf(want, sizeof(want), "actor unhealthy: actor (pid %d): actor died: killed by signal 9",
             (int)pid);
    ck_assert_msg(strncmp(dexec_engine_last_error(e), want, strlen(want)) == 0, "got: %s",
                  dexec_engine_last_error(e));
    dexec_engine_free(e);
    unlink(log_path);
}
END_TEST

/* A child process creates an engine, reports its actor's pid and waits to
 * be killed; returns the child's pid. */
static pid_t engine_in_child(const char *extra, pid_t *actor)
{
    int p[2];
    pid_t child;
    ssize_t n;

    ck_assert_int_eq(pipe(p), 0);
    child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        dexec_engine *e;
        char err[2048];
        pid_t a = -1;

        close(p[0]);
        if (try_engine(1, extra, &e, err, sizeof(err)) == DEXEC_OK) {
            dexec_value *info = NULL;

            if (dexec_engine_collective_rpc(e, "get_info", 0, NULL, NULL, 0, &info) == DEXEC_OK)
                a = (pid_t)dexec_value_as_int(dexec_value_map_get(info, "pid"), -1);
            dexec_value_free(info);
        } else {
            fprintf(stderr, "engine in child: %s\n", err);
        }
        n = write(p[1], &a, sizeof(a));
        (void)n;
        pause();
        _exit(0);
    }
    close(p[1]);
    n = read(p[0], actor, sizeof(*actor));
    close(p[0]);
    ck_assert_int_eq(n, sizeof(*actor));
    return child;
}

START_TEST(test_local_engine_sigkill_takes_actor)
{
    pid_t actor, child;
    double t0;

    /* the actor is reparented to us when its engine dies, so we can reap it */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    child = engine_in_child(NULL, &actor);
    ck_assert_int_gt(actor, 0);
    t0 = test_now();
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    ck_assert_msg(wait_gone(actor, 2.0), "actor %d outlived its engine by 2 s", (int)actor);
    ck_assert_double_lt(test_now() - t0, 2.0);
}
END_TEST

/* ---- cluster mode ---------------------------------------------------------------------- */

static test_redis redis;
static int redis_up;
static const char *cluster_skip; /* why the cluster cases cannot run, or NULL */

static void cluster_setup(void)
{
    setup();
    redis_up = test_redis_skip_reason() == NULL && test_redis_start(&redis, NULL) == 0;
}

static void cluster_teardown(void)
{
    if (redis_up)
        test_redis_stop(&redis);
    redis_up = 0;
}

/* The cluster cases run only when main() saw redis-server start, so a
 * start that fails here is a failure, not a skip. */
#define NEED_REDIS() ck_assert_msg(redis_up, "redis-server did not start (see stderr)")

static void start_node(test_worker *w, const char *name, const char *resources)
{
    const char *args[] = {"--node", "--node-name", name, "--registry", redis.url, "--listen",
                          "tcp:127.0.0.1:0", "--cpus", "1", "--gpus", "0",
                          resources != NULL ? "--resources" : NULL, resources, NULL};
    int rc = test_worker_start(w, args, 10.0);

    ck_assert_msg(rc == 0, "node agent %s: %d: %s", name, rc, test_worker_stderr(w));
}

static char cluster_extra[512];

static const char *cluster_conf(const char *labels)
{
    snprintf(cluster_extra, sizeof(cluster_extra),
             "ray_init = { address = \"%s\"; };\nray_actor = { cpus = 1; %s };", redis.url,
             labels != NULL ? labels : "");
    return cluster_extra;
}

START_TEST(test_cluster_lands_on_labelled_node)
{
    test_worker a, b;
    dexec_engine *e;
    pid_t pid;
    char ppid[32], want[32];

    NEED_REDIS();
    start_node(&a, "plain", NULL);
    start_node(&b, "labelled", "gpu_worker=1");
    e = open_engine(2, cluster_conf("resources = { gpu_worker = 1; }; };\n"
                                    "runtime_env = { env_vars = { DEXEC_TEST_VAR = \"cluster\"; };"));
    generate_and_check(e, 2);
    pid = actor_pid(e, 0);
    {
        char v[64];

        proc_env(pid, "DEXEC_TEST_VAR", v, sizeof(v));
        ck_assert_str_eq(v, "cluster");
    }
    ck_assert_int_eq(actor_pid(e, 1), pid);
    proc_status(pid, "PPid", ppid, sizeof(ppid));
    snprintf(want, sizeof(want), "%d", (int)b.pid);
    ck_assert_str_eq(ppid, want);
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    ck_assert_msg(wait_gone(pid, 2.0), "actor %d still running after close", (int)pid);
    dexec_engine_free(e);
    test_worker_stop(&a);
    test_worker_stop(&b);
}
END_TEST

/* Parallel groups in an actor placed on a node: the ranks are threads of
 * that actor, so a cfg = 2 x sequence = 2 group exchanges through its
 * memory there as it does locally; the images are one local rank's
 * (within 1 in 8-bit values, doc/parallelism.md "Exactness"), each from
 * the group's first rank. */
START_TEST(test_cluster_parallel_group)
{
    enum { N = 2 };
    static char conf[1024];
    test_worker b;
    dexec_engine *e;
    dexec_request reqs[N];
    char ids[N][16];
    dexec_output *one = NULL, *outs = NULL;

    NEED_REDIS();
    make_requests(reqs, N, ids);
    e = open_engine(1, NULL);
    ck_assert_int_eq(dexec_engine_step(e, reqs, N, &one, NULL, NULL), DEXEC_OK);
    dexec_engine_free(e);
    start_node(&b, "grouped", NULL);
    snprintf(conf, sizeof(conf), "parallel = { cfg = 2; sequence = 2; };\n%s",
             cluster_conf(NULL));
    e = open_engine(4, conf);
    ck_assert_int_eq(dexec_engine_step(e, reqs, N, &outs, NULL, NULL), DEXEC_OK);
    for (int i = 0; i < N; i++) {
        size_t px = (size_t)one[i].images[0].width * one[i].images[0].height *
                    one[i].images[0].channels;

        ck_assert_msg(outs[i].status == DEXEC_OK, "request %d: %s", i, outs[i].error);
        ck_assert_int_eq(outs[i].rank, 0);
        ck_assert_uint_eq(outs[i].num_images, 1);
        for (size_t k = 0; k < px; k++)
            ck_assert_int_le(abs((int)outs[i].images[0].pixels[k] - one[i].images[0].pixels[k]),
                             1);
    }
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_outputs_free(outs, N);
    dexec_outputs_free(one, N);
    dexec_engine_free(e);
    test_worker_stop(&b);
}
END_TEST

/* device auto on nodes without GPUs: the actor computes on the CPU, so it
 * asks for no GPU (as it would locally), instead of "no node has room for
 * {cpus=1,gpus=2}". */
START_TEST(test_cluster_auto_device_on_cpu_node)
{
    static char conf[1024];
    test_worker b;
    dexec_engine *e;

    NEED_REDIS();
    start_node(&b, "cpuonly", NULL); /* --gpus 0 */
    snprintf(conf, sizeof(conf), "device = \"auto\";\n%s", cluster_conf(NULL));
    e = open_engine(2, conf);
    generate_and_check(e, 2);
    dexec_engine_free(e);
    test_worker_stop(&b);
}
END_TEST

START_TEST(test_cluster_dtype_reaches_actor)
{
    test_worker b;

    NEED_REDIS();
    start_node(&b, "cpuonly", NULL); /* --gpus 0 */
    check_half_dtype(1, cluster_conf(NULL));
    test_worker_stop(&b);
}
END_TEST

START_TEST(test_cluster_no_room_for_second_engine)
{
    test_worker b;
    dexec_engine *e1, *e2;
    char err[2048];

    NEED_REDIS();
    start_node(&b, "labelled", "gpu_worker=1");
    e1 = open_engine(1, cluster_conf("resources = { gpu_worker = 1; };"));
    ck_assert_int_eq(try_engine(1, cluster_conf("resources = { gpu_worker = 1; };"), &e2, err,
                                sizeof(err)),
                     DEXEC_ENOTFOUND);
    ck_assert_msg(strstr(err, "no node has room for {cpus=1,gpus=0,labels=gpu_worker}") != NULL,
                  "got: %s", err);
    /* the room comes back once the first actor is gone */
    dexec_engine_free(e1);
    {
        double end = test_now() + 10;

        /* the agent sees the actor's exit on its next tick: poll for the room */
        while (try_engine(1, cluster_conf("resources = { gpu_worker = 1; };"), &e2, err,
                          sizeof(err)) == DEXEC_ENOTFOUND &&
               test_now() < end)
            usleep(50000);
        ck_assert_msg(e2 != NULL, "no room 10 s after the first engine closed: %s", err);
    }
    dexec_engine_free(e2);
    test_worker_stop(&b);
}
END_TEST

START_TEST(test_cluster_auto_needs_registry_env)
{
    dexec_engine *e;
    char err[1024];

    unsetenv("DEXEC_REGISTRY");
    ck_assert_int_eq(try_engine(1, "ray_init = { address = \"auto\"; };", &e, err, sizeof(err)),
                     DEXEC_ECONFIG);
    ck_assert_msg(strstr(err, "ray_init.address = \"auto\" but DEXEC_REGISTRY is not set") !=
                      NULL,
                  "got: %s", err);
}
END_TEST

START_TEST(test_cluster_engine_sigkill_takes_actor)
{
    test_worker b;
    pid_t actor, child;

    NEED_REDIS();
    start_node(&b, "node1", NULL);
    setenv("DEXEC_REGISTRY", redis.url, 1);
    child = engine_in_child("ray_init = { address = \"auto\"; };", &actor);
    ck_assert_int_gt(actor, 0);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    ck_assert_msg(wait_gone(actor, 2.0), "actor %d outlived its engine by 2 s", (int)actor);
    test_worker_stop(&b);
}
END_TEST

START_TEST(test_cluster_agent_death_fails_calls)
{
    test_worker b;
    dexec_engine *e;
    dexec_value *r = NULL;
    double t0;

    NEED_REDIS();
    start_node(&b, "node1", NULL);
    e = open_engine(1, cluster_conf(NULL));
    t0 = test_now();
    kill(b.pid, SIGKILL);
    test_worker_wait(&b, 5.0);
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 10.0, NULL, NULL, -1, &r),
                     DEXEC_EWORKER);
    ck_assert_double_lt(test_now() - t0, 2.0);
    ck_assert_msg(strstr(dexec_engine_last_error(e), "on node1") != NULL, "got: %s",
                  dexec_engine_last_error(e));
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_EUNHEALTHY);
    dexec_engine_free(e);
}
END_TEST

/* The node agent and the worker share one RPC server core: a request
 * before hello gets the same refusal from both, and the connection ends. */
static void refused_before_hello(const char *address, char *err, size_t errlen,
                                 dexec_status *code)
{
    dexec_conn *c = NULL;
    dexec_value *r = NULL;
    char again[1024];

    ck_assert_msg(dexec_conn_connect(address, 5, &c, err, errlen) == DEXEC_OK, "%s", err);
    *code = dexec_conn_call(c, "get_info", NULL, dexec_now() + 5, &r, NULL, NULL, err, errlen);
    ck_assert_ptr_null(r);
    /* and the connection is dropped */
    ck_assert_int_eq(dexec_conn_call(c, "get_info", NULL, dexec_now() + 5, &r, NULL, NULL, again,
                                     sizeof(again)),
                     DEXEC_ECLOSED);
    ck_assert_ptr_null(r);
    dexec_conn_free(c);
}

START_TEST(test_cluster_node_and_worker_refuse_before_hello)
{
    const char *wargs[] = {"--listen", "tcp:127.0.0.1:0", "--device", "cpu", NULL};
    test_worker node, worker;
    dexec_status ncode, wcode;
    char nerr[1024], werr[1024];
    int rc;

    NEED_REDIS();
    start_node(&node, "gatekeeper", NULL);
    rc = test_worker_start(&worker, wargs, 30.0);
    ck_assert_msg(rc == 0, "worker: %d: %s", rc, test_worker_stderr(&worker));
    refused_before_hello(node.address, nerr, sizeof(nerr), &ncode);
    refused_before_hello(worker.address, werr, sizeof(werr), &wcode);
    ck_assert_int_eq(ncode, DEXEC_EAUTH);
    ck_assert_int_eq(wcode, DEXEC_EAUTH);
    ck_assert_str_eq(nerr, "the first request on a connection must be hello");
    ck_assert_str_eq(werr, nerr);
    test_worker_stop(&worker);
    test_worker_stop(&node);
}
END_TEST

static Suite *ray_suite(void)
{
    Suite *s = suite_create("ray");
    TCase *local = tcase_create("local"), *cluster;

    tcase_add_checked_fixture(local, setup, NULL);
    tcase_set_timeout(local, 120);
    tcase_add_test(local, test_local_generate_one_rank);
    tcase_add_test(local, test_local_generate_two_ranks_one_actor);
    tcase_add_test(local, test_local_resources_on_live_actor);
    tcase_add_test(local, test_local_too_many_cpus);
    tcase_add_test(local, test_local_too_few_gpus);
    tcase_add_test(local, test_local_dtype_reaches_actor);
    tcase_add_test(local, test_local_more_cpus_than_ray_init_declares);
    tcase_add_test(local, test_local_runtime_env);
    tcase_add_test(local, test_local_labels_must_be_offered);
    tcase_add_test(local, test_local_init_error_leaves_nothing);
    tcase_add_test(local, test_local_error_reply_names_rank);
    tcase_add_test(local, test_local_rpc_timeout_names_method);
    tcase_add_test(local, test_local_kill9_fails_calls_within_a_second);
    tcase_add_test(local, test_local_kill9_actor_restarted);
    tcase_add_test(local, test_local_sigstop_actor_hung);
    tcase_add_test(local, test_local_kill9_no_restart_fails_fast);
    tcase_add_test(local, test_local_engine_sigkill_takes_actor);
    suite_add_tcase(s, local);

    if (cluster_skip != NULL)
        return s;
    cluster = tcase_create("cluster");
    tcase_add_checked_fixture(cluster, cluster_setup, cluster_teardown);
    tcase_set_timeout(cluster, 120);
    tcase_add_test(cluster, test_cluster_lands_on_labelled_node);
    tcase_add_test(cluster, test_cluster_no_room_for_second_engine);
    tcase_add_test(cluster, test_cluster_auto_device_on_cpu_node);
    tcase_add_test(cluster, test_cluster_dtype_reaches_actor);
    tcase_add_test(cluster, test_cluster_parallel_group);
    tcase_add_test(cluster, test_cluster_auto_needs_registry_env);
    tcase_add_test(cluster, test_cluster_engine_sigkill_takes_actor);
    tcase_add_test(cluster, test_cluster_agent_death_fails_calls);
    tcase_add_test(cluster, test_cluster_node_and_worker_refuse_before_hello);
    suite_add_tcase(s, cluster);
    return s;
}

int main(void)
{
    SRunner *sr;
    int failed;
    pid_t probe;
    int status = 1;

    /* one start decides whether the cluster cases can run at all; in a
     * child, so that its temporary directory is its own (each forked test
     * removes the directory it made when it exits) */
    cluster_skip = test_redis_skip_reason();
    if (cluster_skip == NULL) {
        probe = fork();
        if (probe == 0) {
            test_redis r = {0};

            exit(test_redis_start(&r, NULL) == 0 ? 0 : 1); /* at exit: stopped, removed */
        }
        if (probe < 0 || waitpid(probe, &status, 0) != probe || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0)
            cluster_skip = "redis-server ($REDIS_SERVER) did not start";
    }
    sr = srunner_create(ray_suite());

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (failed == 0 && cluster_skip != NULL) {
        /* the local cases passed but the cluster ones did not run */
        printf("SKIP: ray: cluster cases not run: %s\n", cluster_skip);
        return 77;
    }
    return failed == 0 ? 0 : 1;
}
