/* test-engine.c - the engine API end to end over the in-process test
 * executor (tests/plugins/testgood.c): create, step, collective_rpc,
 * check_health, close, misuse, and calls from several threads. */
#include "config.h"

#include <check.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dexec/dexec.h>
#include <dexec/codec.h>
#include <dexec/plugin.h>

/* snprintf that fails the test instead of truncating. */
#define fmt(buf, size, ...) ck_assert_int_lt(snprintf(buf, size, __VA_ARGS__), (int)(size))

static char plugdir[PATH_MAX];
static char err[2048];

static void setup(void)
{
    const char *b = getenv("DEXEC_TEST_BUILDDIR");

    fmt(plugdir, sizeof(plugdir), "%s/plugins/.libs", b != NULL ? b : ".");
    setenv("DEXEC_PLUGIN_PATH", plugdir, 1);
    unsetenv("DEXEC_TESTGOOD_FAIL");
    err[0] = '\0';
}

static dexec_config *make_config(const char *backend, int nranks)
{
    char text[512];
    dexec_config *cfg = NULL;

    fmt(text, sizeof(text),
             "distributed_executor_backend = \"%s\"; num_gpus = %d;\n"
             "timeouts = { rpc = 7.0; generate = 11.0; health = 3.0; };\n",
             backend, nranks);
    ck_assert_msg(dexec_config_parse(text, "test.conf", &cfg, err, sizeof(err)) == DEXEC_OK,
                  "config: %s", err);
    return cfg;
}

/* An engine over testgood; the config is freed at once, since the engine
 * keeps its own copy. */
static dexec_engine *make_engine(int nranks)
{
    dexec_config *cfg = make_config("testgood", nranks);
    dexec_engine *e = NULL;

    ck_assert_msg(dexec_engine_create(cfg, &e, err, sizeof(err)) == DEXEC_OK, "create: %s", err);
    dexec_config_free(cfg);
    ck_assert_ptr_nonnull(e);
    return e;
}

START_TEST(create_and_describe)
{
    dexec_engine *e = make_engine(2);

    ck_assert_str_eq(dexec_engine_backend(e), "testgood 1.2.3");
    ck_assert_int_eq(dexec_engine_num_ranks(e), 2);
    ck_assert_str_eq(dexec_engine_last_error(e), "");
    dexec_engine_free(e);
}
END_TEST

/* The message of a create that failed: "NAME: what (plugin FILE)". */
static void plugin_file(char *buf, size_t size, const char *name)
{
    fmt(buf, size, "%s: simulated create failure (plugin %s/dexec_%s.so)", name, plugdir, name);
}

START_TEST(create_failures)
{
    dexec_config *cfg;
    dexec_engine *e = (dexec_engine *)&e;
    char want[PATH_MAX + 128];

    cfg = make_config("nosuch", 1);
    ck_assert_int_eq(dexec_engine_create(cfg, &e, err, sizeof(err)), DEXEC_ENOTFOUND);
    ck_assert_ptr_null(e);
    ck_assert_msg(strncmp(err, "plugin 'nosuch' not found: no dexec_nosuch.so in ", 48) == 0,
                  "unexpected: %s", err);
    dexec_config_free(cfg);

    cfg = make_config("testdisc", 1);
    ck_assert_int_eq(dexec_engine_create(cfg, &e, err, sizeof(err)), DEXEC_EPLUGIN);
    ck_assert_msg(strstr(err, "is a discovery plugin, not an executor plugin") != NULL,
                  "unexpected: %s", err);
    dexec_config_free(cfg);

    /* The backend's own code is kept, and its message is prefixed with
     * the plugin's name and followed by its file. */
    plugin_file(want, sizeof(want), "testgood");
    cfg = make_config("testgood", 1);
    setenv("DEXEC_TESTGOOD_FAIL", "8", 1);
    ck_assert_int_eq(dexec_engine_create(cfg, &e, err, sizeof(err)), DEXEC_ETIMEDOUT);
    ck_assert_str_eq(err, want);
    /* A code outside the ABI only says that starting failed. */
    setenv("DEXEC_TESTGOOD_FAIL", "14", 1);
    ck_assert_int_eq(dexec_engine_create(cfg, &e, err, sizeof(err)), DEXEC_ENOTSUP);
    ck_assert_str_eq(err, want);
    setenv("DEXEC_TESTGOOD_FAIL", "99", 1);
    ck_assert_int_eq(dexec_engine_create(cfg, &e, err, sizeof(err)), DEXEC_EINIT);
    ck_assert_str_eq(err, want);
    unsetenv("DEXEC_TESTGOOD_FAIL");

    ck_assert_int_eq(dexec_engine_create(cfg, NULL, err, sizeof(err)), DEXEC_EINVAL);
    ck_assert_str_eq(err, "dexec_engine_create: out is NULL");
    dexec_config_free(cfg);
}
END_TEST

