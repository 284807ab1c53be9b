/*
 * plugin.h - the plugin ABI of dexec: what a shared object must export to be
 * loaded as an executor backend, a discovery plugin or a device (op
 * backend; its ops table is in <dexec/device.h>).
 *
 * A plugin exports exactly one symbol, DEXEC_PLUGIN_SYMBOL ("dexec_plugin"),
 * a const dexec_plugin_desc. The core reads and checks the descriptor
 * before it calls any plugin function. The checks marked (file) are made
 * on the file before it is opened, so a plugin they refuse has none of
 * its code run, constructors included; the others need the object
 * relocated, so they follow dlopen(), which runs the plugin's (and its
 * libraries') constructors:
 *   - the symbol exported (file; one defined with hidden visibility is
 *     named as such: declare it DEXEC_PLUGIN_EXPORT),
 *   - abi_major equal to the core's DEXEC_ABI_MAJOR (file),
 *   - abi_minor <= the core's DEXEC_ABI_MINOR (a newer plugin may rely on
 *     things this core lacks) and >= 1 (ABI 1.0 plugins predate the sized
 *     request, output and actor structs: see doc/plugin-guide.md) (file),
 *   - struct_size >= the size of the 1.0 descriptor (file),
 *   - kind as the caller asked (executor, discovery or device) (file),
 *   - an ops table of a plausible struct_size with every function set,
 *   - name equal to the name it was loaded by (for bare names).
 * A plugin may also own a section of the configuration file and declare
 * its settings there (dexec_plugin_desc.settings, ABI 1.1; see "Settings a
 * plugin owns" below): the core validates them, and the plugin reads them
 * with dexec_config_get_*() like any key.
 * Loaded plugins are never dlclose()d at run time (set DEXEC_PLUGIN_UNLOAD=1
 * to unload them at engine free, for leak checkers).
 *
 * Rules for plugin code: never exit(), never write to stdout, log through
 * the host's log function (or dexec_log), report errors by status and
 * message. Every blocking call takes a deadline.
 *
 * Every operation of an ops table is required: the loader refuses a
 * plugin with a NULL one (executor: create, num_ranks, collective_rpc,
 * add_requests, check_health, shutdown; discovery: open, register_actor,
 * heartbeat, resolve, list, deregister, close; device: <dexec/device.h>).
 * An operation the plugin cannot do returns DEXEC_ENOTSUP with a message.
 *
 * Minimal executor plugin (the whole file is contrib/example-plugin/minimal.c,
 * which the test suite builds with -fvisibility=hidden and loads):
 *
 *   static const dexec_executor_ops ops = {
 *       .struct_size = sizeof(dexec_executor_ops),
 *       .create = my_create, .num_ranks = my_num_ranks, .collective_rpc = my_rpc,
 *       .add_requests = my_add, .check_health = my_health, .shutdown = my_shutdown,
 *   };
 *   DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
 *       DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "minimal", "1.0", "the minimal example",
 *                              &ops)};
 *
 * DEXEC_PLUGIN_EXPORT is what exports the descriptor when the plugin is
 * built with -fvisibility=hidden (recommended: nothing else leaks).
 */
#ifndef DEXEC_PLUGIN_H
#define DEXEC_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/dexec.h>
#include <dexec/value.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this ABI. Major: incompatible change. Minor: additions in a
 * struct's reserved space or new plugin kinds (older plugins of the same
 * major keep working; struct_size tells which fields a struct carries).
 * The growth rule every struct here follows is in <dexec/dexec.h>,
 * "Structs that can grow".
 *   1.0  the first ABI (no longer loaded: see doc/plugin-guide.md).
 *   1.1  dexec_request, dexec_output, dexec_image, dexec_timings and
 *        dexec_actor_info carry struct_size and reserved space; device
 *        plugins (DEXEC_PLUGIN_DEVICE); dexec_plugin_desc.settings: a
 *        plugin declares its configuration settings (it took reserved[0]).
 *   1.2  dexec_executor_ops.add_requests_on (requests on one data-parallel
 *        slot: the engine keeps every slot busy) and .rank_stats (deaths
 *        and restarts), both optional, in reserved[0] and reserved[1];
 *        dexec_rank_stats. */
