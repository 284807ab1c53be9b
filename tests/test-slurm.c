/*
 * test-slurm.c - executors on a real one-node Slurm cluster: the ray_actor
 * actor as a Slurm job step (ray_init.address = "slurm") and the mp ranks
 * as one step (mp.launcher = "srun"). Run by tests/slurm/slurm.sh, which
 * starts the cluster once for the suite and exports SLURM_CONF; run alone,
 * without SLURM_CONF, it skips.
 */
#include "config.h"

#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dexec/dexec.h>
#include <dexec/rpc.h>

#define STEPS 2

static char model_path[1024];

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void setup(void)
{
    snprintf(model_path, sizeof(model_path), "%s/golden/golden-model.safetensors",
             getenv("DEXEC_TEST_SRCDIR") != NULL ? getenv("DEXEC_TEST_SRCDIR") : ".");
    unsetenv("SLURM_JOB_ID"); /* srun asks for an allocation of its own */
}

/* The first line a shell command prints (bounded by timeout(1)). */
static void sh_line(const char *cmd, char *out, size_t len)
{
    char full[1024];
    FILE *f;

    out[0] = '\0';
    snprintf(full, sizeof(full), "timeout 10 %s 2>&1", cmd);
    f = popen(full, "r");
    ck_assert_ptr_nonnull(f);
    if (fgets(out, (int)len, f) == NULL)
        out[0] = '\0';
    out[strcspn(out, "\n")] = '\0';
    while (fgetc(f) != EOF)
        ;
    pclose(f);
}

/* Step ids in squeue ("12.0"), space separated, "" when none. */
static void steps(char *out, size_t len)
{
    char cmd[] = "squeue -h -s -o %i | grep -v -e '\\.batch' -e '\\.extern' | tr '\\n' ' '";

    sh_line(cmd, out, len);
}

/* Waits up to timeout s for squeue to list no step. 1 when none is left. */
static int wait_no_steps(double timeout)
{
    double deadline = now_s() + timeout;
    char s[512];

    for (;;) {
        steps(s, sizeof(s));
        if (s[strspn(s, " ")] == '\0')
            return 1;
        if (now_s() > deadline)
            return 0;
        usleep(200000);
    }
}

static dexec_status try_engine_init(const char *extra, double init, dexec_engine **e, char *err,
                                   size_t errlen)
{
    char text[4096];
    dexec_config *cfg = NULL;
    dexec_status st;

    snprintf(text, sizeof(text),
             "model = \"%s\";\ndevice = \"cpu\";\n"
             "timeouts = { init = %.1f; shutdown_grace = 2.0; };\n"
             "slurm = { time = \"10\"; };\n%s\n",
             model_path, init, extra);
    st = dexec_config_parse(text, "test", &cfg, err, errlen);
    ck_assert_msg(st == DEXEC_OK, "config: %s", err);
    *e = NULL;
    st = dexec_engine_create(cfg, e, err, errlen);
    dexec_config_free(cfg);
    return st;
}

static dexec_status try_engine(const char *extra, dexec_engine **e, char *err, size_t errlen)
{
    return try_engine_init(extra, 30.0, e, err, errlen);
}

static dexec_engine *open_engine(const char *extra)
{
    dexec_engine *e;
    char err[2048];

    if (try_engine(extra, &e, err, sizeof(err)) != DEXEC_OK)
        ck_abort_msg("engine create failed: %s", err);
    return e;
}

static void generate_and_check(dexec_engine *e, int ranks)
{
    enum { N = 4 };
    dexec_request reqs[N];
    char ids[N][16];
    dexec_output *outs = NULL;

    for (int i = 0; i < N; i++) {
        dexec_request_init(&reqs[i]);
        snprintf(ids[i], sizeof(ids[i]), "r%d", i);
        reqs[i].request_id = ids[i];
        reqs[i].prompt = "sneaker";
        reqs[i].seed = 7 + i;
        reqs[i].num_inference_steps = STEPS;
    }
    ck_assert_int_eq(dexec_engine_step(e, reqs, N, &outs, NULL, NULL), DEXEC_OK);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(outs[i].status == DEXEC_OK, "request %d: %s", i,
                      outs[i].error != NULL ? outs[i].error : "");
        /* request i < ranks on rank i (each free rank takes the next
         * request); the rest on whichever rank was free first */
        if (i < ranks)
            ck_assert_int_eq(outs[i].rank, i);
        ck_assert_int_ge(outs[i].rank, 0);
        ck_assert_int_lt(outs[i].rank, ranks);
        ck_assert_uint_eq(outs[i].num_images, 1);
    }
    dexec_outputs_free(outs, N);
}