/* dtype: a half type is refused at once with device = "cpu" (the CPU
 * computes in float32), and otherwise checked against what the ranks
 * say they loaded (get_info's dtype), which testgood cannot tell. */
START_TEST(create_checks_dtype)
{
    dexec_config *cfg = make_config("testgood", 2);
    dexec_engine *e = (dexec_engine *)&e;

    ck_assert_int_eq(dexec_config_set(cfg, "device", "cpu", err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_config_set(cfg, "dtype", "float16", err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_create(cfg, &e, err, sizeof(err)), DEXEC_ENOTSUP);
    ck_assert_ptr_null(e);
    ck_assert_str_eq(err, "dtype = \"float16\" is not supported on the CPU: the CPU backend "
                          "computes in float32 (float16 and bfloat16 files are converted to "
                          "float32 when loaded); use dtype = \"float32\" (the default), or "
                          "device = \"cuda\"");

    ck_assert_int_eq(dexec_config_set(cfg, "device", "auto", err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_config_set(cfg, "dtype", "bfloat16", err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_create(cfg, &e, err, sizeof(err)), DEXEC_ENOTFOUND);
    ck_assert_ptr_null(e);
    ck_assert_str_eq(err, "dtype = \"bfloat16\": asking the ranks how they loaded the model: "
                          "rank 0: no method 'get_info'");

    ck_assert_int_ne(dexec_config_set(cfg, "dtype", "float64", err, sizeof(err)), DEXEC_OK);
    ck_assert_str_eq(err, "dtype: \"float64\" is not one of: float32, float16, bfloat16");

    /* float32, the default, asks the ranks nothing */
    ck_assert_int_eq(dexec_config_set(cfg, "dtype", "float32", err, sizeof(err)), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_create(cfg, &e, err, sizeof(err)), DEXEC_OK);
    dexec_engine_free(e);
    dexec_config_free(cfg);
}
END_TEST

static int progress_calls;

static void count_progress(void *user, size_t request_index, int image_index, int step,
                           int total_steps)
{
    ck_assert_ptr_eq(user, &progress_calls);
    ck_assert_int_le(step, total_steps);
    progress_calls++;
}

START_TEST(step_keeps_order)
{
    dexec_engine *e = make_engine(2);
    dexec_request r[5];
    dexec_output *o = NULL;

    for (int i = 0; i < 5; i++) {
        dexec_request_init(&r[i]);
        r[i].seed = 100 + i;
        r[i].num_inference_steps = 2;
    }
    r[0].request_id = "first";
    r[2].prompt = "fail";
    r[3].seed = -1;
    r[4].request_id = "last";
    r[4].num_outputs_per_prompt = 3;

    progress_calls = 0;
    ck_assert_int_eq(dexec_engine_step(e, r, 5, &o, count_progress, &progress_calls), DEXEC_OK);
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(o[0].request_id, "first");
    ck_assert_str_eq(o[1].request_id, "req-0");
    ck_assert_str_eq(o[2].request_id, "req-1");
    ck_assert_str_eq(o[3].request_id, "req-2");
    ck_assert_str_eq(o[4].request_id, "last");
    for (int i = 0; i < 5; i++) {
        /* whichever slot was free first (testgood answers at once) */
        ck_assert_int_ge(o[i].rank, 0);
        ck_assert_int_le(o[i].rank, 1);
        /* the deadline handed to the backend is timeouts.generate (which
         * testgood reports as its queue time), plus the engine's queue */
        ck_assert_double_ge(o[i].timings.queue_s, 11.0);
        ck_assert_double_lt(o[i].timings.queue_s, 11.0 + 60.0);
        ck_assert_double_ge(o[i].timings.total_s, 0.0);
        if (i == 2)
            continue;
        ck_assert_int_eq(o[i].status, DEXEC_OK);
        ck_assert_ptr_null(o[i].error);
        ck_assert_uint_eq(o[i].num_images, i == 4 ? 3 : 1);
        ck_assert_int_eq(o[i].images[0].pixels[0], (uint8_t)(o[i].seed & 0xff));
    }
    /* one failed request does not fail the others */
    ck_assert_int_eq(o[2].status, DEXEC_EWORKER);
    ck_assert_str_eq(o[2].error, "simulated request failure");
    ck_assert_int_eq(o[0].seed, 100);
    /* a random seed is chosen by the engine and reported */
    ck_assert_int_ge(o[3].seed, 0);
    ck_assert_int_eq(progress_calls, 2 * (1 + 1 + 1 + 3));
    dexec_outputs_free(o, 5);

    ck_assert_int_eq(dexec_engine_step(e, NULL, 0, &o, NULL, NULL), DEXEC_OK);
    ck_assert_ptr_null(o);
    dexec_engine_free(e);
}
END_TEST

/* The growth rule (<dexec/dexec.h>): a caller's request is read up to its
 * struct_size and no further. A caller built with the smallest 1.x request
 * (struct_size DEXEC_REQUEST_SIZE_1_1) whose bytes past it hold garbage is
 * served, and none of the garbage reaches the backend (testgood fails a
 * request whose struct_size or reserved space differs from the engine's). */
START_TEST(step_reads_requests_up_to_struct_size)
{
    dexec_engine *e = make_engine(2);
    dexec_request r[3];
    dexec_output *o = NULL;

    for (int i = 0; i < 3; i++) {
        dexec_request_init(&r[i]);
        r[i].seed = 7 + i;
        r[i].num_inference_steps = 1;
    }
    for (int i = 0; i < 2; i++) {
        memset((char *)&r[i] + DEXEC_REQUEST_SIZE_1_1, 0xa5,
               sizeof(r[i]) - DEXEC_REQUEST_SIZE_1_1);
        r[i].struct_size = (uint32_t)DEXEC_REQUEST_SIZE_1_1;
    }
    r[1].num_outputs_per_prompt = 2;
    ck_assert_int_eq(DEXEC_REQUEST_SIZE_1_1 <= DEXEC_REQUEST_SIZE, 1);
    ck_assert_msg(dexec_engine_step(e, r, 3, &o, NULL, NULL) == DEXEC_OK, "%s",
                  dexec_engine_last_error(e));
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(o[i].status == DEXEC_OK, "output %d: %s", i, o[i].error);
        ck_assert_int_eq(o[i].seed, 7 + i);
        /* outputs come back initialised by this dexec */
        ck_assert_uint_eq(o[i].struct_size, DEXEC_OUTPUT_SIZE);
        ck_assert_uint_eq(o[i].timings.struct_size, DEXEC_TIMINGS_SIZE);
        ck_assert_uint_eq(o[i].num_images, i == 1 ? 2 : 1);
        for (size_t k = 0; k < o[i].num_images; k++)
            ck_assert_uint_eq(o[i].images[k].struct_size, DEXEC_IMAGE_SIZE);
        for (size_t k = 0; k < sizeof(o[i].reserved) / sizeof(o[i].reserved[0]); k++)
            ck_assert_uint_eq(o[i].reserved[k], 0);
    }
    dexec_outputs_free(o, 3);
    dexec_engine_free(e);
}
END_TEST

/* A struct_size below the 1.1 size (an uninitialised or foreign struct) or
 * above sizeof is refused with a message that says what to do. */
START_TEST(step_refuses_bad_struct_size)
{
    dexec_engine *e = make_engine(1);
    dexec_request r[2];
    dexec_output *o = (dexec_output *)&o;
    char want[512];

    dexec_request_init(&r[0]);
    dexec_request_init(&r[1]);
    r[1].struct_size = 0;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_ptr_null(o);
    fmt(want, sizeof(want),
        "request 1: dexec_request.struct_size is 0, below the smallest dexec_request this dexec "
        "reads (%zu bytes, ABI 1.1): initialise it with dexec_request_init()",
        (size_t)DEXEC_REQUEST_SIZE_1_1);
    ck_assert_str_eq(dexec_engine_last_error(e), want);

    r[1].struct_size = (uint32_t)DEXEC_REQUEST_SIZE_1_1 - 1;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    fmt(want, sizeof(want),
        "request 1: dexec_request.struct_size is %zu, below the smallest dexec_request this "
        "dexec reads (%zu bytes, ABI 1.1): initialise it with dexec_request_init()",
        (size_t)DEXEC_REQUEST_SIZE_1_1 - 1, (size_t)DEXEC_REQUEST_SIZE_1_1);
    ck_assert_str_eq(dexec_engine_last_error(e), want);

    r[1].struct_size = (uint32_t)sizeof(dexec_request) + 1;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    fmt(want, sizeof(want),
        "request 1: dexec_request.struct_size is %zu, above sizeof(dexec_request) (%zu): not an "
        "initialised dexec_request of ABI 1.x; initialise it with dexec_request_init()",
        sizeof(dexec_request) + 1, sizeof(dexec_request));
    ck_assert_str_eq(dexec_engine_last_error(e), want);

    /* the codec refuses it too, rather than read past the caller's struct */
    ck_assert_ptr_null(dexec_request_to_value(&r[1]));
    ck_assert_int_eq(dexec_struct_check("dexec_thing", 10, 12, 16, want, sizeof(want)),
                     DEXEC_EINVAL);
    ck_assert_str_eq(want, "dexec_thing.struct_size is 10, below the smallest dexec_thing this "
                           "dexec reads (12 bytes, ABI 1.1): initialise it with dexec_thing_init()");
    ck_assert_int_eq(dexec_struct_check("dexec_thing", 12, 12, 16, NULL, 0), DEXEC_OK);
    ck_assert_int_eq(dexec_struct_check("dexec_thing", 16, 12, 16, NULL, 0), DEXEC_OK);
    dexec_engine_free(e);
}
END_TEST

/* A backend that wipes the struct_size of the outputs it fills makes the
 * step fail with EPLUGIN, not an engine that reads a struct it cannot size. */
START_TEST(step_refuses_clobbered_output)
{
    dexec_engine *e = make_engine(1);
    dexec_request r;
    dexec_output *o = (dexec_output *)&o;
    char want[512];

    dexec_request_init(&r);
    r.prompt = "clobber-output";
    ck_assert_int_eq(dexec_engine_step(e, &r, 1, &o, NULL, NULL), DEXEC_EPLUGIN);
    ck_assert_ptr_null(o);
    fmt(want, sizeof(want),
        "%s: step: output 0: dexec_output.struct_size is 0, below the smallest dexec_output this "
        "dexec reads (%zu bytes, ABI 1.1): initialise it with dexec_output_init() (a backend "
        "keeps the struct_size of the outputs it fills)",
        dexec_engine_backend(e), (size_t)DEXEC_OUTPUT_SIZE_1_1);
    ck_assert_str_eq(dexec_engine_last_error(e), want);
    dexec_engine_free(e);
}
END_TEST

START_TEST(step_rejects_bad_requests)
{
    dexec_engine *e = make_engine(1);
    dexec_request r[2];
    dexec_output *o = (dexec_output *)&o;

    dexec_request_init(&r[0]);
    dexec_request_init(&r[1]);
    r[1].request_id = "x";

    ck_assert_int_eq(dexec_engine_step(e, NULL, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_ptr_null(o);
    ck_assert_str_eq(dexec_engine_last_error(e), "step: 2 requests but reqs is NULL");
    ck_assert_int_eq(dexec_engine_step(e, r, 2, NULL, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "step: outs is NULL");

    r[1].height = -1;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "request 1 (x): height -1 is outside 0..4096");
    r[1].height = 0;
    r[1].width = -3;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "request 1 (x): width -3 is outside 0..4096");
    r[1].width = 0;
    r[1].num_inference_steps = -1;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e),
                     "request 1 (x): num_inference_steps -1 is outside 0..1000");
    r[1].num_inference_steps = 0;
    r[1].num_outputs_per_prompt = -2;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e),
                     "request 1 (x): num_outputs_per_prompt -2 is outside 0..64");
    r[1].num_outputs_per_prompt = 0;
    /* the upper limits are those of <dexec/limits.h>, as in the worker */
    r[1].width = DEXEC_MAX_IMAGE_SIZE + 1;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "request 1 (x): width 4097 is outside 0..4096");
    r[1].width = 0;
    r[1].num_inference_steps = DEXEC_MAX_STEPS + 1;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e),
                     "request 1 (x): num_inference_steps 1001 is outside 0..1000");
    r[1].num_inference_steps = 0;
    r[1].guidance_scale = 100.5;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e),
                     "request 1 (x): guidance_scale 100.5 is outside 0..100 (negative: the "
                     "model's default)");
    r[1].guidance_scale = -1;
    r[0].guidance_scale = NAN;
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e),
                     "request 0 (no id): guidance_scale nan is outside 0..100 (negative: the model's default)");
    r[0].guidance_scale = -1;
    r[0].request_id = "";
    ck_assert_int_eq(dexec_engine_step(e, r, 2, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e),
                     "request 0: request_id is empty (use NULL to have one assigned)");
    ck_assert_ptr_null(o);
    dexec_engine_free(e);
}
END_TEST