#define DEXEC_ABI_MAJOR 1
#define DEXEC_ABI_MINOR 2

#define DEXEC_PLUGIN_SYMBOL "dexec_plugin"

#if defined(__GNUC__)
#define DEXEC_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define DEXEC_PLUGIN_EXPORT
#endif

typedef enum dexec_plugin_kind {
    DEXEC_PLUGIN_EXECUTOR = 1,
    DEXEC_PLUGIN_DISCOVERY = 2,
    DEXEC_PLUGIN_DEVICE = 3, /* an op backend (<dexec/device.h>); since ABI 1.1 */
} dexec_plugin_kind;

/* ---- Settings a plugin owns in the configuration file (ABI 1.1) ---------- */

/* A plugin owns one section of the configuration file (a dotted group:
 * "discovery.redis", "roundrobin") and declares its settings there. The
 * core validates the section like its own keys (unknown key, wrong type,
 * out of range: "FILE:LINE: KEY: what is wrong"), applies the defaults,
 * lists the settings in `dexec config keys` and `dexec config check`, and
 * the plugin reads them with the usual getters by their full dotted name
 * (dexec_config_get_int(host->config, "roundrobin.retries", &n)).
 *
 * Which plugins' sections a configuration knows: the plugins it names
 * (distributed_executor_backend, external.discovery, whether from the file,
 * the defaults or dexec_config_set()), and, when the file holds a section
 * none of them owns, the plugin in the search path that declares it (the
 * core then opens every plugin of the search path to read descriptors).
 * A section's first name must not be one of the core's keys or groups, and
 * two plugins cannot own overlapping sections.
 *
 * The table is data only: the core never calls plugin code to validate a
 * value, and copies what it needs, so the table may live in the plugin's
 * read-only data. A table that breaks a rule below makes loading any
 * configuration that names the plugin fail with DEXEC_EPLUGIN naming the
 * plugin file and the setting. */

typedef enum dexec_setting_type {
    DEXEC_SETTING_INT = 1,    /* int64_t: dexec_config_get_int */
    DEXEC_SETTING_FLOAT = 2,  /* double (an integer is accepted): dexec_config_get_float */
    DEXEC_SETTING_STRING = 3, /* dexec_config_get_string */
    DEXEC_SETTING_BOOL = 4,   /* true/false: dexec_config_get_bool */
    DEXEC_SETTING_LIST = 5,   /* list of non-empty strings: dexec_config_get_list */
    DEXEC_SETTING_MAP = 6,    /* group of NAME = number >= 0: dexec_config_get_map */
} dexec_setting_type;

#define DEXEC_SETTING_NONEMPTY 0x1u     /* STRING: "" is refused */
#define DEXEC_SETTING_NO_SPACES 0x2u    /* STRING: no blanks or control characters */
#define DEXEC_SETTING_ABOVE_MIN 0x4u    /* FLOAT: the value must be > fmin, not >= */
#define DEXEC_SETTING_SECRET 0x8u       /* STRING: never printed; dumps show "********" */
#define DEXEC_SETTING_URL_PASSWORD 0x10u /* STRING: a URL whose password (":PASSWORD@",
                                           "password=") is never printed */

/* One setting. Entries grow at the end: the core walks the table with the
 * stride dexec_settings.setting_size. Fields not used by the type are 0. */
typedef struct dexec_setting {
    const char *name;     /* within the section: "url" is "SECTION.url"; dotted
                             names ("limits.cpu") make sub-groups; each part
                             [a-z][a-z0-9_]* */
    uint32_t type;        /* dexec_setting_type */
    uint32_t flags;       /* DEXEC_SETTING_* */
    const char *def;      /* the default in the text form `dexec config check -s`
                             takes: "10", "2.5", "true", "redis://h", "a,b",
                             "gpu=1"; NULL is "" (empty string, list or map);
                             required for INT, FLOAT and BOOL */
    int64_t imin, imax;   /* INT: inclusive bounds; both 0: any integer */
    double fmin, fmax;    /* FLOAT: bounds, inclusive unless ABOVE_MIN; both 0:
                             any finite number */
    const char *choices;  /* STRING: "a|b|c" when only these are allowed, or NULL */
    const char *prefixes; /* STRING: "redis://|unix:/": the value starts with one
                             of them and goes on after it; or NULL */
    const char *range;    /* what is accepted, for people ("a URL redis://HOST");
                             NULL: written from the bounds. Messages about a bad
                             value of a choices/prefixes string say
                             "\"VALUE\" must be RANGE" when it is set */
    const char *doc;      /* one line, required */
    void *reserved[4];    /* zero */
} dexec_setting;

