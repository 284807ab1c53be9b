/*
 * testgood.c - a test-only executor that works in-process, so engine and
 * loader tests run end to end without workers. Ranks are num_gpus from the
 * configuration. Worker methods:
 *   get_rank          -> the rank
 *   echo(args...)     -> args, per rank
 *   timeout           -> the deadline the engine passed (seconds)
 *   fail              -> DEXEC_EWORKER from rank num_ranks-1
 *   set_unhealthy(n)  -> check_health fails while n != 0
 * add_requests makes one 1x1 grey image per output whose pixel is the low
 * byte of the seed; a request whose prompt is "fail" fails alone; the
 * deadline passed is reported as timings.queue_s so tests can see it.
 * add_requests_on (ABI 1.2) does the same with the slot as the rank;
 * rank_stats reports rank r dead r + 1 times and restarted r times.
 * $DEXEC_TESTGOOD_FAIL=<status number> makes create fail with that code.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <dexec/plugin.h>
#include <dexec/rpc.h>

struct dexec_executor {
    int nranks;
    int unhealthy; /* atomic */
};

static dexec_status tg_create(const dexec_host *host, dexec_executor **out, char *err,
                              size_t errlen)
{
    const char *fail = getenv("DEXEC_TESTGOOD_FAIL");
    int64_t n = 1;
    dexec_executor *ex;

    if (fail != NULL) {
        dexec_errorf(err, errlen, "simulated create failure");
        return (dexec_status)atoi(fail);
    }
    if (host == NULL || host->struct_size < sizeof(dexec_host) || host->config == NULL ||
        host->log == NULL || host->worker_path == NULL) {
        dexec_errorf(err, errlen, "incomplete host services");
        return DEXEC_EINVAL;
    }
    if (dexec_config_get_int(host->config, "num_gpus", &n) != DEXEC_OK || n < 1)
        n = 1;
    ex = calloc(1, sizeof(*ex));
    if (ex == NULL) {
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    ex->nranks = (int)n;
    host->log(DEXEC_LOG_DEBUG, "testgood", "created with %d ranks", ex->nranks);
    *out = ex;
    return DEXEC_OK;
}

static int tg_num_ranks(const dexec_executor *ex)
{
    return ex->nranks;
}

static int known_method(const char *m)
{
    return strcmp(m, "get_rank") == 0 || strcmp(m, "timeout") == 0 || strcmp(m, "echo") == 0 ||
           strcmp(m, "set_unhealthy") == 0;
}

/* One rank's reply to a known method; NULL when memory is exhausted. */
static dexec_value *reply_for(dexec_executor *ex, int rank, const char *method, double timeout,
                              const dexec_value *args)
{
    if (strcmp(method, "get_rank") == 0)
        return dexec_value_int(rank);
    if (strcmp(method, "timeout") == 0)
        return dexec_value_float(timeout);
    if (strcmp(method, "echo") == 0)
        return args != NULL ? dexec_value_clone(args) : dexec_value_array();
    __atomic_store_n(&ex->unhealthy, (int)dexec_value_as_int(dexec_value_array_get(args, 0), 0),
                     __ATOMIC_RELAXED);
    return dexec_value_nil();
}

static dexec_status tg_rpc(dexec_executor *ex, const char *method, double timeout,
                           const dexec_value *args, const dexec_value *kwargs,
                           int unique_reply_rank, dexec_value **replies, char *err, size_t errlen)
{
    dexec_value *all, *v;

    if (strcmp(method, "fail") == 0) {
        dexec_errorf(err, errlen, "rank %d: fail: simulated worker error", ex->nranks - 1);
        return DEXEC_EWORKER;
    }
    if (!known_method(method)) {
        dexec_errorf(err, errlen, "rank 0: no method '%s'", method);
        return DEXEC_ENOTFOUND;
    }
    if (unique_reply_rank >= 0) {
        *replies = reply_for(ex, unique_reply_rank, method, timeout, args);
        goto done;
    }
    if ((*replies = all = dexec_value_array()) == NULL)
        goto done;
    for (int r = 0; r < ex->nranks; r++) {
        if ((v = reply_for(ex, r, method, timeout, args)) == NULL ||
            dexec_value_array_push(all, v) != 0) {
            dexec_value_free(all);
            *replies = NULL;
            break;
        }
    }
done:
    if (*replies == NULL) {
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    return DEXEC_OK;
}

/* The requests on slot (its rank), or request i on rank i mod n (slot < 0). */
static dexec_status tg_run(dexec_executor *ex, int slot, const dexec_request *reqs, size_t n,
                           dexec_output *outs, double timeout, dexec_progress_fn progress,
                           void *user, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        dexec_output *o = &outs[i];
        int count = reqs[i].num_outputs_per_prompt;

        if (strcmp(reqs[i].prompt, "clobber-output") == 0) {
            /* a backend that forgets the struct_size the engine set */
            memset(o, 0, sizeof(*o));
            continue;
        }
        /* The engine hands requests over in its own layout, whatever size
         * the caller's were: nothing past the caller's struct_size leaks. */
        for (size_t k = 0; k < sizeof(reqs[i].reserved) / sizeof(reqs[i].reserved[0]); k++)
            if (reqs[i].struct_size != DEXEC_REQUEST_SIZE || reqs[i].reserved[k] != 0) {
                dexec_errorf(err, errlen, "request %zu arrived with struct_size %u, reserved[%zu] %llx",
                             i, reqs[i].struct_size, k, (unsigned long long)reqs[i].reserved[k]);
                return DEXEC_EPROTO;
            }
        o->request_id = strdup(reqs[i].request_id);
        o->rank = slot >= 0 ? slot : (int)(i % (size_t)ex->nranks);
        o->seed = reqs[i].seed;
        o->steps = reqs[i].num_inference_steps > 0 ? reqs[i].num_inference_steps : 1;
        o->guidance_scale = reqs[i].guidance_scale;
        o->timings.queue_s = timeout;
        if (strcmp(reqs[i].prompt, "fail") == 0) {
            o->status = DEXEC_EWORKER;
            o->error = strdup("simulated request failure");
            continue;
        }
        o->images = calloc((size_t)count, sizeof(*o->images));
        if (o->request_id == NULL || o->images == NULL) {
            dexec_errorf(err, errlen, "out of memory");
            return DEXEC_ENOMEM;
        }
        o->num_images = (size_t)count;
        for (int k = 0; k < count; k++) {
            dexec_image *img = &o->images[k];

            dexec_image_init(img);
            img->width = img->height = img->channels = 1;
            if ((img->pixels = malloc(1)) == NULL) {
                dexec_errorf(err, errlen, "out of memory");
                return DEXEC_ENOMEM;
            }
            img->pixels[0] = (uint8_t)(reqs[i].seed & 0xff);
            for (int s = 1; s <= o->steps; s++)
                if (progress != NULL)
                    progress(user, i, k, s, o->steps);
        }
    }
    return DEXEC_OK;
}

static dexec_status tg_add(dexec_executor *ex, const dexec_request *reqs, size_t n,
                           dexec_output *outs, double timeout, dexec_progress_fn progress,
                           void *user, char *err, size_t errlen)
{
    return tg_run(ex, -1, reqs, n, outs, timeout, progress, user, err, errlen);
}

static dexec_status tg_add_on(dexec_executor *ex, int slot, const dexec_request *reqs, size_t n,
                              dexec_output *outs, double timeout, dexec_progress_fn progress,
                              void *user, char *err, size_t errlen)
{
    return tg_run(ex, slot, reqs, n, outs, timeout, progress, user, err, errlen);
}

/* Made-up counts the test can recognise: rank r died r + 1 times and was
 * restarted r times. */
static dexec_status tg_rank_stats(dexec_executor *ex, int rank, dexec_rank_stats *out)
{
    (void)ex;
    out->deaths = (uint64_t)rank + 1;
    out->restarts = (uint64_t)rank;
    return DEXEC_OK;
}

static dexec_status tg_health(dexec_executor *ex, double timeout, char *err, size_t errlen)
{
    if (__atomic_load_n(&ex->unhealthy, __ATOMIC_RELAXED)) {
        dexec_errorf(err, errlen, "rank 0: marked unhealthy (health timeout %g s)", timeout);
        return DEXEC_EUNHEALTHY;
    }
    return DEXEC_OK;
}

static void tg_shutdown(dexec_executor *ex)
{
    free(ex);
}

static const dexec_executor_ops tg_ops = {
    .struct_size = sizeof(dexec_executor_ops),
    .create = tg_create,
    .num_ranks = tg_num_ranks,
    .collective_rpc = tg_rpc,
    .add_requests = tg_add,
    .check_health = tg_health,
    .shutdown = tg_shutdown,
    .add_requests_on = tg_add_on,
    .rank_stats = tg_rank_stats,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "testgood", "1.2.3",
                           "in-process test executor", &tg_ops)
};
