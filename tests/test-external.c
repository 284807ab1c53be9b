/*
 * test-external.c - the external executor with real dexec-worker processes
 * registered by name in a real redis-server: generate through named
 * workers, workers that outlive the engine, names given as addresses,
 * unknown names, a rank that does not match its index, a dead worker whose
 * key has not expired, Redis down at engine start, and the token.
 */
#include "config.h"

#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dexec/dexec.h>
#include <dexec/rpc.h>

#include "redis_helper.h"

static test_redis redis;
static test_worker w[3];

static void start_worker(int i, int rank, const char *name, const char *token_file)
{
    char sock[400], ranks[16];
    const char *args[20];
    int k = 0;

    snprintf(sock, sizeof(sock), "unix:%s/ext-%d-%d.sock", test_tmpdir(), (int)getpid(), i);
    snprintf(ranks, sizeof(ranks), "%d", rank);
    args[k++] = "--listen";
    args[k++] = sock;
    args[k++] = "--rank";
    args[k++] = ranks;
    args[k++] = "--device";
    args[k++] = "cpu";
    args[k++] = "--name";
    args[k++] = name;
    args[k++] = "--registry";
    args[k++] = redis.url;
    args[k++] = "--ttl";
    args[k++] = "5";
    if (token_file != NULL) {
        args[k++] = "--token-file";
        args[k++] = token_file;
    }
    args[k] = NULL;
    ck_assert_msg(test_worker_start(&w[i], args, 30) == 0, "worker %d: %s", i,
                  test_worker_stderr(&w[i]));
}

static void setup_redis(void)
{
    memset(&redis, 0, sizeof(redis));
    memset(w, 0, sizeof(w));
    unsetenv("DIFFUSION_WORKER_ACTOR_NAMES");
    unsetenv("DEXEC_CONFIG");
    ck_assert_int_eq(test_redis_start(&redis, NULL), 0);
}

static void setup(void)
{
    setup_redis();
    start_worker(0, 0, "diffusion_worker_0", NULL);
    start_worker(1, 1, "diffusion_worker_1", NULL);
}

static void teardown(void)
{
    test_worker_stop(&w[0]);
    test_worker_stop(&w[1]);
    test_worker_stop(&w[2]);
    test_redis_stop(&redis);
}

/* An engine configuration for the external backend; extra is appended. */
static dexec_config *make_config(const char *extra)
{
    char text[2048], err[1024], path[600];
    dexec_config *cfg = NULL;
    FILE *f;

    snprintf(text, sizeof(text),
             "distributed_executor_backend = \"external\";\n"
             "num_gpus = 2;\n"
             "timeouts = { init = 20.0; health = 5.0; };\n"
             "discovery = { redis = { url = \"%s\"; ttl = 5; connect_timeout = 1.0;"
             " command_timeout = 1.0; }; };\n%s",
             redis.url, extra != NULL ? extra : "");
    /* loaded from a file, as deployments do, so the environment overrides apply */
    snprintf(path, sizeof(path), "%s/external-%d.conf", test_tmpdir(), (int)getpid());
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    ck_assert_msg(dexec_config_load(path, &cfg, err, sizeof(err)) == DEXEC_OK, "%s", err);
    return cfg;
}

static dexec_status create(const char *extra, dexec_engine **e, char *err, size_t errlen)
{
    dexec_config *cfg = make_config(extra);
    dexec_status st = dexec_engine_create(cfg, e, err, errlen);

    dexec_config_free(cfg);
    return st;
}

/* get_rank over a fresh connection: the worker still serves. */
static int rank_of(const char *address, const char *token)
{
    dexec_conn *c = NULL;
    dexec_value *res = NULL;
    char err[1024];
    int rank = -1;

    if (dexec_conn_connect(address, 5, &c, err, sizeof(err)) != DEXEC_OK)
        return -1;
    if (dexec_conn_hello(c, token, 5, NULL, err, sizeof(err)) == DEXEC_OK &&
        dexec_conn_call(c, "get_rank", NULL, dexec_now() + 5, &res, NULL, NULL, err,
                        sizeof(err)) == DEXEC_OK)
        rank = (int)dexec_value_as_int(res, -1);
    dexec_value_free(res);
    dexec_conn_free(c);
    return rank;
}

