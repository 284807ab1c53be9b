/*
 * engine.c - the engine API: creates an executor backend from a
 * configuration and forwards step, collective_rpc and check_health to it
 * after checking the caller's arguments and resolving defaults (deadlines,
 * seeds, request ids), so that every backend sees the same, complete input.
 *
 * Threads: calls hold a read lock for their whole duration and close takes
 * the write lock, so close waits for calls in flight and later calls see
 * the engine closed. The lock prefers writers where the C library lets us
 * choose, so a steady stream of calls cannot starve close; a thread takes
 * it only once however deep it calls back in (from a progress callback),
 * since a nested read lock would queue behind a waiting close. The last error
 * is kept per thread and engine in a small list owned by the engine: it
 * needs no thread-specific-data key (a limited resource) and is freed with
 * the engine whatever threads are still alive.
 */
#include "config.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "paths.h"

#define DX_ERR_MAX 1024

/* Defaults of DESIGN.md, used only if the configuration cannot say. */
#define DX_DEFAULT_RPC_S 30.0
#define DX_DEFAULT_GENERATE_S 300.0
#define DX_DEFAULT_HEALTH_S 5.0

typedef struct dx_thread_state {
    struct dx_thread_state *next;
    pthread_t thread;
    int depth; /* calls of this thread in progress (a progress callback may call again) */
    char msg[DX_ERR_MAX];
} dx_thread_state;

struct dexec_engine {
    pthread_rwlock_t lock;
    dexec_config *cfg;
    dexec_plugin_handle *plugin;
    const dexec_executor_ops *ops;
    dexec_executor *ex; /* NULL once closed */
    dexec_host host;
    char *worker_path;
    char backend[160]; /* "name version" */
    int nranks;
    double rpc_s, generate_s, health_s;
    uint64_t next_request; /* for "req-N"; atomic */

    pthread_mutex_t errors_lock;
    dx_thread_state *errors;
};

/* ---- per-thread last error ------------------------------------------------ */

static dx_thread_state *thread_state(dexec_engine *e, int create)
{
    pthread_t self = pthread_self();
    dx_thread_state *t;

    pthread_mutex_lock(&e->errors_lock);
    for (t = e->errors; t != NULL; t = t->next)
        if (pthread_equal(t->thread, self))
            break;
    if (t == NULL && create) {
        t = calloc(1, sizeof(*t));
        if (t != NULL) {
            t->thread = self;
            t->next = e->errors;
            e->errors = t;
        }
    }
    pthread_mutex_unlock(&e->errors_lock);
    return t;
}