/* dexec_engine_rank_stats: the executor's counts, the caller's struct
 * checked, a rank out of range refused. */
START_TEST(rank_stats_from_executor)
{
    dexec_engine *e = make_engine(2);
    dexec_rank_stats rs;
    char want[512];

    dexec_rank_stats_init(&rs);
    ck_assert_int_eq(dexec_engine_rank_stats(e, 1, &rs), DEXEC_OK);
    ck_assert_uint_eq(rs.deaths, 2);
    ck_assert_uint_eq(rs.restarts, 1);
    ck_assert_uint_eq(rs.struct_size, DEXEC_RANK_STATS_SIZE);
    ck_assert_int_eq(dexec_engine_rank_stats(e, 2, &rs), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "rank_stats: rank 2 is outside 0..1");
    ck_assert_int_eq(dexec_engine_rank_stats(e, -1, &rs), DEXEC_EINVAL);
    rs.struct_size = 4;
    ck_assert_int_eq(dexec_engine_rank_stats(e, 0, &rs), DEXEC_EINVAL);
    fmt(want, sizeof(want),
        "rank_stats: dexec_rank_stats.struct_size is 4, not one this dexec reads (%zu..%zu "
        "bytes, ABI 1.2): initialise it with dexec_rank_stats_init()",
        (size_t)DEXEC_RANK_STATS_SIZE_1_2, sizeof(dexec_rank_stats));
    ck_assert_str_eq(dexec_engine_last_error(e), want);
    ck_assert_int_eq(dexec_engine_rank_stats(e, 0, NULL), DEXEC_EINVAL);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_rank_stats_init(&rs);
    ck_assert_int_eq(dexec_engine_rank_stats(e, 0, &rs), DEXEC_ECLOSED);
    dexec_engine_free(e);
}
END_TEST