static void generate_two(dexec_engine *e)
{
    dexec_request r[2];
    dexec_output *outs = NULL;

    for (int i = 0; i < 2; i++) {
        dexec_request_init(&r[i]);
        r[i].prompt = "a sneaker";
        r[i].num_inference_steps = 2;
        r[i].seed = 7 + i;
    }
    ck_assert_msg(dexec_engine_step(e, r, 2, &outs, NULL, NULL) == DEXEC_OK, "%s",
                  dexec_engine_last_error(e));
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(outs[i].status == DEXEC_OK, "%s", outs[i].error);
        ck_assert_int_eq(outs[i].rank, i);
        ck_assert_int_ge((int)outs[i].num_images, 1);
        ck_assert_int_gt(outs[i].images[0].width, 0);
    }
    dexec_outputs_free(outs, 2);
}

START_TEST(generate_with_named_workers)
{
    dexec_engine *e = NULL;
    dexec_value *replies = NULL;
    char err[2048];

    ck_assert_msg(create(NULL, &e, err, sizeof(err)) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(dexec_engine_num_ranks(e), 2);
    generate_two(e);
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, -1, &replies),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_value_as_int(dexec_value_array_get(replies, 1), -1), 1);
    dexec_value_free(replies);
    dexec_engine_free(e);

    /* close only disconnected: both workers still run and serve */
    usleep(200000);
    ck_assert(test_worker_alive(&w[0]));
    ck_assert(test_worker_alive(&w[1]));
    ck_assert_int_eq(rank_of(w[0].address, NULL), 0);
    ck_assert_int_eq(rank_of(w[1].address, NULL), 1);
    /* and the next engine finds them again */
    ck_assert_msg(create(NULL, &e, err, sizeof(err)) == DEXEC_OK, "%s", err);
    generate_two(e);
    dexec_engine_free(e);
}
END_TEST

