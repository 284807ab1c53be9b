/*
 * test-parallel.c - parallel groups end to end (doc/parallelism.md): real
 * dexec-worker processes in cfg = 2 groups through the engine API, their
 * images against one rank's, request order across two groups, a member
 * killed mid-step, external workers forming a group, and the refusals;
 * then the same for the ray_actor executor, whose ranks are threads of one
 * actor process.
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dexec/dexec.h>
#include <dexec/rpc.h>

/* How long a request may take to fail after a group member's death on a
 * loaded 2-core machine; the figure (1 s) and the measured one are
 * in doc/performance.md. */
#define DEATH_BOUND 3.0

/* the settings of the ray_actor executor (one actor process, its ranks
 * threads) */
#define RAY "distributed_executor_backend", "ray_actor"

static const char *const prompts[] = {"sneaker", "bag", "trouser", "dress", "ankle boot", "coat"};

static dexec_engine *open_engine(int ranks, const char *const *kv, char *err, size_t errlen,
                                 dexec_status *st)
{
    dexec_config *cfg = NULL;
    dexec_engine *e = NULL;
    char n[16];

    ck_assert_int_eq(dexec_config_load(NULL, &cfg, err, errlen), DEXEC_OK);
    snprintf(n, sizeof(n), "%d", ranks);
    if (ranks > 0)
        ck_assert_int_eq(dexec_config_set(cfg, "num_gpus", n, err, errlen), DEXEC_OK);
    ck_assert_int_eq(dexec_config_set(cfg, "device", "cpu", err, errlen), DEXEC_OK);
    /* one thread per rank: 2 ranks fill this 2-core machine */
    ck_assert_int_eq(dexec_config_set(cfg, "mp.cpus_per_rank", ranks > 2 ? "-1" : "1", err, errlen),
                     DEXEC_OK);
    for (size_t i = 0; kv != NULL && kv[i] != NULL; i += 2)
        if (dexec_config_set(cfg, kv[i], kv[i + 1], err, errlen) != DEXEC_OK)
            ck_abort_msg("%s = %s: %s", kv[i], kv[i + 1], err);
    *st = dexec_engine_create(cfg, &e, err, errlen);
    dexec_config_free(cfg);
    return e;
}

static dexec_engine *must_open(int ranks, const char *const *kv)
{
    char err[2048];
    dexec_status st;
    dexec_engine *e = open_engine(ranks, kv, err, sizeof(err), &st);

    if (st != DEXEC_OK)
        ck_abort_msg("engine create failed: %s", err);
    return e;
}

static void make_requests(dexec_request *r, size_t n, char ids[][16], int steps)
{
    for (size_t i = 0; i < n; i++) {
        dexec_request_init(&r[i]);
        snprintf(ids[i], 16, "r%zu", i);
        r[i].request_id = ids[i];
        r[i].prompt = prompts[i % 6];
        r[i].seed = 100 + (int64_t)i;
        r[i].num_inference_steps = steps;
    }
}

static size_t pixels_of(const dexec_output *o)
{
    const dexec_image *im = &o->images[0];

    return (size_t)im->width * im->height * im->channels;
}

/* The images of n requests on `ranks` ranks with the extra settings. */
static dexec_output *run(int ranks, const char *const *kv, dexec_request *reqs, size_t n)
{
    dexec_engine *e = must_open(ranks, kv);
    dexec_output *outs = NULL;

    ck_assert_int_eq(dexec_engine_step(e, reqs, n, &outs, NULL, NULL), DEXEC_OK);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
    return outs;
}

/* The stated tolerance of a group's pixels against one rank's (8-bit
 * values): each rank of a cfg pair computes its branch as a batch of one,
 * where one rank computes the two branches as one batch of two, and
 * OpenBLAS may sum a GEMM row in another order for another row count, so
 * the predictions can differ in their last bits and, through the steps, an
 * 8-bit pixel by one (doc/parallelism.md). */
#define PIXEL_TOLERANCE 1

static void assert_same_images(const dexec_output *a, const dexec_output *b, size_t n)
{
    size_t differ = 0, total = 0;
    int worst = 0;

    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(a[i].status == DEXEC_OK, "request %zu: %s", i, a[i].error);
        ck_assert_msg(b[i].status == DEXEC_OK, "request %zu: %s", i, b[i].error);
        ck_assert_uint_eq(b[i].num_images, 1);
        ck_assert_uint_eq(pixels_of(&a[i]), pixels_of(&b[i]));
        for (size_t k = 0; k < pixels_of(&a[i]); k++) {
            int d = abs((int)a[i].images[0].pixels[k] - (int)b[i].images[0].pixels[k]);

            differ += d != 0;
            worst = d > worst ? d : worst;
        }
        total += pixels_of(&a[i]);
    }
    fprintf(stderr,
            "test-parallel: %zu of %zu pixel values differ from one rank's, by at most "
            "%d\n",
            differ, total, worst);
    ck_assert_msg(worst <= PIXEL_TOLERANCE,
                  "a pixel differs by %d from one rank's (tolerance %d; %zu of %zu differ)", worst,
                  PIXEL_TOLERANCE, differ, total);
}

/* get_stats of rank (answered by the worker's I/O thread). */
static dexec_value *rank_stats(dexec_engine *e, int rank)
{
    dexec_value *st = NULL;

    ck_assert_int_eq(dexec_engine_collective_rpc(e, "get_stats", 5, NULL, NULL, rank, &st),
                     DEXEC_OK);
    return st;
}

static const char *const cfg2[] = {"parallel.cfg", "2", NULL};

/* After n requests of 6 steps on a cfg pair (ranks 0 and 1): each rank
 * sent its branch's prediction (1 x 28 x 28 floats) every step; only the
 * first rank made (decoded) images, the second sampled without decoding. */