/* Each thread reads its own last error, kept in the thread's storage (a
 * server's per-connection threads leave nothing behind), for the 8
 * engines it used most recently. */
#define LE_THREADS 100

typedef struct {
    dexec_engine *e;
    pthread_barrier_t *all_called; /* every thread alive at once */
    int ok;
} le_arg;

static void *fail_in_thread(void *arg)
{
    le_arg *a = arg;
    dexec_value *rep = NULL;

    a->ok = strcmp(dexec_engine_last_error(a->e), "") == 0 &&
            dexec_engine_collective_rpc(a->e, NULL, 0, NULL, NULL, -1, &rep) == DEXEC_EINVAL;
    pthread_barrier_wait(a->all_called); /* all threads have failed once */
    pthread_barrier_wait(a->all_called);
    a->ok = a->ok && strcmp(dexec_engine_last_error(a->e), "collective_rpc: no method name") == 0;
    return NULL;
}

START_TEST(last_error_per_thread)
{
    dexec_engine *e = make_engine(1), *others[8];
    dexec_value *rep = NULL;
    pthread_barrier_t bar;
    pthread_t th[LE_THREADS];
    le_arg args[LE_THREADS];

    ck_assert_int_eq(dexec_engine_collective_rpc(e, NULL, 0, NULL, NULL, -1, &rep), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "collective_rpc: no method name");
    ck_assert_int_eq(pthread_barrier_init(&bar, NULL, LE_THREADS + 1), 0);
    for (int i = 0; i < LE_THREADS; i++) {
        args[i] = (le_arg){.e = e, .all_called = &bar};
        ck_assert_int_eq(pthread_create(&th[i], NULL, fail_in_thread, &args[i]), 0);
    }
    pthread_barrier_wait(&bar);
    pthread_barrier_wait(&bar);
    for (int i = 0; i < LE_THREADS; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        ck_assert_msg(args[i].ok, "thread %d did not read its own message", i);
    }
    pthread_barrier_destroy(&bar);
    /* the other threads' failures left this thread's message alone */
    ck_assert_str_eq(dexec_engine_last_error(e), "collective_rpc: no method name");
    /* a thread holds the messages of its 8 most recent engines */
    for (int i = 0; i < 8; i++) {
        others[i] = make_engine(1);
        ck_assert_int_eq(dexec_engine_step(others[i], NULL, 1, &(dexec_output *){NULL}, NULL,
                                           NULL),
                         DEXEC_EINVAL);
        ck_assert_str_eq(dexec_engine_last_error(others[i]), "step: 1 requests but reqs is NULL");
    }
    ck_assert_str_eq(dexec_engine_last_error(e), "");
    ck_assert_str_eq(dexec_engine_last_error(others[0]), "step: 1 requests but reqs is NULL");
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(dexec_engine_close(others[i]), DEXEC_OK);
        dexec_engine_free(others[i]);
    }
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
}
END_TEST