START_TEST(names_from_environment)
{
    dexec_engine *e = NULL;
    char err[2048];

    start_worker(0, 0, "alpha", NULL);
    start_worker(1, 1, "beta", NULL);
    setenv("DIFFUSION_WORKER_ACTOR_NAMES", "alpha,beta", 1);
    ck_assert_msg(create(NULL, &e, err, sizeof(err)) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(dexec_engine_num_ranks(e), 2);
    dexec_engine_free(e);
}
END_TEST

/* The first directory of $DEXEC_PLUGIN_PATH, where the plugins come from. */
static const char *plugin_dir(void)
{
    static char first[512];

    snprintf(first, sizeof(first), "%s", getenv("DEXEC_PLUGIN_PATH"));
    first[strcspn(first, ":")] = '\0';
    return first;
}

START_TEST(rank_mismatch_is_unhealthy)
{
    dexec_engine *e = NULL;
    char err[2048], expect[2048];

    setenv("DIFFUSION_WORKER_ACTOR_NAMES", "diffusion_worker_1,diffusion_worker_0", 1);
    ck_assert_int_eq(create(NULL, &e, err, sizeof(err)), DEXEC_EUNHEALTHY);
    ck_assert_ptr_null(e);
    /* a failed create names the plugin and, last, its file */
    snprintf(expect, sizeof(expect),
             "external: Worker 0 unhealthy: it reports rank 1, expected 0 (plugin "
             "%s/dexec_external.so)",
             plugin_dir());
    ck_assert_str_eq(err, expect);
    ck_assert(test_worker_alive(&w[0]) && test_worker_alive(&w[1]));
}
END_TEST

START_TEST(unknown_name_not_found)
{
    dexec_engine *e = NULL;
    char err[2048], expect[2048];

    ck_assert_int_eq(
        create("external = { worker_names = [ \"diffusion_worker_0\", \"nosuch\" ]; };\n", &e,
               err, sizeof(err)),
        DEXEC_ENOTFOUND);
    snprintf(expect, sizeof(expect),
             "external: worker 1: no actor named nosuch in registry %s (namespace dexec); start "
             "it with dexec-worker --name nosuch --registry URL, or fix external.worker_names / "
             "DIFFUSION_WORKER_ACTOR_NAMES (plugin %s/dexec_external.so)",
             redis.url, plugin_dir());
    ck_assert_str_eq(err, expect);
}
END_TEST

START_TEST(literal_addresses_need_no_registry)
{
    dexec_engine *e = NULL;
    char extra[1200], err[2048];

    test_redis_stop(&redis);
    snprintf(extra, sizeof(extra), "external = { worker_names = [ \"%s\", \"%s\" ]; };\n",
             w[0].address, w[1].address);
    ck_assert_msg(create(extra, &e, err, sizeof(err)) == DEXEC_OK, "%s", err);
    generate_two(e);
    dexec_engine_free(e);
}
END_TEST

/* `dexec logs` on workers the engine does not own (started here as
 * systemd or Slurm would): the line a failed request logged comes back */
START_TEST(logs_of_external_workers)
{
    dexec_engine *e = NULL;
    char extra[1200], err[2048], path[600], cmd[1400], line[1024];
    dexec_request r[2];
    dexec_output *o = NULL;
    const char *cli = getenv("DEXEC_CLI");
    int found = 0, lines = 0;
    FILE *f;

    ck_assert_ptr_nonnull(cli);
    snprintf(extra, sizeof(extra), "external = { worker_names = [ \"%s\", \"%s\" ]; };\n",
             w[0].address, w[1].address);
    ck_assert_msg(create(extra, &e, err, sizeof(err)) == DEXEC_OK, "%s", err);
    for (int i = 0; i < 2; i++) {
        dexec_request_init(&r[i]);
        r[i].prompt = i == 1 ? "no-such-class-xyz" : "bag";
        r[i].num_inference_steps = 1;
    }
    r[1].request_id = "bad-1";
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_OK);
    ck_assert_int_ne(o[1].status, DEXEC_OK);
    dexec_outputs_free(o, 2);
    dexec_engine_free(e);

    /* the configuration make_config() wrote, with these workers' addresses */
    dexec_config_free(make_config(extra));
    snprintf(path, sizeof(path), "%s/external-%d.conf", test_tmpdir(), (int)getpid());
    snprintf(cmd, sizeof(cmd), "'%s' logs -c '%s' --rank 1 -n 20 2>&1", cli, path);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        lines++;
        ck_assert_msg(strncmp(line, "1 ", 2) == 0, "not rank 1: %s", line);
        if (strstr(line, " warn worker: rank 1: request bad-1 failed: ") != NULL)
            found = 1;
    }
    ck_assert_int_eq(pclose(f), 0);
    ck_assert_msg(found, "no line for bad-1 in %d lines", lines);
    ck_assert_int_le(lines, 20);
}
END_TEST

START_TEST(redis_down_at_start)
{
    dexec_engine *e = NULL;
    char err[2048], expect[2048];
    double t0;

    test_redis_stop(&redis);
    t0 = test_now();
    ck_assert_int_eq(create(NULL, &e, err, sizeof(err)), DEXEC_EIO);
    ck_assert(test_now() - t0 < 1.5);
    /* dexec_discovery_open's style: the plugin, its file, where the URL came from */
    snprintf(expect, sizeof(expect),
             "external: cannot look up worker diffusion_worker_0: discovery plugin "
             "redis_discovery (%s/dexec_redis_discovery.so), registry from the configuration: "
             "cannot reach Redis at %s: Connection refused (plugin %s/dexec_external.so)",
             plugin_dir(), redis.url, plugin_dir());
    ck_assert_str_eq(err, expect);
}
END_TEST

