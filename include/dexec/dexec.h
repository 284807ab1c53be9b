/*
 * dexec.h - the engine API of libdexec: configuration, requests, outputs,
 * the engine (create, step, collective_rpc, check_health, close), status
 * codes and logging.
 *
 * Conventions
 *  - Every call returns a dexec_status. A failing call on an engine leaves a
 *    human message that dexec_engine_last_error() returns; calls made
 *    without an engine (config loading, engine creation) write the message
 *    into a caller buffer (err, errlen), which may be NULL.
 *  - Nothing waits without a deadline: every call that talks to workers
 *    takes a timeout (seconds; <= 0 means the configured default).
 *  - Structs that cross the library or plugin boundary can grow within ABI
 *    major 1 by the one rule under "Structs that can grow" below.
 *
 * Threads
 *  - dexec_engine_step(), dexec_engine_collective_rpc() and
 *    dexec_engine_check_health() may be called from several threads at
 *    once; calls to the same worker are multiplexed over its connection
 *    (replies are matched by message id), so a health check is answered
 *    while a generate runs.
 *  - dexec_engine_close() is serialized against all of them: it waits for
 *    calls in flight to return (each has its own deadline) and makes later
 *    calls fail with DEXEC_ECLOSED. dexec_engine_free() must be the last
 *    call on an engine.
 *  - dexec_engine_last_error() returns the message of the last failing
 *    call made by the calling thread on that engine. It lives in the
 *    thread's own storage (nothing stays behind when the thread exits),
 *    which holds the messages of the 8 engines the thread used most
 *    recently; an engine used longer ago reads "".
 *  - An engine may be created on any thread, including one that exits
 *    before the engine is closed: workers the engine owns are forked by
 *    libdexec's own spawner thread, which lives as long as the process, so
 *    their parent-death signal (they get SIGKILL when this process dies)
 *    does not fire when the creating thread exits (see <dexec/process.h>).
 */
#ifndef DEXEC_DEXEC_H
#define DEXEC_DEXEC_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/limits.h>
#include <dexec/value.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DEXEC_VERSION_MAJOR 0
#define DEXEC_VERSION_MINOR 1
#define DEXEC_VERSION_PATCH 0

/* Status codes. Python's TimeoutError maps to DEXEC_ETIMEDOUT and
 * RuntimeError to DEXEC_EUNHEALTHY / DEXEC_EWORKER. Values are stable. */
typedef enum dexec_status {
    DEXEC_OK = 0,
    DEXEC_EINVAL = 1,     /* bad argument or request */
    DEXEC_ENOMEM = 2,     /* out of memory */
    DEXEC_ECONFIG = 3,    /* bad configuration file or value */
    DEXEC_ENOTFOUND = 4,  /* plugin, model, actor name or method not found */
    DEXEC_EPLUGIN = 5,    /* plugin file could not be loaded or is not a dexec plugin */
    DEXEC_EABI = 6,       /* plugin built for an incompatible ABI */
    DEXEC_EINIT = 7,      /* plugin or worker failed to start */
    DEXEC_ETIMEDOUT = 8,  /* a deadline passed */
    DEXEC_EUNHEALTHY = 9, /* a health check failed */
    DEXEC_EWORKER = 10,   /* a worker replied with an error, or died */
    DEXEC_EPROTO = 11,    /* malformed message on the wire */
    DEXEC_ECLOSED = 12,   /* engine or connection closed */
    DEXEC_EIO = 13,       /* system call failed (message has errno text) */
    DEXEC_ENOTSUP = 14,   /* capability not built or not available here */
    DEXEC_EAUTH = 15,     /* handshake refused (bad or missing token), or a method refused */
    DEXEC_EAGAIN = 16,    /* the engine's queue is full (engine.max_queued): retry later */
    DEXEC_ECANCELED = 17, /* the request was cancelled (dexec_handle_cancel) */
} dexec_status;

/* Static, never NULL: "ok", "invalid argument", ... */
const char *dexec_status_name(dexec_status s);

/* "0.1.0" */
const char *dexec_version(void);