START_TEST(rpc_by_rank)
{
    dexec_engine *e = make_engine(3);
    dexec_value *rep = NULL, *args = dexec_value_array();

    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, -1, &rep),
                     DEXEC_OK);
    ck_assert_int_eq(rep->type, DEXEC_VAL_ARRAY);
    ck_assert_uint_eq(rep->u.arr.len, 3);
    for (int r = 0; r < 3; r++)
        ck_assert_int_eq(dexec_value_as_int(dexec_value_array_get(rep, (size_t)r), -1), r);
    dexec_value_free(rep);

    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, 2, &rep),
                     DEXEC_OK);
    ck_assert_int_eq(dexec_value_as_int(rep, -1), 2);
    dexec_value_free(rep);

    /* timeout <= 0 means timeouts.rpc; a given one is passed through */
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "timeout", -1, NULL, NULL, 0, &rep),
                     DEXEC_OK);
    ck_assert_double_eq(dexec_value_as_float(rep, 0), 7.0);
    dexec_value_free(rep);
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "timeout", 2.5, NULL, NULL, 0, &rep),
                     DEXEC_OK);
    ck_assert_double_eq(dexec_value_as_float(rep, 0), 2.5);
    dexec_value_free(rep);

    dexec_value_array_push(args, dexec_value_str("hi"));
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "echo", 0, args, NULL, 1, &rep), DEXEC_OK);
    ck_assert(dexec_value_equal(rep, args));
    dexec_value_free(rep);
    dexec_value_free(args);
    dexec_engine_free(e);
}
END_TEST