static void assert_pair_stats(dexec_engine *e, int n)
{
    for (int r = 0; r < 2; r++) {
        dexec_value *st = rank_stats(e, r);
        double decode = dexec_value_as_float(
            dexec_value_map_get(dexec_value_map_get(st, "seconds"), "decode"), -1);

        ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(st, "collective_bytes"), -1),
                         n * 6 * 28 * 28 * 4);
        ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(st, "images"), -1),
                         r == 0 ? n : 0);
        if (r == 0)
            ck_assert_msg(decode > 0, "rank 0 decode %g s", decode);
        else
            ck_assert_msg(decode == 0, "rank 1 decoded for %g s", decode);
        dexec_value_free(st);
    }
}

START_TEST(test_cfg2_same_pixels_bundled)
{
    enum { N = 4 };
    dexec_request reqs[N];
    char ids[N][16];
    dexec_output *one, *two;

    make_requests(reqs, N, ids, 6);
    reqs[3].negative_prompt = "bag";
    reqs[2].guidance_scale = 2.5;
    one = run(1, NULL, reqs, N);
    {
        dexec_engine *e = must_open(2, cfg2);

        ck_assert_int_eq(dexec_engine_step(e, reqs, N, &two, NULL, NULL), DEXEC_OK);
        assert_pair_stats(e, N);
        ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
        dexec_engine_free(e);
    }
    assert_same_images(one, two, N);
    for (int i = 0; i < N; i++) {
        ck_assert_str_eq(two[i].request_id, ids[i]);
        ck_assert_int_eq(two[i].rank, 0); /* the group's first rank replies */
    }
    /* sequence = 2, and cfg = 2 x sequence = 2 */
    {
        static const char *const seq2[] = {"parallel.sequence", "2", NULL};
        static const char *const both[] = {"parallel.cfg", "2", "parallel.sequence", "2", NULL};
        dexec_output *s2 = run(2, seq2, reqs, N), *cs = run(4, both, reqs, N);

        assert_same_images(one, s2, N);
        assert_same_images(one, cs, N);
        dexec_outputs_free(s2, N);
        dexec_outputs_free(cs, N);
    }
    dexec_outputs_free(one, N);
    dexec_outputs_free(two, N);
}
END_TEST

/* A seeded random DiT of DiT-S shape (hidden 384, depth 12, 6 heads, 256
 * tokens: 32 x 32 pixels in 2 x 2 patches) from dexec-model init. */
START_TEST(test_cfg2_same_pixels_dit_s)
{
    enum { N = 2 };
    const char *tool = getenv("DEXEC_MODEL_TOOL");
    char path[] = "/tmp/dexec-dit-s-XXXXXX", cmd[1024], file[64];
    const char *kv1[] = {"model", file, NULL};
    const char *kv2[] = {"model", file, "parallel.cfg", "2", NULL};
    dexec_request reqs[N];
    char ids[N][16];
    dexec_output *one, *two;

    ck_assert_ptr_nonnull(tool);
    ck_assert_ptr_nonnull(mkdtemp(path));
    snprintf(file, sizeof(file), "%s/dit-s.safetensors", path);
    snprintf(cmd, sizeof(cmd),
             "'%s' init '%s' --image-size 32 --channels 3 --patch 2 --hidden 384 --depth 12 "
             "--heads 6 --classes 10 --seed 3 >/dev/null",
             tool, file);
    ck_assert_int_eq(system(cmd), 0);
    make_requests(reqs, N, ids, 2);
    reqs[0].prompt = "class1";
    reqs[1].prompt = "class7";
    one = run(1, kv1, reqs, N);
    two = run(2, kv2, reqs, N);
    assert_same_images(one, two, N);
    {
        /* cfg = 2 x sequence = 2 in one ray_actor actor */
        const char *kv4[] = {"model", file, RAY, "parallel.cfg", "2", "parallel.sequence", "2",
                             NULL};
        dexec_output *four = run(4, kv4, reqs, N);

        assert_same_images(one, four, N);
        dexec_outputs_free(four, N);
    }
    ck_assert_int_eq(one[0].images[0].channels, 3);
    ck_assert_int_eq(one[0].images[0].width, 32);
    dexec_outputs_free(one, N);
    dexec_outputs_free(two, N);
    unlink(file);
    rmdir(path);
}
END_TEST

/* Two groups of cfg = 2 on four ranks (conf: the executor's cfg = 2
 * setting): requests dealt across the groups, outputs in request order,
 * each from its group's first rank. */
static void check_two_groups_keep_order(const char *const *conf)
{
    enum { N = 6 };
    dexec_request reqs[N];
    char ids[N][16];
    dexec_output *one, *four;
    int seen[2] = {0, 0};

    make_requests(reqs, N, ids, 4);
    one = run(1, NULL, reqs, N);
    four = run(4, conf, reqs, N);
    assert_same_images(one, four, N);
    for (int i = 0; i < N; i++) {
        ck_assert_str_eq(four[i].request_id, ids[i]);
        ck_assert_msg(four[i].rank == 0 || four[i].rank == 2, "request %d from rank %d", i,
                      four[i].rank);
        seen[four[i].rank / 2] = 1;
    }
    ck_assert_msg(seen[0] && seen[1], "one group got every request");
    dexec_outputs_free(one, N);
    dexec_outputs_free(four, N);
}

START_TEST(test_two_groups_keep_order)
{
    check_two_groups_keep_order(cfg2);
}
END_TEST

typedef struct killer {
    pid_t victim;
    size_t on_req;
    int sig; /* 0: SIGKILL */
    double killed_at;
} killer;