START_TEST(dead_worker_with_live_key)
{
    dexec_engine *e = NULL;
    char err[2048];
    double t0;

    kill(w[1].pid, SIGKILL);
    test_worker_wait(&w[1], 5);
    t0 = test_now();
    ck_assert_int_eq(create(NULL, &e, err, sizeof(err)), DEXEC_EIO);
    ck_assert(test_now() - t0 < 2);
    ck_assert_msg(strstr(err, "external: worker 1 (diffusion_worker_1) at unix:") != NULL, "%s",
                  err);
    ck_assert_msg(strstr(err, "does not answer") != NULL, "%s", err);
    ck_assert(test_worker_alive(&w[0]));
}
END_TEST

/* Kills victim when request 1 reports its first step. */
static void kill_on_progress(void *user, size_t req, int image, int step, int total)
{
    test_worker *victim = user;

    (void)image;
    (void)total;
    if (req == 1 && step >= 1 && victim->pid > 0 && test_worker_alive(victim))
        kill(victim->pid, SIGKILL);
}

/* -b 8 with 2 steps; every request must succeed; the ranks that served
 * them go to ranks[]. */
static void step_eight(dexec_engine *e, dexec_progress_fn progress, void *user, int *ranks)
{
    enum { N = 8 };
    dexec_request r[N];
    dexec_output *outs = NULL;

    for (int i = 0; i < N; i++) {
        dexec_request_init(&r[i]);
        r[i].prompt = "a sneaker";
        r[i].num_inference_steps = 6;
        r[i].seed = 7 + i;
    }
    ck_assert_msg(dexec_engine_step(e, r, N, &outs, progress, user) == DEXEC_OK, "%s",
                  dexec_engine_last_error(e));
    for (int i = 0; i < N; i++) {
        ck_assert_msg(outs[i].status == DEXEC_OK, "request %d: %s", i, outs[i].error);
        ranks[i] = outs[i].rank;
    }
    dexec_outputs_free(outs, N);
}

/* A named worker killed mid-step: its requests are dealt to the live
 * rank; restarted by the test under the same name (another socket), it is
 * reconnected and serves the next step. */
START_TEST(killed_worker_back_under_its_name)
{
    dexec_engine *e = NULL;
    dexec_value *info = NULL;
    char err[2048];
    int ranks[8], served1 = 0;

    ck_assert_msg(create("max_task_retries = 2;", &e, err, sizeof(err)) == DEXEC_OK, "%s",
                  err);
    step_eight(e, kill_on_progress, &w[1], ranks);
    for (int t = 0; t < 500 && test_worker_alive(&w[1]); t++)
        usleep(10000);
    ck_assert_msg(!test_worker_alive(&w[1]), "the killed worker still runs");
    /* rank 1 is dead and not back: the next step runs on rank 0 alone */
    step_eight(e, NULL, NULL, ranks);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(ranks[i], 0);
    /* the same name, another address */
    start_worker(2, 1, "diffusion_worker_1", NULL);
    ck_assert_str_ne(w[2].address, w[1].address);
    step_eight(e, NULL, NULL, ranks);
    for (int i = 0; i < 8; i++)
        served1 += ranks[i] == 1;
    /* reconnected before its first request: request 1 on slot 1, and the
     * rest on whichever rank was free first */
    ck_assert_int_eq(ranks[1], 1);
    ck_assert_int_ge(served1, 1);
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_info", 0, NULL, NULL, 1, &info),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(info, "pid"), -1), w[2].pid);
    dexec_value_free(info);
    dexec_engine_free(e);
}
END_TEST