START_TEST(rpc_errors)
{
    dexec_engine *e = make_engine(2);
    dexec_value *rep = (dexec_value *)&rep, *notarray = dexec_value_int(1);

    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, 2, &rep),
                     DEXEC_EINVAL);
    ck_assert_ptr_null(rep);
    ck_assert_str_eq(dexec_engine_last_error(e),
                     "collective_rpc get_rank: unique_reply_rank 2 is out of range: "
                     "the engine has 2 ranks (0..1)");
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "fail", 0, NULL, NULL, -1, &rep),
                     DEXEC_EWORKER);
    ck_assert_ptr_null(rep);
    ck_assert_str_eq(dexec_engine_last_error(e), "rank 1: fail: simulated worker error");
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "nosuch", 0, NULL, NULL, -1, &rep),
                     DEXEC_ENOTFOUND);
    ck_assert_str_eq(dexec_engine_last_error(e), "rank 0: no method 'nosuch'");
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "echo", 0, notarray, NULL, -1, &rep),
                     DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "collective_rpc echo: args must be an array");
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "echo", 0, NULL, notarray, -1, &rep),
                     DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "collective_rpc echo: kwargs must be a map");
    ck_assert_int_eq(dexec_engine_collective_rpc(e, NULL, 0, NULL, NULL, -1, &rep), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "collective_rpc: no method name");
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", NAN, NULL, NULL, -1, &rep),
                     DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "collective_rpc get_rank: timeout is NaN");
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, -1, NULL),
                     DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e), "collective_rpc: replies is NULL");
    dexec_value_free(notarray);
    dexec_engine_free(e);
}
END_TEST

START_TEST(health)
{
    dexec_engine *e = make_engine(2);
    dexec_value *rep = NULL, *args = dexec_value_array();

    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_OK);
    dexec_value_array_push(args, dexec_value_int(1));
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "set_unhealthy", 0, args, NULL, -1, &rep),
                     DEXEC_OK);
    dexec_value_free(rep);
    dexec_value_free(args);
    /* the deadline handed to the backend is timeouts.health */
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_EUNHEALTHY);
    ck_assert_str_eq(dexec_engine_last_error(e), "rank 0: marked unhealthy (health timeout 3 s)");
    dexec_engine_free(e);
}
END_TEST

START_TEST(close_is_idempotent)
{
    dexec_engine *e = make_engine(2);
    dexec_value *rep = (dexec_value *)&rep;
    dexec_output *o = (dexec_output *)&o;
    dexec_request r;

    dexec_request_init(&r);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_ECLOSED);
    ck_assert_str_eq(dexec_engine_last_error(e), "engine is closed");
    ck_assert_int_eq(dexec_engine_num_ranks(e), 0);
    ck_assert_str_eq(dexec_engine_backend(e), "testgood 1.2.3");

    ck_assert_int_eq(dexec_engine_step(e, &r, 1, &o, NULL, NULL), DEXEC_ECLOSED);
    ck_assert_ptr_null(o);
    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, -1, &rep),
                     DEXEC_ECLOSED);
    ck_assert_ptr_null(rep);
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_ECLOSED);
    ck_assert_str_eq(dexec_engine_last_error(e), "engine is closed");
    dexec_engine_free(e);
}
END_TEST

