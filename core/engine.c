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

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <dexec/device.h>

#include "internal.h"
#include "paths.h"

#define DX_ERR_MAX 1024

/* Defaults of DESIGN.md, used only if the configuration cannot say. */
#define DX_DEFAULT_RPC_S 30.0
#define DX_DEFAULT_GENERATE_S 300.0
#define DX_DEFAULT_HEALTH_S 5.0

/* A data-parallel slot and its dispatcher thread. */
typedef struct dx_slot {
    struct dexec_engine *e;
    int index;
    int busy;                 /* given a request, until the executor returns it */
    struct dexec_handle *next; /* the request given, not yet taken by the thread */
    pthread_t thread;
} dx_slot;

/* Per thread and engine: the last error and the call depth, in the
 * calling thread's own storage (so nothing is left behind when a thread
 * exits: a server may start a thread per connection). A thread keeps
 * DX_TLS_ENGINES engines; the least recently used one not in a call
 * makes room for another. Engine ids are never reused, so a freed
 * engine's entry matches no later engine. */
#define DX_TLS_ENGINES 8

typedef struct dx_thread_state {
    uint64_t engine; /* dexec_engine.id; 0 = unused */
    uint64_t used;   /* this thread's clock at the last use */
    int depth;       /* calls of this thread in progress (a progress callback may call again) */
    char msg[DX_ERR_MAX];
} dx_thread_state;

static __thread dx_thread_state dx_tls[DX_TLS_ENGINES];
static __thread uint64_t dx_tls_clock;
static uint64_t dx_engine_ids; /* atomic */

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
    int width;  /* ranks per parallel group */
    int par_cfg; /* parallel.cfg */
    int nslots; /* data-parallel slots: ranks / (parallel.cfg x parallel.sequence) */
    double rpc_s, generate_s, health_s;
    uint64_t next_request; /* for "req-N"; atomic */

    uint64_t id; /* for the calling threads' entries (dx_thread_state) */

    /* asynchronous requests (dexec_engine_submit): the queue, the handles
     * handed to the executor, and the dispatcher threads, one per
     * data-parallel slot (a rank, or a parallel group of width ranks) */
    pthread_mutex_t qlock;
    pthread_cond_t qcond;    /* queue not empty, or stopping */
    pthread_cond_t donecond; /* a handle completed */
    dexec_handle *qhead, *qtail;
    dexec_handle *running; /* doubly linked through prev/next */
    size_t queued;         /* handles in the queue */
    size_t max_queued;     /* engine.max_queued */
    uint64_t next_submission;
    int stopping;
    dx_slot *slots; /* nslots of them */
    int ndispatch; /* dispatcher threads started */
    /* the executor's ABI 1.2 ops, NULL for an older plugin */
    dexec_status (*add_requests_on)(dexec_executor *, int, const dexec_request *, size_t,
                                    dexec_output *, double, dexec_progress_fn, void *, char *,
                                    size_t);
    dexec_status (*rank_stats)(dexec_executor *, int, dexec_rank_stats *);
};

struct dexec_handle {
    dexec_engine *e;
    dexec_handle *prev, *next; /* in the queue or the running list */
    uint64_t submission;       /* handles submitted together share it */
    size_t index;              /* within its submission */
    dexec_request req;         /* resolved; its strings are owned below */
    char *id, *prompt, *negative;
    char *sampler;             /* copies of the request's sampler, noise and */
    void *noise, *step_noise;  /* step_noise (ABI 1.2 fields), or NULL */
    dexec_callbacks cb;
    dexec_handle_state state; /* guarded by e->qlock */
    int refs;                 /* the owner's and the engine's; guarded by e->qlock */
    int taken;                /* output moved out */
    int batch_failed;         /* the executor failed the call as a whole, or
                                 BATCH_PLUGIN_BUG: it filled an output it must not */
    double queued_at;         /* submitted at (dexec_now) */
    double started;           /* dispatched at (dexec_now) */
    dexec_output out;
};

/* handle.batch_failed of an output the backend broke (fails the step) */
#define BATCH_PLUGIN_BUG 2

static void stop_dispatchers(dexec_engine *e);
static dexec_status start_dispatchers(dexec_engine *e, char *err, size_t errlen);
static dexec_status check_dtype(dexec_engine *e, char *err, size_t errlen);

/* A formatted string the caller frees; NULL when memory is exhausted. */
static char *dx_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *dx_asprintf(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : s;
}

/* ---- per-thread last error ------------------------------------------------ */

static dx_thread_state *thread_state(dexec_engine *e, int create)
{
    dx_thread_state *t = NULL;

    for (int i = 0; i < DX_TLS_ENGINES; i++)
        if (dx_tls[i].engine == e->id) {
            dx_tls[i].used = ++dx_tls_clock;
            return &dx_tls[i];
        }
    if (!create)
        return NULL;
    for (int i = 0; i < DX_TLS_ENGINES; i++) {
        dx_thread_state *x = &dx_tls[i];

        if (x->engine == 0 || (x->depth == 0 && (t == NULL || x->used < t->used)))
            t = x;
        if (x->engine == 0)
            break;
    }
    if (t == NULL) /* in calls on DX_TLS_ENGINES other engines at once */
        return NULL;
    t->engine = e->id;
    t->used = ++dx_tls_clock;
    t->depth = 0;
    t->msg[0] = '\0';
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
_Static_assert(sizeof(dexec_request) ==
                   ((DEXEC_REQUEST_SIZE_1_1 + 7) & ~(size_t)7) + 8 * sizeof(uint64_t),
               "dexec_request changed size within ABI major 1");
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
    return st > DEXEC_OK && st <= DEXEC_ECANCELED;
}