static void on_progress_kill(void *user, size_t req, int image, int step, int total)
{
    killer *k = user;

    (void)image;
    (void)total;
    if (k->killed_at == 0 && req == k->on_req && step >= 2) {
        kill(k->victim, k->sig != 0 ? k->sig : SIGKILL);
        k->killed_at = dexec_now();
    }
}

static pid_t rank_pid(dexec_engine *e, int rank)
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

/* Nothing a group left in /dev/shm (mailboxes are unlinked once formed). */
static int shm_left(pid_t pid)
{
    char prefix[64];
    struct dirent *d;
    DIR *dir = opendir("/dev/shm");
    int n = 0;

    snprintf(prefix, sizeof(prefix), "dexec-coll-%d-", (int)pid);
    while (dir != NULL && (d = readdir(dir)) != NULL)
        n += strncmp(d->d_name, prefix, strlen(prefix)) == 0;
    if (dir != NULL)
        closedir(dir);
    return n;
}

/* kill -9 of the second member of group 1 while it computes: that
 * group's request fails at once with the death, the other group's
 * succeeds, nobody blocks: the next requests run on group 0 and health
 * names the dead rank. */
START_TEST(test_kill9_member_fails_fast)
{
    static const char *const kv[] = {
        "parallel.cfg", "2", "max_restarts", "0", "max_task_retries", "0", NULL};
    enum { N = 2 };
    dexec_engine *e = must_open(4, kv);
    dexec_request reqs[N];
    char ids[N][16], want[256];
    dexec_output *outs = NULL;
    killer k = {.on_req = 1};
    double done;
    pid_t pids[4];

    for (int r = 0; r < 4; r++)
        pids[r] = rank_pid(e, r);
    make_requests(reqs, N, ids, 400);
    k.victim = pids[3];
    ck_assert_int_eq(dexec_engine_step(e, reqs, N, &outs, on_progress_kill, &k), DEXEC_OK);
    done = dexec_now();
    ck_assert_msg(k.killed_at > 0, "the kill never happened");
    ck_assert_msg(outs[0].status == DEXEC_OK, "request 0: %s", outs[0].error);
    ck_assert_int_eq(outs[1].status, DEXEC_EWORKER);
    snprintf(want, sizeof(want),
             "generate: group 1 (ranks 2-3): rank 3 (pid %d): worker died: killed by signal 9 "
             "(Killed)",
             (int)pids[3]);
    ck_assert_str_eq(outs[1].error, want);
    fprintf(stderr,
            "test-parallel: a group member's death failed the step %.3f s after the "
            "kill (the other group's request finished too)\n",
            done - k.killed_at);
    dexec_outputs_free(outs, N);
    /* the other request ran to its end: time the failure itself alone */
    make_requests(reqs, 1, ids, 400);
    {
        dexec_engine *e2 = must_open(2, kv);
        killer k2 = {.on_req = 0};

        k2.victim = rank_pid(e2, 1);
        ck_assert_int_eq(dexec_engine_step(e2, reqs, 1, &outs, on_progress_kill, &k2),
                         DEXEC_EWORKER);
        done = dexec_now();
        ck_assert_msg(k2.killed_at > 0, "the kill never happened");
        fprintf(stderr, "test-parallel: request failed %.3f s after kill -9 of a member\n",
                done - k2.killed_at);
        ck_assert_msg(done - k2.killed_at < DEATH_BOUND, "failed %.3f s after the kill",
                      done - k2.killed_at);
        ck_assert_msg(strstr(dexec_engine_last_error(e2), "worker died: killed by signal 9") !=
                          NULL,
                      "%s", dexec_engine_last_error(e2));
        /* the group cannot compute any more: said at once, not a hang */
        make_requests(reqs, 1, ids, 4);
        ck_assert_int_eq(dexec_engine_step(e2, reqs, 1, &outs, NULL, NULL), DEXEC_EWORKER);
        ck_assert_msg(
            strstr(dexec_engine_last_error(e2), "no parallel group has all its ranks live") != NULL,
            "%s", dexec_engine_last_error(e2));
        ck_assert_int_eq(dexec_engine_close(e2), DEXEC_OK);
        dexec_engine_free(e2);
    }
    /* the same over TCP links: the dead member's links close */
    {
        static const char *const kvt[] = {
            "parallel.cfg", "2", "max_restarts", "0", "max_task_retries", "0", "parallel.transport",
            "tcp",          NULL};
        dexec_engine *e3 = must_open(2, kvt);
        killer k3 = {.on_req = 0};

        make_requests(reqs, 1, ids, 400);
        k3.victim = rank_pid(e3, 0);
        ck_assert_int_eq(dexec_engine_step(e3, reqs, 1, &outs, on_progress_kill, &k3),
                         DEXEC_EWORKER);
        done = dexec_now();
        ck_assert_msg(k3.killed_at > 0, "the kill never happened");
        fprintf(stderr,
                "test-parallel: request failed %.3f s after kill -9 of a member (TCP "
                "links)\n",
                done - k3.killed_at);
        ck_assert_msg(done - k3.killed_at < DEATH_BOUND, "failed %.3f s after the kill",
                      done - k3.killed_at);
        ck_assert_int_eq(dexec_engine_close(e3), DEXEC_OK);
        dexec_engine_free(e3);
    }
    /* group 0 serves what follows */
    make_requests(reqs, N, ids, 4);
    ck_assert_msg(dexec_engine_step(e, reqs, N, &outs, NULL, NULL) == DEXEC_OK, "%s",
                  dexec_engine_last_error(e));
    for (int i = 0; i < N; i++) {
        ck_assert_msg(outs[i].status == DEXEC_OK, "request %d: %s", i, outs[i].error);
        ck_assert_int_eq(outs[i].rank, 0);
    }
    dexec_outputs_free(outs, N);
    ck_assert_int_eq(dexec_engine_check_health(e), DEXEC_EUNHEALTHY);
    ck_assert_msg(strstr(dexec_engine_last_error(e), "rank 3") != NULL, "%s",
                  dexec_engine_last_error(e));
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
    for (int r = 0; r < 4; r++)
        ck_assert_int_eq(shm_left(pids[r]), 0);
}
END_TEST