static const char *ray_slurm = "num_gpus = 2;\ndistributed_executor_backend = \"ray_actor\";\n"
                               "ray_init = { address = \"slurm\"; };\n";

/* ---- ray_actor ------------------------------------------------------------------------- */

START_TEST(test_actor_generate_step_then_gone)
{
    char extra[512], s[512];
    dexec_engine *e;

    snprintf(extra, sizeof(extra), "%sray_actor = { cpus = 1; };\n", ray_slurm);
    e = open_engine(extra);
    ck_assert_int_eq(dexec_engine_num_ranks(e), 2);
    steps(s, sizeof(s));
    ck_assert_msg(strchr(s, '.') != NULL, "no step in squeue while the actor runs: '%s'", s);
    generate_and_check(e, 2);
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
    ck_assert_msg(wait_no_steps(10.0), "a step is left after close");
}
END_TEST

/* cpus -> --cpus-per-task, memory -> --mem, resources -> --constraint, as
 * Slurm sees them on the step. */
START_TEST(test_actor_resources_on_the_step)
{
    char extra[512], s[512], cmd[640], tres[512];
    dexec_engine *e;

    snprintf(extra, sizeof(extra),
             "%sray_actor = { cpus = 2; memory = 268435456L; resources = { dexec_test = 1; }; };\n",
             ray_slurm);
    e = open_engine(extra);
    steps(s, sizeof(s));
    s[strcspn(s, " ")] = '\0';
    snprintf(cmd, sizeof(cmd), "scontrol show step %s | grep -o 'TRES=.*'", s);
    sh_line(cmd, tres, sizeof(tres));
    ck_assert_str_eq(tres, "TRES=cpu=2,mem=256M,node=1");
    snprintf(cmd, sizeof(cmd), "scontrol show job %.*s | grep -o 'Features=[^ ]*'",
             (int)strcspn(s, "."), s);
    sh_line(cmd, tres, sizeof(tres));
    ck_assert_str_eq(tres, "Features=dexec_test");
    generate_and_check(e, 2);
    dexec_engine_free(e);
    ck_assert_msg(wait_no_steps(10.0), "a step is left after close");
}
END_TEST

/* More CPUs than the node has: Slurm leaves the job pending; create fails
 * at the init deadline with Slurm's reason and cancels the job. */
START_TEST(test_actor_unsatisfiable_fails_with_reason)
{
    char extra[512], err[2048];
    dexec_engine *e;
    double t0 = now_s();
    dexec_status st;

    /* the cluster's node has as many CPUs as this host (cluster.sh) */
    snprintf(extra, sizeof(extra), "%sray_actor = { cpus = %ld; };\n", ray_slurm,
             1000 + sysconf(_SC_NPROCESSORS_ONLN));
    st = try_engine_init(extra, 6.0, &e, err, sizeof(err));
    ck_assert_int_eq(st, DEXEC_ETIMEDOUT);
    ck_assert_ptr_null(e);
    ck_assert_msg(strstr(err, "Slurm did not start the actor within ") != NULL, "%s", err);
    ck_assert_msg(strstr(err, "(timeouts.init), cancelled it: job reason PartitionConfig") !=
                      NULL,
                  "%s", err);
    ck_assert_msg(strstr(err, "srun: Requested partition configuration not available now") !=
                      NULL,
                  "%s", err);
    ck_assert_msg(now_s() - t0 < 30.0, "create took %.1f s", now_s() - t0);
    ck_assert_msg(wait_no_steps(10.0), "a step is left");
}
END_TEST

/* A feature no node has: Slurm refuses at once, and srun's reason is the error. */
START_TEST(test_actor_unknown_feature_refused)
{
    char extra[512], err[2048];
    dexec_engine *e;

    snprintf(extra, sizeof(extra), "%sray_actor = { resources = { no_such_feature = 1; }; };\n",
             ray_slurm);
    ck_assert_int_eq(try_engine(extra, &e, err, sizeof(err)), DEXEC_EINIT);
    ck_assert_msg(strstr(err, "srun for the actor exited with status 1 before the step "
                              "started: ") != NULL,
                  "%s", err);
    ck_assert_msg(strstr(err, "Invalid feature specification") != NULL, "%s", err);
}
END_TEST