static dexec_status set_error(dexec_engine *e, dexec_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static dexec_status set_error(dexec_engine *e, dexec_status code, const char *fmt, ...)
{
    dx_thread_state *t = thread_state(e, 1);
    va_list ap;

    /* Out of memory for the message: the status still tells the caller. */
    if (t == NULL)
        return code;
    va_start(ap, fmt);
    vsnprintf(t->msg, sizeof(t->msg), fmt, ap);
    va_end(ap);
    return code;
}

/* Records a backend's message, or a generic one when it left none. */
static dexec_status plugin_error(dexec_engine *e, dexec_status code, const char *what,
                                 const char *msg)
{
    if (msg[0] == '\0')
        return set_error(e, code, "%s: %s: %s", e->backend, what, dexec_status_name(code));
    return set_error(e, code, "%s", msg);
}

const char *dexec_engine_last_error(const dexec_engine *e)
{
    dx_thread_state *t;

    if (e == NULL)
        return "engine is NULL";
    /* The list is the engine's bookkeeping, not its observable state. */
    t = thread_state((dexec_engine *)e, 0);
    return t != NULL ? t->msg : "";
}

/* ---- requests and outputs --------------------------------------------------- */

void dexec_request_init_sized(dexec_request *r, size_t struct_size)
{
    if (r == NULL)
        return;
    memset(r, 0, sizeof(*r));
    r->struct_size = (uint32_t)struct_size;
    r->guidance_scale = -1.0;
    r->seed = -1;
}

void dexec_image_init_sized(dexec_image *img, size_t struct_size)
{
    if (img == NULL)
        return;
    memset(img, 0, sizeof(*img));
    img->struct_size = (uint32_t)struct_size;
}

/* Fields added after 1.1 took reserved space: the size of 1.1 stands. */
_Static_assert(sizeof(dexec_output) == DEXEC_OUTPUT_SIZE_1_1 + 8 * sizeof(uint64_t),
               "dexec_output changed size within ABI major 1");

void dexec_output_init_sized(dexec_output *o, size_t struct_size)
{
    if (o == NULL)
        return;
    memset(o, 0, sizeof(*o));
    o->struct_size = (uint32_t)struct_size;
    o->timings.struct_size = DEXEC_TIMINGS_SIZE;
}

/* The 1.1 fields exist in every 1.x output (sizeof never changes within a
 * major), so clearing needs no size check. */
void dexec_output_clear(dexec_output *o)
{
    uint32_t size;

    if (o == NULL)
        return;
    size = o->struct_size;
    free(o->request_id);
    free(o->error);
    for (size_t i = 0; i < o->num_images; i++)
        free(o->images[i].pixels);
    free(o->images);
    if (DEXEC_HAS_FIELD(o, dexec_output, class_name))
        free(o->class_name);
    if (DEXEC_HAS_FIELD(o, dexec_output, negative_class_name))
        free(o->negative_class_name);
    dexec_output_init_sized(o, size);
}

void dexec_outputs_free(dexec_output *outs, size_t n)
{
    if (outs == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        dexec_output_clear(&outs[i]);
    free(outs);
}

/* ---- create ------------------------------------------------------------------- */

static double timeout_or(const dexec_config *cfg, const char *key, double fallback)
{
    double v;

    if (dexec_config_get_float(cfg, key, &v) != DEXEC_OK || !(v > 0))
        return fallback;
    return v;
}

/* A status the ABI defines; anything else from a plugin is a bug in it. */
static int known_status(dexec_status st)
{
    return st > DEXEC_OK && st <= DEXEC_EAUTH;
}

static void engine_destroy(dexec_engine *e)
{
    dx_thread_state *t, *next;

    for (t = e->errors; t != NULL; t = next) {
        next = t->next;
        free(t);
    }
    dexec_plugin_release(e->plugin);
    dexec_config_free(e->cfg);
    free(e->worker_path);
    pthread_mutex_destroy(&e->errors_lock);
    pthread_rwlock_destroy(&e->lock);
    free(e);
}

static int init_locks(dexec_engine *e)
{
    pthread_rwlockattr_t attr;
    int rc;

    if (pthread_rwlockattr_init(&attr) != 0)
        return -1;
#if defined(__GLIBC__)
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    rc = pthread_rwlock_init(&e->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc != 0)
        return -1;
    if (pthread_mutex_init(&e->errors_lock, NULL) != 0) {
        pthread_rwlock_destroy(&e->lock);
        return -1;
    }
    return 0;
}

dexec_status dexec_engine_create(const dexec_config *cfg, dexec_engine **out, char *err,
                                 size_t errlen)
{
    char msg[DX_ERR_MAX];
    const dexec_plugin_desc *desc;
    const char *backend = NULL, *worker;
    dexec_config *own_defaults = NULL;
    dexec_executor *ex = NULL;
    dexec_engine *e;
    dexec_status st;

    if (out == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "dexec_engine_create: out is NULL");
    *out = NULL;
    if (cfg == NULL) {
        st = dexec_config_load(NULL, &own_defaults, err, errlen);
        if (st != DEXEC_OK)
            return st;
        cfg = own_defaults;
    }

    e = calloc(1, sizeof(*e));
    if (e == NULL || init_locks(e) != 0) {
        free(e);
        dexec_config_free(own_defaults);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "engine: out of memory");
    }
    /* The engine keeps its own configuration so the caller may free theirs. */
    e->cfg = dx_config_clone(cfg);
    dexec_config_free(own_defaults);
    if (e->cfg == NULL) {
        st = dx_fail(err, errlen, DEXEC_ENOMEM, "engine: out of memory copying the configuration");
        goto fail;
    }

    if (dexec_config_get_string(e->cfg, "distributed_executor_backend", &backend) != DEXEC_OK ||
        backend == NULL || backend[0] == '\0') {
        st = dx_fail(err, errlen, DEXEC_ECONFIG,
                     "distributed_executor_backend is not set: name an executor "
                     "(mp, ray_actor, external) or give a plugin's path");
        goto fail;
    }
    st = dexec_plugin_load(backend, DEXEC_PLUGIN_EXECUTOR, e->cfg, &e->plugin, err, errlen);
    if (st != DEXEC_OK)
        goto fail;
    desc = dexec_plugin_descriptor(e->plugin);
    e->ops = desc->ops;
    snprintf(e->backend, sizeof(e->backend), "%s %s", desc->name,
             desc->version != NULL ? desc->version : "");

    worker = getenv("DEXEC_WORKER");
    e->worker_path = strdup(worker != NULL && worker[0] != '\0' ? worker
                                                                : DEXEC_BINDIR "/dexec-worker");
    if (e->worker_path == NULL) {
        st = dx_fail(err, errlen, DEXEC_ENOMEM, "engine: out of memory");
        goto fail;
    }
    e->host.struct_size = sizeof(e->host);
    e->host.config = e->cfg;
    e->host.log = dexec_log;
    e->host.worker_path = e->worker_path;
    e->rpc_s = timeout_or(e->cfg, "timeouts.rpc", DX_DEFAULT_RPC_S);
    e->generate_s = timeout_or(e->cfg, "timeouts.generate", DX_DEFAULT_GENERATE_S);
    e->health_s = timeout_or(e->cfg, "timeouts.health", DX_DEFAULT_HEALTH_S);

    msg[0] = '\0';
    st = e->ops->create(&e->host, &ex, msg, sizeof(msg));
    if (st == DEXEC_OK && ex == NULL) {
        st = dx_fail(err, errlen, DEXEC_EINIT,
                     "%s: executor create reported success but returned no executor", desc->name);
        goto fail;
    }
    if (st != DEXEC_OK) {
        /* Keep a backend's specific code (ETIMEDOUT, ENOTFOUND, ...); an
         * undefined one only says that starting failed. */
        if (!known_status(st))
            st = DEXEC_EINIT;
        dx_fail(err, errlen, st, "%s: %s", desc->name,
                msg[0] != '\0' ? msg : dexec_status_name(st));
        goto fail;
    }
    e->ex = ex;
    e->nranks = e->ops->num_ranks(ex);
    if (e->nranks <= 0) {
        st = dx_fail(err, errlen, DEXEC_EINIT, "%s: executor started with %d ranks", desc->name,
                     e->nranks);
        e->ops->shutdown(ex);
        e->ex = NULL;
        goto fail;
    }
    dexec_log(DEXEC_LOG_INFO, "engine", "executor %s (%s) ready with %d rank%s", e->backend,
              dexec_plugin_file(e->plugin), e->nranks, e->nranks == 1 ? "" : "s");
    *out = e;
    return DEXEC_OK;

fail:
    engine_destroy(e);
    return st;
}

/* ---- calls ----------------------------------------------------------------------- */

/* Takes the read lock for a call, once per thread: a progress callback
 * that calls the engine again already holds it, and a second read lock
 * would wait behind a waiting close (the lock prefers writers) for ever. */
static int lock_shared(dexec_engine *e)
{
    dx_thread_state *t = thread_state(e, 1);

    if (t == NULL)
        return -1;
    if (t->depth++ == 0)
        pthread_rwlock_rdlock(&e->lock);
    return 0;
}

static void unlock_shared(dexec_engine *e)
{
    dx_thread_state *t = thread_state(e, 0);

    if (--t->depth == 0)
        pthread_rwlock_unlock(&e->lock);
}

/* Starts a call; fails when the engine is closed. */
static dexec_status enter(dexec_engine *e)
{
    if (lock_shared(e) != 0)
        return DEXEC_ENOMEM;
    if (e->ex == NULL) {
        unlock_shared(e);
        return set_error(e, DEXEC_ECLOSED, "engine is closed");
    }
    return DEXEC_OK;
}

static void leave(dexec_engine *e)
{
    unlock_shared(e);
}

/* A seed the caller did not choose, drawn once by the engine so that every
 * rank that sees the request uses the same one, and reported back. */
static int64_t random_seed(void)
{
    uint64_t v;
    struct timespec ts;

    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v)) {
        /* No entropy yet (early boot): a seed only has to differ between
         * requests, not be secret. */
        static uint64_t counter;

        clock_gettime(CLOCK_REALTIME, &ts);
        v = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 16) ^
            __atomic_add_fetch(&counter, 0x9e3779b97f4a7c15ull, __ATOMIC_RELAXED);
        v ^= v >> 31;
        v *= 0xbf58476d1ce4e5b9ull;
        v ^= v >> 27;
    }
    return (int64_t)(v & (uint64_t)INT64_MAX);
}