/* With recovery the killed member is restarted, the group formed again
 * and the request dealt again: it succeeds with the undisturbed pixels. */
START_TEST(test_kill9_member_recovered)
{
    static const char *const kv[] = {
        "parallel.cfg", "2", "max_restarts", "1", "max_task_retries", "1", NULL};
    dexec_engine *e = must_open(2, kv);
    dexec_request reqs[1];
    char ids[1][16];
    dexec_output *ref = NULL, *outs = NULL;
    killer k = {.on_req = 0};
    pid_t before;

    make_requests(reqs, 1, ids, 400);
    ck_assert_int_eq(dexec_engine_step(e, reqs, 1, &ref, NULL, NULL), DEXEC_OK);
    before = rank_pid(e, 0);
    k.victim = before;
    ck_assert_int_eq(dexec_engine_step(e, reqs, 1, &outs, on_progress_kill, &k), DEXEC_OK);
    ck_assert_msg(k.killed_at > 0, "the kill never happened");
    ck_assert_msg(outs[0].status == DEXEC_OK, "%s", outs[0].error);
    ck_assert_int_eq(memcmp(outs[0].images[0].pixels, ref[0].images[0].pixels, pixels_of(&ref[0])),
                     0);
    /* the restarted rank 0 (a new pid) is live again */
    for (int t = 0; t < 600 && dexec_engine_check_health(e) != DEXEC_OK; t++)
        usleep(100000);
    ck_assert_int_ne(rank_pid(e, 0), before);
    dexec_outputs_free(outs, 1);
    dexec_outputs_free(ref, 1);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
}
END_TEST

/* A member stopped (SIGSTOP) mid-step: its silence is noticed at
 * timeouts.health, it is ended, and its partner, waiting in a collective,
 * is freed at once: the request fails (no retries here), the stopped rank
 * is restarted, the group formed again, and the next request computes on
 * it (so the partner was not left blocked). */
START_TEST(test_sigstop_member)
{
    static const char *const kv[] = {"parallel.cfg",
                                     "2",
                                     "max_restarts",
                                     "1",
                                     "max_task_retries",
                                     "0",
                                     "timeouts.health",
                                     "1",
                                     NULL};
    dexec_engine *e = must_open(2, kv);
    dexec_request reqs[1];
    char ids[1][16];
    dexec_output *outs = NULL;
    killer k = {.on_req = 0, .sig = SIGSTOP};
    double done;

    make_requests(reqs, 1, ids, 400);
    k.victim = rank_pid(e, 1);
    ck_assert_int_eq(dexec_engine_step(e, reqs, 1, &outs, on_progress_kill, &k), DEXEC_EWORKER);
    done = dexec_now();
    ck_assert_msg(k.killed_at > 0, "the stop never happened");
    fprintf(stderr,
            "test-parallel: request failed %.3f s after SIGSTOP of a member "
            "(timeouts.health = 1)\n",
            done - k.killed_at);
    ck_assert_msg(done - k.killed_at < 1.0 + 5.0, "failed %.3f s after the stop",
                  done - k.killed_at);
    ck_assert_msg(strstr(dexec_engine_last_error(e), "a get_rank probe unanswered") != NULL, "%s",
                  dexec_engine_last_error(e));
    make_requests(reqs, 1, ids, 4);
    ck_assert_msg(dexec_engine_step(e, reqs, 1, &outs, NULL, NULL) == DEXEC_OK, "%s",
                  dexec_engine_last_error(e));
    ck_assert_int_eq(outs[0].status, DEXEC_OK);
    ck_assert_int_ne(rank_pid(e, 1), k.victim);
    dexec_outputs_free(outs, 1);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
}
END_TEST

/* A group that makes no progress for timeouts.stall (here a member
 * stopped while the silence watch looks away: timeouts.health is long) is
 * declared hung and its ranks ended: the request fails, the ranks are
 * restarted and the group formed again for the next one. */
START_TEST(test_stalled_group)
{
    static const char *const kv[] = {"parallel.cfg",
                                     "2",
                                     "max_restarts",
                                     "2",
                                     "max_task_retries",
                                     "0",
                                     "timeouts.health",
                                     "60",
                                     "timeouts.stall",
                                     "2",
                                     NULL};
    dexec_engine *e = must_open(2, kv);
    dexec_request reqs[1];
    char ids[1][16];
    dexec_output *outs = NULL;
    killer k = {.on_req = 0, .sig = SIGSTOP};
    double done;

    make_requests(reqs, 1, ids, 400);
    k.victim = rank_pid(e, 1);
    ck_assert_int_eq(dexec_engine_step(e, reqs, 1, &outs, on_progress_kill, &k), DEXEC_EWORKER);
    done = dexec_now();
    ck_assert_msg(k.killed_at > 0, "the stop never happened");
    fprintf(stderr, "test-parallel: request failed %.3f s after SIGSTOP of a member "
                    "(timeouts.stall = 2)\n",
            done - k.killed_at);
    ck_assert_msg(done - k.killed_at < 2.0 + 5.0, "failed %.3f s after the stop",
                  done - k.killed_at);
    make_requests(reqs, 1, ids, 4);
    ck_assert_msg(dexec_engine_step(e, reqs, 1, &outs, NULL, NULL) == DEXEC_OK, "%s",
                  dexec_engine_last_error(e));
    ck_assert_int_eq(outs[0].status, DEXEC_OK);
    dexec_outputs_free(outs, 1);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
}
END_TEST