/* Current CLOCK_MONOTONIC time in seconds. Deadlines in the worker
 * protocol headers (<dexec/conn.h>, <dexec/codec.h>, <dexec/server.h>) are
 * absolute values of this clock. */
double dexec_now(void);

/* Writes a formatted message into err (NULL-safe; truncated to errlen). */
void dexec_errorf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- Structs that can grow ------------------------------------------------
 *
 * Every public struct that one side of the ABI fills for the other
 * (dexec_request, dexec_output, dexec_image, dexec_timings here,
 * dexec_actor_info and the descriptor, ops tables and host services in
 * <dexec/plugin.h>) follows one rule:
 *
 *  - Its first field is uint32_t struct_size: how many bytes of named
 *    fields the code that filled it knew, DEXEC_<TYPE>_SIZE of the headers
 *    it was built with. The init macro of the type (dexec_request_init,
 *    dexec_output_init, ...) sets it; whoever allocates or fills a struct
 *    initialises it (an out-parameter is initialised by the callee). The
 *    descriptor, ops tables and dexec_host of <dexec/plugin.h> put
 *    sizeof(T) at build time there, which reads the same way.
 *  - Its last field is reserved space, zero. sizeof(T) never changes within
 *    ABI major 1, so arrays of T keep their stride: a field added in a
 *    minor version takes bytes from the reserved space, is zero when not
 *    set, and zero means "as before".
 *  - Fields are never reordered, resized or removed within a major.
 *  - A reader reads a field only when struct_size covers it
 *    (DEXEC_HAS_FIELD) and refuses a struct_size below the type's ABI 1.1
 *    size (DEXEC_<TYPE>_SIZE_1_1) or above sizeof(T) (not a 1.x struct:
 *    never initialised) with dexec_struct_check()'s message.
 *
 * Types the library alone allocates (dexec_value, below) and opaque types
 * (dexec_engine, dexec_config, dexec_conn, ...) are outside this rule.
 */

/* Nonzero when the struct *p (of type T) carries field. */
#define DEXEC_HAS_FIELD(p, T, field)                                                              \
    ((size_t)(p)->struct_size >= offsetof(T, field) + sizeof(((const T *)0)->field))

/* Checks the struct_size of a struct of type `type` (its name, e.g.
 * "dexec_request") handed over the ABI: DEXEC_OK when
 * oldest <= struct_size <= largest, else DEXEC_EINVAL and the message
 * "TYPE.struct_size is N, below the smallest TYPE this dexec reads
 * (M bytes, ABI 1.1): initialise it with TYPE_init()" (or "above
 * sizeof(TYPE) (M): not an initialised TYPE of ABI 1.x; initialise it
 * with TYPE_init()"). */
dexec_status dexec_struct_check(const char *type, uint32_t struct_size, size_t oldest,
                                size_t largest, char *err, size_t errlen);