/* The settings table a descriptor points to. */
typedef struct dexec_settings {
    uint32_t struct_size;          /* sizeof(dexec_settings) at build time */
    uint32_t setting_size;         /* sizeof(dexec_setting) at build time */
    const char *section;           /* the dotted group the plugin owns */
    const dexec_setting *settings; /* count entries, setting_size bytes apart */
    uint32_t count;                /* 1..256 */
    void *reserved[4];             /* zero */
} dexec_settings;

/* Initializer of a dexec_settings over a static array of dexec_setting:
 *   static const dexec_setting rr_settings[] = {
 *       {.name = "retries", .type = DEXEC_SETTING_INT, .def = "2", .imin = 0, .imax = 10,
 *        .doc = "times a failed request is sent again"},
 *   };
 *   static const dexec_settings rr_table = {DEXEC_SETTINGS_INIT("roundrobin", rr_settings)};
 */
#define DEXEC_SETTINGS_INIT(section_, array_)                                                    \
    .struct_size = sizeof(dexec_settings), .setting_size = sizeof(dexec_setting),               \
    .section = (section_), .settings = (array_),                                                 \
    .count = (uint32_t)(sizeof(array_) / sizeof((array_)[0]))

/* The descriptor. Fields are never reordered; new ones take reserved space. */
typedef struct dexec_plugin_desc {
    uint32_t abi_major;      /* DEXEC_ABI_MAJOR the plugin was built with */
    uint32_t abi_minor;      /* DEXEC_ABI_MINOR the plugin was built with */
    uint32_t struct_size;    /* sizeof(dexec_plugin_desc) at build time */
    uint32_t kind;           /* dexec_plugin_kind */
    const char *name;        /* [a-z0-9_]+, equals the file name dexec_NAME.so */
    const char *version;     /* the plugin's own version, free form */
    const char *description; /* one line */
    const void *ops;         /* const dexec_executor_ops*, dexec_discovery_ops* or
                              * dexec_device_ops* (as kind says) */
    const dexec_settings *settings; /* ABI 1.1: the settings it owns, or NULL (set it
                                       after DEXEC_PLUGIN_DESC_INIT: .settings = &table) */
    void *reserved[7];       /* zero */
} dexec_plugin_desc;

#define DEXEC_PLUGIN_DESC_INIT(kind_, name_, version_, description_, ops_)                      \
    .abi_major = DEXEC_ABI_MAJOR, .abi_minor = DEXEC_ABI_MINOR,                                  \
    .struct_size = sizeof(dexec_plugin_desc), .kind = (kind_), .name = (name_),                  \
    .version = (version_), .description = (description_), .ops = (ops_)

/* ---- Host services ------------------------------------------------------ */

/* What the core hands a plugin at create time. Valid until the plugin's
 * shutdown/close returns. */