START_TEST(null_engine)
{
    dexec_output *o = NULL;
    dexec_value *rep = NULL;
    dexec_request r;

    dexec_request_init(&r);
    ck_assert_int_eq(dexec_engine_step(NULL, &r, 1, &o, NULL, NULL), DEXEC_EINVAL);
    ck_assert_int_eq(dexec_engine_collective_rpc(NULL, "get_rank", 0, NULL, NULL, -1, &rep),
                     DEXEC_EINVAL);
    ck_assert_int_eq(dexec_engine_check_health(NULL), DEXEC_EINVAL);
    ck_assert_int_eq(dexec_engine_close(NULL), DEXEC_EINVAL);
    ck_assert_int_eq(dexec_engine_num_ranks(NULL), 0);
    ck_assert_str_eq(dexec_engine_backend(NULL), "");
    ck_assert_str_eq(dexec_engine_last_error(NULL), "engine is NULL");
    dexec_engine_free(NULL);
    dexec_outputs_free(NULL, 3);
    dexec_output_clear(NULL);
    dexec_request_init(NULL);
}
END_TEST

START_TEST(request_defaults)
{
    dexec_request r;

    memset(&r, 0x5a, sizeof(r));
    dexec_request_init(&r);
    ck_assert_ptr_null(r.request_id);
    ck_assert_ptr_null(r.prompt);
    ck_assert_ptr_null(r.negative_prompt);
    ck_assert_int_eq(r.height, 0);
    ck_assert_int_eq(r.width, 0);
    ck_assert_int_eq(r.num_inference_steps, 0);
    ck_assert_double_lt(r.guidance_scale, 0);
    ck_assert_int_lt(r.seed, 0);
    ck_assert_int_eq(r.num_outputs_per_prompt, 0);
}
END_TEST

/* ---- threads ------------------------------------------------------------------ */

typedef struct worker_arg {
    dexec_engine *e;
    int id;
    int stop_on_closed; /* loop until the engine is closed */
    int ok, closed, other;
} worker_arg;

static void *hammer(void *p)
{
    worker_arg *a = p;

    for (int i = 0; a->stop_on_closed || i < 50; i++) {
        dexec_request r[3];
        dexec_output *o = NULL;
        dexec_value *rep = NULL;
        dexec_status s[3];

        for (int k = 0; k < 3; k++) {
            dexec_request_init(&r[k]);
            r[k].seed = a->id * 1000 + i * 3 + k;
        }
        s[0] = dexec_engine_step(a->e, r, 3, &o, NULL, NULL);
        if (s[0] == DEXEC_OK) {
            for (int k = 0; k < 3; k++)
                if (o[k].seed != r[k].seed || o[k].status != DEXEC_OK)
                    a->other++;
            dexec_outputs_free(o, 3);
        }
        s[1] = dexec_engine_collective_rpc(a->e, "get_rank", 0, NULL, NULL, a->id % 2, &rep);
        if (s[1] == DEXEC_OK && dexec_value_as_int(rep, -1) != a->id % 2)
            a->other++;
        dexec_value_free(rep);
        s[2] = dexec_engine_check_health(a->e);
        for (int k = 0; k < 3; k++) {
            if (s[k] == DEXEC_OK)
                a->ok++;
            else if (s[k] == DEXEC_ECLOSED)
                a->closed++;
            else
                a->other++;
        }
        if (a->stop_on_closed && s[2] == DEXEC_ECLOSED) {
            if (strcmp(dexec_engine_last_error(a->e), "engine is closed") != 0)
                a->other++;
            break;
        }
    }
    return NULL;
}