static void engine_destroy(dexec_engine *e)
{
    dexec_plugin_release(e->plugin);
    dexec_config_free(e->cfg);
    free(e->worker_path);
    pthread_mutex_destroy(&e->qlock);
    pthread_cond_destroy(&e->qcond);
    pthread_cond_destroy(&e->donecond);
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
    if (pthread_mutex_init(&e->qlock, NULL) != 0 || pthread_cond_init(&e->qcond, NULL) != 0 ||
        pthread_cond_init(&e->donecond, NULL) != 0)
        return -1; /* the process is out of memory: the few bytes leaked do not matter */
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
    e->id = __atomic_add_fetch(&dx_engine_ids, 1, __ATOMIC_RELAXED);
    /* The engine keeps its own configuration so the caller may free theirs. */
    e->cfg = dx_config_clone(cfg);
    dexec_config_free(own_defaults);
    if (e->cfg == NULL) {
        st = dx_fail(err, errlen, DEXEC_ENOMEM, "engine: out of memory copying the configuration");
        goto fail;
    }

    {
        const char *device = "auto", *dtype = "float32";

        /* the CPU computes in float32 only: said before any worker starts
         * (with device = "auto" the ranks that find no GPU say it) */
        dexec_config_get_string(e->cfg, "device", &device);
        dexec_config_get_string(e->cfg, "dtype", &dtype);
        if (strcmp(device, "cpu") == 0 && strcmp(dtype, "float32") != 0) {
            st = dx_fail(err, errlen, DEXEC_ENOTSUP, DEXEC_DTYPE_CPU_REFUSAL, dtype);
            goto fail;
        }
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
    {
        int64_t q = 1024;

        dexec_config_get_int(e->cfg, "engine.max_queued", &q);
        e->max_queued = q > 0 ? (size_t)q : 1;
    }

    {
        int64_t pc = 1, ps = 1;

        dexec_config_get_int(e->cfg, "parallel.cfg", &pc);
        dexec_config_get_int(e->cfg, "parallel.sequence", &ps);
        e->width = (int)(pc * ps);
        e->par_cfg = (int)pc;
    }
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
        dx_fail(err, errlen, st, "%s: %s (plugin %s)", desc->name,
                msg[0] != '\0' ? msg : dexec_status_name(st), dexec_plugin_file(e->plugin));
        goto fail;
    }
    e->ex = ex;
    if (desc->abi_minor >= 2) {
        e->add_requests_on = e->ops->add_requests_on;
        e->rank_stats = e->ops->rank_stats;
    }
    e->nranks = e->ops->num_ranks(ex);
    if (e->nranks <= 0) {
        st = dx_fail(err, errlen, DEXEC_EINIT, "%s: executor started with %d ranks", desc->name,
                     e->nranks);
        e->ops->shutdown(ex);
        e->ex = NULL;
        goto fail;
    }
    if (e->nranks % e->width != 0) {
        st = dx_fail(err, errlen, DEXEC_ECONFIG,
                     "%s: %d ranks do not divide into parallel groups of parallel.cfg x "
                     "parallel.sequence = %d ranks: the ranks are data-parallel groups x cfg x "
                     "sequence",
                     desc->name, e->nranks, e->width);
        e->ops->shutdown(ex);
        e->ex = NULL;
        goto fail;
    }
    /* a data-parallel slot is a group of ranks */
    e->nslots = e->nranks / e->width;
    if ((st = check_dtype(e, err, errlen)) != DEXEC_OK ||
        (st = start_dispatchers(e, err, errlen)) != DEXEC_OK) {
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

/* With dtype other than float32, every rank must have loaded its model that
 * way: the mp and ray_actor executors pass it to their workers (--dtype),
 * but external workers are started by someone else and a third-party
 * executor may not pass it. A rank that answers get_info with another dtype (or none, an older
 * worker) fails engine creation rather than computing in a precision
 * nobody asked for. */
static dexec_status check_dtype(dexec_engine *e, char *err, size_t errlen)
{
    const char *want = "float32";
    char msg[DX_ERR_MAX];
    dexec_value *args, *replies = NULL;
    dexec_status st;

    dexec_config_get_string(e->cfg, "dtype", &want);
    if (strcmp(want, "float32") == 0)
        return DEXEC_OK;
    if ((args = dexec_value_array()) == NULL)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "engine: out of memory");
    msg[0] = '\0';
    st = e->ops->collective_rpc(e->ex, "get_info", e->rpc_s, args, NULL, -1, &replies, msg,
                                sizeof(msg));
    dexec_value_free(args);
    if (st != DEXEC_OK) {
        dx_fail(err, errlen, st, "dtype = \"%s\": asking the ranks how they loaded the model: %s",
                want, msg[0] != '\0' ? msg : dexec_status_name(st));
        dexec_value_free(replies);
        return st;
    }
    for (int r = 0; r < e->nranks; r++) {
        const dexec_value *info = dexec_value_array_get(replies, (size_t)r);
        const char *got = dexec_value_as_str(dexec_value_map_get(info, "dtype"), NULL);

        if (got == NULL || strcmp(got, want) != 0) {
            dx_fail(err, errlen, DEXEC_ECONFIG,
                    "dtype = \"%s\", but rank %d keeps its weights as %s: this executor does "
                    "not pass dtype to its workers; start external workers with dexec-worker "
                    "--dtype %s, or use the mp or ray_actor executor",
                    want, r, got != NULL ? got : "float32 (a worker without --dtype)", want);
            dexec_value_free(replies);
            return DEXEC_ECONFIG;
        }
    }
    dexec_value_free(replies);
    return DEXEC_OK;
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
    id = r->request_id != NULL ? r->request_id : "no id";

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
    /* the worker refuses it too (a model whose default guidance is 1) */
    if (e->par_cfg > 1 && r->guidance_scale == 1.0)
        return set_error(e, DEXEC_EINVAL,
                         "request %zu (%s): cfg parallelism (parallel.cfg = %d) needs "
                         "classifier-free guidance, and guidance_scale 1 has no unconditional "
                         "branch: ask for a guidance_scale other than 1 or set parallel.cfg = 1",
                         i, id, e->par_cfg);
    if (DEXEC_HAS_FIELD(r, dexec_request, sampler) && r->sampler != NULL &&
        r->sampler[0] == '\0')
        return set_error(e, DEXEC_EINVAL,
                         "request %zu (%s): sampler is empty (use NULL for the model's)", i, id);
    if (DEXEC_HAS_FIELD(r, dexec_request, noise_bytes) &&
        ((r->noise == NULL) != (r->noise_bytes == 0) || r->noise_bytes % 4 != 0 ||
         r->noise_bytes > DEXEC_FRAME_MAX_DEFAULT / 2))
        return set_error(e, DEXEC_EINVAL,
                         "request %zu (%s): noise of %" PRIu64 " bytes: give float32 values "
                         "(a multiple of 4 bytes, at most %u) with a non-NULL pointer, or NULL "
                         "and 0",
                         i, id, r->noise_bytes, DEXEC_FRAME_MAX_DEFAULT / 2);
    if (DEXEC_HAS_FIELD(r, dexec_request, step_noise_bytes) &&
        ((r->step_noise == NULL) != (r->step_noise_bytes == 0) || r->step_noise_bytes % 4 != 0 ||
         r->step_noise_bytes > DEXEC_FRAME_MAX_DEFAULT / 2))
        return set_error(e, DEXEC_EINVAL,
                         "request %zu (%s): step_noise of %" PRIu64 " bytes: give float32 "
                         "values (a multiple of 4 bytes, at most %u) with a non-NULL pointer, "
                         "or NULL and 0",
                         i, id, r->step_noise_bytes, DEXEC_FRAME_MAX_DEFAULT / 2);
    return DEXEC_OK;
}

/* ---- asynchronous requests ------------------------------------------------------ */

void dexec_callbacks_init_sized(dexec_callbacks *cb, size_t struct_size)
{
    if (cb == NULL)
        return;
    memset(cb, 0, sizeof(*cb));
    cb->struct_size = (uint32_t)struct_size;
}

static void handle_unref_locked(dexec_handle *h, int *destroy)
{
    *destroy = --h->refs == 0;
}

static void handle_destroy(dexec_handle *h)
{
    dexec_output_clear(&h->out);
    free(h->id);
    free(h->prompt);
    free(h->negative);
    free(h->sampler);
    free(h->noise);
    free(h->step_noise);
    free(h);
}

static void list_remove(dexec_handle **head, dexec_handle **tail, dexec_handle *h)
{
    if (h->prev != NULL)
        h->prev->next = h->next;
    else
        *head = h->next;
    if (h->next != NULL)
        h->next->prev = h->prev;
    else if (tail != NULL)
        *tail = h->prev;
    h->prev = h->next = NULL;
}

/* Completes h with *out (moved, cleared here when h was complete already):
 * exactly once, whoever gets here first. Called without e->qlock. */
static void complete(dexec_handle *h, dexec_output *out, int batch_failed)
{
    dexec_engine *e = h->e;
    int first = 0, destroy = 0;

    pthread_mutex_lock(&e->qlock);
    if (h->state != DEXEC_HANDLE_DONE) {
        first = 1;
        if (h->state == DEXEC_HANDLE_QUEUED) {
            list_remove(&e->qhead, &e->qtail, h);
            e->queued--;
        } else {
            list_remove(&e->running, NULL, h);
        }
        dexec_output_clear(&h->out);
        h->out = *out;
        dexec_output_init(out);
        if (h->out.request_id == NULL)
            h->out.request_id = strdup(h->id);
        h->batch_failed = batch_failed;
        h->state = DEXEC_HANDLE_DONE;
    }
    pthread_mutex_unlock(&e->qlock);
    if (!first) {
        dexec_output_clear(out);
        return;
    }
    if (h->cb.done != NULL)
        h->cb.done(h->cb.user, h);
    pthread_mutex_lock(&e->qlock);
    pthread_cond_broadcast(&e->donecond);
    handle_unref_locked(h, &destroy); /* the engine's reference */
    pthread_mutex_unlock(&e->qlock);
    if (destroy)
        handle_destroy(h);
}

/* Completes h with an error of its own. */
static void complete_error(dexec_handle *h, dexec_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void complete_error(dexec_handle *h, dexec_status st, const char *fmt, ...)
{
    char msg[DX_ERR_MAX];
    dexec_output o;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    dexec_output_init(&o);
    o.status = st;
    o.rank = -1;
    o.seed = h->req.seed;
    o.error = strdup(msg);
    complete(h, &o, 0);
}

/* Asks every rank to stop working on request id (the worker method
 * "cancel"); the reply only says which ranks held it, so it is dropped. */
static void cancel_on_workers(dexec_engine *e, const char *id)
{
    char msg[DX_ERR_MAX];
    dexec_value *args = dexec_value_array(), *replies = NULL;
    dexec_status st;

    if (args == NULL || dexec_value_array_push(args, dexec_value_str(id)) != 0) {
        dexec_value_free(args);
        return;
    }
    msg[0] = '\0';
    st = e->ops->collective_rpc(e->ex, "cancel", e->health_s, args, NULL, -1, &replies, msg,
                                sizeof(msg));
    if (st != DEXEC_OK)
        dexec_log(DEXEC_LOG_WARN, "engine",
                  "cancel %s: the workers were not told (%s): the request runs to its end "
                  "and its result is dropped",
                  id, msg[0] != '\0' ? msg : dexec_status_name(st));
    dexec_value_free(replies);
    dexec_value_free(args);
}

typedef struct batch_ctx {
    dexec_handle **h;
    size_t n;
} batch_ctx;

static void batch_progress(void *user, size_t i, int image, int step, int total)
{
    batch_ctx *b = user;
    dexec_handle *h;
    int live;

    if (i >= b->n)
        return;
    h = b->h[i];
    pthread_mutex_lock(&h->e->qlock);
    live = h->state == DEXEC_HANDLE_RUNNING;
    pthread_mutex_unlock(&h->e->qlock);
    if (live && h->cb.progress != NULL)
        h->cb.progress(h->cb.user, h, image, step, total);
}

/* Takes the head of the queue for a slot (e->qlock held). */
static dexec_handle *take_head(dexec_engine *e)
{
    dexec_handle *h = e->qhead;

    list_remove(&e->qhead, &e->qtail, h);
    e->queued--;
    h->state = DEXEC_HANDLE_RUNNING;
    h->started = dexec_now();
    h->refs++; /* the dispatcher's, until run_batch is done with it */
    h->next = e->running;
    if (e->running != NULL)
        e->running->prev = h;
    e->running = h;
    return h;
}

/* Gives the queue's head requests, in order, to the free slots, lowest
 * number first (e->qlock held). Called where a request arrives and where a
 * slot becomes free, so requests are placed at one instant, whatever
 * thread wakes first: on an idle engine request i of a submission goes to
 * slot i. */
static void assign_slots(dexec_engine *e)
{
    int given = 0;

    for (int i = 0; i < e->ndispatch && e->qhead != NULL; i++) {
        dx_slot *sl = &e->slots[i];

        if (sl->busy)
            continue;
        sl->next = take_head(e);
        sl->busy = 1;
        given = 1;
    }
    if (given)
        pthread_cond_broadcast(&e->qcond);
}

/* sl's executor call returned: it takes the next request. */
static void slot_free(dexec_engine *e, dx_slot *sl)
{
    pthread_mutex_lock(&e->qlock);
    sl->busy = 0;
    assign_slots(e);
    pthread_mutex_unlock(&e->qlock);
}

/* Runs b[0..n) on sl and completes each handle; sl is free again once
 * the executor returned, before the handles complete, so a caller woken by
 * a completion finds it free. */
static void run_batch(dexec_engine *e, dx_slot *sl, dexec_handle **b, size_t n)
{
    int slot = sl->index;
    char msg[DX_ERR_MAX];
    dexec_request *reqs = malloc(n * sizeof(*reqs));
    dexec_output *o = calloc(n, sizeof(*o));
    char **timed_out = calloc(n, sizeof(*timed_out));
    batch_ctx ctx = {.h = b, .n = n};
    dx_thread_state *t = thread_state(e, 1);
    double t0 = dexec_now();
    dexec_status st;

    if (reqs == NULL || o == NULL || t == NULL) {
        slot_free(e, sl);
        for (size_t i = 0; i < n; i++)
            complete_error(b[i], DEXEC_ENOMEM, "out of memory dispatching %zu requests", n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        reqs[i] = b[i]->req;
        dexec_output_init(&o[i]);
    }
    /* The dispatcher runs on behalf of callers that entered the engine
     * (step() holds the read lock while it waits): callbacks it runs may
     * call the engine again without taking the lock a second time. */
    t->depth++;
    msg[0] = '\0';
    if (e->add_requests_on != NULL)
        st = e->add_requests_on(e->ex, slot, reqs, n, o, e->generate_s, batch_progress, &ctx, msg,
                                sizeof(msg));
    else
        st = e->ops->add_requests(e->ex, reqs, n, o, e->generate_s, batch_progress, &ctx, msg,
                                  sizeof(msg));
    slot_free(e, sl);
    /* A request the executor gave up on at its deadline may still be
     * computing on its rank, ahead of what is dealt there next: it is
     * cancelled on the workers once its caller has the error. Noted
     * before completing, which hands the output over. */
    for (size_t i = 0; timed_out != NULL && i < n; i++)
        if (st == DEXEC_ETIMEDOUT ||
            (st == DEXEC_OK && o[i].struct_size >= DEXEC_OUTPUT_SIZE_1_1 &&
             o[i].status == DEXEC_ETIMEDOUT))
            timed_out[i] = strdup(b[i]->id);
    if (st != DEXEC_OK) {
        if (!known_status(st))
            st = DEXEC_EPLUGIN;
        for (size_t i = 0; i < n; i++) {
            dexec_output_clear(&o[i]);
            o[i].status = st;
            o[i].rank = -1;
            o[i].seed = b[i]->req.seed;
            o[i].error = msg[0] != '\0' ? strdup(msg)
                                        : dx_asprintf("%s: step: %s", e->backend,
                                                      dexec_status_name(st));
            complete(b[i], &o[i], 1);
        }
        t->depth--;
        goto out;
    }
    /* Backends fill what they know; the engine completes what it knows. */
    for (size_t i = 0; i < n; i++) {
        if (DEXEC_STRUCT_CHECK(&o[i], dexec_output, DEXEC_OUTPUT_SIZE_1_1, msg, sizeof(msg)) !=
            DEXEC_OK) {
            char why[DX_ERR_MAX];

            /* Not ours to free: we cannot tell which fields it holds. */
            snprintf(why, sizeof(why), "%s", msg);
            dexec_output_init(&o[i]);
            o[i].status = DEXEC_EPLUGIN;
            o[i].rank = -1;
            o[i].error = dx_asprintf("%s: step: output %zu: %s (a backend keeps the "
                                     "struct_size of the outputs it fills)",
                                     e->backend, i, why);
            complete(b[i], &o[i], BATCH_PLUGIN_BUG);
            continue;
        }
        if (o[i].timings.total_s == 0)
            o[i].timings.total_s = dexec_now() - t0;
        /* the worker measured its own queue; the engine's comes first */
        o[i].timings.queue_s += b[i]->started - b[i]->queued_at;
        complete(b[i], &o[i], 0);
    }
    t->depth--;
out:
    for (size_t i = 0; i < n; i++) {
        int destroy;

        pthread_mutex_lock(&e->qlock);
        handle_unref_locked(b[i], &destroy);
        pthread_mutex_unlock(&e->qlock);
        if (destroy)
            handle_destroy(b[i]);
    }
    for (size_t i = 0; timed_out != NULL && i < n; i++) {
        if (timed_out[i] != NULL)
            cancel_on_workers(e, timed_out[i]);
        free(timed_out[i]);
    }
    free(timed_out);
    free(reqs);
    free(o);
}

/* A slot's dispatcher: runs the requests assign_slots gives it, one at a
 * time, so every request completes on its own and a free slot never waits
 * for another slot's work. */
static void *dispatch_main(void *arg)
{
    dx_slot *me = arg;
    dexec_engine *e = me->e;

    for (;;) {
        dexec_handle *h;
        int done;

        pthread_mutex_lock(&e->qlock);
        while (me->next == NULL && !(e->stopping && e->qhead == NULL))
            pthread_cond_wait(&e->qcond, &e->qlock);
        h = me->next;
        me->next = NULL;
        done = h != NULL && h->state == DEXEC_HANDLE_DONE; /* closed or cancelled meanwhile */
        pthread_mutex_unlock(&e->qlock);
        if (h == NULL)
            break;
        if (done) {
            int destroy;

            slot_free(e, me);
            pthread_mutex_lock(&e->qlock);
            handle_unref_locked(h, &destroy);
            pthread_mutex_unlock(&e->qlock);
            if (destroy)
                handle_destroy(h);
            continue;
        }
        run_batch(e, me, &h, 1);
    }
    return NULL;
}

/* Starts the dispatcher threads, one per data-parallel slot. */
static dexec_status start_dispatchers(dexec_engine *e, char *err, size_t errlen)
{
    /* e->nslots: ranks / width, set at create */
    e->slots = calloc((size_t)e->nslots, sizeof(*e->slots));
    if (e->slots == NULL)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "engine: out of memory");
    for (int i = 0; i < e->nslots; i++) {
        int rc;

        e->slots[i].e = e;
        e->slots[i].index = i;
        /* counted first: a dispatcher looks at slots 0..ndispatch-1 */
        pthread_mutex_lock(&e->qlock);
        e->ndispatch++;
        pthread_mutex_unlock(&e->qlock);
        rc = pthread_create(&e->slots[i].thread, NULL, dispatch_main, &e->slots[i]);
        if (rc != 0) {
            pthread_mutex_lock(&e->qlock);
            e->ndispatch--;
            pthread_mutex_unlock(&e->qlock);
            stop_dispatchers(e);
            return dx_fail(err, errlen, DEXEC_EINIT, "engine: cannot start a dispatcher thread: %s",
                           strerror(rc));
        }
    }
    return DEXEC_OK;
}

/* Drops the queue (DEXEC_ECLOSED), cancels what runs and joins the
 * dispatchers. */
static void stop_dispatchers(dexec_engine *e)
{
    for (;;) {
        dexec_handle *h;
        int running = 0;

        pthread_mutex_lock(&e->qlock);
        e->stopping = 1;
        pthread_cond_broadcast(&e->qcond);
        h = e->qhead != NULL ? e->qhead : e->running;
        if (h != NULL) {
            h->refs++;
            running = h->state == DEXEC_HANDLE_RUNNING;
        }
        pthread_mutex_unlock(&e->qlock);
        if (h == NULL)
            break;
        {
            int destroy;

            complete_error(h, DEXEC_ECLOSED, "request %s: the engine was closed before it %s",
                           h->id, running ? "finished" : "ran");
            if (running)
                cancel_on_workers(e, h->id);
            pthread_mutex_lock(&e->qlock);
            handle_unref_locked(h, &destroy);
            pthread_mutex_unlock(&e->qlock);
            if (destroy)
                handle_destroy(h);
        }
    }
    for (int i = 0; i < e->ndispatch; i++)
        pthread_join(e->slots[i].thread, NULL);
    e->ndispatch = 0;
    free(e->slots);
    e->slots = NULL;
}

/* Copies a request and resolves the defaults the engine chooses. */
static dexec_status resolve(dexec_engine *e, dexec_handle *h, const dexec_request *r)
{
    dexec_request_init(&h->req);
    dx_struct_import(&h->req, DEXEC_REQUEST_SIZE, r);
    if (h->req.request_id == NULL) {
        uint64_t id = __atomic_fetch_add(&e->next_request, 1, __ATOMIC_RELAXED);

        h->id = dx_asprintf("req-%llu", (unsigned long long)id);
    } else {
        h->id = strdup(h->req.request_id);
    }
    h->prompt = strdup(h->req.prompt != NULL ? h->req.prompt : "");
    if (h->req.negative_prompt != NULL && (h->negative = strdup(h->req.negative_prompt)) == NULL)
        return DEXEC_ENOMEM;
    if (h->id == NULL || h->prompt == NULL)
        return DEXEC_ENOMEM;
    h->req.request_id = h->id;
    h->req.prompt = h->prompt;
    h->req.negative_prompt = h->negative;
    if (h->req.sampler != NULL && (h->req.sampler = h->sampler = strdup(h->req.sampler)) == NULL)
        return DEXEC_ENOMEM;
    if (h->req.noise != NULL) {
        if ((h->noise = malloc(h->req.noise_bytes)) == NULL)
            return DEXEC_ENOMEM;
        memcpy(h->noise, h->req.noise, h->req.noise_bytes);
        h->req.noise = h->noise;
    }
    if (h->req.step_noise != NULL) {
        if ((h->step_noise = malloc(h->req.step_noise_bytes)) == NULL)
            return DEXEC_ENOMEM;
        memcpy(h->step_noise, h->req.step_noise, h->req.step_noise_bytes);
        h->req.step_noise = h->step_noise;
    }
    if (h->req.seed < 0)
        h->req.seed = random_seed();
    if (h->req.num_outputs_per_prompt == 0)
        h->req.num_outputs_per_prompt = 1;
    return DEXEC_OK;
}

/* submit; bounded says whether engine.max_queued applies (not to step). */
static dexec_status submit(dexec_engine *e, const dexec_request *reqs, size_t n,
                           const dexec_callbacks *cb, dexec_handle **handles, int bounded,
                           const char *what)
{
    dexec_callbacks c;
    uint64_t sub;
    dexec_status st;
    char msg[DX_ERR_MAX];

    for (size_t i = 0; i < n; i++)
        handles[i] = NULL;
    dexec_callbacks_init(&c);
    if (cb != NULL) {
        if (DEXEC_STRUCT_CHECK(cb, dexec_callbacks, DEXEC_CALLBACKS_SIZE_1_1, msg, sizeof(msg)) !=
            DEXEC_OK)
            return set_error(e, DEXEC_EINVAL, "%s: %s", what, msg);
        dx_struct_import(&c, DEXEC_CALLBACKS_SIZE, cb);
    }
    for (size_t i = 0; i < n; i++)
        if ((st = check_request(e, &reqs[i], i)) != DEXEC_OK)
            return st;
    for (size_t i = 0; i < n; i++) {
        dexec_handle *h = calloc(1, sizeof(*h));

        if (h == NULL || (h->e = e, resolve(e, h, &reqs[i])) != DEXEC_OK) {
            if (h != NULL)
                handle_destroy(h);
            for (size_t k = 0; k < i; k++) {
                handle_destroy(handles[k]);
                handles[k] = NULL;
            }
            return set_error(e, DEXEC_ENOMEM, "%s: out of memory for %zu requests", what, n);
        }
        dexec_output_init(&h->out);
        h->index = i;
        h->cb = c;
        h->refs = 2;
        handles[i] = h;
    }

    pthread_mutex_lock(&e->qlock);
    if (e->stopping) {
        st = set_error(e, DEXEC_ECLOSED, "engine is closed");
    } else if (bounded && e->queued + n > e->max_queued) {
        st = set_error(e, DEXEC_EAGAIN,
                       "queue full: %zu queued + %zu new > engine.max_queued = %zu: "
                       "retry later",
                       e->queued, n, e->max_queued);
    } else {
        double now = dexec_now();

        sub = e->next_submission++;
        for (size_t i = 0; i < n; i++) {
            dexec_handle *h = handles[i];

            h->submission = sub;
            h->queued_at = now;
            h->prev = e->qtail;
            if (e->qtail != NULL)
                e->qtail->next = h;
            else
                e->qhead = h;
            e->qtail = h;
        }
        e->queued += n;
        assign_slots(e);
        st = DEXEC_OK;
    }
    pthread_mutex_unlock(&e->qlock);
    if (st != DEXEC_OK)
        for (size_t i = 0; i < n; i++) {
            handle_destroy(handles[i]);
            handles[i] = NULL;
        }
    return st;
}

dexec_status dexec_engine_submit(dexec_engine *e, const dexec_request *reqs, size_t n,
                                 const dexec_callbacks *cb, dexec_handle **handles)
{
    dexec_status st;

    if (e == NULL)
        return DEXEC_EINVAL;
    if (n > 0 && reqs == NULL)
        return set_error(e, DEXEC_EINVAL, "submit: %zu requests but reqs is NULL", n);
    if (n > 0 && handles == NULL)
        return set_error(e, DEXEC_EINVAL, "submit: handles is NULL");
    if ((st = enter(e)) != DEXEC_OK)
        return st;
    st = n > 0 ? submit(e, reqs, n, cb, handles, 1, "submit") : DEXEC_OK;
    leave(e);
    return st;
}

dexec_handle_state dexec_handle_get_state(const dexec_handle *h)
{
    dexec_handle_state s;

    if (h == NULL)
        return DEXEC_HANDLE_DONE;
    pthread_mutex_lock(&h->e->qlock);
    s = h->state;
    pthread_mutex_unlock(&h->e->qlock);
    return s;
}

const char *dexec_handle_request_id(const dexec_handle *h)
{
    return h != NULL ? h->id : "";
}

dexec_status dexec_handle_wait(dexec_handle *h, double timeout)
{
    dexec_engine *e;
    double deadline;
    struct timespec ts;
    dexec_status st;

    if (h == NULL || isnan(timeout))
        return DEXEC_EINVAL;
    e = h->e;
    deadline = dexec_now() + (timeout > 0 ? timeout : 0);
    pthread_mutex_lock(&e->qlock);
    while (h->state != DEXEC_HANDLE_DONE) {
        double left = deadline - dexec_now();

        if (left <= 0)
            break;
        /* the condition waits on CLOCK_REALTIME; slices of at most a second
         * keep a clock step from stretching the deadline */
        if (left > 1.0)
            left = 1.0;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)left;
        ts.tv_nsec += (long)((left - (double)(time_t)left) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&e->donecond, &e->qlock, &ts);
    }
    st = h->state == DEXEC_HANDLE_DONE ? DEXEC_OK : DEXEC_ETIMEDOUT;
    pthread_mutex_unlock(&e->qlock);
    return st;
}

const dexec_output *dexec_handle_output(const dexec_handle *h)
{
    const dexec_output *o;

    if (h == NULL)
        return NULL;
    pthread_mutex_lock(&h->e->qlock);
    o = h->state == DEXEC_HANDLE_DONE && !h->taken ? &h->out : NULL;
    pthread_mutex_unlock(&h->e->qlock);
    return o;
}

dexec_status dexec_handle_take_output(dexec_handle *h, dexec_output *out)
{
    dexec_status st = DEXEC_EINVAL;

    if (h == NULL || out == NULL)
        return DEXEC_EINVAL;
    pthread_mutex_lock(&h->e->qlock);
    if (h->state == DEXEC_HANDLE_DONE && !h->taken) {
        *out = h->out;
        dexec_output_init(&h->out);
        h->taken = 1;
        st = DEXEC_OK;
    }
    pthread_mutex_unlock(&h->e->qlock);
    return st;
}

/* Cancels h unless it is complete; 0 when it was complete already. */
static int cancel_handle(dexec_handle *h)
{
    dexec_engine *e = h->e;
    dexec_handle_state s;
    int destroy;

    pthread_mutex_lock(&e->qlock);
    s = h->state;
    if (s != DEXEC_HANDLE_DONE)
        h->refs++; /* held while we complete it */
    pthread_mutex_unlock(&e->qlock);
    if (s == DEXEC_HANDLE_DONE)
        return 0;
    if (s == DEXEC_HANDLE_QUEUED) {
        complete_error(h, DEXEC_ECANCELED, "request %s cancelled while queued", h->id);
    } else {
        /* complete first: the caller is answered even if a worker is slow
         * to hear about it; the late result is dropped */
        complete_error(h, DEXEC_ECANCELED,
                       "request %s cancelled while running (abandoned: its worker stops at "
                       "the next step)",
                       h->id);
        /* the executor must outlive the call: a close in progress is
         * waited for, and after it there is no worker left to tell */
        if (lock_shared(e) == 0) {
            if (e->ex != NULL)
                cancel_on_workers(e, h->id);
            unlock_shared(e);
        }
    }
    pthread_mutex_lock(&e->qlock);
    handle_unref_locked(h, &destroy);
    pthread_mutex_unlock(&e->qlock);
    if (destroy)
        handle_destroy(h);
    return 1;
}

dexec_status dexec_handle_cancel(dexec_handle *h)
{
    if (h == NULL)
        return DEXEC_EINVAL;
    if (!cancel_handle(h))
        return set_error(h->e, DEXEC_EINVAL, "request %s already completed", h->id);
    return DEXEC_OK;
}

void dexec_handle_free(dexec_handle *h)
{
    int destroy;

    if (h == NULL)
        return;
    cancel_handle(h);
    pthread_mutex_lock(&h->e->qlock);
    handle_unref_locked(h, &destroy);
    pthread_mutex_unlock(&h->e->qlock);
    if (destroy)
        handle_destroy(h);
}

/* ---- step: submit and wait ---------------------------------------------------- */

typedef struct step_ctx {
    dexec_progress_fn fn;
    void *user;
} step_ctx;

static void step_progress(void *user, dexec_handle *h, int image, int step, int total)
{
    step_ctx *s = user;

    s->fn(s->user, h->index, image, step, total);
}

/* Waits for h: behind earlier submissions in the queue, then at most
 * timeouts.generate (the executor's own deadline) plus a margin once it
 * was dispatched. */
static dexec_status step_wait(dexec_engine *e, dexec_handle *h)
{
    for (;;) {
        double started;

        if (dexec_handle_wait(h, 1.0) == DEXEC_OK)
            return DEXEC_OK;
        pthread_mutex_lock(&e->qlock);
        started = h->state == DEXEC_HANDLE_RUNNING ? h->started : 0;
        pthread_mutex_unlock(&e->qlock);
        if (started > 0 && dexec_now() > started + e->generate_s + 5.0)
            return DEXEC_ETIMEDOUT;
    }
}

dexec_status dexec_engine_step(dexec_engine *e, const dexec_request *reqs, size_t n,
                               dexec_output **outs, dexec_progress_fn progress, void *user)
{
    dexec_handle **h = NULL;
    dexec_output *o = NULL;
    step_ctx sc = {.fn = progress, .user = user};
    dexec_callbacks cb;
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
    h = calloc(n, sizeof(*h));
    o = calloc(n, sizeof(*o));
    if (h == NULL || o == NULL) {
        st = set_error(e, DEXEC_ENOMEM, "step: out of memory for %zu requests", n);
        goto out;
    }
    dexec_callbacks_init(&cb);
    if (progress != NULL) {
        cb.progress = step_progress;
        cb.user = &sc;
    }
    if ((st = submit(e, reqs, n, &cb, h, 0, "step")) != DEXEC_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (step_wait(e, h[i]) != DEXEC_OK) {
            for (size_t k = i; k < n; k++)
                cancel_handle(h[k]);
            st = set_error(e, DEXEC_ETIMEDOUT,
                           "step: request %s did not complete within timeouts.generate = %g s",
                           h[i]->id, e->generate_s);
            goto out;
        }
    }
    /* The step failed as a whole when the executor failed every one of
     * its requests (each call of a dispatcher holds one request, and an
     * executor fails a call when all its requests failed): the first's
     * error says why. A request that failed alone is in its output. */
    {
        size_t failed = 0, bad = n;

        for (size_t i = 0; i < n; i++) {
            dexec_handle_take_output(h[i], &o[i]);
            failed += h[i]->batch_failed != 0;
            if (h[i]->batch_failed == BATCH_PLUGIN_BUG && bad == n)
                bad = i;
        }
        if (bad == n && failed == n)
            bad = 0;
        if (bad < n)
            st = set_error(e, o[bad].status, "%s",
                           o[bad].error != NULL ? o[bad].error : "step failed");
    }
    if (st == DEXEC_OK) {
        *outs = o;
        o = NULL;
    }

out:
    if (h != NULL)
        for (size_t i = 0; i < n; i++)
            dexec_handle_free(h[i]);
    leave(e);
    dexec_outputs_free(o, n);
    free(h);
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

void dexec_rank_stats_init_sized(dexec_rank_stats *s, size_t struct_size)
{
    if (s == NULL)
        return;
    memset(s, 0, sizeof(*s));
    s->struct_size = (uint32_t)struct_size;
}

dexec_status dexec_engine_rank_stats(dexec_engine *e, int rank, dexec_rank_stats *out)
{
    dexec_rank_stats mine;
    dexec_status st;

    if (e == NULL)
        return DEXEC_EINVAL;
    if (out == NULL)
        return set_error(e, DEXEC_EINVAL, "rank_stats: out is NULL");
    /* the type is of ABI 1.2: dexec_struct_check's "ABI 1.1" does not fit */
    if (out->struct_size < DEXEC_RANK_STATS_SIZE_1_2 || out->struct_size > sizeof(*out))
        return set_error(e, DEXEC_EINVAL,
                         "rank_stats: dexec_rank_stats.struct_size is %u, not one this dexec "
                         "reads (%zu..%zu bytes, ABI 1.2): initialise it with "
                         "dexec_rank_stats_init()",
                         (unsigned)out->struct_size, (size_t)DEXEC_RANK_STATS_SIZE_1_2,
                         sizeof(*out));
    if ((st = enter(e)) != DEXEC_OK)
        return st;
    if (rank < 0 || rank >= e->nranks) {
        st = set_error(e, DEXEC_EINVAL, "rank_stats: rank %d is outside 0..%d", rank,
                       e->nranks - 1);
    } else if (e->rank_stats == NULL) {
        st = set_error(e, DEXEC_ENOTSUP,
                       "rank_stats: the executor %s keeps no death or restart counts (its "
                       "plugin has no rank_stats op, ABI 1.2)",
                       e->backend);
    } else {
        /* the plugin fills a struct of this dexec's size; the caller gets
         * the fields its struct_size covers */
        dexec_rank_stats_init(&mine);
        st = e->rank_stats(e->ex, rank, &mine);
        if (st != DEXEC_OK) {
            if (!known_status(st))
                st = DEXEC_EPLUGIN;
            set_error(e, st, "%s: rank_stats %d: %s", e->backend, rank, dexec_status_name(st));
        } else {
            uint32_t size = out->struct_size;

            memcpy(out, &mine, size < sizeof(mine) ? size : sizeof(mine));
            out->struct_size = size;
        }
    }
    leave(e);
    return st;
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
    /* the dispatchers' callbacks may call the engine: they do so without
     * the lock (see run_batch), on an executor that is still there */
    t = thread_state(e, 1);
    if (t != NULL)
        t->depth++;
    stop_dispatchers(e);
    if (t != NULL)
        t->depth--;
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