typedef struct dexec_host {
    uint32_t struct_size;
    const dexec_config *config; /* the engine's configuration (read it with dexec_config_get_*) */
    /* Logging through the core's logger; component is the plugin name. */
    void (*log)(dexec_log_level level, const char *component, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
    /* Absolute path of the dexec-worker program to spawn for owned workers
     * ($DEXEC_WORKER if set, else the installed one). */
    const char *worker_path;
    void *reserved[8];
} dexec_host;

/* ---- Executor plugins ------------------------------------------------------ */

typedef struct dexec_executor dexec_executor; /* defined by each plugin */

/* Flags that the Python executors carried as class attributes. */
#define DEXEC_EXECUTOR_OWNS_WORKERS 0x1u   /* close() stops the workers */
#define DEXEC_EXECUTOR_MULTI_NODE 0x2u     /* workers may live on other hosts */
#define DEXEC_EXECUTOR_SUPPORTS_PP 0x4u    /* pipeline parallel */

/* All functions write a message into (err, errlen) on failure. */
typedef struct dexec_executor_ops {
    uint32_t struct_size; /* sizeof(dexec_executor_ops) at build time */
    uint32_t flags;       /* DEXEC_EXECUTOR_* */

    /* Starts or connects the workers and checks they are ready within
     * timeouts.init. On failure leaves nothing running and *out untouched. */
    dexec_status (*create)(const dexec_host *host, dexec_executor **out, char *err, size_t errlen);

    /* Number of ranks. */
    int (*num_ranks)(const dexec_executor *ex);

    /* Semantics of dexec_engine_collective_rpc(); timeout already resolved (> 0). */
    dexec_status (*collective_rpc)(dexec_executor *ex, const char *method, double timeout,
                                   const dexec_value *args, const dexec_value *kwargs,
                                   int unique_reply_rank, dexec_value **replies, char *err,
                                   size_t errlen);

    /* Semantics of dexec_engine_step(): outs has n entries to fill, each
     * initialised (dexec_output_init); keep or re-initialise their
     * struct_size, the engine refuses outputs whose struct_size it cannot
     * read. Requests arrive initialised by the engine (struct_size
     * DEXEC_REQUEST_SIZE of this dexec), with defaults resolved except
     * model-dependent ones (0). */
    dexec_status (*add_requests)(dexec_executor *ex, const dexec_request *reqs, size_t n,
                                 dexec_output *outs, double timeout, dexec_progress_fn progress,
                                 void *user, char *err, size_t errlen);

    /* DEXEC_OK or DEXEC_EUNHEALTHY naming the rank; timeout already resolved. */
    dexec_status (*check_health)(dexec_executor *ex, double timeout, char *err, size_t errlen);

    /* Stops (owned) or disconnects from (external) workers and frees ex. */
    void (*shutdown)(dexec_executor *ex);

    /* ABI 1.2, optional (NULL: the engine calls add_requests, one request
     * at a time, and the executor places it). As add_requests, with the
     * requests run on data-parallel slot `slot` (0..num_ranks-1: today a
     * slot is one rank), or on another live slot when that one is dead or
     * restarting. The engine calls it from one dispatcher thread per slot,
     * with a slot only when its previous call has returned, so a slot has
     * at most one call of the engine's at a time: a free rank takes the
     * next request at once. dexec_group_generate_on() does this. */
    dexec_status (*add_requests_on)(dexec_executor *ex, int slot, const dexec_request *reqs,
                                    size_t n, dexec_output *outs, double timeout,
                                    dexec_progress_fn progress, void *user, char *err,
                                    size_t errlen);

    /* ABI 1.2, optional (NULL: dexec_engine_rank_stats answers
     * DEXEC_ENOTSUP). Fills out's counts for rank (0..num_ranks-1); out is
     * initialised by the engine. dexec_group_rank_stats() does this. */
    dexec_status (*rank_stats)(dexec_executor *ex, int rank, dexec_rank_stats *out);

    void *reserved[6];
} dexec_executor_ops;

/* ---- Discovery plugins ------------------------------------------------------ */

typedef struct dexec_discovery dexec_discovery; /* defined by each plugin */

/* What a name resolves to. Strings are malloc'd; dexec_actor_info_clear frees
 * them. Grows by the rule of <dexec/dexec.h>: whoever fills one (the
 * caller before register_actor, the plugin in resolve and list) initialises
 * it with dexec_actor_info_init; a plugin checks a caller's with
 * DEXEC_STRUCT_CHECK(a, dexec_actor_info, DEXEC_ACTOR_INFO_SIZE_1_1, ...). */
typedef struct dexec_actor_info {
    uint32_t struct_size; /* DEXEC_ACTOR_INFO_SIZE: set by dexec_actor_info_init */
    char *name;
    char *address;    /* unix:/path or tcp:host:port */
    char *host;       /* hostname of the worker */
    char *instance;   /* unique id of the registering process */
    int rank;
    int pid;
    int protocol;     /* worker protocol version */
    double started;   /* unix time */
    double age_s;     /* seconds since started, at the time of the lookup */
    dexec_value *meta; /* extra metadata (map) or NULL */
    uint64_t reserved[8]; /* zero */
} dexec_actor_info;

#define DEXEC_ACTOR_INFO_SIZE_1_1 (offsetof(dexec_actor_info, meta) + sizeof(dexec_value *))
#define DEXEC_ACTOR_INFO_SIZE offsetof(dexec_actor_info, reserved)

/* Zeroes a and sets its struct_size. */
void dexec_actor_info_init_sized(dexec_actor_info *a, size_t struct_size);
#define dexec_actor_info_init(a) dexec_actor_info_init_sized((a), DEXEC_ACTOR_INFO_SIZE)
/* Frees the strings and meta and initialises a again, keeping its
 * struct_size. NULL is accepted. */
void dexec_actor_info_clear(dexec_actor_info *a);

typedef struct dexec_discovery_ops {
    uint32_t struct_size;
    uint32_t flags;
    /* Connects using the config's discovery section (or url when not NULL). */
    dexec_status (*open)(const dexec_host *host, const char *url, dexec_discovery **out, char *err,
                         size_t errlen);
    /* Registers a with a TTL; DEXEC_EINVAL if another live instance holds the
     * name, or if a's struct_size is not one this plugin reads. */
    dexec_status (*register_actor)(dexec_discovery *d, const dexec_actor_info *a, int ttl_s,
                                   char *err, size_t errlen);
    /* Refreshes the TTL of our own entry, re-registering it if it vanished. */
    dexec_status (*heartbeat)(dexec_discovery *d, const dexec_actor_info *a, int ttl_s, char *err,
                              size_t errlen);
    /* Fills *out (initialised by the plugin; the caller clears it).
     * DEXEC_ENOTFOUND when nothing is registered under name. */
    dexec_status (*resolve)(dexec_discovery *d, const char *name, dexec_actor_info *out, char *err,
                            size_t errlen);
    /* All entries (kind "actor" or "node"); *out is a malloc'd array of n
     * initialised entries (the caller clears each and frees the array). */
    dexec_status (*list)(dexec_discovery *d, const char *kind, dexec_actor_info **out, size_t *n,
                         char *err, size_t errlen);
    /* Deletes the entry only if it is still ours (compare-and-delete). */
    dexec_status (*deregister)(dexec_discovery *d, const dexec_actor_info *a, char *err,
                               size_t errlen);
    void (*close)(dexec_discovery *d);
    void *reserved[8];
} dexec_discovery_ops;

/* ---- Loading plugins (for plugins that use other plugins, and tools) -------- */

/* A loaded plugin. (Not "dexec_plugin": that is the descriptor's symbol,
 * and a type of the same name would clash with it in the plugin's source.) */
typedef struct dexec_plugin_handle dexec_plugin_handle;

/* Loads a plugin by bare name (searched in $DEXEC_PLUGIN_PATH, the config's
 * plugin_path, then the compiled-in plugin directory) or by a path
 * containing '/'. cfg may be NULL. Errors: DEXEC_ENOTFOUND (lists the
 * directories searched), DEXEC_EPLUGIN (not a shared object: dlerror text;
 * no descriptor; wrong kind; name mismatch; bad name), DEXEC_EABI.
 * kind 0 accepts any kind (for tools that list plugins). */
dexec_status dexec_plugin_load(const char *name_or_path, dexec_plugin_kind kind,
                               const dexec_config *cfg, dexec_plugin_handle **out, char *err,
                               size_t errlen);
const dexec_plugin_desc *dexec_plugin_descriptor(const dexec_plugin_handle *p);
const char *dexec_plugin_file(const dexec_plugin_handle *p);
/* Forgets the handle; the object stays mapped unless DEXEC_PLUGIN_UNLOAD=1. */
void dexec_plugin_release(dexec_plugin_handle *p);

/* The directories dexec_plugin_load() searches, in order ($DEXEC_PLUGIN_PATH,
 * the config's plugin_path, the compiled-in plugin directory); cfg may be
 * NULL. A NULL-terminated array the caller frees with
 * dexec_plugin_search_path_free(), or NULL when memory is exhausted. */
char **dexec_plugin_search_path(const dexec_config *cfg);
void dexec_plugin_search_path_free(char **dirs);

#ifdef __cplusplus
}
#endif
#endif