START_TEST(four_threads)
{
    dexec_engine *e = make_engine(2);
    pthread_t t[4];
    worker_arg a[4];

    for (int i = 0; i < 4; i++) {
        a[i] = (worker_arg){.e = e, .id = i};
        ck_assert_int_eq(pthread_create(&t[i], NULL, hammer, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        ck_assert_int_eq(a[i].ok, 150);
        ck_assert_int_eq(a[i].other, 0);
    }
    dexec_engine_free(e);
}
END_TEST

START_TEST(close_while_busy)
{
    dexec_engine *e = make_engine(2);
    pthread_t t[4];
    worker_arg a[4];

    for (int i = 0; i < 4; i++) {
        a[i] = (worker_arg){.e = e, .id = i, .stop_on_closed = 1};
        ck_assert_int_eq(pthread_create(&t[i], NULL, hammer, &a[i]), 0);
    }
    usleep(20000);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        ck_assert_int_gt(a[i].closed, 0);
        ck_assert_int_eq(a[i].other, 0);
    }
    dexec_engine_free(e);
}
END_TEST

typedef struct reentry {
    dexec_engine *e;
    pthread_t closer;
    int calls;
    dexec_status health, close;
    char close_msg[256];
    int ranks;
} reentry;

static void *close_engine(void *p)
{
    dexec_engine_close(p);
    return NULL;
}

/* Calls back into the engine from a progress callback while another thread
 * waits to close it: neither may deadlock. */
static void reenter(void *user, size_t request_index, int image_index, int step,
                    int total_steps)
{
    reentry *r = user;

    if (r->calls++ > 0)
        return;
    ck_assert_int_eq(pthread_create(&r->closer, NULL, close_engine, r->e), 0);
    usleep(50000); /* let the closer queue up on the lock */
    r->health = dexec_engine_check_health(r->e);
    r->ranks = dexec_engine_num_ranks(r->e);
    r->close = dexec_engine_close(r->e);
    fmt(r->close_msg, sizeof(r->close_msg), "%s", dexec_engine_last_error(r->e));
}

START_TEST(progress_callback_reenters)
{
    dexec_engine *e = make_engine(2);
    reentry r = {.e = e};
    dexec_request req;
    dexec_output *o = NULL;

    dexec_request_init(&req);
    ck_assert_int_eq(dexec_engine_step(e, &req, 1, &o, reenter, &r), DEXEC_OK);
    dexec_outputs_free(o, 1);
    pthread_join(r.closer, NULL);
    ck_assert_int_eq(r.health, DEXEC_OK);
    ck_assert_int_eq(r.ranks, 2);
    ck_assert_int_eq(r.close, DEXEC_EINVAL);
    ck_assert_str_eq(r.close_msg, "close called from inside a call on the same engine (a "
                                  "progress callback?): close after that call returns");
    /* the other thread's close went through once the step returned */
    ck_assert_int_eq(dexec_engine_num_ranks(e), 0);
    dexec_engine_free(e);
}
END_TEST

typedef struct err_arg {
    dexec_engine *e;
    char seen_before[64];
    char seen_after[64];
} err_arg;

static void *other_thread(void *p)
{
    err_arg *a = p;

    snprintf(a->seen_before, sizeof(a->seen_before), "%s", dexec_engine_last_error(a->e));
    ck_assert_int_eq(dexec_engine_collective_rpc(a->e, "nosuch", 0, NULL, NULL, -1,
                                                 &(dexec_value *){NULL}),
                     DEXEC_ENOTFOUND);
    snprintf(a->seen_after, sizeof(a->seen_after), "%s", dexec_engine_last_error(a->e));
    return NULL;
}

START_TEST(last_error_is_per_thread)
{
    dexec_engine *e = make_engine(2);
    err_arg a = {.e = e};
    pthread_t t;

    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_rank", 0, NULL, NULL, 5,
                                                 &(dexec_value *){NULL}),
                     DEXEC_EINVAL);
    ck_assert_int_eq(pthread_create(&t, NULL, other_thread, &a), 0);
    pthread_join(t, NULL);
    ck_assert_str_eq(a.seen_before, "");
    ck_assert_str_eq(a.seen_after, "rank 0: no method 'nosuch'");
    ck_assert_str_eq(dexec_engine_last_error(e),
                     "collective_rpc get_rank: unique_reply_rank 5 is out of range: "
                     "the engine has 2 ranks (0..1)");
    dexec_engine_free(e);
}
END_TEST

static Suite *engine_suite(void)
{
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("api");
    TCase *tt = tcase_create("threads");

    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, create_and_describe);
    tcase_add_test(tc, create_failures);
    tcase_add_test(tc, create_checks_dtype);
    tcase_add_test(tc, step_keeps_order);
    tcase_add_test(tc, step_rejects_bad_requests);
    tcase_add_test(tc, last_error_per_thread);
    tcase_add_test(tc, step_reads_requests_up_to_struct_size);
    tcase_add_test(tc, step_refuses_bad_struct_size);
    tcase_add_test(tc, step_refuses_clobbered_output);
    tcase_add_test(tc, rank_stats_from_executor);
    tcase_add_test(tc, rpc_by_rank);
    tcase_add_test(tc, rpc_errors);
    tcase_add_test(tc, health);
    tcase_add_test(tc, close_is_idempotent);
    tcase_add_test(tc, null_engine);
    tcase_add_test(tc, request_defaults);
    suite_add_tcase(s, tc);

    tcase_add_checked_fixture(tt, setup, NULL);
    tcase_add_test(tt, four_threads);
    tcase_add_test(tt, close_while_busy);
    tcase_add_test(tt, last_error_is_per_thread);
    tcase_add_test(tt, progress_callback_reenters);
    tcase_set_timeout(tt, 60);
    suite_add_tcase(s, tt);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(engine_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