static dexec_status check_request(dexec_engine *e, const dexec_request *r, size_t i)
{
    char msg[DX_ERR_MAX];
    const char *id;

    if (DEXEC_STRUCT_CHECK(r, dexec_request, DEXEC_REQUEST_SIZE_1_1, msg, sizeof(msg)) !=
        DEXEC_OK)
        return set_error(e, DEXEC_EINVAL, "request %zu: %s", i, msg);
    id = r->request_id != NULL ? r->request_id : "(no id)";

    /* the limits of <dexec/limits.h>, which the worker applies too */
    if (r->height < 0 || r->height > DEXEC_MAX_IMAGE_SIZE)
        return set_error(e, DEXEC_EINVAL, "request %zu (%s): height %d is outside 0..%d", i, id,
                         r->height, DEXEC_MAX_IMAGE_SIZE);
    if (r->width < 0 || r->width > DEXEC_MAX_IMAGE_SIZE)
        return set_error(e, DEXEC_EINVAL, "request %zu (%s): width %d is outside 0..%d", i, id,
                         r->width, DEXEC_MAX_IMAGE_SIZE);
    if (r->num_inference_steps < 0 || r->num_inference_steps > DEXEC_MAX_STEPS)
        return set_error(e, DEXEC_EINVAL,
                         "request %zu (%s): num_inference_steps %d is outside 0..%d", i, id,
                         r->num_inference_steps, DEXEC_MAX_STEPS);
    if (r->num_outputs_per_prompt < 0 || r->num_outputs_per_prompt > DEXEC_MAX_OUTPUTS_PER_PROMPT)
        return set_error(e, DEXEC_EINVAL,
                         "request %zu (%s): num_outputs_per_prompt %d is outside 0..%d", i, id,
                         r->num_outputs_per_prompt, DEXEC_MAX_OUTPUTS_PER_PROMPT);
    if (!isfinite(r->guidance_scale) || r->guidance_scale > DEXEC_MAX_GUIDANCE)
        return set_error(e, DEXEC_EINVAL,
                         "request %zu (%s): guidance_scale %g is outside 0..%g (negative: the "
                         "model's default)",
                         i, id, r->guidance_scale, DEXEC_MAX_GUIDANCE);
    if (r->request_id != NULL && r->request_id[0] == '\0')
        return set_error(e, DEXEC_EINVAL,
                         "request %zu: request_id is empty (use NULL to have one assigned)", i);
    return DEXEC_OK;
}