/* dexec_struct_check() for a pointer p to a struct T with its 1.1 size. */
#define DEXEC_STRUCT_CHECK(p, T, size_1_1, err, errlen)                                           \
    dexec_struct_check(#T, (p)->struct_size, (size_1_1), sizeof(T), (err), (errlen))

/* ---- Logging ------------------------------------------------------------ */

typedef enum dexec_log_level {
    DEXEC_LOG_ERROR = 0,
    DEXEC_LOG_WARN = 1,
    DEXEC_LOG_INFO = 2,
    DEXEC_LOG_DEBUG = 3,
} dexec_log_level;

/* Logs to stderr as "dexec[pid] LEVEL component: message" (and to syslog
 * when enabled). Messages above the current level are dropped. Thread-safe. */
void dexec_log(dexec_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void dexec_log_set_level(dexec_log_level level);
dexec_log_level dexec_log_get_level(void);
/* Parses "error|warn|info|debug"; returns -1 for anything else. */
int dexec_log_level_parse(const char *name);
/* Also send messages to syslog(3) under ident (NULL: "dexec"); 0 turns it off. */
/* Names the program in every log line ("dexec-worker[4242] warn ...") and
 * in syslog's default ident; "dexec" until set. */
void dexec_log_set_program(const char *name);
void dexec_log_use_syslog(int on, const char *ident);

/* Largest ring dexec_log_keep() accepts. */
#define DEXEC_LOG_KEEP_MAX 100000

/* Keeps the last n lines logged at level or more severe in memory (whatever
 * dexec_log_set_level() lets through to stderr), for dexec_log_recent():
 * dexec-worker keeps 1000 at info and serves them as the get_logs method.
 * n = 0 turns it off and drops the lines kept. DEXEC_EINVAL for n above
 * DEXEC_LOG_KEEP_MAX or a bad level, DEXEC_ENOMEM. */
dexec_status dexec_log_keep(size_t n, dexec_log_level level);

/* The last max lines kept (0: all), oldest first: an ARRAY of MAPs
 * {time: unix seconds (float), level: "error|warn|info|debug", component,
 * message}. Empty when nothing is kept. Caller frees; NULL on ENOMEM. */
dexec_value *dexec_log_recent(size_t max);

/* ---- Configuration ------------------------------------------------------ */

typedef struct dexec_config dexec_config;

/* Loads a configuration. path NULL means $DEXEC_CONFIG if set, else the
 * defaults. Environment overrides are applied on top (DEXEC_PLUGIN_PATH,
 * DEXEC_LOG_LEVEL, DEXEC_TOKEN_FILE, DIFFUSION_WORKER_ACTOR_NAMES). An unknown key, a wrong
 * type or a value out of range fails with DEXEC_ECONFIG and a message
 * "FILE:LINE: KEY: what is wrong". On success *out is owned by the caller
 * (dexec_config_free). Plugins' settings: see
 * dexec_config_add_plugin_settings(). */
dexec_status dexec_config_load(const char *path, dexec_config **out, char *err, size_t errlen);

/* Parses configuration text (name is used in messages). */
dexec_status dexec_config_parse(const char *text, const char *name, dexec_config **out, char *err,
                                size_t errlen);

void dexec_config_free(dexec_config *cfg);

/* Typed access by dotted key ("timeouts.rpc", "ray_actor.cpus", and a
 * plugin's settings: "discovery.redis.url"). Setters validate like the
 * file parser (type and range) and fail with DEXEC_ECONFIG /
 * DEXEC_ENOTFOUND (unknown key). Getters fail with DEXEC_ENOTFOUND for an
 * unknown key (a plugin's key is known when its settings are attached:
 * see dexec_config_add_plugin_settings) and DEXEC_EINVAL for a key of
 * another type. Strings returned are owned by cfg. */
dexec_status dexec_config_get_int(const dexec_config *cfg, const char *key, int64_t *out);
dexec_status dexec_config_get_float(const dexec_config *cfg, const char *key, double *out);
dexec_status dexec_config_get_string(const dexec_config *cfg, const char *key, const char **out);
/* Booleans (only plugins declare them): 1 or 0. */
dexec_status dexec_config_get_bool(const dexec_config *cfg, const char *key, int *out);
/* List keys (external.worker_names, plugin_path): count and items. */
dexec_status dexec_config_get_list(const dexec_config *cfg, const char *key, size_t *n,
                                   const char *const **items);
/* Map keys (ray_actor.resources): name -> number, returned as a borrowed
 * DEXEC_VAL_MAP. */
dexec_status dexec_config_get_map(const dexec_config *cfg, const char *key,
                                  const dexec_value **out);

/* Sets a value from its text form as it would be written on a command line
 * ("2", "4.5", "mp", "a,b,c" for lists). */
dexec_status dexec_config_set(dexec_config *cfg, const char *key, const char *value, char *err,
                              size_t errlen);

/* Where a key's value came from: "default", "FILE:LINE", "env NAME", "set". */
const char *dexec_config_origin(const dexec_config *cfg, const char *key);

/* The effective configuration as libconfig text (every key, defaults and
 * attached plugins' settings too). Secrets are never written: a
 * DEXEC_SETTING_SECRET value reads "********" and the password of a URL
 * (ray_init.address, discovery.redis.url) "****". Caller frees. */
char *dexec_config_dump(const dexec_config *cfg);

/* The file the configuration came from, or NULL for defaults only. */
const char *dexec_config_path(const dexec_config *cfg);

/* The settings of plugins (plugin.h, "Settings a plugin owns") are part of
 * a configuration's schema once attached. Loading or parsing attaches the
 * plugins the configuration names (distributed_executor_backend and
 * external.discovery; a plugin that cannot be loaded is skipped, and the
 * engine reports it when it needs it) and, for a section of the file none
 * of them owns, the plugin of the search path that declares it;
 * dexec_config_set() of either key attaches the newly named plugin. This
 * function attaches more: the plugin name_or_path (loaded as
 * dexec_plugin_load() does), or, when it is NULL, every plugin of cfg's
 * search path that declares settings (what `dexec config keys` lists).
 * The settings get their defaults. Errors: those of dexec_plugin_load();
 * DEXEC_EPLUGIN for a plugin whose settings table breaks plugin.h's rules
 * or claims a section another attached plugin owns. */
dexec_status dexec_config_add_plugin_settings(dexec_config *cfg, const char *name_or_path,
                                              char *err, size_t errlen);

/* Key number index of cfg's schema: the core's keys, then each attached
 * plugin's, as dexec_config_key_info() describes them; *plugin is NULL for
 * the core's keys, else the owning plugin's name. The strings are owned by
 * cfg (static for the core's keys). cfg NULL: the core's keys only.
 * DEXEC_ENOTFOUND when index is past the last key. */
dexec_status dexec_config_schema_key(const dexec_config *cfg, size_t index, const char **key,
                                     const char **type, const char **def, const char **range,
                                     const char **doc, const char **plugin);

/* The core's schema, for tools and documentation: key number index (0, 1, ... in
 * file order) as its dotted name, its type ("integer", "float", "string",
 * "list", "map"), its default in the text form dexec_config_set() takes,
 * what it accepts ("1..64", "auto|cpu|cuda", ...) and a one-line
 * description. Out pointers may be NULL; the strings are static.
 * DEXEC_ENOTFOUND when index is past the last key. */
dexec_status dexec_config_key_info(size_t index, const char **key, const char **type,
                                   const char **def, const char **range, const char **doc);

/* ---- Requests and outputs ----------------------------------------------- */

typedef struct dexec_request {
    uint32_t struct_size;        /* DEXEC_REQUEST_SIZE: set by dexec_request_init */
    const char *request_id;      /* NULL: the engine assigns "req-N" */
    const char *prompt;          /* NULL or "": unconditional */
    const char *negative_prompt; /* NULL: none */
    int height;                  /* 0: the model's native size */
    int width;                   /* 0: the model's native size */
    int num_inference_steps;     /* 0: the model's default */
    double guidance_scale;       /* < 0: the model's default */
    int64_t seed;                /* < 0: random (the seed used is reported in the output) */
    int num_outputs_per_prompt;  /* 0: 1 */
    /* ABI 1.1 ends here. Added after 1.1, in the reserved space (read them
     * only when DEXEC_HAS_FIELD(r, dexec_request, field)); zero/NULL: as
     * before. The engine copies what they point to when it takes the
     * request (the caller may free it once the call returns). */
    /* Each pointer sits in a 64-bit slot (an anonymous union) so that the
     * struct has one layout on 32- and 64-bit targets. */
    union {
        const char *sampler; /* NULL: the model's; else "ddpm" or "ddim" (DiT: epsilon
                          * models) or "euler" or "heun" (SiT: flow models; the
                          * bundled model: euler); another is refused by the
                          * worker, naming the model's kind and its samplers */
        uint64_t sampler_slot_;
    };
    union {
        const void *noise;   /* NULL: drawn from the seed; else noise_bytes bytes of
                          * little-endian float32, the sampler's starting noise
                          * of every output, row-major [n, C, h, w]: n outputs
                          * (num_outputs_per_prompt), C the model's input
                          * channels, h x w the latent (image side / 8 for the
                          * published latent models; the image for the bundled
                          * one); another size is refused (doc/model.md) */
        uint64_t noise_slot_;
    };
    uint64_t noise_bytes;
    union {
        const void *step_noise; /* ddpm only, NULL: drawn from the seed; else
                             * step_noise_bytes bytes of little-endian float32
                             * [n, steps, C, h, w]: the noise added after model
                             * call s (s = 0 first; the last is not used) */
        uint64_t step_noise_slot_;
    };
    uint64_t step_noise_bytes;
    uint64_t reserved[3]; /* zero */
} dexec_request;

/* Bytes of named fields: in ABI 1.1, and in the headers you build with. */
#define DEXEC_REQUEST_SIZE_1_1 (offsetof(dexec_request, num_outputs_per_prompt) + sizeof(int))
#define DEXEC_REQUEST_SIZE offsetof(dexec_request, reserved)

/* Fills r with the defaults above and struct_size with the size the
 * caller was built with. */
void dexec_request_init_sized(dexec_request *r, size_t struct_size);
#define dexec_request_init(r) dexec_request_init_sized((r), DEXEC_REQUEST_SIZE)

typedef struct dexec_image {
    uint32_t struct_size;        /* DEXEC_IMAGE_SIZE: set by dexec_image_init */
    int width, height, channels; /* channels: 1 grey, 3 RGB */
    uint8_t *pixels;             /* width * height * channels bytes, row-major, interleaved */
    uint64_t reserved[4];        /* zero */
} dexec_image;

#define DEXEC_IMAGE_SIZE_1_1 (offsetof(dexec_image, pixels) + sizeof(uint8_t *))
#define DEXEC_IMAGE_SIZE offsetof(dexec_image, reserved)

/* Zeroes img and sets its struct_size. */
void dexec_image_init_sized(dexec_image *img, size_t struct_size);
#define dexec_image_init(img) dexec_image_init_sized((img), DEXEC_IMAGE_SIZE)

typedef struct dexec_timings {
    uint32_t struct_size; /* DEXEC_TIMINGS_SIZE: set by dexec_output_init */
    double queue_s;       /* waiting before compute began: in the engine's queue
                             (submit to dispatch) and in the worker's */
    double encode_s;      /* prompt -> condition */
    double denoise_s;     /* all denoising steps */
    double decode_s;      /* latent -> pixels */
    double total_s;       /* wall time seen by the engine for this request */
    uint64_t reserved[4]; /* zero */
} dexec_timings;

#define DEXEC_TIMINGS_SIZE_1_1 (offsetof(dexec_timings, total_s) + sizeof(double))
#define DEXEC_TIMINGS_SIZE offsetof(dexec_timings, reserved)

typedef struct dexec_output {
    uint32_t struct_size; /* DEXEC_OUTPUT_SIZE: set by dexec_output_init */
    char *request_id;
    dexec_status status; /* DEXEC_OK or the error of this request alone */
    char *error;         /* NULL when status is DEXEC_OK */
    int rank;            /* the rank that made it (-1 if none did) */
    int64_t seed;        /* the seed used */
    int steps;           /* the steps used */
    double guidance_scale;
    size_t num_images;
    dexec_image *images; /* num_images entries, each initialised (dexec_image_init) */
    dexec_timings timings;
    /* ABI 1.1 ends here. Added after 1.1, in the reserved space (read them
     * only when DEXEC_HAS_FIELD(o, dexec_output, field)); NULL when the
     * worker did not report them (an older worker, or a failed request): */
    char *class_name;          /* the class name the prompt resolved to;
                                * "(unconditional)" for an empty prompt */
    char *negative_class_name; /* the class of negative_prompt; NULL without one */
    uint64_t reserved[8 - 2 * sizeof(char *) / sizeof(uint64_t)]; /* zero */
} dexec_output;

#define DEXEC_OUTPUT_SIZE_1_1 (offsetof(dexec_output, timings) + sizeof(dexec_timings))
#define DEXEC_OUTPUT_SIZE offsetof(dexec_output, reserved)

/* Zeroes o and sets its struct_size and its timings' struct_size. */
void dexec_output_init_sized(dexec_output *o, size_t struct_size);
#define dexec_output_init(o) dexec_output_init_sized((o), DEXEC_OUTPUT_SIZE)

/* Releases what an output holds (not the struct itself) and initialises it
 * again, keeping its struct_size. */
void dexec_output_clear(dexec_output *o);
/* Releases an array of n outputs and the array. */
void dexec_outputs_free(dexec_output *outs, size_t n);

/* ---- Engine --------------------------------------------------------------- */

typedef struct dexec_engine dexec_engine;

/* Progress callback of step(): called from an engine dispatcher thread
 * while step() waits, once per denoising step of each image. */
typedef void (*dexec_progress_fn)(void *user, size_t request_index, int image_index, int step,
                                  int total_steps);

/* Creates an engine: loads the backend named by
 * distributed_executor_backend, starts or connects its workers and checks
 * that they are ready, all within timeouts.init. On failure nothing is left
 * running, *out is NULL and err says why (DEXEC_EPLUGIN, DEXEC_EABI,
 * DEXEC_ENOTFOUND, DEXEC_EINIT, DEXEC_ETIMEDOUT, ...). The engine keeps a
 * copy of cfg. */
dexec_status dexec_engine_create(const dexec_config *cfg, dexec_engine **out, char *err,
                                 size_t errlen);

/* Generates: one output per request, in request order, each holding images
 * or its own error (submit + wait: see "Asynchronous requests" below; the
 * wait for each request is bounded by timeouts.generate once it is
 * dispatched). *outs is a new array the caller frees with
 * dexec_outputs_free. Returns DEXEC_OK when a request succeeded or failed
 * alone (per-request failures are in the outputs: a request refused for
 * its own input, DEXEC_EINVAL, or cancelled fails alone with every
 * executor, parallel groups included), or an error when the executor
 * failed every request (no live rank, a dead actor, a parallel group that
 * failed the request: the first one's error) or broke an output
 * (DEXEC_EPLUGIN); then *outs is NULL.
 * progress may be NULL; it is called from the dispatcher threads, one per
 * slot, so calls for different requests may come at once. */
dexec_status dexec_engine_step(dexec_engine *e, const dexec_request *reqs, size_t n,
                               dexec_output **outs, dexec_progress_fn progress, void *user);

/* ---- Asynchronous requests ------------------------------------------------
 *
 * The C shape of the reference's AsyncOmniDiffusion: dexec_engine_submit()
 * queues requests and returns one handle per request at once; the engine's
 * dispatcher threads (one per data-parallel slot) hand them to the executor; each handle
 * completes exactly once, with images or an error (its own, the batch's,
 * DEXEC_ECANCELED or DEXEC_ECLOSED). Be told by callback, or wait on a
 * handle with a deadline. dexec_engine_step() is submit + wait.
 *
 * Dispatch: the engine has one dispatcher per data-parallel slot (today a
 * slot is one rank; dexec_engine_num_ranks() of them). The queue is served
 * in order: the head request goes to the free slot of lowest number as
 * soon as one is free, one request at a time, and completes on its own.
 * So a short request never waits for an unrelated one to finish, the
 * requests of one submission (and of one step()) spread over the free
 * slots (request i of a step on an idle engine runs on slot i, i <
 * slots), and a slot that finishes takes the next request at once.
 * Executors of ABI 1.2 place the request on that slot (add_requests_on,
 * <dexec/plugin.h>); older ones get it through add_requests and place it
 * themselves. A slot whose rank is dead or restarting has its request
 * dealt to a live one, as the recovery settings say.
 *
 * Queue: at most engine.max_queued requests wait for a dispatcher; a submit
 * that does not fit fails at once with DEXEC_EAGAIN (a service answers 429
 * or 503 then). step() is never refused: its caller waits anyway.
 *
 * Cancel: a queued request is dropped; a running one completes at once with
 * DEXEC_ECANCELED and is abandoned: the engine sends the workers the
 * "cancel" method (doc/protocol.md), the worker stops it at the next
 * denoising step boundary and takes the next request, and its late result
 * is discarded.
 *
 * Close: queued requests complete with DEXEC_ECLOSED, running ones are
 * cancelled (DEXEC_ECLOSED), then the workers stop. Handles stay valid
 * until freed. */

typedef struct dexec_handle dexec_handle;

/* Called once per denoising step of each image of a running request, from
 * a dispatcher thread. */
typedef void (*dexec_handle_progress_fn)(void *user, dexec_handle *h, int image_index, int step,
                                         int total_steps);
/* Called exactly once when h completes (its output is readable), from a
 * dispatcher thread, or from the thread that cancels or closes for a
 * request cancelled or dropped there. h stays valid during the call even
 * when its owner freed it. A callback may call the engine (submit, rpc,
 * health, cancel) but not dexec_engine_close() (DEXEC_EINVAL), and must
 * not wait on a handle of the same engine (dexec_handle_wait with a
 * timeout, dexec_engine_step): the dispatcher it runs on is not taking
 * requests meanwhile. */
typedef void (*dexec_handle_done_fn)(void *user, dexec_handle *h);

typedef struct dexec_callbacks {
    uint32_t struct_size;              /* DEXEC_CALLBACKS_SIZE: set by dexec_callbacks_init */
    dexec_handle_progress_fn progress; /* NULL: none */
    dexec_handle_done_fn done;         /* NULL: none */
    void *user;
    uint64_t reserved[4]; /* zero */
} dexec_callbacks;

#define DEXEC_CALLBACKS_SIZE_1_1 (offsetof(dexec_callbacks, user) + sizeof(void *))
#define DEXEC_CALLBACKS_SIZE offsetof(dexec_callbacks, reserved)

/* Zeroes cb and sets its struct_size. */
void dexec_callbacks_init_sized(dexec_callbacks *cb, size_t struct_size);
#define dexec_callbacks_init(cb) dexec_callbacks_init_sized((cb), DEXEC_CALLBACKS_SIZE)

/* Queues n requests (checked and resolved as step() does: ids, seeds) and
 * writes n new handles into handles[] (caller's array), the caller owning
 * each (dexec_handle_free). cb (NULL: none) is copied and applies to all n.
 * Errors, with no handle made: DEXEC_EINVAL (a bad request: the message
 * names it), DEXEC_EAGAIN ("queue full: Q requests queued, N more do not
 * fit in engine.max_queued = M: retry later"), DEXEC_ECLOSED,
 * DEXEC_ENOMEM. */
dexec_status dexec_engine_submit(dexec_engine *e, const dexec_request *reqs, size_t n,
                                 const dexec_callbacks *cb, dexec_handle **handles);

typedef enum dexec_handle_state {
    DEXEC_HANDLE_QUEUED = 0,  /* waiting for a dispatcher */
    DEXEC_HANDLE_RUNNING = 1, /* handed to the executor */
    DEXEC_HANDLE_DONE = 2,    /* completed: dexec_handle_output() is set */
} dexec_handle_state;

dexec_handle_state dexec_handle_get_state(const dexec_handle *h);

/* The request id (assigned at submit when the request had none); owned by h. */
const char *dexec_handle_request_id(const dexec_handle *h);

/* Waits until h completes or timeout seconds pass (0: just look; there is
 * no unbounded wait). DEXEC_OK once complete, DEXEC_ETIMEDOUT otherwise. */
dexec_status dexec_handle_wait(dexec_handle *h, double timeout);

/* The output once complete (status DEXEC_OK with images, or the error:
 * the request's own, the batch's, DEXEC_ECANCELED, DEXEC_ECLOSED), else
 * NULL. Owned by h. */
const dexec_output *dexec_handle_output(const dexec_handle *h);

/* Moves the output into *out (which the caller clears later) and leaves h's
 * empty. DEXEC_EINVAL when h is not complete or its output was taken. */
dexec_status dexec_handle_take_output(dexec_handle *h, dexec_output *out);

/* Cancels h: a queued request is dropped, a running one abandoned (see
 * above); either way h completes now with DEXEC_ECANCELED. DEXEC_OK when it
 * did; DEXEC_EINVAL "request ID already completed" when h was complete
 * (the engine's last error holds the message). */
dexec_status dexec_handle_cancel(dexec_handle *h);

/* Releases the caller's handle. A handle not yet complete is cancelled
 * first (its done callback still runs once). NULL is accepted. */
void dexec_handle_free(dexec_handle *h);

/* Runs a worker method on every rank. args: a DEXEC_VAL_ARRAY or NULL
 * (no arguments); kwargs: a DEXEC_VAL_MAP or NULL. With
 * unique_reply_rank < 0, *replies is an ARRAY of one reply per rank,
 * ordered by rank; with unique_reply_rank = r only rank r's reply is
 * returned (every rank still executes). timeout <= 0: timeouts.rpc.
 * Errors: DEXEC_EWORKER (a rank replied with an error: the message names
 * the rank), DEXEC_ETIMEDOUT (names the method and ranks that did not
 * answer), DEXEC_EINVAL (bad rank). Caller owns *replies. */
dexec_status dexec_engine_collective_rpc(dexec_engine *e, const char *method, double timeout,
                                         const dexec_value *args, const dexec_value *kwargs,
                                         int unique_reply_rank, dexec_value **replies);

/* Checks that every worker answers within timeouts.health.
 * DEXEC_EUNHEALTHY with the rank and the reason otherwise. */
dexec_status dexec_engine_check_health(dexec_engine *e);

/* Number of ranks (workers) the engine drives; 0 after close. */
int dexec_engine_num_ranks(const dexec_engine *e);

/* Name and version of the executor plugin in use. */
const char *dexec_engine_backend(const dexec_engine *e);

/* What recovery did to one rank since the engine started (ABI 1.2; grows
 * by the rule above: initialise it with dexec_rank_stats_init). */
typedef struct dexec_rank_stats {
    uint32_t struct_size; /* DEXEC_RANK_STATS_SIZE: set by dexec_rank_stats_init */
    uint64_t deaths;      /* times its worker died or was ended as hung */
    uint64_t restarts;    /* times it was started again and became ready (max_restarts) */
    uint64_t reserved[6]; /* zero */
} dexec_rank_stats;

#define DEXEC_RANK_STATS_SIZE_1_2 (offsetof(dexec_rank_stats, restarts) + sizeof(uint64_t))
#define DEXEC_RANK_STATS_SIZE offsetof(dexec_rank_stats, reserved)

/* Zeroes s and sets its struct_size. */
void dexec_rank_stats_init_sized(dexec_rank_stats *s, size_t struct_size);
#define dexec_rank_stats_init(s) dexec_rank_stats_init_sized((s), DEXEC_RANK_STATS_SIZE)

/* Fills *out (initialised by the caller) for rank 0..num_ranks-1.
 * DEXEC_ENOTSUP when the executor keeps no such counts (a plugin of ABI
 * 1.1, or one without the rank_stats op), DEXEC_EINVAL for a bad rank or
 * struct_size, DEXEC_ECLOSED after close. */
dexec_status dexec_engine_rank_stats(dexec_engine *e, int rank, dexec_rank_stats *out);

/* Stops owned workers (shutdown RPC, grace period, SIGTERM, SIGKILL, reap)
 * or disconnects from external ones. Idempotent; later calls return
 * DEXEC_ECLOSED. Returns DEXEC_OK. */
dexec_status dexec_engine_close(dexec_engine *e);

/* Closes if needed and releases the engine. NULL is accepted. */
void dexec_engine_free(dexec_engine *e);

/* Message of the calling thread's last failing call on e ("" if none).
 * Valid until that thread's next call on e. */
const char *dexec_engine_last_error(const dexec_engine *e);

#ifdef __cplusplus
}
#endif
#endif