START_TEST(test_actor_feature_amount_refused)
{
    char extra[512], err[2048];
    dexec_engine *e;

    snprintf(extra, sizeof(extra), "%sray_actor = { resources = { ssd = 2; }; };\n", ray_slurm);
    ck_assert_int_eq(try_engine(extra, &e, err, sizeof(err)), DEXEC_EINVAL);
    {
        /* the engine adds the plugin's file to a create error */
        const char *want = "ray_actor: ray_actor.resources: ssd = 2, but Slurm node features have "
                           "no amount: ask for ssd = 1 (the node's feature), or place the actor "
                           "with ray_init.address = \"local\" or a registry (plugin ";
        const char *tail = "/dexec_ray_actor.so)";

        ck_assert_msg(strncmp(err, want, strlen(want)) == 0 && strlen(err) > strlen(tail) &&
                          strcmp(err + strlen(err) - strlen(tail), tail) == 0,
                      "%s", err);
    }
}
END_TEST

/* An engine killed with SIGKILL leaves no step behind. */
static void killed_engine_leaves_no_step(const char *extra)
{
    int pfd[2];
    pid_t pid;
    char s[512], buf[8] = "";
    int status;

    ck_assert_int_eq(pipe(pfd), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dexec_engine *e;
        char err[2048];

        close(pfd[0]);
        if (try_engine(extra, &e, err, sizeof(err)) != DEXEC_OK) {
            fprintf(stderr, "engine: %s\n", err);
            _exit(1);
        }
        if (write(pfd[1], "up", 2) != 2)
            _exit(1);
        sleep(60);
        _exit(0);
    }
    close(pfd[1]);
    ck_assert_int_eq(read(pfd[0], buf, 2), 2); /* create is bounded by timeouts.init */
    close(pfd[0]);
    steps(s, sizeof(s));
    ck_assert_msg(strchr(s, '.') != NULL, "no step while the engine runs: '%s'", s);
    kill(pid, SIGKILL);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(wait_no_steps(15.0), "a step outlived its SIGKILLed engine");
}

START_TEST(test_actor_engine_sigkill_leaves_no_step)
{
    killed_engine_leaves_no_step(ray_slurm);
}
END_TEST

/* ---- mp -------------------------------------------------------------------------------- */

START_TEST(test_mp_ranks_one_step)
{
    char s[512], cmd[640], tasks[256];
    dexec_engine *e = open_engine("num_gpus = 2;\nmp = { launcher = \"srun\"; };\n");
    dexec_value *info = NULL;

    ck_assert_int_eq(dexec_engine_num_ranks(e), 2);
    steps(s, sizeof(s));
    ck_assert_msg(strchr(s, '.') != NULL && strchr(s, ' ') == s + strcspn(s, " ") &&
                      s[strcspn(s, " ") + 1] == '\0',
                  "expected one step, squeue lists '%s'", s);
    s[strcspn(s, " ")] = '\0';
    snprintf(cmd, sizeof(cmd), "scontrol show step %s | grep -o 'Tasks=[0-9]*'", s);
    sh_line(cmd, tasks, sizeof(tasks));
    ck_assert_str_eq(tasks, "Tasks=2");
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_info", 0, NULL, NULL, -1, &info),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(dexec_value_array_get(info, 1),
                                                            "rank"),
                                        -1),
                     1);
    ck_assert_int_ne(dexec_value_as_int(dexec_value_map_get(dexec_value_array_get(info, 0),
                                                            "pid"),
                                        -1),
                     dexec_value_as_int(dexec_value_map_get(dexec_value_array_get(info, 1),
                                                            "pid"),
                                        -1));
    dexec_value_free(info);
    generate_and_check(e, 2);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
    ck_assert_msg(wait_no_steps(10.0), "a step is left after close");
}
END_TEST

START_TEST(test_mp_engine_sigkill_leaves_no_step)
{
    killed_engine_leaves_no_step("num_gpus = 2;\nmp = { launcher = \"srun\"; };\n");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("slurm");
    TCase *tc = tcase_create("slurm");
    SRunner *sr;
    int failed;

    if (getenv("SLURM_CONF") == NULL) {
        printf("SKIP: SLURM_CONF is not set: run tests/slurm/slurm.sh, which starts a "
               "one-node cluster\n");
        return 77;
    }
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_actor_generate_step_then_gone);
    tcase_add_test(tc, test_actor_resources_on_the_step);
    tcase_add_test(tc, test_actor_unsatisfiable_fails_with_reason);
    tcase_add_test(tc, test_actor_unknown_feature_refused);
    tcase_add_test(tc, test_actor_feature_amount_refused);
    tcase_add_test(tc, test_actor_engine_sigkill_leaves_no_step);
    tcase_add_test(tc, test_mp_ranks_one_step);
    tcase_add_test(tc, test_mp_engine_sigkill_leaves_no_step);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