START_TEST(token_required)
{
    dexec_engine *e = NULL;
    dexec_conn *c = NULL;
    dexec_value *res = NULL;
    char tok[600], extra[800], err[2048];
    FILE *f;

    snprintf(tok, sizeof(tok), "%s/token-%d", test_tmpdir(), (int)getpid());
    f = fopen(tok, "w");
    ck_assert_ptr_nonnull(f);
    fputs("0123456789abcdef\n", f);
    fclose(f);
    chmod(tok, 0600);
    start_worker(0, 0, "diffusion_worker_0", tok);
    start_worker(1, 1, "diffusion_worker_1", tok);

    /* no token: hello is refused */
    ck_assert_int_eq(dexec_conn_connect(w[0].address, 5, &c, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_conn_hello(c, NULL, 5, NULL, err, sizeof(err)), DEXEC_EAUTH);
    ck_assert_msg(strstr(err, "this worker requires a token") != NULL, "%s", err);
    dexec_conn_free(c);
    /* a wrong one too */
    ck_assert_int_eq(dexec_conn_connect(w[0].address, 5, &c, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_conn_hello(c, "nope", 5, NULL, err, sizeof(err)), DEXEC_EAUTH);
    ck_assert_msg(strstr(err, "wrong token") != NULL, "%s", err);
    dexec_conn_free(c);
    /* skipping hello does not help: the first call is refused */
    ck_assert_int_eq(dexec_conn_connect(w[0].address, 5, &c, err, sizeof(err)), DEXEC_OK);
    ck_assert_int_ne(dexec_conn_call(c, "get_rank", NULL, dexec_now() + 5, &res, NULL, NULL, err,
                                     sizeof(err)),
                     DEXEC_OK);
    ck_assert_ptr_null(res);
    ck_assert_msg(strstr(err, "the first request on a connection must be hello") != NULL, "%s",
                  err);
    dexec_conn_free(c);

    /* the engine without the token is refused, with it it works */
    ck_assert_int_eq(create(NULL, &e, err, sizeof(err)), DEXEC_EAUTH);
    /* once, with the fix: rank, name and address named once, then the hint */
    ck_assert_msg(strncmp(err, "external: rank 0 (diffusion_worker_0 at ", 40) == 0 &&
                      strstr(err, ") refused the handshake: this worker requires a token: give "
                                  "the client the worker's token file (dexec: token_file, or "
                                  "external.token_file, in the configuration)") != NULL &&
                      strstr(err + 11, "rank 0 (") == NULL,
                  "%s", err);
    snprintf(extra, sizeof(extra), "external = { token_file = \"%s\"; };\n", tok);
    ck_assert_msg(create(extra, &e, err, sizeof(err)) == DEXEC_OK, "%s", err);
    generate_two(e);
    dexec_engine_free(e);
    ck_assert_int_eq(rank_of(w[1].address, "0123456789abcdef"), 1);
}
END_TEST

static Suite *external_suite(void)
{
    Suite *s = suite_create("external");
    TCase *t = tcase_create("named");
    TCase *b = tcase_create("bare");

    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, generate_with_named_workers);
    tcase_add_test(t, rank_mismatch_is_unhealthy);
    tcase_add_test(t, unknown_name_not_found);
    tcase_add_test(t, literal_addresses_need_no_registry);
    tcase_add_test(t, logs_of_external_workers);
    tcase_add_test(t, redis_down_at_start);
    tcase_add_test(t, killed_worker_back_under_its_name);
    tcase_add_test(t, dead_worker_with_live_key);
    tcase_set_timeout(t, 120);
    suite_add_tcase(s, t);

    /* tests that start their own workers */
    tcase_add_checked_fixture(b, setup_redis, teardown);
    tcase_add_test(b, names_from_environment);
    tcase_add_test(b, token_required);
    tcase_set_timeout(b, 120);
    suite_add_tcase(s, b);
    return s;
}

int main(void)
{
    const char *skip = test_redis_skip_reason();
    SRunner *sr;
    int failed;

    if (skip != NULL) {
        printf("SKIP: %s\n", skip);
        return 77;
    }
    sr = srunner_create(external_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