/* Invalid layouts are refused at engine create, with the reason. */
START_TEST(test_refusals)
{
    static const char *const seq3[] = {"parallel.sequence", "3", NULL};
    static const char *const ray[] = {"parallel.cfg", "2", "distributed_executor_backend",
                                      "ray_actor", NULL};
    static const char *const ray_seq3[] = {"parallel.sequence", "3",
                                           "distributed_executor_backend", "ray_actor", NULL};
    static const char *const big[] = {"parallel.cfg", "3", NULL};
    const char *want;
    char err[2048];
    dexec_status st;
    dexec_engine *e;

    e = open_engine(3, cfg2, err, sizeof(err), &st);
    ck_assert_int_eq(st, DEXEC_ECONFIG);
    ck_assert_ptr_null(e);
    want = "mp: num_gpus = 3 is not a multiple of parallel.cfg x parallel.sequence = 2 x 1: "
           "num_gpus = data-parallel groups x cfg x sequence (plugin ";
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);

    /* a sequence size that does not divide the model's heads */
    e = open_engine(3, seq3, err, sizeof(err), &st);
    ck_assert_int_eq(st, DEXEC_EWORKER);
    ck_assert_ptr_null(e);
    ck_assert_msg(strstr(err, "mp: group 0 (ranks 0-2): parallel_join: rank 0: parallel.sequence = "
                              "3 does not divide the 4 attention heads of this model: use one "
                              "of 1, 2, 4") != NULL,
                  "%s", err);

    /* the same on the ray_actor executor */
    e = open_engine(3, ray, err, sizeof(err), &st);
    ck_assert_int_eq(st, DEXEC_ECONFIG);
    ck_assert_ptr_null(e);
    want = "ray_actor: num_gpus = 3 is not a multiple of parallel.cfg x parallel.sequence = 2 x "
           "1: num_gpus = data-parallel groups x cfg x sequence (plugin ";
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);
    e = open_engine(3, ray_seq3, err, sizeof(err), &st);
    ck_assert_int_eq(st, DEXEC_EWORKER);
    ck_assert_ptr_null(e);
    ck_assert_msg(strncmp(err, "ray_actor: actor (pid ", 22) == 0 &&
                      strstr(err, "): parallel groups of cfg 1 x sequence 3: rank 0: "
                                  "parallel.sequence = 3 does not divide the 4 attention heads of "
                                  "this model: use one of 1, 2, 4 (plugin ") !=
                          NULL,
                  "%s", err);

    {
        dexec_config *cfg = NULL;

        ck_assert_int_eq(dexec_config_load(NULL, &cfg, err, sizeof(err)), DEXEC_OK);
        ck_assert_int_ne(dexec_config_set(cfg, big[0], big[1], err, sizeof(err)), DEXEC_OK);
        ck_assert_msg(strstr(err, "parallel.cfg: must be between 1 and 2, got 3") != NULL, "%s",
                      err);
        dexec_config_free(cfg);
    }
}
END_TEST

START_TEST(test_guidance_one_refused)
{
    dexec_engine *e = must_open(2, cfg2);
    dexec_request reqs[1];
    char ids[1][16];
    dexec_output *outs = NULL;

    make_requests(reqs, 1, ids, 3);
    reqs[0].guidance_scale = 1.0;
    /* refused by the engine before any worker sees it (bad input, not a
     * worker failure: dexec serve answers 400) */
    ck_assert_int_eq(dexec_engine_step(e, reqs, 1, &outs, NULL, NULL), DEXEC_EINVAL);
    ck_assert_str_eq(dexec_engine_last_error(e),
                     "request 0 (r0): cfg parallelism (parallel.cfg = 2) needs classifier-free "
                     "guidance, and guidance_scale 1 has no unconditional branch: ask for a "
                     "guidance_scale other than 1 or set parallel.cfg = 1");
    /* the group computes the next request */
    reqs[0].guidance_scale = 3.0;
    ck_assert_int_eq(dexec_engine_step(e, reqs, 1, &outs, NULL, NULL), DEXEC_OK);
    ck_assert_int_eq(outs[0].status, DEXEC_OK);
    dexec_outputs_free(outs, 1);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
}
END_TEST

/* Two external workers (dexec-worker --listen tcp:127.0.0.1:0) form one
 * cfg = 2 group: the engine talks to them over TCP; their collectives go
 * through shared memory (transport auto: one host) or over TCP links
 * (transport tcp, as between hosts). */