dexec_status dexec_engine_step(dexec_engine *e, const dexec_request *reqs, size_t n,
                               dexec_output **outs, dexec_progress_fn progress, void *user)
{
    char msg[DX_ERR_MAX];
    dexec_request *resolved = NULL;
    char (*ids)[32] = NULL;
    dexec_output *o = NULL;
    double t0;
    dexec_status st;

    if (e == NULL)
        return DEXEC_EINVAL;
    if (outs == NULL)
        return set_error(e, DEXEC_EINVAL, "step: outs is NULL");
    *outs = NULL;
    if (n > 0 && reqs == NULL)
        return set_error(e, DEXEC_EINVAL, "step: %zu requests but reqs is NULL", n);
    if ((st = enter(e)) != DEXEC_OK)
        return st;
    for (size_t i = 0; i < n; i++)
        if ((st = check_request(e, &reqs[i], i)) != DEXEC_OK)
            goto out;
    if (n == 0)
        goto out;

    resolved = malloc(n * sizeof(*resolved));
    ids = malloc(n * sizeof(*ids));
    o = calloc(n, sizeof(*o));
    if (resolved == NULL || ids == NULL || o == NULL) {
        st = set_error(e, DEXEC_ENOMEM, "step: out of memory for %zu requests", n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        dexec_request_init(&resolved[i]);
        dx_struct_import(&resolved[i], DEXEC_REQUEST_SIZE, &reqs[i]);
        dexec_output_init(&o[i]);
        if (resolved[i].request_id == NULL) {
            uint64_t id = __atomic_fetch_add(&e->next_request, 1, __ATOMIC_RELAXED);

            snprintf(ids[i], sizeof(ids[i]), "req-%llu", (unsigned long long)id);
            resolved[i].request_id = ids[i];
        }
        if (resolved[i].prompt == NULL)
            resolved[i].prompt = "";
        if (resolved[i].seed < 0)
            resolved[i].seed = random_seed();
        if (resolved[i].num_outputs_per_prompt == 0)
            resolved[i].num_outputs_per_prompt = 1;
    }

    msg[0] = '\0';
    t0 = dexec_now();
    st = e->ops->add_requests(e->ex, resolved, n, o, e->generate_s, progress, user, msg,
                              sizeof(msg));
    if (st != DEXEC_OK) {
        plugin_error(e, st, "step", msg);
        goto out;
    }
    /* Backends fill what they know; the engine completes what it knows. */
    for (size_t i = 0; i < n; i++) {
        if (DEXEC_STRUCT_CHECK(&o[i], dexec_output, DEXEC_OUTPUT_SIZE_1_1, msg, sizeof(msg)) !=
            DEXEC_OK) {
            /* Not ours to free: we cannot tell which fields it holds. */
            st = set_error(e, DEXEC_EPLUGIN,
                           "%s: step: output %zu: %s (a backend keeps the struct_size of the "
                           "outputs it fills)",
                           e->backend, i, msg);
            memset(&o[i], 0, sizeof(o[i]));
            goto out;
        }
        if (o[i].request_id == NULL && (o[i].request_id = strdup(resolved[i].request_id)) == NULL) {
            st = set_error(e, DEXEC_ENOMEM, "step: out of memory");
            goto out;
        }
        if (o[i].timings.total_s == 0)
            o[i].timings.total_s = dexec_now() - t0;
    }
    *outs = o;
    o = NULL;

out:
    leave(e);
    dexec_outputs_free(o, n);
    free(ids);
    free(resolved);
    return st;
}

dexec_status dexec_engine_collective_rpc(dexec_engine *e, const char *method, double timeout,
                                         const dexec_value *args, const dexec_value *kwargs,
                                         int unique_reply_rank, dexec_value **replies)
{
    char msg[DX_ERR_MAX];
    dexec_status st;

    if (e == NULL)
        return DEXEC_EINVAL;
    if (replies == NULL)
        return set_error(e, DEXEC_EINVAL, "collective_rpc: replies is NULL");
    *replies = NULL;
    if (method == NULL || method[0] == '\0')
        return set_error(e, DEXEC_EINVAL, "collective_rpc: no method name");
    if (isnan(timeout))
        return set_error(e, DEXEC_EINVAL, "collective_rpc %s: timeout is NaN", method);
    if (args != NULL && args->type != DEXEC_VAL_ARRAY)
        return set_error(e, DEXEC_EINVAL, "collective_rpc %s: args must be an array", method);
    if (kwargs != NULL && kwargs->type != DEXEC_VAL_MAP)
        return set_error(e, DEXEC_EINVAL, "collective_rpc %s: kwargs must be a map", method);
    if ((st = enter(e)) != DEXEC_OK)
        return st;
    if (unique_reply_rank >= e->nranks) {
        st = set_error(e, DEXEC_EINVAL,
                       "collective_rpc %s: unique_reply_rank %d is out of range: "
                       "the engine has %d rank%s (0..%d)",
                       method, unique_reply_rank, e->nranks, e->nranks == 1 ? "" : "s",
                       e->nranks - 1);
        goto out;
    }
    if (unique_reply_rank < 0)
        unique_reply_rank = -1;
    if (timeout <= 0)
        timeout = e->rpc_s;

    msg[0] = '\0';
    st = e->ops->collective_rpc(e->ex, method, timeout, args, kwargs, unique_reply_rank, replies,
                                msg, sizeof(msg));
    if (st != DEXEC_OK) {
        dexec_value_free(*replies);
        *replies = NULL;
        plugin_error(e, st, method, msg);
    } else if (*replies == NULL) {
        st = set_error(e, DEXEC_EPROTO, "%s: collective_rpc %s succeeded without a reply",
                       e->backend, method);
    }

out:
    leave(e);
    return st;
}

dexec_status dexec_engine_check_health(dexec_engine *e)
{
    char msg[DX_ERR_MAX];
    dexec_status st;

    if (e == NULL)
        return DEXEC_EINVAL;
    if ((st = enter(e)) != DEXEC_OK)
        return st;
    msg[0] = '\0';
    st = e->ops->check_health(e->ex, e->health_s, msg, sizeof(msg));
    if (st != DEXEC_OK)
        plugin_error(e, st, "check_health", msg);
    leave(e);
    return st;
}

int dexec_engine_num_ranks(const dexec_engine *e)
{
    dexec_engine *m = (dexec_engine *)e; /* the lock is not part of the observable state */
    int n;

    if (e == NULL || lock_shared(m) != 0)
        return 0;
    n = e->ex != NULL ? e->nranks : 0;
    unlock_shared(m);
    return n;
}

const char *dexec_engine_backend(const dexec_engine *e)
{
    return e != NULL ? e->backend : "";
}

dexec_status dexec_engine_close(dexec_engine *e)
{
    dx_thread_state *t;

    if (e == NULL)
        return DEXEC_EINVAL;
    t = thread_state(e, 0);
    if (t != NULL && t->depth > 0)
        return set_error(e, DEXEC_EINVAL,
                         "close called from inside a call on the same engine (a progress "
                         "callback?): close after that call returns");
    pthread_rwlock_wrlock(&e->lock);
    if (e->ex == NULL) {
        pthread_rwlock_unlock(&e->lock);
        return set_error(e, DEXEC_ECLOSED, "engine is closed");
    }
    e->ops->shutdown(e->ex);
    e->ex = NULL;
    pthread_rwlock_unlock(&e->lock);
    dexec_log(DEXEC_LOG_INFO, "engine", "executor %s closed", e->backend);
    return DEXEC_OK;
}

void dexec_engine_free(dexec_engine *e)
{
    if (e == NULL)
        return;
    if (e->ex != NULL)
        dexec_engine_close(e);
    engine_destroy(e);
}