static pid_t start_tcp_worker(const char *flag, const char *value, char *addr, size_t len)
{
    int out[2];
    char line[256];
    ssize_t n;
    pid_t pid;

    ck_assert_int_eq(pipe(out), 0);
    pid = fork();
    if (pid == 0) {
        dup2(out[1], 1);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(getenv("DEXEC_WORKER"), "dexec-worker", "--listen", "tcp:127.0.0.1:0", "--device",
              "cpu", flag, value, "--print-address", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    n = read(out[0], line, sizeof(line) - 1);
    close(out[0]);
    ck_assert_msg(n > 0, "worker did not start");
    line[n] = '\0';
    line[strcspn(line, "\n")] = '\0';
    snprintf(addr, len, "%s", line);
    return pid;
}

static const char *const transports[] = {"auto", "tcp"};

START_TEST(test_external_group)
{
    enum { N = 3 };
    char a0[256], a1[256], names[520];
    pid_t w0 = start_tcp_worker("--rank", "0", a0, sizeof(a0));
    pid_t w1 = start_tcp_worker("--rank", "1", a1, sizeof(a1));
    const char *kv[] = {
        "parallel.cfg", "2", "distributed_executor_backend", "external", "parallel.transport",
        transports[_i], NULL};
    dexec_request reqs[N];
    char ids[N][16];
    dexec_output *one, *outs = NULL;
    dexec_engine *e;

    make_requests(reqs, N, ids, 5);
    one = run(1, NULL, reqs, N);
    snprintf(names, sizeof(names), "%s,%s", a0, a1);
    setenv("DIFFUSION_WORKER_ACTOR_NAMES", names, 1);
    e = must_open(0, kv);
    unsetenv("DIFFUSION_WORKER_ACTOR_NAMES");
    ck_assert_int_eq(dexec_engine_step(e, reqs, N, &outs, NULL, NULL), DEXEC_OK);
    assert_same_images(one, outs, N);
    dexec_outputs_free(outs, N);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
    /* an engine that does not form groups gets the worker alone */
    {
        static const char *const plain[] = {"distributed_executor_backend", "external", NULL};

        setenv("DIFFUSION_WORKER_ACTOR_NAMES", a0, 1);
        e = must_open(0, plain);
        unsetenv("DIFFUSION_WORKER_ACTOR_NAMES");
        ck_assert_int_eq(dexec_engine_step(e, reqs, N, &outs, NULL, NULL), DEXEC_OK);
        for (int i = 0; i < N; i++)
            ck_assert_int_eq(
                memcmp(one[i].images[0].pixels, outs[i].images[0].pixels, pixels_of(&one[i])), 0);
        dexec_outputs_free(outs, N);
        ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
        dexec_engine_free(e);
    }
    dexec_outputs_free(one, N);
    kill(w0, SIGTERM);
    kill(w1, SIGTERM);
    waitpid(w0, NULL, 0);
    waitpid(w1, NULL, 0);
}
END_TEST

/* ---- ray_actor: the ranks of one actor process form the groups ------------- */

static const char *const ray_cfg2[] = {RAY, "parallel.cfg", "2", NULL};

/* cfg = 2, sequence = 2 and cfg = 2 x sequence = 2 groups of an actor's
 * ranks make one rank's images; the group's first rank answers, the
 * others neither return nor decode images. */
START_TEST(test_ray_same_pixels)
{
    static const char *const seq2[] = {RAY, "parallel.sequence", "2", NULL};
    static const char *const both[] = {RAY, "parallel.cfg", "2", "parallel.sequence", "2", NULL};
    enum { N = 4 };
    dexec_request reqs[N];
    char ids[N][16];
    dexec_output *one, *two, *s2, *cs;
    dexec_engine *e;

    make_requests(reqs, N, ids, 6);
    reqs[3].negative_prompt = "bag";
    reqs[2].guidance_scale = 2.5;
    one = run(1, NULL, reqs, N);
    e = must_open(2, ray_cfg2);
    ck_assert_int_eq(dexec_engine_step(e, reqs, N, &two, NULL, NULL), DEXEC_OK);
    assert_pair_stats(e, N);
    /* both ranks are threads of the one actor */
    ck_assert_int_eq(rank_pid(e, 0), rank_pid(e, 1));
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
    assert_same_images(one, two, N);
    for (int i = 0; i < N; i++) {
        ck_assert_str_eq(two[i].request_id, ids[i]);
        ck_assert_int_eq(two[i].rank, 0);
    }
    s2 = run(2, seq2, reqs, N);
    cs = run(4, both, reqs, N);
    assert_same_images(one, s2, N);
    assert_same_images(one, cs, N);
    for (int i = 0; i < N; i++)
        ck_assert(s2[i].rank == 0 && cs[i].rank == 0);
    dexec_outputs_free(s2, N);
    dexec_outputs_free(cs, N);
    dexec_outputs_free(one, N);
    dexec_outputs_free(two, N);
}
END_TEST

/* Two cfg = 2 groups in one actor of four ranks. */
START_TEST(test_ray_two_groups_keep_order)
{
    check_two_groups_keep_order(ray_cfg2);
}
END_TEST

/* A member that fails mid-request (a test hook fails member 1 of the
 * group 0.2 s in, while member 0 waits for it in a collective) fails the
 * group's request at once with its reason; nobody stays blocked: the
 * group computes the next request, with the undisturbed pixels. */
START_TEST(test_ray_member_fails)
{
    static const char *const kv[] = {RAY, "parallel.cfg", "2", "timeouts.generate", "60", NULL};
    dexec_request reqs[1];
    char ids[1][16];
    dexec_output *ref, *outs = NULL;
    dexec_engine *e;
    double t0, took;
    dexec_status st;

    make_requests(reqs, 1, ids, 4);
    ref = run(1, NULL, reqs, 1);
    setenv("DEXEC_WORKER_TEST_HOOKS", "1", 1); /* the actor inherits it */
    e = must_open(2, kv);
    unsetenv("DEXEC_WORKER_TEST_HOOKS");
    make_requests(reqs, 1, ids, 1000);
    reqs[0].request_id = "dexec-test: fail group member 1";
    t0 = dexec_now();
    st = dexec_engine_step(e, reqs, 1, &outs, NULL, NULL);
    took = dexec_now() - t0;
    /* the group failed the step's every request: the step fails, as with
     * mp's groups (test_kill9_member_fails_fast), the group's error said */
    ck_assert_int_eq(st, DEXEC_EWORKER);
    ck_assert_ptr_null(outs);
    fprintf(stderr, "test-parallel: ray_actor: a failing member failed the request in %.3f s "
                    "(0.2 s of it the hook's)\n",
            took);
    ck_assert_msg(took < 0.2 + DEATH_BOUND, "took %.3f s", took);
    ck_assert_str_eq(dexec_engine_last_error(e),
                     "group 0 (ranks 0-1): rank 1: test hook: group member 1 fails");
    make_requests(reqs, 1, ids, 4);
    ck_assert_msg(dexec_engine_step(e, reqs, 1, &outs, NULL, NULL) == DEXEC_OK, "%s",
                  dexec_engine_last_error(e));
    ck_assert_int_eq(memcmp(outs[0].images[0].pixels, ref[0].images[0].pixels, pixels_of(&ref[0])),
                     0);
    dexec_outputs_free(outs, 1);
    dexec_outputs_free(ref, 1);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
}
END_TEST

/* A request the model refuses for its own input (a sampler of another
 * kind of model) fails alone on a parallel group, with either executor:
 * dexec_engine_step succeeds, the output says why (DEXEC_EINVAL: dexec
 * serve answers 400), and the group computes the next request. */
static void check_group_refusal(const char *const *kv, const char *where)
{
    dexec_engine *e = must_open(2, kv);
    dexec_request reqs[1];
    char ids[1][16], want[256];
    dexec_output *outs = NULL;

    make_requests(reqs, 1, ids, 2);
    reqs[0].sampler = "ddim";
    snprintf(want, sizeof(want),
             "%ssampler 'ddim' does not fit this model: it is dexec's own flow-matching model, "
             "whose sampler is euler",
             strcmp(where, "ray_actor") == 0 ? "group 0 (ranks 0-1): rank 0: " : "");
    /* every member refuses it alike; the same rank is named every time
     * (ray_actor named whichever member refused first: rank 1 about one
     * time in eight) */
    for (int k = 0; k < 12; k++) {
        ck_assert_msg(dexec_engine_step(e, reqs, 1, &outs, NULL, NULL) == DEXEC_OK, "%s: %s", where,
                      dexec_engine_last_error(e));
        ck_assert_int_eq(outs[0].status, DEXEC_EINVAL);
        ck_assert_str_eq(outs[0].error, want);
        dexec_outputs_free(outs, 1);
    }
    reqs[0].sampler = NULL;
    ck_assert_msg(dexec_engine_step(e, reqs, 1, &outs, NULL, NULL) == DEXEC_OK, "%s: %s", where,
                  dexec_engine_last_error(e));
    ck_assert_int_eq(outs[0].status, DEXEC_OK);
    dexec_outputs_free(outs, 1);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
}

START_TEST(test_group_refusal_fails_alone)
{
    check_group_refusal(cfg2, "mp");
    check_group_refusal(ray_cfg2, "ray_actor");
}
END_TEST

/* kill -9 of the actor (every member at once) mid-step: without recovery
 * the request fails at once with the death; with it the actor is started
 * again, its groups formed again and the request dealt again: the same
 * pixels. */
START_TEST(test_ray_kill9_actor)
{
    static const char *const off[] = {RAY, "parallel.cfg", "2", "max_restarts", "0",
                                      "max_task_retries", "0", NULL};
    static const char *const on[] = {RAY, "parallel.cfg", "2", "max_restarts", "1",
                                     "max_task_retries", "1", NULL};
    dexec_request reqs[1];
    char ids[1][16];
    dexec_output *ref = NULL, *outs = NULL;
    killer k = {.on_req = 0};
    dexec_engine *e;
    double done;
    pid_t before;

    make_requests(reqs, 1, ids, 400);
    e = must_open(2, off);
    k.victim = rank_pid(e, 1);
    ck_assert_int_eq(dexec_engine_step(e, reqs, 1, &outs, on_progress_kill, &k), DEXEC_EWORKER);
    done = dexec_now();
    ck_assert_msg(k.killed_at > 0, "the kill never happened");
    fprintf(stderr, "test-parallel: ray_actor: request failed %.3f s after kill -9 of the actor\n",
            done - k.killed_at);
    ck_assert_msg(done - k.killed_at < DEATH_BOUND, "failed %.3f s after the kill",
                  done - k.killed_at);
    ck_assert_msg(strstr(dexec_engine_last_error(e), "actor died: killed by signal 9") != NULL,
                  "%s", dexec_engine_last_error(e));
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);

    e = must_open(2, on);
    ck_assert_int_eq(dexec_engine_step(e, reqs, 1, &ref, NULL, NULL), DEXEC_OK);
    before = rank_pid(e, 0);
    k = (killer){.on_req = 0, .victim = before};
    ck_assert_int_eq(dexec_engine_step(e, reqs, 1, &outs, on_progress_kill, &k), DEXEC_OK);
    ck_assert_msg(k.killed_at > 0, "the kill never happened");
    ck_assert_msg(outs[0].status == DEXEC_OK, "%s", outs[0].error);
    ck_assert_int_eq(outs[0].rank, 0);
    ck_assert_int_eq(memcmp(outs[0].images[0].pixels, ref[0].images[0].pixels, pixels_of(&ref[0])),
                     0);
    ck_assert_int_ne(rank_pid(e, 0), before);
    dexec_outputs_free(outs, 1);
    dexec_outputs_free(ref, 1);
    ck_assert_int_eq(dexec_engine_close(e), DEXEC_OK);
    dexec_engine_free(e);
}
END_TEST

/* One call on a worker connection with params as JSON: the status, the
 * error text in err, the result in *res (NULL to drop it). */
static dexec_status call_json(dexec_conn *c, const char *method, const char *json,
                              dexec_value **res, char *err, size_t errlen)
{
    char perr[256];
    dexec_value *params = dexec_value_from_json(json, strlen(json), perr, sizeof(perr));
    dexec_value *out = NULL;
    dexec_status st;

    ck_assert_msg(params != NULL, "%s: %s", json, perr);
    err[0] = '\0';
    st = dexec_conn_call(c, method, params, dexec_now() + 60, &out, NULL, NULL, err, errlen);
    dexec_value_free(params);
    if (res != NULL)
        *res = out;
    else
        dexec_value_free(out);
    return st;
}

/* The worker protocol of an actor's in-process groups (doc/protocol.md
 * "Parallel groups"): parallel_threads and generate {group: G}, and their
 * refusals, on a dexec-worker of 4 ranks. */
START_TEST(test_ray_protocol)
{
    char addr[256], err[1024];
    pid_t pid;
    dexec_conn *c = NULL;
    dexec_value *res = NULL;

    pid = start_tcp_worker("--ranks", "4", addr, sizeof(addr));
    ck_assert_int_eq(dexec_conn_connect(addr, 10, &c, err, sizeof(err)), DEXEC_OK);
    ck_assert_msg(dexec_conn_hello(c, NULL, 10, NULL, err, sizeof(err)) == DEXEC_OK, "%s", err);

    ck_assert_int_eq(call_json(c, "collective_rpc", "[\"parallel_threads\", [{\"cfg\": 3}], {}]",
                               NULL, err, sizeof(err)),
                     DEXEC_EINVAL);
    ck_assert_str_eq(err, "rank 0: parallel_threads: expected [{cfg: 1|2, sequence: 1..64, "
                          "timeout: seconds}]");
    ck_assert_int_eq(call_json(c, "collective_rpc",
                               "[\"parallel_threads\", [{\"cfg\": 2, \"sequence\": 3}], {}]",
                               NULL, err, sizeof(err)),
                     DEXEC_EINVAL);
    ck_assert_str_eq(err, "rank 0: parallel_threads: this worker's 4 ranks do not divide into "
                          "groups of cfg x sequence = 6");
    ck_assert_msg(call_json(c, "collective_rpc",
                            "[\"parallel_threads\", [{\"cfg\": 2, \"timeout\": 30}], {}]", &res,
                            err, sizeof(err)) == DEXEC_OK,
                  "%s", err);
    ck_assert_int_eq(res->u.arr.len, 4);
    for (int r = 0; r < 4; r++) {
        const dexec_value *m = res->u.arr.items[r];

        ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(m, "group"), -1), r / 2);
        ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(m, "cfg_rank"), -1), r % 2);
        ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(m, "sequence_rank"), -1), 0);
    }
    dexec_value_free(res);
    /* a rank is no longer addressed alone, nor a group that is not there */
    ck_assert_int_eq(call_json(c, "generate", "[[{\"prompt\": \"bag\"}], 1]", NULL, err,
                               sizeof(err)),
                     DEXEC_EINVAL);
    ck_assert_str_eq(err, "generate: this worker's ranks 0..3 form 2 parallel groups of cfg 2 x "
                          "sequence 1: expected params [[request, ...]] or [[request, ...], "
                          "{group: G}] with G in 0..1");
    ck_assert_int_eq(call_json(c, "generate", "[[{\"prompt\": \"bag\"}], {\"group\": 2}]", NULL,
                               err, sizeof(err)),
                     DEXEC_EINVAL);
    /* dealt across the groups, in request order, from each group's first rank */
    ck_assert_msg(call_json(c, "generate",
                            "[[{\"prompt\": \"bag\", \"seed\": 1, \"num_inference_steps\": 2}, "
                            "{\"prompt\": \"coat\", \"seed\": 2, \"num_inference_steps\": 2}, "
                            "{\"prompt\": \"dress\", \"seed\": 3, \"num_inference_steps\": 2}]]",
                            &res, err, sizeof(err)) == DEXEC_OK,
                  "%s", err);
    ck_assert_int_eq(res->u.arr.len, 3);
    for (int i = 0; i < 3; i++) {
        const dexec_value *o = res->u.arr.items[i];

        ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(o, "seed"), -1), i + 1);
        ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(o, "rank"), -1), i % 2 ? 2 : 0);
        ck_assert_int_eq(dexec_value_map_get(o, "images")->u.arr.len, 1);
    }
    dexec_value_free(res);
    ck_assert_msg(call_json(c, "generate",
                            "[[{\"prompt\": \"bag\", \"seed\": 1, \"num_inference_steps\": 2}], "
                            "{\"group\": 1}]",
                            &res, err, sizeof(err)) == DEXEC_OK,
                  "%s", err);
    ck_assert_int_eq(dexec_value_as_int(dexec_value_map_get(res->u.arr.items[0], "rank"), -1), 2);
    dexec_value_free(res);
    /* parallel_open stays for workers of one rank */
    ck_assert_int_eq(call_json(c, "execute_rpc", "[\"parallel_open\", [], {}]", NULL, err,
                               sizeof(err)),
                     DEXEC_ENOTSUP);
    dexec_conn_free(c);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}
END_TEST

static Suite *parallel_suite(void)
{
    Suite *s = suite_create("parallel");
    TCase *tc = tcase_create("groups");

    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_guidance_one_refused);
    tcase_add_test(tc, test_cfg2_same_pixels_bundled);
    tcase_add_test(tc, test_two_groups_keep_order);
    tcase_add_test(tc, test_kill9_member_fails_fast);
    tcase_add_test(tc, test_kill9_member_recovered);
    tcase_add_test(tc, test_sigstop_member);
    tcase_add_test(tc, test_stalled_group);
    tcase_add_loop_test(tc, test_external_group, 0, 2);
    tcase_add_test(tc, test_cfg2_same_pixels_dit_s);
    suite_add_tcase(s, tc);

    tc = tcase_create("ray_actor");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_ray_protocol);
    tcase_add_test(tc, test_ray_same_pixels);
    tcase_add_test(tc, test_ray_two_groups_keep_order);
    tcase_add_test(tc, test_ray_member_fails);
    tcase_add_test(tc, test_group_refusal_fails_alone);
    tcase_add_test(tc, test_ray_kill9_actor);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(parallel_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
