/*
 * config.c - the deployment configuration. One schema drives everything:
 * parsing a libconfig file, validation, defaults, typed getters, text
 * setters, the dump that round-trips through the parser and the key list
 * of `dexec config keys`. The schema is the core's table (keys below) plus
 * the settings tables of the plugins the configuration names or whose
 * sections its file holds (plugin.h, "Settings a plugin owns"): each is
 * copied into a dx_schema when the plugin is attached, so the
 * configuration never depends on the plugin staying mapped.
 *
 * A value always carries its origin ("default", "FILE:LINE", "env NAME",
 * "set") so that a deployer can tell why a setting has the value it has.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <libconfig.h>

#include "internal.h"
#include "paths.h"

/* Larger files are certainly not configuration files; refusing them keeps
 * a mistaken path (a model file) from being read into memory. */
#define DX_CONFIG_MAX_BYTES (16u << 20)

/* The tail of the message for an integer beyond int64_t, after the digits
 * as written. */
#define DX_INT64_RANGE " is out of range (a 64-bit integer is -9223372036854775808..9223372036854775807)"

enum dx_ctype { CT_INT, CT_FLOAT, CT_STRING, CT_LIST, CT_MAP, CT_BOOL };

static const char *const ctype_names[] = {"integer", "float", "string", "list", "map", "boolean"};

/* A plugin's table larger than this is a corrupt descriptor, not a schema. */
#define DX_SETTINGS_MAX 256
#define DX_STRUCT_MAX 4096

/* Checks a free-form string value: NULL when s is acceptable, otherwise
 * the problem in words. */
typedef const char *(*dx_string_check)(const char *s);

struct dx_key {
    const char *name;     /* dotted path: "timeouts.rpc" */
    enum dx_ctype type;
    const char *def;      /* the default, in the text form dexec_config_set() takes */
    int64_t imin, imax;   /* CT_INT bounds, inclusive; both 0: any */
    double fmin, fmax;    /* CT_FLOAT bounds; both 0: any finite number */
    unsigned flags;       /* DEXEC_SETTING_* of plugin.h */
    const char *choices;  /* CT_STRING: "a|b|c" when only these are allowed */
    const char *prefixes; /* CT_STRING: "a://|b:/": must start with one and go on */
    dx_string_check check; /* CT_STRING: further checks, may be NULL (core keys only) */
    const char *range;    /* what is accepted, for people */
    const char *doc;
};

static const char *check_nonempty(const char *s);
static const char *check_plugin_ref(const char *s);
static const char *check_address(const char *s);
static const char *check_redis_url(const char *s);

/* The range text is the stringified bounds, so it cannot drift from them. */
#define KEY_INT(n, d, lo, hi, doc) \
    {n, CT_INT, #d, lo, hi, 0, 0, 0, NULL, NULL, NULL, #lo ".." #hi, doc}
#define KEY_FLOAT(n, d, doc)                                                                   \
    {n, CT_FLOAT, d, 0, 0, 0, 86400.0, DEXEC_SETTING_ABOVE_MIN, NULL, NULL, NULL,               \
     "> 0, <= 86400 (seconds)", doc}
#define KEY_ENUM(n, d, choices, doc) \
    {n, CT_STRING, d, 0, 0, 0, 0, 0, choices, NULL, NULL, choices, doc}
#define KEY_STR(n, d, flags, check, range, doc) \
    {n, CT_STRING, d, 0, 0, 0, 0, flags, NULL, NULL, check, range, doc}
#define KEY_LIST(n, range, doc) {n, CT_LIST, "", 0, 0, 0, 0, 0, NULL, NULL, NULL, range, doc}
#define KEY_MAP(n, range, doc) {n, CT_MAP, "", 0, 0, 0, 0, 0, NULL, NULL, NULL, range, doc}
/* A map of environment variables: NAME = "value" (core keys only). */
#define DX_KEY_ENV 0x10000u
#define KEY_ENV(n, doc)                                                                        \
    {n, CT_MAP, "", 0, 0, 0, 0, DX_KEY_ENV, NULL, NULL, NULL,                                  \
     "group of NAME = \"value\" (NAME: [A-Za-z_][A-Za-z0-9_]*)", doc}

/* Keys of one group are kept together: the dump writes them as one block. */
static const struct dx_key keys[] = {
    KEY_STR("model", "fashion-dit", 0, check_nonempty, "bundled model name or path",
            "the model the workers load: a name searched in $DEXEC_MODEL_PATH and the "
            "installed models, or a path to a .safetensors file"),
    KEY_ENUM("device", "auto", "auto|cpu|cuda",
             "where the workers compute: cuda when a GPU is usable (auto), or forced"),
    KEY_INT("num_gpus", 1, 1, 64,
            "number of ranks (workers); with device cuda each rank gets one GPU"),
    KEY_ENUM("dtype", "float32", "float32|float16|bfloat16",
             "how the workers keep the weight matrices on the device (PyTorch's torch_dtype, "
             "vLLM's dtype): float32, or float16/bfloat16 on CUDA only (half the weight memory, "
             "float32 accumulation; the pixels change slightly); the CPU refuses half types"),
    KEY_STR("distributed_executor_backend", "mp", 0, check_plugin_ref,
            "NAME ([a-z0-9_]+) or a path containing '/'",
            "the executor plugin: mp, ray_actor, external (alias external_launcher), "
            "another installed name, or the path of a plugin .so"),
    KEY_LIST("plugin_path", "list of directories",
             "directories searched for plugins after $DEXEC_PLUGIN_PATH and before the "
             "installed plugin directory"),
    KEY_ENUM("log_level", "warn", "error|warn|info|debug",
             "messages above this level are dropped (DEXEC_LOG_LEVEL overrides)"),
    KEY_STR("token_file", "", 0, NULL, "path, or \"\" for none",
            "file holding the shared token that workers require in hello (DEXEC_TOKEN_FILE overrides)"),
    {"allow_admin_methods", CT_BOOL, "false", 0, 0, 0, 0, 0, NULL, NULL, NULL, "true|false",
     "owned workers (mp, ray_actor) serve load_model and debug_sleep, methods that open "
     "files or hold the process (dexec-worker --allow-admin)"},
    KEY_INT("max_frame_bytes", 268435456, 4096, 4294967295,
            "largest protocol frame accepted, in bytes (checked before allocating)"),
    KEY_INT("max_restarts", 3, 0, 1000,
            "times each dead owned rank is started again over the engine's life, with the "
            "same rank, limits and model (Ray's max_restarts); 0 never"),
    KEY_INT("max_task_retries", 3, 0, 1000,
            "times a request lost with its worker is dealt again to a live rank (Ray's "
            "max_task_retries); 0 fails it at once"),

    KEY_INT("parallel.cfg", 1, 1, 2,
            "ranks that compute one image's classifier-free guidance together: 2 runs the "
            "conditional and the unconditional branch on two ranks (needs guidance)"),
    KEY_INT("parallel.sequence", 1, 1, 64,
            "ranks that split one image's tokens (Ulysses sequence parallelism); must divide "
            "the model's attention heads"),
    KEY_ENUM("parallel.transport", "auto", "auto|shm|tcp",
             "how a group's ranks exchange data: shared memory between ranks on one host and "
             "TCP links otherwise (auto), or always one of them; ray_actor ranks, threads of "
             "one actor, exchange through its memory"),

    KEY_INT("engine.max_queued", 1024, 1, 1048576,
            "requests dexec_engine_submit() holds waiting for a rank; one more is refused "
            "with DEXEC_EAGAIN (queue full)"),

    KEY_STR("serve.listen", "127.0.0.1:8000", 0, check_nonempty, "HOST:PORT or [V6]:PORT",
            "address `dexec serve` listens on; one that is not loopback needs serve.token_file "
            "or serve.insecure = 1"),
    KEY_STR("serve.token_file", "", 0, NULL, "path, or \"\" for none",
            "file holding the bearer token HTTP clients must send (same rules as token_file: "
            "mode 0600 or stricter)"),
    KEY_INT("serve.insecure", 0, 0, 1,
            "1 lets a non-loopback listener run without a token (a warning is logged)"),
    KEY_FLOAT("serve.request_timeout", "300.0",
              "deadline of one HTTP generation request, queueing included; past it the "
              "request is cancelled and answered 504"),
    KEY_FLOAT("serve.drain_grace", "30.0",
              "on SIGTERM, time in-flight requests get to finish before they are cancelled"),
    KEY_FLOAT("serve.health_interval", "10.0",
              "how often the server checks the workers' health in the background"),
    KEY_INT("serve.max_body_bytes", 65536, 256, 16777216,
            "largest request body accepted (413 above)"),
    KEY_INT("serve.max_prompt_bytes", 4096, 1, 1048576,
            "longest prompt or negative_prompt accepted, in bytes (400 above)"),
    KEY_INT("serve.max_images", 16, 1, 256, "largest n (images per HTTP request)"),
    KEY_INT("serve.max_connections", 256, 1, 65536,
            "connections served at once (one thread each); more wait in the listen backlog"),

    KEY_FLOAT("timeouts.init", "60.0",
              "deadline for starting or connecting the workers and loading the model"),
    KEY_FLOAT("timeouts.rpc", "30.0", "default deadline of collective_rpc"),
    KEY_FLOAT("timeouts.generate", "300.0", "deadline of one step (a batch of requests)"),
    KEY_FLOAT("timeouts.health", "5.0",
              "deadline of check_health, and of a rank's silence during a call"),
    KEY_FLOAT("timeouts.write", "30.0",
              "how long one frame to a worker may take to leave before the connection "
              "is closed"),
    KEY_FLOAT("timeouts.shutdown_grace", "5.0",
              "time owned workers get to exit after the shutdown RPC before SIGTERM, "
              "and again before SIGKILL"),

    {"timeouts.stall", CT_FLOAT, "60.0", 0, 0, 0, 86400.0, 0, NULL, NULL, NULL,
     ">= 0, <= 86400 (seconds)",
     "a rank holding requests that sends nothing (no progress, no reply) this long is "
     "declared hung, ended and handled as a death; 0 never"},

    KEY_INT("ray_actor.cpus", 1, 1, 4096, "CPUs the actor process may run on (affinity)"),
    KEY_INT("ray_actor.gpus", -1, -1, 64, "GPUs visible to the actor; -1 means num_gpus"),
    KEY_INT("ray_actor.memory", 0, 0, 9223372036854775807,
            "hard memory limit of the actor in bytes; 0 means no limit"),
    KEY_MAP("ray_actor.resources", "group of NAME = number >= 0",
            "custom resources a node must offer to host the actor (placement labels)"),

    KEY_STR("ray_init.address", "local", DEXEC_SETTING_URL_PASSWORD, check_address,
            "local, slurm, auto or redis://HOST[:PORT][/DB]",
            "where the actor runs: spawned on this host (local), started as a Slurm job "
            "step (slurm), or placed on a node registered in the registry at auto "
            "($DEXEC_REGISTRY) or the given URL"),

    KEY_INT("ray_init.num_cpus", -1, -1, 4096,
            "local mode: CPUs actors may be given on this host (an actor asking for more is "
            "refused at create); -1: what the host has"),
    KEY_INT("ray_init.num_gpus", -1, -1, 64,
            "local mode: GPUs actors may be given on this host (an actor asking for more is "
            "refused at create); -1: what the host has"),

    KEY_ENV("runtime_env.env_vars",
            "environment variables of every worker or actor process an executor starts; "
            "the executor's own (CUDA_VISIBLE_DEVICES) win, with a warning"),

    KEY_ENUM("mp.launcher", "local", "local|srun",
             "how the mp executor starts its ranks: children of the engine (local), or "
             "one Slurm job step with a task per rank (srun)"),
    KEY_INT("mp.spin_us", -1, -1, 2000,
            "microseconds a caller waiting on ranks (collective_rpc, a step) reads their "
            "sockets without sleeping before it blocks: a short call's reply then needs no "
            "wake-up (tens of us on a VM), for a CPU busy that long per wait; 0 sleeps at "
            "once; -1 (auto): 50 while the caller runs on a CPU no rank is pinned to, else 0"),
    KEY_INT("mp.cpus_per_rank", 0, -1, 4096,
            "CPUs each local mp rank runs on (its affinity) and threads it computes with "
            "(OPENBLAS_NUM_THREADS, the CPU pool): 0 splits this host's CPUs evenly "
            "between the ranks, -1 leaves both to the worker"),

    KEY_STR("slurm.partition", "", 0, NULL, "partition name, or \"\" for the default",
            "Slurm partition of the steps dexec starts (srun --partition)"),
    KEY_STR("slurm.account", "", 0, NULL, "account name, or \"\" for the default",
            "Slurm account charged for them (srun --account)"),
    KEY_STR("slurm.time", "", 0, NULL, "a Slurm time (MM, HH:MM:SS, D-HH), or \"\"",
            "time limit of each step (srun --time): Slurm ends it then; \"\" means the "
            "partition's limit"),
    KEY_LIST("slurm.options", "list of srun options",
             "further srun options, one per element (\"--qos=high\", \"--exclusive\")"),

    KEY_LIST("external.worker_names", "list of names",
             "names of the workers to connect to, in rank order "
             "(DIFFUSION_WORKER_ACTOR_NAMES overrides)"),
    KEY_STR("external.discovery", "redis_discovery", 0, check_plugin_ref,
            "NAME ([a-z0-9_]+) or a path containing '/'",
            "the discovery plugin that turns worker names into addresses"),
    KEY_STR("external.token_file", "", 0, NULL, "path, or \"\" for token_file",
            "token file for external workers when it differs from token_file"),
    /* discovery.redis.* belongs to the redis_discovery plugin (its settings table) */

};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

struct dx_val {
    int64_t i;        /* CT_INT */
    double f;         /* CT_FLOAT */
    char *s;          /* CT_STRING */
    char **list;      /* CT_LIST: NULL-terminated */
    size_t n;         /* CT_LIST: entries */
    dexec_value *map; /* CT_MAP: DEXEC_VAL_MAP of numbers */
};

struct dx_slot {
    struct dx_val v;
    char *origin;
};

/* The settings of one plugin, copied from its table: immutable once built
 * and shared by a configuration and its clones. */
struct dx_schema {
    unsigned refs;        /* atomic */
    char *plugin;         /* the plugin's name */
    char *file;           /* where it was loaded from */
    char *section;        /* the dotted group it owns */
    size_t n;
    struct dx_key *keys;  /* n keys, every string owned */
};

struct dexec_config {
    char *path;            /* the file it came from, NULL otherwise */
    char *env_plugin_path; /* $DEXEC_PLUGIN_PATH when loaded, for the dump */
    struct dx_slot slot[NKEYS];
    struct dx_schema **schemas; /* attached plugins, in the order attached */
    struct dx_slot **pslots;    /* pslots[i]: the values of schemas[i]'s keys */
    size_t nschemas;
    char *named_failed;    /* why a plugin the configuration names was not read */
};

/* One key of a configuration's schema and its value. */
struct dx_ref {
    const struct dx_key *key;
    struct dx_slot *slot;           /* NULL when there is no configuration */
    const struct dx_schema *schema; /* NULL for the core's keys */
};

/* ---- string checks -------------------------------------------------------- */

static const char *check_nonempty(const char *s)
{
    return *s == '\0' ? "must not be empty" : NULL;
}

static int is_plugin_name(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

static const char *check_plugin_ref(const char *s)
{
    if (strchr(s, '/') != NULL || is_plugin_name(s))
        return NULL;
    return "must be a plugin name of a-z, 0-9 and _, or a path containing '/'";
}

static const char *check_redis_url(const char *s)
{
    if ((strncmp(s, "redis://", 8) == 0 && s[8] != '\0') ||
        (strncmp(s, "unix:/", 6) == 0 && s[6] != '\0'))
        return NULL;
    return "must be a URL redis://[:PASSWORD@]HOST[:PORT][/DB] or unix:/PATH[?db=N]";
}

static const char *check_address(const char *s)
{
    if (strcmp(s, "local") == 0 || strcmp(s, "auto") == 0 || strcmp(s, "slurm") == 0 ||
        check_redis_url(s) == NULL)
        return NULL;
    return "must be local, slurm, auto or a URL redis://HOST[:PORT][/DB] (or unix:/PATH)";
}

/* libconfig's setting names: [A-Za-z*][-A-Za-z0-9_*]*. Map keys are written
 * back as names by the dump, so set() accepts only these. */
/* An environment variable name as POSIX shells accept it. */
static int is_env_name(const char *s)
{
    if (!(isalpha((unsigned char)*s) || *s == '_'))
        return 0;
    for (s++; *s != '\0'; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_'))
            return 0;
    return 1;
}

/* The comma that ends the NAME=VALUE entry at p, or NULL: a value may hold
 * commas ("CUDA_VISIBLE_DEVICES=0,1"), so only a comma followed by
 * another NAME= ends it. */
static const char *env_entry_end(const char *p)
{
    for (const char *c = strchr(p, ','); c != NULL; c = strchr(c + 1, ',')) {
        const char *q = c + 1;

        while (isspace((unsigned char)*q))
            q++;
        if (!(isalpha((unsigned char)*q) || *q == '_'))
            continue;
        while (isalnum((unsigned char)*q) || *q == '_')
            q++;
        if (*q == '=')
            return c;
    }
    return NULL;
}

static int is_setting_name(const char *s)
{
    if (!(isalpha((unsigned char)*s) || *s == '*'))
        return 0;
    for (s++; *s != '\0'; s++)
        if (!(isalnum((unsigned char)*s) || *s == '-' || *s == '_' || *s == '*'))
            return 0;
    return 1;
}

/* ---- schema lookup ---------------------------------------------------------- */

/* Key number i of cfg's schema (the core's, then each attached plugin's);
 * cfg NULL: the core's only. 0 past the last key. */
static int key_at(const dexec_config *cfg, size_t i, struct dx_ref *r)
{
    if (i < NKEYS) {
        r->key = &keys[i];
        r->slot = cfg != NULL ? (struct dx_slot *)&cfg->slot[i] : NULL;
        r->schema = NULL;
        return 1;
    }
    i -= NKEYS;
    for (size_t s = 0; cfg != NULL && s < cfg->nschemas; s++) {
        if (i < cfg->schemas[s]->n) {
            r->key = &cfg->schemas[s]->keys[i];
            r->slot = &cfg->pslots[s][i];
            r->schema = cfg->schemas[s];
            return 1;
        }
        i -= cfg->schemas[s]->n;
    }
    return 0;
}

static int find_key(const dexec_config *cfg, const char *name, struct dx_ref *r)
{
    struct dx_ref tmp;

    for (size_t i = 0; key_at(cfg, i, &tmp); i++)
        if (strcmp(tmp.key->name, name) == 0) {
            if (r != NULL)
                *r = tmp;
            return 1;
        }
    return 0;
}

/* The value slot of one of the core's keys, which always exist. */
static struct dx_slot *core_slot(const dexec_config *cfg, const char *name)
{
    struct dx_ref r;

    find_key(NULL, name, &r);
    return (struct dx_slot *)&cfg->slot[r.key - keys];
}

/* True when name is a group holding keys ("timeouts", "discovery.redis"). */
static int is_group(const dexec_config *cfg, const char *name)
{
    size_t len = strlen(name);
    struct dx_ref r;

    for (size_t i = 0; key_at(cfg, i, &r); i++)
        if (strncmp(r.key->name, name, len) == 0 && r.key->name[len] == '.')
            return 1;
    return 0;
}

/* True when a and b name the same group or one holds the other. */
static int names_overlap(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), l = la < lb ? la : lb;

    return strncmp(a, b, l) == 0 && (a[l] == '\0' || a[l] == '.') &&
           (b[l] == '\0' || b[l] == '.');
}

static size_t edit_distance(const char *a, size_t la, const char *b, size_t lb)
{
    size_t row[96];

    if (la >= sizeof(row) / sizeof(row[0]) || lb >= sizeof(row) / sizeof(row[0]))
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];

        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);

            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Writes into buf the known key or group a mistyped name most likely meant:
 * a small edit distance, or the same last component in another group
 * ("address" -> "ray_init.address"). Empty when nothing is close. */
static void suggest_key(const dexec_config *cfg, const char *name, char *buf, size_t buflen)
{
    size_t len = strlen(name), best = SIZE_MAX, limit = len >= 6 ? 2 : 1;
    const char *last = strrchr(name, '.');
    struct dx_ref r;

    buf[0] = '\0';
    last = last != NULL ? last + 1 : name;
    for (size_t i = 0; key_at(cfg, i, &r); i++) {
        const char *k = r.key->name;

        /* every prefix ending at a dot is a group; the whole name is the key */
        for (size_t l = 1; l <= strlen(k); l++) {
            size_t d;

            if (k[l] != '.' && k[l] != '\0')
                continue;
            d = edit_distance(name, len, k, l);
            if (d <= limit && d < best) {
                best = d;
                snprintf(buf, buflen, "%.*s", (int)l, k);
            }
        }
    }
    if (best != SIZE_MAX)
        return;
    for (size_t i = 0; key_at(cfg, i, &r); i++) {
        const char *kl = strrchr(r.key->name, '.');

        if (kl != NULL && strcmp(kl + 1, last) == 0 && strcmp(r.key->name, name) != 0) {
            snprintf(buf, buflen, "%s", r.key->name);
            return;
        }
    }
}

static dexec_status unknown_key(const dexec_config *cfg, char *err, size_t errlen,
                                dexec_status code, const char *where, const char *name)
{
    char hint[128];
    const char *note = cfg != NULL ? cfg->named_failed : NULL;

    suggest_key(cfg, name, hint, sizeof(hint));
    return dx_fail(err, errlen, code, "%s%s%s: unknown key (%s%s%s)%s%s", where ? where : "",
                   where ? ": " : "", name, hint[0] ? "did you mean " : "",
                   hint[0] ? hint : "'dexec config keys' lists the known ones", hint[0] ? "?" : "",
                   note != NULL && !hint[0] ? "; note: " : "", note != NULL && !hint[0] ? note : "");
}

/* ---- values ---------------------------------------------------------------- */

static void val_clear(struct dx_val *v)
{
    free(v->s);
    dx_strv_free(v->list);
    dexec_value_free(v->map);
    memset(v, 0, sizeof(*v));
}

static int list_push(char ***list, size_t *n, size_t *cap, char *item)
{
    if (item == NULL)
        return -1;
    if (*n + 2 > *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        char **nl = realloc(*list, ncap * sizeof(*nl));

        if (nl == NULL) {
            free(item);
            return -1;
        }
        *list = nl;
        *cap = ncap;
    }
    (*list)[(*n)++] = item;
    (*list)[*n] = NULL;
    return 0;
}

static char *trimmed_dup(const char *s, size_t len)
{
    while (len > 0 && isspace((unsigned char)*s)) {
        s++;
        len--;
    }
    while (len > 0 && isspace((unsigned char)s[len - 1]))
        len--;
    return strndup(s, len);
}

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (end == s || (errno != 0 && errno != ERANGE))
        return -1;
    if (errno == ERANGE)
        return -2;
    if (*end == 'L')
        end++;
    while (isspace((unsigned char)*end))
        end++;
    if (*end != '\0')
        return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *s, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (end == s || errno != 0 || !isfinite(v))
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    if (*end != '\0')
        return -1;
    *out = v;
    return 0;
}

/* A value from its command-line text form. Lists are comma separated, maps
 * "name=number,..."; blanks around items are ignored. */
static int val_from_text(const struct dx_key *k, const char *text, struct dx_val *v, char *why,
                         size_t whylen)
{
    switch (k->type) {
    case CT_INT:
        switch (parse_int(text, &v->i)) {
        case 0:
            break;
        case -2:
            snprintf(why, whylen, "%s" DX_INT64_RANGE, text);
            return -1;
        default:
            snprintf(why, whylen, "expected an integer, got \"%s\"", text);
            return -1;
        }
        return 0;
    case CT_FLOAT:
        if (parse_float(text, &v->f) != 0) {
            snprintf(why, whylen, "expected a number, got \"%s\"", text);
            return -1;
        }
        return 0;
    case CT_STRING:
        v->s = strdup(text);
        if (v->s == NULL)
            goto oom;
        return 0;
    case CT_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                 "off", "0"};
        char *t = trimmed_dup(text, strlen(text));

        if (t == NULL)
            goto oom;
        for (size_t i = 0; i < 4; i++) {
            if (strcasecmp(t, yes[i]) == 0 || strcasecmp(t, no[i]) == 0) {
                v->i = strcasecmp(t, yes[i]) == 0;
                free(t);
                return 0;
            }
        }
        free(t);
        snprintf(why, whylen, "expected true or false, got \"%s\"", text);
        return -1;
    }
    case CT_LIST: {
        size_t cap = 0;
        const char *p = text;

        v->list = calloc(1, sizeof(char *));
        if (v->list == NULL)
            goto oom;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0')
            return 0;
        cap = 1;
        for (;;) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);

            if (list_push(&v->list, &v->n, &cap, trimmed_dup(p, len)) != 0)
                goto oom;
            if (v->list[v->n - 1][0] == '\0') {
                snprintf(why, whylen,
                         "entry %zu of \"%s\" is empty; separate the entries with single commas",
                         v->n, text);
                return -1;
            }
            if (comma == NULL)
                return 0;
            p = comma + 1;
        }
    }
    case CT_MAP: {
        const char *p = text;

        v->map = dexec_value_map();
        if (v->map == NULL)
            goto oom;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0')
            return 0;
        for (;;) {
            const char *comma = (k->flags & DX_KEY_ENV) != 0 ? env_entry_end(p) : strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            char *item = trimmed_dup(p, len), *eq, *name;
            dexec_value *num = NULL;
            int64_t i;
            double f;

            if (item == NULL)
                goto oom;
            eq = strchr(item, '=');
            if (eq == NULL) {
                snprintf(why, whylen, "expected NAME=NUMBER, got \"%s\"", item);
                free(item);
                return -1;
            }
            *eq = '\0';
            name = trimmed_dup(item, strlen(item));
            if (name == NULL) {
                free(item);
                goto oom;
            }
            if ((k->flags & DX_KEY_ENV) != 0) {
                if (!is_env_name(name)) {
                    snprintf(why, whylen,
                             "\"%s\" is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
                             name);
                    free(name);
                    free(item);
                    return -1;
                }
                num = dexec_value_str(eq + 1);
                free(item);
                if (num == NULL || dexec_value_map_set(v->map, name, num) != 0) {
                    free(name);
                    goto oom;
                }
                free(name);
                if (comma == NULL)
                    return 0;
                p = comma + 1;
                continue;
            }
            if (!is_setting_name(name)) {
                snprintf(why, whylen,
                         "\"%s\" is not a valid resource name (a letter, then letters, "
                         "digits, '-' or '_')",
                         name);
                free(name);
                free(item);
                return -1;
            }
            if (parse_int(eq + 1, &i) == 0)
                num = dexec_value_int(i);
            else if (parse_float(eq + 1, &f) == 0)
                num = dexec_value_float(f);
            else {
                snprintf(why, whylen, "%s: expected a number, got \"%s\"", name, eq + 1);
                free(name);
                free(item);
                return -1;
            }
            free(item);
            if (num == NULL || dexec_value_map_set(v->map, name, num) != 0) {
                free(name);
                goto oom;
            }
            free(name);
            if (comma == NULL)
                return 0;
            p = comma + 1;
        }
    }
    }
    return -1;
oom:
    snprintf(why, whylen, "out of memory");
    return -1;
}

static const char *lc_type_name(int type)
{
    switch (type) {
    case CONFIG_TYPE_GROUP: return "a group";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64: return "an integer";
    case CONFIG_TYPE_FLOAT: return "a float";
    case CONFIG_TYPE_STRING: return "a string";
    case CONFIG_TYPE_BOOL: return "a boolean";
    case CONFIG_TYPE_ARRAY: return "an array";
    case CONFIG_TYPE_LIST: return "a list";
    }
    return "nothing";
}

/* What the parser needs besides the settings: the main text and its name,
 * to recover integers libconfig truncated. */
struct dx_source {
    const char *text;
    const char *name;
    const char *include_dir; /* NULL when not known */
};

/* libconfig names a setting from an @include file by the name written in
 * the directive; messages and origins use the path it was read from. */
static const char *source_path(const struct dx_source *src, const char *file, char *buf,
                               size_t buflen)
{
    if (file == NULL)
        return src->name;
    if (file[0] == '/' || src->include_dir == NULL)
        return file;
    snprintf(buf, buflen, "%s/%s", src->include_dir, file);
    return buf;
}

static char *read_file(const char *path, char *err, size_t errlen);

/* Skips white space and the three kinds of comment libconfig knows (#,
 * //, slash-star), as its scanner does. */
static const char *lc_skip(const char *p)
{
    for (;;) {
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '#' || (p[0] == '/' && p[1] == '/'))
            p += strcspn(p, "\n");
        else if (p[0] == '/' && p[1] == '*') {
            const char *e = strstr(p + 2, "*/");

            p = e != NULL ? e + 2 : p + strlen(p);
        } else
            return p;
    }
}

/* The integer literal at p (libconfig's grammar: optional sign, decimal
 * digits or 0x and hex digits), its magnitude checked against int64_t.
 * Returns 1 and the value, 0 when p holds no integer literal, -1 when the
 * literal is out of range; *end is set past the literal in both cases. */
static int lc_integer(const char *p, int64_t *out, const char **end)
{
    int neg = *p == '-', hex;
    uint64_t v = 0, lim;
    const char *d;

    if (*p == '-' || *p == '+')
        p++;
    hex = p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
    d = hex ? p + 2 : p;
    lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (p = d; hex ? isxdigit((unsigned char)*p) : isdigit((unsigned char)*p); p++) {
        unsigned digit = isdigit((unsigned char)*p) ? (unsigned)(*p - '0')
                                                    : (unsigned)(tolower((unsigned char)*p) - 'a' + 10);
        unsigned base = hex ? 16u : 10u;

        if (v > (lim - digit) / base) {
            while (isxdigit((unsigned char)*p))
                p++;
            *end = p;
            return -1;
        }
        v = v * base + digit;
    }
    *end = p;
    if (p == d || *p == '.' || *p == 'e' || *p == 'E' || isalpha((unsigned char)*p))
        return 0; /* no digits, a float or an L-suffixed (64-bit) literal */
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

/* The number of groups around s (0 for a top-level setting); lists and
 * arrays hold no braces of their own. */
static int setting_depth(const config_setting_t *s)
{
    int d = 0;

    for (s = config_setting_parent(s); s != NULL && !config_setting_is_root(s);
         s = config_setting_parent(s))
        d += config_setting_type(s) == CONFIG_TYPE_GROUP;
    return d;
}

/* One pass of setting_int64's scan: the literal after NAME = on line `line`,
 * NAME at brace depth `depth` (-1: any). Returns 1 found, 0 not, -1 out
 * of range (why filled in). */
static int scan_int_literal(const char *text, const char *name, unsigned line, int depth,
                            int kept, int64_t *out, char *why, size_t whylen)
{
    const char *p = text, *counted = text;
    size_t nlen = strlen(name);
    unsigned at = 1;
    int d = 0;

    while (*p != '\0') {
        const char *q, *end;
        int64_t v;
        int got;

        p = lc_skip(p);
        if (*p == '"') { /* a string: skip it, escapes included */
            for (p++; *p != '\0' && *p != '"'; p++)
                if (*p == '\\' && p[1] != '\0')
                    p++;
            if (*p == '"')
                p++;
            continue;
        }
        if (*p == '{' || *p == '}') {
            d += *p++ == '{' ? 1 : -1;
            continue;
        }
        if (!(isalpha((unsigned char)*p) || *p == '*')) {
            if (*p != '\0')
                p++;
            continue;
        }
        q = p;
        while (isalnum((unsigned char)*q) || *q == '_' || *q == '-' || *q == '*')
            q++;
        for (; counted < p; counted++)
            at += *counted == '\n';
        if (at > line)
            return 0;
        if (at != line || (depth >= 0 && d != depth) || (size_t)(q - p) != nlen ||
            strncmp(p, name, nlen) != 0) {
            p = q;
            continue;
        }
        q = lc_skip(q);
        if (*q != '=' && *q != ':') {
            p = q;
            continue;
        }
        q = lc_skip(q + 1);
        got = lc_integer(q, &v, &end);
        if (got < 0) {
            snprintf(why, whylen, "%.*s" DX_INT64_RANGE, (int)(end - q), q);
            return -1;
        }
        if (got > 0 && (int32_t)(uint32_t)(uint64_t)v == kept) {
            *out = v;
            return 1;
        }
        p = end;
    }
    return 0;
}

/* libconfig 1.5 stores an integer written without the L suffix in an int,
 * silently truncated ("memory = 34359738368;" reads as 0), where libconfig
 * 1.7 promotes it to a 64-bit integer. So that a file means what the newer
 * libconfig makes of it, the value is read again from the source with
 * libconfig's lexical rules (comments and strings skipped, braces counted):
 * the literal after "NAME =" or "NAME :", NAME on the setting's line
 * (libconfig records the line of the name) and inside as many groups as
 * the setting, whose low 32 bits equal what libconfig kept. An included
 * file is taken as included at the top level; failing that, any depth on
 * the line will do. A literal beyond the 64-bit range is refused with the
 * digits written. */
static int setting_int64(const config_setting_t *s, const struct dx_source *src, int64_t *out,
                         char *why, size_t whylen)
{
    const char *name = config_setting_name(s);
    const char *file = config_setting_source_file(s);
    unsigned line = config_setting_source_line(s);
    int kept = config_setting_get_int(s), depth = setting_depth(s), rc;
    char *owned = NULL, path[1024];
    const char *text = src->text;

    *out = config_setting_get_int64(s);
    if (config_setting_type(s) == CONFIG_TYPE_INT64 || name == NULL)
        return 0;
    if (file != NULL) {
        owned = read_file(source_path(src, file, path, sizeof(path)), NULL, 0);
        text = owned;
    }
    if (text == NULL)
        return 0;
    rc = scan_int_literal(text, name, line, depth, kept, out, why, whylen);
    if (rc == 0 && file != NULL)
        rc = scan_int_literal(text, name, line, -1, kept, out, why, whylen);
    free(owned);
    return rc < 0 ? -1 : 0;
}

/* A value from a libconfig setting. *line is moved to the element at fault
 * when there is one. */
static int val_from_setting(const struct dx_key *k, const config_setting_t *s,
                            const struct dx_source *src, struct dx_val *v, unsigned *line,
                            char *why, size_t whylen)
{
    int t = config_setting_type(s);

    switch (k->type) {
    case CT_INT:
        if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
            break;
        return setting_int64(s, src, &v->i, why, whylen);
    case CT_FLOAT:
        if (t == CONFIG_TYPE_FLOAT)
            v->f = config_setting_get_float(s);
        else if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
            int64_t i;

            if (setting_int64(s, src, &i, why, whylen) != 0)
                return -1;
            v->f = (double)i;
        } else
            break;
        return 0;
    case CT_STRING:
        if (t != CONFIG_TYPE_STRING)
            break;
        v->s = strdup(config_setting_get_string(s));
        if (v->s == NULL)
            goto oom;
        return 0;
    case CT_BOOL:
        if (t != CONFIG_TYPE_BOOL)
            break;
        v->i = config_setting_get_bool(s) != 0;
        return 0;
    case CT_LIST: {
        size_t cap = 1;

        if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) {
            snprintf(why, whylen, "expected a list of strings, got %s", lc_type_name(t));
            return -1;
        }
        v->list = calloc(1, sizeof(char *));
        if (v->list == NULL)
            goto oom;
        for (int i = 0; i < config_setting_length(s); i++) {
            const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

            if (config_setting_type(e) != CONFIG_TYPE_STRING) {
                snprintf(why, whylen, "element %d: expected a string, got %s", i + 1,
                         lc_type_name(config_setting_type(e)));
                return -1;
            }
            if (list_push(&v->list, &v->n, &cap, strdup(config_setting_get_string(e))) != 0)
                goto oom;
        }
        return 0;
    }
    case CT_MAP:
        if (t != CONFIG_TYPE_GROUP) {
            snprintf(why, whylen, "expected a group of NAME = number settings, got %s",
                     lc_type_name(t));
            return -1;
        }
        v->map = dexec_value_map();
        if (v->map == NULL)
            goto oom;
        for (int i = 0; i < config_setting_length(s); i++) {
            const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
            int et = config_setting_type(e);
            dexec_value *num;

            if ((k->flags & DX_KEY_ENV) != 0) {
                if (et != CONFIG_TYPE_STRING) {
                    *line = config_setting_source_line(e);
                    snprintf(why, whylen, "%s: expected a string, got %s",
                             config_setting_name(e), lc_type_name(et));
                    return -1;
                }
                if (!is_env_name(config_setting_name(e))) {
                    *line = config_setting_source_line(e);
                    snprintf(why, whylen,
                             "\"%s\" is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
                             config_setting_name(e));
                    return -1;
                }
                num = dexec_value_str(config_setting_get_string(e));
            } else if (et == CONFIG_TYPE_INT || et == CONFIG_TYPE_INT64) {
                int64_t n;

                if (setting_int64(e, src, &n, why, whylen) != 0) {
                    *line = config_setting_source_line(e);
                    return -1;
                }
                num = dexec_value_int(n);
            } else if (et == CONFIG_TYPE_FLOAT)
                num = dexec_value_float(config_setting_get_float(e));
            else {
                *line = config_setting_source_line(e);
                snprintf(why, whylen, "%s: expected a number, got %s", config_setting_name(e),
                         lc_type_name(et));
                return -1;
            }
            if (num == NULL || dexec_value_map_set(v->map, config_setting_name(e), num) != 0)
                goto oom;
        }
        return 0;
    }
    snprintf(why, whylen, "expected %s %s, got %s", k->type == CT_INT ? "an" : "a",
             k->type == CT_FLOAT ? "float" : ctype_names[k->type], lc_type_name(t));
    return -1;
oom:
    snprintf(why, whylen, "out of memory");
    return -1;
}

/* The text of a string value that may be shown: a SECRET value is
 * "********", the password of a URL_PASSWORD value (":PASSWORD@" or
 * "password=...") is "****". Returns s itself or buf. */
static const char *shown(const struct dx_key *k, const char *s, char *buf, size_t buflen)
{
    const char *scheme, *at, *pw;
    size_t used = 0;

    if (k->type != CT_STRING || s == NULL)
        return s;
    if (k->flags & DEXEC_SETTING_SECRET)
        return *s != '\0' ? "********" : s;
    if (!(k->flags & DEXEC_SETTING_URL_PASSWORD))
        return s;
    scheme = strstr(s, "://");
    at = scheme != NULL ? strchr(scheme + 3, '@') : NULL;
    if (at != NULL && memchr(scheme + 3, '/', (size_t)(at - scheme - 3)) != NULL)
        at = NULL;
    pw = strstr(s, "password=");
    if (at == NULL && pw == NULL)
        return s;
    buf[0] = '\0';
    for (const char *p = s; *p != '\0' && used + 8 < buflen;) {
        if (at != NULL && p == scheme + 3) {
            const char *colon = memchr(p, ':', (size_t)(at - p));

            /* keep the user name, hide the rest of the user information */
            used += (size_t)snprintf(buf + used, buflen - used, "%.*s****@",
                                     colon != NULL ? (int)(colon - p + 1) : 0, p);
            p = at + 1;
        } else if (pw != NULL && p == pw) {
            used += (size_t)snprintf(buf + used, buflen - used, "password=****");
            p += 9 + strcspn(p + 9, "&");
        } else {
            buf[used++] = *p++;
            buf[used] = '\0';
        }
    }
    return buf;
}

/* Range and value checks shared by the file parser, the environment and
 * dexec_config_set(). */
static int val_check(const struct dx_key *k, const struct dx_val *v, char *why, size_t whylen)
{
    char masked[512];

    switch (k->type) {
    case CT_INT:
        if ((k->imin != 0 || k->imax != 0) && (v->i < k->imin || v->i > k->imax)) {
            snprintf(why, whylen, "must be between %lld and %lld, got %lld", (long long)k->imin,
                     (long long)k->imax, (long long)v->i);
            return -1;
        }
        return 0;
    case CT_FLOAT:
        if (k->fmin == 0 && k->fmax == 0)
            return 0;
        if ((k->flags & DEXEC_SETTING_ABOVE_MIN) && (!(v->f > k->fmin) || v->f > k->fmax)) {
            snprintf(why, whylen, "must be greater than %g and at most %g, got %g", k->fmin,
                     k->fmax, v->f);
            return -1;
        }
        if (!(v->f >= k->fmin) || v->f > k->fmax) {
            snprintf(why, whylen, "must be between %g and %g, got %g", k->fmin, k->fmax, v->f);
            return -1;
        }
        return 0;
    case CT_STRING: {
        const char *sv = shown(k, v->s, masked, sizeof(masked));

        if (k->choices != NULL) {
            size_t len = strlen(v->s), used;

            for (const char *c = k->choices; *c != '\0';) {
                size_t clen = strcspn(c, "|");

                if (clen == len && strncmp(c, v->s, len) == 0)
                    return 0;
                c += clen + (c[clen] == '|');
            }
            used = (size_t)snprintf(why, whylen, "\"%s\" is not one of:", sv);
            for (const char *c = k->choices; *c != '\0' && used < whylen;) {
                size_t clen = strcspn(c, "|");

                used += (size_t)snprintf(why + used, whylen - used, "%s %.*s",
                                         c == k->choices ? "" : ",", (int)clen, c);
                c += clen + (c[clen] == '|');
            }
            return -1;
        }
        if ((k->flags & DEXEC_SETTING_NONEMPTY) && v->s[0] == '\0') {
            snprintf(why, whylen, "\"\" must not be empty");
            return -1;
        }
        if (k->flags & DEXEC_SETTING_NO_SPACES) {
            for (const char *p = v->s; *p != '\0'; p++)
                if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p)) {
                    snprintf(why, whylen, "\"%s\" must not contain spaces or control characters",
                             sv);
                    return -1;
                }
        }
        if (k->prefixes != NULL) {
            int ok = 0;
            size_t used;

            for (const char *c = k->prefixes; *c != '\0' && !ok;) {
                size_t clen = strcspn(c, "|");

                ok = strncmp(v->s, c, clen) == 0 && v->s[clen] != '\0';
                c += clen + (c[clen] == '|');
            }
            if (ok)
                return 0;
            if (k->range != NULL) {
                snprintf(why, whylen, "\"%s\" must be %s", sv, k->range);
                return -1;
            }
            used = (size_t)snprintf(why, whylen, "\"%s\" must start with", sv);
            for (const char *c = k->prefixes; *c != '\0' && used < whylen;) {
                size_t clen = strcspn(c, "|");

                used += (size_t)snprintf(why + used, whylen - used, "%s %.*s",
                                         c == k->prefixes ? "" : " or", (int)clen, c);
                c += clen + (c[clen] == '|');
            }
            return -1;
        }
        if (k->check != NULL) {
            const char *problem = k->check(v->s);

            if (problem != NULL) {
                snprintf(why, whylen, "\"%s\" %s", sv, problem);
                return -1;
            }
        }
        return 0;
    }
    case CT_BOOL:
        return 0;
    case CT_LIST:
        for (size_t i = 0; i < v->n; i++)
            if (v->list[i][0] == '\0') {
                snprintf(why, whylen, "element %zu is empty", i + 1);
                return -1;
            }
        return 0;
    case CT_MAP:
        if ((k->flags & DX_KEY_ENV) != 0)
            return 0;
        for (size_t i = 0; i < v->map->u.map.len; i++) {
            const dexec_kv *kv = &v->map->u.map.items[i];
            double x = dexec_value_as_float(kv->val, -1);

            if (!(x >= 0) || !isfinite(x)) {
                snprintf(why, whylen, "%s: must be a number >= 0", kv->key);
                return -1;
            }
        }
        return 0;
    }
    return 0;
}

/* Replaces the value of r by v (taken) with its origin. */
static dexec_status commit(const struct dx_ref *r, struct dx_val *v, const char *origin)
{
    char *o = strdup(origin);

    if (o == NULL) {
        val_clear(v);
        return DEXEC_ENOMEM;
    }
    val_clear(&r->slot->v);
    free(r->slot->origin);
    r->slot->v = *v;
    r->slot->origin = o;
    memset(v, 0, sizeof(*v));
    return DEXEC_OK;
}

/* Sets key r from text; where (NULL for dexec_config_set) prefixes the
 * message, origin is recorded. */
static dexec_status apply_text(const struct dx_ref *r, const char *text, const char *where,
                               const char *origin, char *err, size_t errlen)
{
    struct dx_val v = {0};
    char why[512];

    if (val_from_text(r->key, text, &v, why, sizeof(why)) != 0 ||
        val_check(r->key, &v, why, sizeof(why)) != 0) {
        val_clear(&v);
        return dx_fail(err, errlen, strcmp(why, "out of memory") ? DEXEC_ECONFIG : DEXEC_ENOMEM,
                       "%s%s%s: %s", where ? where : "", where ? ": " : "", r->key->name, why);
    }
    if (commit(r, &v, origin) != DEXEC_OK)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "%s: out of memory", r->key->name);
    return DEXEC_OK;
}

/* ---- plugin settings ----------------------------------------------------------- */

static void schema_unref(struct dx_schema *sc)
{
    if (sc == NULL || __atomic_sub_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    for (size_t i = 0; i < sc->n; i++) {
        struct dx_key *k = &sc->keys[i];

        free((char *)k->name);
        free((char *)k->def);
        free((char *)k->choices);
        free((char *)k->prefixes);
        free((char *)k->range);
        free((char *)k->doc);
    }
    free(sc->keys);
    free(sc->plugin);
    free(sc->file);
    free(sc->section);
    free(sc);
}

/* A dotted name of [a-z][a-z0-9_]* parts. */
static int is_dotted_name(const char *s)
{
    for (;;) {
        if (!(*s >= 'a' && *s <= 'z'))
            return 0;
        for (s++; (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'; s++)
            ;
        if (*s == '\0')
            return 1;
        if (*s++ != '.')
            return 0;
    }
}

/* The accepted values of a plugin setting in words, from its bounds. */
static char *range_text(const struct dx_key *k)
{
    char *t = NULL;
    int n = -1;

    switch (k->type) {
    case CT_INT:
        if (k->imin == 0 && k->imax == 0)
            n = asprintf(&t, "any integer");
        else
            n = asprintf(&t, "%lld..%lld", (long long)k->imin, (long long)k->imax);
        break;
    case CT_FLOAT:
        if (k->fmin == 0 && k->fmax == 0)
            n = asprintf(&t, "any number");
        else
            n = asprintf(&t, "%s %g, <= %g", k->flags & DEXEC_SETTING_ABOVE_MIN ? ">" : ">=",
                         k->fmin, k->fmax);
        break;
    case CT_STRING:
        if (k->choices != NULL)
            n = asprintf(&t, "%s", k->choices);
        else if (k->prefixes != NULL)
            n = asprintf(&t, "starts with %s", k->prefixes);
        else
            n = asprintf(&t, "%s%s", k->flags & DEXEC_SETTING_NONEMPTY ? "non-empty" : "any text",
                         k->flags & DEXEC_SETTING_NO_SPACES ? ", no spaces" : "");
        break;
    case CT_BOOL: n = asprintf(&t, "true|false"); break;
    case CT_LIST: n = asprintf(&t, "list of strings"); break;
    case CT_MAP: n = asprintf(&t, "group of NAME = number >= 0"); break;
    }
    return n < 0 ? NULL : t;
}

/* Copies one entry of a plugin's table into k; the problem in words when
 * the entry breaks a rule of plugin.h. */
static const char *copy_setting(const char *section, const dexec_setting *e, struct dx_key *k,
                                char *name, size_t namelen)
{
    static const enum dx_ctype types[] = {CT_INT, CT_FLOAT, CT_STRING, CT_BOOL, CT_LIST, CT_MAP};

    snprintf(name, namelen, "%s", e->name != NULL ? e->name : "(null)");
    if (e->name == NULL || !is_dotted_name(e->name))
        return "the name must be dotted parts of [a-z][a-z0-9_]*";
    if (e->type < DEXEC_SETTING_INT || e->type > DEXEC_SETTING_MAP)
        return "unknown type (DEXEC_SETTING_INT .. DEXEC_SETTING_MAP)";
    if (e->doc == NULL || e->doc[0] == '\0')
        return "the one-line doc is missing";
    if (e->def == NULL &&
        (e->type == DEXEC_SETTING_INT || e->type == DEXEC_SETTING_FLOAT ||
         e->type == DEXEC_SETTING_BOOL))
        return "a default is required for this type";
    if (e->type == DEXEC_SETTING_INT && e->imin > e->imax)
        return "imin is greater than imax";
    if (e->type == DEXEC_SETTING_FLOAT && (!(e->fmin <= e->fmax) || !isfinite(e->fmin) ||
                                           !isfinite(e->fmax)))
        return "fmin and fmax must be finite, fmin <= fmax";
    if (e->type == DEXEC_SETTING_STRING && e->choices != NULL && e->prefixes != NULL)
        return "choices and prefixes exclude each other";
    snprintf(name, namelen, "%s.%s", section, e->name);
    k->type = types[e->type - 1];
    k->imin = e->imin;
    k->imax = e->imax;
    k->fmin = e->fmin;
    k->fmax = e->fmax;
    k->flags = e->flags;
    if ((k->name = strdup(name)) == NULL || (k->def = strdup(e->def ? e->def : "")) == NULL ||
        (e->choices != NULL && (k->choices = strdup(e->choices)) == NULL) ||
        (e->prefixes != NULL && (k->prefixes = strdup(e->prefixes)) == NULL) ||
        (e->range != NULL && (k->range = strdup(e->range)) == NULL) ||
        (k->doc = strdup(e->doc)) == NULL)
        return "out of memory";
    if (k->range == NULL && (k->range = range_text(k)) == NULL)
        return "out of memory";
    return NULL;
}

/* Adds the settings a descriptor declares to cfg's schema, with their
 * defaults. Nothing to do for a plugin without settings, or one already
 * attached. DEXEC_EPLUGIN for a table that breaks the rules of plugin.h. */
static dexec_status attach_desc(dexec_config *cfg, const dexec_plugin_desc *d, const char *file,
                                char *err, size_t errlen)
{
    const dexec_settings *t = d->abi_minor >= 1 ? d->settings : NULL;
    struct dx_schema *sc, **ns;
    struct dx_slot **np;
    dexec_status st;
    char name[300];
    const char *problem = NULL;

    if (t == NULL)
        return DEXEC_OK;
    for (size_t i = 0; i < cfg->nschemas; i++)
        if (strcmp(cfg->schemas[i]->plugin, d->name) == 0)
            return DEXEC_OK;
    if (t->struct_size < offsetof(dexec_settings, reserved) || t->struct_size > DX_STRUCT_MAX ||
        t->setting_size < offsetof(dexec_setting, reserved) || t->setting_size > DX_STRUCT_MAX)
        return dx_fail(err, errlen, DEXEC_EPLUGIN,
                       "plugin %s: settings table sizes %u/%u are not those of a dexec_settings "
                       "and dexec_setting: initialize it with DEXEC_SETTINGS_INIT",
                       file, t->struct_size, t->setting_size);
    if (t->section == NULL || !is_dotted_name(t->section))
        return dx_fail(err, errlen, DEXEC_EPLUGIN,
                       "plugin %s: settings section '%s' is not a dotted name of "
                       "[a-z][a-z0-9_]* parts",
                       file, t->section != NULL ? t->section : "(null)");
    if (t->settings == NULL || t->count == 0 || t->count > DX_SETTINGS_MAX)
        return dx_fail(err, errlen, DEXEC_EPLUGIN,
                       "plugin %s: settings section %s: %u settings, expected 1 to %d", file,
                       t->section, t->count, DX_SETTINGS_MAX);
    {
        size_t first = strcspn(t->section, ".");
        char top[128];

        snprintf(top, sizeof(top), "%.*s", (int)first, t->section);
        if (find_key(NULL, top, NULL) || is_group(NULL, top))
            return dx_fail(err, errlen, DEXEC_EPLUGIN,
                           "plugin %s: settings section %s: '%s' belongs to the core's keys; "
                           "choose another section (the plugin's name, say)",
                           file, t->section, top);
    }
    for (size_t i = 0; i < cfg->nschemas; i++)
        if (names_overlap(cfg->schemas[i]->section, t->section))
            return dx_fail(err, errlen, DEXEC_EPLUGIN,
                           "plugin %s: settings section %s overlaps section %s of plugin %s (%s)",
                           file, t->section, cfg->schemas[i]->section, cfg->schemas[i]->plugin,
                           cfg->schemas[i]->file);

    sc = calloc(1, sizeof(*sc));
    if (sc == NULL)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "plugin %s: out of memory", file);
    sc->refs = 1;
    sc->keys = calloc(t->count, sizeof(*sc->keys));
    if (sc->keys == NULL || (sc->plugin = strdup(d->name)) == NULL ||
        (sc->file = strdup(file)) == NULL || (sc->section = strdup(t->section)) == NULL) {
        schema_unref(sc);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "plugin %s: out of memory", file);
    }
    for (uint32_t i = 0; i < t->count && problem == NULL; i++) {
        const dexec_setting *e =
            (const dexec_setting *)(const void *)((const char *)t->settings +
                                                  (size_t)i * t->setting_size);

        problem = copy_setting(t->section, e, &sc->keys[i], name, sizeof(name));
        sc->n = i + 1;
        for (uint32_t j = 0; j < i && problem == NULL; j++)
            if (names_overlap(sc->keys[j].name, sc->keys[i].name))
                problem = "declared twice, or both a key and a group";
    }
    if (problem != NULL) {
        st = dx_fail(err, errlen, strcmp(problem, "out of memory") ? DEXEC_EPLUGIN : DEXEC_ENOMEM,
                     "plugin %s: setting %s: %s", file, name, problem);
        schema_unref(sc);
        return st;
    }
    ns = realloc(cfg->schemas, (cfg->nschemas + 1) * sizeof(*ns));
    if (ns != NULL)
        cfg->schemas = ns;
    np = ns != NULL ? realloc(cfg->pslots, (cfg->nschemas + 1) * sizeof(*np)) : NULL;
    if (np != NULL)
        cfg->pslots = np;
    if (ns == NULL || np == NULL || (np[cfg->nschemas] = calloc(sc->n, sizeof(**np))) == NULL) {
        schema_unref(sc);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "plugin %s: out of memory", file);
    }
    ns[cfg->nschemas++] = sc;
    for (size_t i = 0; i < sc->n; i++) {
        struct dx_ref r = {&sc->keys[i], &cfg->pslots[cfg->nschemas - 1][i], sc};
        char msg[600];

        st = apply_text(&r, sc->keys[i].def, NULL, "default", msg, sizeof(msg));
        if (st != DEXEC_OK) {
            /* keep the schema (freed with cfg) but report the plugin's mistake */
            return dx_fail(err, errlen, st == DEXEC_ENOMEM ? st : DEXEC_EPLUGIN,
                           "plugin %s: setting %s: its default is refused: %s", file,
                           sc->keys[i].name, msg);
        }
    }
    return DEXEC_OK;
}

/* Loads the plugin a key of the configuration names and attaches its
 * settings. A plugin that cannot be loaded is not an error here (the
 * engine reports it when it needs the plugin); why is kept for the hint of
 * an unknown key in a section it might have owned. */
static dexec_status attach_named(dexec_config *cfg, const char *key, char *err, size_t errlen)
{
    const char *name = core_slot(cfg, key)->v.s;
    dexec_plugin_handle *h = NULL;
    dexec_status st;
    char msg[1024];

    if (name == NULL || *name == '\0')
        return DEXEC_OK;
    if (dexec_plugin_load(name, 0, cfg, &h, msg, sizeof(msg)) != DEXEC_OK) {
        char *why = NULL;

        dexec_log(DEXEC_LOG_DEBUG, "config", "plugin %s (%s) not read for its settings: %s", name,
                  key, msg);
        if (cfg->named_failed == NULL &&
            asprintf(&why, "plugin %s (%s) could not be read for its settings: %s", name, key,
                     msg) >= 0)
            cfg->named_failed = why;
        return DEXEC_OK;
    }
    st = attach_desc(cfg, dexec_plugin_descriptor(h), dexec_plugin_file(h), err, errlen);
    dexec_plugin_release(h);
    return st;
}

static dexec_status attach_configured(dexec_config *cfg, char *err, size_t errlen)
{
    dexec_status st = attach_named(cfg, "distributed_executor_backend", err, errlen);

    return st != DEXEC_OK ? st : attach_named(cfg, "external.discovery", err, errlen);
}

struct owner_search {
    dexec_config *cfg;
    const char *name;   /* the setting looking for an owner; NULL: attach all */
    dexec_status st;
    char *err;
    size_t errlen;
    int found;
};

static int owner_visit(const dexec_plugin_desc *d, const char *file, void *user)
{
    struct owner_search *o = user;
    const dexec_settings *t = d->abi_minor >= 1 ? d->settings : NULL;

    if (t == NULL || t->section == NULL)
        return 0;
    if (o->name != NULL && !names_overlap(t->section, o->name))
        return 0;
    for (size_t i = 0; i < o->cfg->nschemas; i++)
        if (names_overlap(o->cfg->schemas[i]->section, t->section))
            return 0; /* the section has an owner already: the earlier one wins */
    o->st = attach_desc(o->cfg, d, file, o->err, o->errlen);
    o->found = o->st == DEXEC_OK;
    return o->name != NULL || o->st != DEXEC_OK;
}

/* Finds, in the search path, the plugin whose section holds (or is held
 * by) name and attaches it: 1 when one was attached, 0 when none declares
 * it, -1 on a plugin's broken table (message in err). */
static int attach_owner(dexec_config *cfg, const char *name, char *err, size_t errlen)
{
    struct owner_search o = {cfg, name, DEXEC_OK, err, errlen, 0};
    char top[128];

    for (size_t i = 0; i < cfg->nschemas; i++)
        if (names_overlap(cfg->schemas[i]->section, name))
            return 0; /* its owner is known: the key is simply not one of its settings */
    /* no plugin owns anything under the core's names ("timeouts.rcp") */
    snprintf(top, sizeof(top), "%.*s", (int)strcspn(name, "."), name);
    if (find_key(NULL, top, NULL) || is_group(NULL, top))
        return 0;
    dx_plugin_foreach(cfg, owner_visit, &o);
    return o.st != DEXEC_OK ? -1 : o.found;
}

dexec_status dexec_config_add_plugin_settings(dexec_config *cfg, const char *name_or_path,
                                              char *err, size_t errlen)
{
    dexec_plugin_handle *h = NULL;
    dexec_status st;

    if (cfg == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "dexec_config_add_plugin_settings: cfg is NULL");
    if (name_or_path == NULL) {
        struct owner_search o = {cfg, NULL, DEXEC_OK, err, errlen, 0};

        dx_plugin_foreach(cfg, owner_visit, &o);
        return o.st;
    }
    st = dexec_plugin_load(name_or_path, 0, cfg, &h, err, errlen);
    if (st != DEXEC_OK)
        return st;
    st = attach_desc(cfg, dexec_plugin_descriptor(h), dexec_plugin_file(h), err, errlen);
    dexec_plugin_release(h);
    return st;
}

/* ---- construction ------------------------------------------------------------ */

static dexec_config *config_defaults(char *err, size_t errlen)
{
    dexec_config *cfg = calloc(1, sizeof(*cfg));

    if (cfg == NULL) {
        dx_fail(err, errlen, DEXEC_ENOMEM, "configuration: out of memory");
        return NULL;
    }
    for (size_t i = 0; i < NKEYS; i++) {
        struct dx_ref r;

        key_at(cfg, i, &r);
        if (apply_text(&r, keys[i].def, "default", "default", err, errlen) != DEXEC_OK) {
            dexec_config_free(cfg);
            return NULL;
        }
    }
    return cfg;
}

static void slot_clear(struct dx_slot *s)
{
    val_clear(&s->v);
    free(s->origin);
    s->origin = NULL;
}

void dexec_config_free(dexec_config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < NKEYS; i++)
        slot_clear(&cfg->slot[i]);
    for (size_t s = 0; s < cfg->nschemas; s++) {
        for (size_t i = 0; i < cfg->schemas[s]->n; i++)
            slot_clear(&cfg->pslots[s][i]);
        free(cfg->pslots[s]);
        schema_unref(cfg->schemas[s]);
    }
    free(cfg->pslots);
    free(cfg->schemas);
    free(cfg->named_failed);
    free(cfg->path);
    free(cfg->env_plugin_path);
    free(cfg);
}

static int slot_copy(struct dx_slot *to, const struct dx_slot *from)
{
    to->v.i = from->v.i;
    to->v.f = from->v.f;
    to->v.n = from->v.n;
    if ((from->origin != NULL && (to->origin = strdup(from->origin)) == NULL) ||
        (from->v.s != NULL && (to->v.s = strdup(from->v.s)) == NULL) ||
        (from->v.map != NULL && (to->v.map = dexec_value_clone(from->v.map)) == NULL))
        return -1;
    if (from->v.list != NULL) {
        if ((to->v.list = calloc(from->v.n + 1, sizeof(char *))) == NULL)
            return -1;
        for (size_t k = 0; k < from->v.n; k++)
            if ((to->v.list[k] = strdup(from->v.list[k])) == NULL)
                return -1;
    }
    return 0;
}

/* For the engine, which keeps its own copy: values, origins and path too,
 * so messages about the copy still name the right file and line; the
 * plugin schemas are shared. */
dexec_config *dx_config_clone(const dexec_config *cfg)
{
    dexec_config *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    if ((cfg->path != NULL && (c->path = strdup(cfg->path)) == NULL) ||
        (cfg->env_plugin_path != NULL &&
         (c->env_plugin_path = strdup(cfg->env_plugin_path)) == NULL) ||
        (cfg->named_failed != NULL && (c->named_failed = strdup(cfg->named_failed)) == NULL))
        goto oom;
    for (size_t i = 0; i < NKEYS; i++)
        if (slot_copy(&c->slot[i], &cfg->slot[i]) != 0)
            goto oom;
    if (cfg->nschemas > 0) {
        c->schemas = calloc(cfg->nschemas, sizeof(*c->schemas));
        c->pslots = calloc(cfg->nschemas, sizeof(*c->pslots));
        if (c->schemas == NULL || c->pslots == NULL)
            goto oom;
    }
    for (size_t s = 0; s < cfg->nschemas; s++) {
        c->pslots[s] = calloc(cfg->schemas[s]->n, sizeof(**c->pslots));
        if (c->pslots[s] == NULL)
            goto oom;
        __atomic_add_fetch(&cfg->schemas[s]->refs, 1, __ATOMIC_RELAXED);
        c->schemas[s] = cfg->schemas[s];
        c->nschemas = s + 1;
        for (size_t i = 0; i < cfg->schemas[s]->n; i++)
            if (slot_copy(&c->pslots[s][i], &cfg->pslots[s][i]) != 0)
                goto oom;
    }
    return c;
oom:
    dexec_config_free(c);
    return NULL;
}

/* Applies the settings of group to cfg. A name that is neither a key nor a
 * group of the schema may belong to a plugin nobody named: its owner is
 * looked for in the search path before the name is called unknown. */
static dexec_status apply_group(dexec_config *cfg, const config_setting_t *group,
                                const char *prefix, const struct dx_source *src, char *err,
                                size_t errlen)
{
    for (int i = 0; i < config_setting_length(group); i++) {
        const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const char *file = config_setting_source_file(s);
        unsigned line = config_setting_source_line(s);
        char full[256], where[1040], why[512], pathbuf[1024];
        const char *fname = source_path(src, file, pathbuf, sizeof(pathbuf));
        struct dx_val v = {0};
        struct dx_ref r;
        int known;

        snprintf(full, sizeof(full), "%s%s%s", prefix ? prefix : "", prefix ? "." : "",
                 config_setting_name(s));
        snprintf(where, sizeof(where), "%s:%u", fname, line);
        known = find_key(cfg, full, &r);
        if (!known && !is_group(cfg, full)) {
            int found = attach_owner(cfg, full, err, errlen);

            if (found < 0)
                return DEXEC_EPLUGIN;
            known = found && find_key(cfg, full, &r);
        }
        if (!known && is_group(cfg, full)) {
            dexec_status st;

            if (config_setting_type(s) != CONFIG_TYPE_GROUP)
                return dx_fail(err, errlen, DEXEC_ECONFIG, "%s: %s: expected a group, got %s",
                               where, full, lc_type_name(config_setting_type(s)));
            st = apply_group(cfg, s, full, src, err, errlen);
            if (st != DEXEC_OK)
                return st;
            continue;
        }
        if (!known)
            return unknown_key(cfg, err, errlen, DEXEC_ECONFIG, where, full);
        if (val_from_setting(r.key, s, src, &v, &line, why, sizeof(why)) != 0 ||
            val_check(r.key, &v, why, sizeof(why)) != 0) {
            val_clear(&v);
            snprintf(where, sizeof(where), "%s:%u", fname, line);
            return dx_fail(err, errlen,
                           strcmp(why, "out of memory") ? DEXEC_ECONFIG : DEXEC_ENOMEM,
                           "%s: %s: %s", where, full, why);
        }
        if (commit(&r, &v, where) != DEXEC_OK)
            return dx_fail(err, errlen, DEXEC_ENOMEM, "%s: out of memory", full);
    }
    return DEXEC_OK;
}

/* The keys that name plugins, and the search path they are found in, are
 * read first (mistakes ignored: the full pass reports them), so that the
 * plugins' settings are known before their sections are met. */
static void apply_plugin_keys(dexec_config *cfg, config_t *lc, const struct dx_source *src)
{
    static const char *const names[] = {"plugin_path", "distributed_executor_backend",
                                        "external.discovery"};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const config_setting_t *s = config_lookup(lc, names[i]);
        struct dx_val v = {0};
        struct dx_ref r;
        unsigned line = 0;
        char why[512];

        if (s == NULL)
            continue;
        find_key(NULL, names[i], &r);
        r.slot = core_slot(cfg, names[i]);
        if (val_from_setting(r.key, s, src, &v, &line, why, sizeof(why)) == 0 &&
            val_check(r.key, &v, why, sizeof(why)) == 0)
            commit(&r, &v, "file");
        else
            val_clear(&v);
    }
}

/* Parses text over the defaults in cfg. include_dir resolves @include. */
static dexec_status parse_into(dexec_config *cfg, const char *text, const char *name,
                               const char *include_dir, char *err, size_t errlen)
{
    struct dx_source src = {text, name, include_dir};
    char pathbuf[1024];
    config_t lc;
    dexec_status st;

    config_init(&lc);
    if (include_dir != NULL)
        config_set_include_dir(&lc, include_dir);
    if (config_read_string(&lc, text) != CONFIG_TRUE) {
        st = dx_fail(err, errlen, DEXEC_ECONFIG, "%s:%d: %s",
                     source_path(&src, config_error_file(&lc), pathbuf, sizeof(pathbuf)),
                     config_error_line(&lc), config_error_text(&lc));
        config_destroy(&lc);
        return st;
    }
    apply_plugin_keys(cfg, &lc, &src);
    st = attach_configured(cfg, err, errlen);
    if (st == DEXEC_OK)
        st = apply_group(cfg, config_root_setting(&lc), NULL, &src, err, errlen);
    config_destroy(&lc);
    return st;
}

dexec_status dexec_config_parse(const char *text, const char *name, dexec_config **out, char *err,
                                size_t errlen)
{
    dexec_config *cfg;
    dexec_status st;

    if (out == NULL || text == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "dexec_config_parse: text and out are required");
    *out = NULL;
    cfg = config_defaults(err, errlen);
    if (cfg == NULL)
        return DEXEC_ENOMEM;
    st = parse_into(cfg, text, name != NULL ? name : "<config>", NULL, err, errlen);
    if (st != DEXEC_OK) {
        dexec_config_free(cfg);
        return st;
    }
    *out = cfg;
    return DEXEC_OK;
}

/* Reads a whole configuration file; the error names the path. */
static char *read_file(const char *path, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "re");
    struct stat st;
    char *buf = NULL;
    size_t len = 0, cap = 0;

    if (fp == NULL) {
        dx_fail(err, errlen, DEXEC_ECONFIG, "%s: cannot read the configuration file: %s", path,
                strerror(errno));
        return NULL;
    }
    if (fstat(fileno(fp), &st) == 0 && S_ISDIR(st.st_mode)) {
        dx_fail(err, errlen, DEXEC_ECONFIG, "%s: cannot read the configuration file: %s", path,
                strerror(EISDIR));
        fclose(fp);
        return NULL;
    }
    for (;;) {
        size_t got;

        if (len + 4096 + 1 > cap) {
            char *nb;

            cap = cap ? cap * 2 : 8192;
            nb = realloc(buf, cap);
            if (nb == NULL) {
                dx_fail(err, errlen, DEXEC_ENOMEM, "%s: out of memory", path);
                goto fail;
            }
            buf = nb;
        }
        got = fread(buf + len, 1, cap - len - 1, fp);
        len += got;
        if (len > DX_CONFIG_MAX_BYTES) {
            dx_fail(err, errlen, DEXEC_ECONFIG,
                    "%s: larger than %u bytes: not a configuration file", path,
                    DX_CONFIG_MAX_BYTES);
            goto fail;
        }
        if (got == 0)
            break;
    }
    if (ferror(fp)) {
        dx_fail(err, errlen, DEXEC_ECONFIG, "%s: cannot read the configuration file: %s", path,
                strerror(errno));
        goto fail;
    }
    if (memchr(buf, '\0', len) != NULL) {
        dx_fail(err, errlen, DEXEC_ECONFIG, "%s: contains NUL bytes: not a configuration file",
                path);
        goto fail;
    }
    buf[len] = '\0';
    fclose(fp);
    return buf;
fail:
    free(buf);
    fclose(fp);
    return NULL;
}

/* The environment wins over the file. DEXEC_PLUGIN_PATH is not copied into
 * plugin_path: dx_plugin_dirs() reads it at search time, ahead of the
 * config; it is kept only so that the dump can say it is in effect. */
static dexec_status apply_env(dexec_config *cfg, char *err, size_t errlen)
{
    static const char *const canonical[] = {"error", "warn", "info", "debug"};
    struct dx_ref r;
    const char *s;
    dexec_status st;

    s = getenv("DEXEC_LOG_LEVEL");
    if (s != NULL && *s != '\0') {
        int l = dexec_log_level_parse(s);

        /* log.c accepts any case and "warning"; the key holds the canonical name */
        find_key(cfg, "log_level", &r);
        st = apply_text(&r, l >= 0 ? canonical[l] : s,
                        "env DEXEC_LOG_LEVEL", "env DEXEC_LOG_LEVEL", err, errlen);
        if (st != DEXEC_OK)
            return st;
    }
    s = getenv("DIFFUSION_WORKER_ACTOR_NAMES");
    if (s != NULL && *s != '\0') {
        find_key(cfg, "external.worker_names", &r);
        st = apply_text(&r, s,
                        "env DIFFUSION_WORKER_ACTOR_NAMES", "env DIFFUSION_WORKER_ACTOR_NAMES",
                        err, errlen);
        if (st != DEXEC_OK)
            return st;
    }
    /* the deployment files' variable (contrib/systemd, contrib/slurm): the
     * engine and `dexec actors` use the token the workers were given */
    s = getenv("DEXEC_TOKEN_FILE");
    if (s != NULL && *s != '\0') {
        find_key(cfg, "token_file", &r);
        st = apply_text(&r, s, "env DEXEC_TOKEN_FILE", "env DEXEC_TOKEN_FILE", err, errlen);
        if (st != DEXEC_OK)
            return st;
    }
    s = getenv("DEXEC_PLUGIN_PATH");
    if (s != NULL && *s != '\0') {
        cfg->env_plugin_path = strdup(s);
        if (cfg->env_plugin_path == NULL)
            return dx_fail(err, errlen, DEXEC_ENOMEM, "configuration: out of memory");
    }
    return DEXEC_OK;
}

dexec_status dexec_config_load(const char *path, dexec_config **out, char *err, size_t errlen)
{
    dexec_config *cfg;
    dexec_status st = DEXEC_OK;
    const char *level;

    if (out == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "dexec_config_load: out is required");
    *out = NULL;
    if (path == NULL) {
        path = getenv("DEXEC_CONFIG");
        if (path != NULL && *path == '\0')
            path = NULL;
    }
    cfg = config_defaults(err, errlen);
    if (cfg == NULL)
        return DEXEC_ENOMEM;
    if (path != NULL) {
        char *text = read_file(path, err, errlen), *dir;

        if (text == NULL) {
            dexec_config_free(cfg);
            return DEXEC_ECONFIG;
        }
        cfg->path = strdup(path);
        dir = strdup(path);
        if (cfg->path == NULL || dir == NULL) {
            st = dx_fail(err, errlen, DEXEC_ENOMEM, "%s: out of memory", path);
        } else {
            char *slash = strrchr(dir, '/');

            if (slash != NULL)
                slash[slash == dir] = '\0';
            st = parse_into(cfg, text, path, slash != NULL ? dir : NULL, err, errlen);
        }
        free(dir);
        free(text);
    } else {
        st = attach_configured(cfg, err, errlen);
    }
    if (st == DEXEC_OK)
        st = apply_env(cfg, err, errlen);
    if (st != DEXEC_OK) {
        dexec_config_free(cfg);
        return st;
    }
    if (dexec_config_get_string(cfg, "log_level", &level) == DEXEC_OK)
        dexec_log_set_level((dexec_log_level)dexec_log_level_parse(level));
    *out = cfg;
    return DEXEC_OK;
}

/* ---- access --------------------------------------------------------------------- */

static dexec_status lookup(const dexec_config *cfg, const char *key, enum dx_ctype type,
                           const struct dx_val **v)
{
    struct dx_ref r;

    if (cfg == NULL || key == NULL)
        return DEXEC_EINVAL;
    if (!find_key(cfg, key, &r))
        return DEXEC_ENOTFOUND;
    if (r.key->type != type)
        return DEXEC_EINVAL;
    *v = &r.slot->v;
    return DEXEC_OK;
}

dexec_status dexec_config_get_int(const dexec_config *cfg, const char *key, int64_t *out)
{
    const struct dx_val *v;
    dexec_status st = lookup(cfg, key, CT_INT, &v);

    if (st == DEXEC_OK && out != NULL)
        *out = v->i;
    return st;
}

dexec_status dexec_config_get_float(const dexec_config *cfg, const char *key, double *out)
{
    const struct dx_val *v;
    dexec_status st = lookup(cfg, key, CT_FLOAT, &v);

    if (st == DEXEC_OK && out != NULL)
        *out = v->f;
    return st;
}

dexec_status dexec_config_get_string(const dexec_config *cfg, const char *key, const char **out)
{
    const struct dx_val *v;
    dexec_status st = lookup(cfg, key, CT_STRING, &v);

    if (st == DEXEC_OK && out != NULL)
        *out = v->s;
    return st;
}

/* The core has no boolean key; plugins may declare some. */
dexec_status dexec_config_get_bool(const dexec_config *cfg, const char *key, int *out)
{
    const struct dx_val *v;
    dexec_status st = lookup(cfg, key, CT_BOOL, &v);

    if (st == DEXEC_OK && out != NULL)
        *out = (int)v->i;
    return st;
}

dexec_status dexec_config_get_list(const dexec_config *cfg, const char *key, size_t *n,
                                   const char *const **items)
{
    const struct dx_val *v;
    dexec_status st = lookup(cfg, key, CT_LIST, &v);

    if (st != DEXEC_OK)
        return st;
    if (n != NULL)
        *n = v->n;
    if (items != NULL)
        *items = (const char *const *)v->list;
    return DEXEC_OK;
}

dexec_status dexec_config_get_map(const dexec_config *cfg, const char *key,
                                  const dexec_value **out)
{
    const struct dx_val *v;
    dexec_status st = lookup(cfg, key, CT_MAP, &v);

    if (st == DEXEC_OK && out != NULL)
        *out = v->map;
    return st;
}

dexec_status dexec_config_set(dexec_config *cfg, const char *key, const char *value, char *err,
                              size_t errlen)
{
    struct dx_ref r;
    int known;
    dexec_status st;

    if (cfg == NULL || key == NULL || value == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "dexec_config_set: cfg, key and value are required");
    known = find_key(cfg, key, &r);
    if (!known && !is_group(cfg, key)) {
        int found = attach_owner(cfg, key, err, errlen);

        if (found < 0)
            return DEXEC_EPLUGIN;
        known = found && find_key(cfg, key, &r);
    }
    if (!known && is_group(cfg, key)) {
        size_t used = (size_t)snprintf(err, err ? errlen : 0,
                                       "%s: a group, not a key; set one of its keys:", key);

        for (size_t i = 0; err != NULL && key_at(cfg, i, &r) && used < errlen; i++)
            if (strncmp(r.key->name, key, strlen(key)) == 0 && r.key->name[strlen(key)] == '.')
                used += (size_t)snprintf(err + used, errlen - used, " %s", r.key->name);
        return DEXEC_ENOTFOUND;
    }
    if (!known)
        return unknown_key(cfg, err, errlen, DEXEC_ENOTFOUND, NULL, key);
    st = apply_text(&r, value, NULL, "set", err, errlen);
    /* a plugin the configuration now names brings its settings */
    if (st == DEXEC_OK && r.schema == NULL &&
        (strcmp(key, "distributed_executor_backend") == 0 ||
         strcmp(key, "external.discovery") == 0))
        st = attach_named(cfg, key, err, errlen);
    return st;
}

const char *dexec_config_origin(const dexec_config *cfg, const char *key)
{
    struct dx_ref r;

    if (cfg == NULL || key == NULL || !find_key(cfg, key, &r))
        return NULL;
    return r.slot->origin;
}

const char *dexec_config_path(const dexec_config *cfg)
{
    return cfg != NULL ? cfg->path : NULL;
}

dexec_status dexec_config_key_info(size_t index, const char **key, const char **type,
                                   const char **def, const char **range, const char **doc)
{
    return index < NKEYS
               ? dexec_config_schema_key(NULL, index, key, type, def, range, doc, NULL)
               : DEXEC_ENOTFOUND;
}

dexec_status dexec_config_schema_key(const dexec_config *cfg, size_t index, const char **key,
                                     const char **type, const char **def, const char **range,
                                     const char **doc, const char **plugin)
{
    struct dx_ref r;

    if (!key_at(cfg, index, &r))
        return DEXEC_ENOTFOUND;
    if (key != NULL)
        *key = r.key->name;
    if (type != NULL)
        *type = ctype_names[r.key->type];
    if (def != NULL)
        *def = r.key->def;
    if (range != NULL)
        *range = r.key->range;
    if (doc != NULL)
        *doc = r.key->doc;
    if (plugin != NULL)
        *plugin = r.schema != NULL ? r.schema->plugin : NULL;
    return DEXEC_OK;
}

/* ---- dump ------------------------------------------------------------------------- */

struct dx_buf {
    char *p;
    size_t len, cap;
    int oom;
};

static void buf_printf(struct dx_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void buf_printf(struct dx_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->oom)
        return;
    for (;;) {
        va_start(ap, fmt);
        /* no buffer yet: measure only (NULL + 0 is undefined behaviour) */
        n = vsnprintf(b->p != NULL ? b->p + b->len : NULL, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        {
            size_t ncap = (b->cap + (size_t)n + 1) * 2;
            char *np = realloc(b->p, ncap);

            if (np == NULL) {
                b->oom = 1;
                return;
            }
            b->p = np;
            b->cap = ncap;
        }
    }
}

/* A libconfig string literal. */
static void buf_quoted(struct dx_buf *b, const char *s)
{
    buf_printf(b, "\"");
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\')
            buf_printf(b, "\\%c", c);
        else if (c == '\n')
            buf_printf(b, "\\n");
        else if (c == '\t')
            buf_printf(b, "\\t");
        else if (c < 0x20 || c == 0x7f)
            buf_printf(b, "\\x%02x", c);
        else
            buf_printf(b, "%c", c);
    }
    buf_printf(b, "\"");
}

/* Text inside a '#' comment: a newline would end the comment early. */
static void buf_comment(struct dx_buf *b, const char *s)
{
    for (; *s != '\0'; s++)
        buf_printf(b, "%c", iscntrl((unsigned char)*s) ? '?' : *s);
}

/* The shortest text that reads back as the same double, always in float
 * syntax ("60.0", not "60", which libconfig would read as an integer). */
static void buf_double(struct dx_buf *b, double f)
{
    char t[64], *e;

    snprintf(t, sizeof(t), "%.15g", f);
    if (strtod(t, NULL) != f)
        snprintf(t, sizeof(t), "%.17g", f);
    if (strchr(t, '.') == NULL) {
        e = strchr(t, 'e');
        if (e != NULL) {
            memmove(e + 2, e, strlen(e) + 1);
            memcpy(e, ".0", 2);
        } else {
            strcat(t, ".0");
        }
    }
    buf_printf(b, "%s", t);
}

static void buf_int(struct dx_buf *b, int64_t i)
{
    /* libconfig 1.5 needs the L suffix to keep integers beyond 32 bits */
    buf_printf(b, "%lld%s", (long long)i, i > INT32_MAX || i < INT32_MIN ? "L" : "");
}

static void dump_value(struct dx_buf *b, const struct dx_key *k, const struct dx_val *v)
{
    char masked[1024];

    switch (k->type) {
    case CT_INT: buf_int(b, v->i); break;
    case CT_FLOAT: buf_double(b, v->f); break;
    case CT_STRING: buf_quoted(b, shown(k, v->s, masked, sizeof(masked))); break;
    case CT_BOOL: buf_printf(b, "%s", v->i ? "true" : "false"); break;
    case CT_LIST:
        buf_printf(b, "[");
        for (size_t i = 0; i < v->n; i++) {
            buf_printf(b, i ? ", " : " ");
            buf_quoted(b, v->list[i]);
        }
        buf_printf(b, v->n ? " ]" : "]");
        break;
    case CT_MAP:
        buf_printf(b, "{");
        for (size_t i = 0; i < v->map->u.map.len; i++) {
            const dexec_kv *kv = &v->map->u.map.items[i];

            buf_printf(b, " %s = ", kv->key);
            if (kv->val->type == DEXEC_VAL_STR)
                buf_quoted(b, kv->val->u.str.ptr);
            else if (kv->val->type == DEXEC_VAL_INT)
                buf_int(b, kv->val->u.i);
            else
                buf_double(b, dexec_value_as_float(kv->val, 0));
            buf_printf(b, ";");
        }
        buf_printf(b, v->map->u.map.len ? " }" : "}");
        break;
    }
}

/* Length of the group part of a dotted name ("discovery.redis" of
 * "discovery.redis.url"), 0 at top level. */
static size_t group_len(const char *name)
{
    const char *dot = strrchr(name, '.');

    return dot != NULL ? (size_t)(dot - name) : 0;
}

/* Number of groups in the first len bytes of a dotted group name. */
static size_t group_depth(const char *name, size_t len)
{
    size_t d = len > 0;

    for (size_t i = 0; i < len; i++)
        d += name[i] == '.';
    return d;
}

char *dexec_config_dump(const dexec_config *cfg)
{
    struct dx_buf b = {0};
    const char *open = ""; /* the group block being written: open_len bytes of a key name */
    size_t open_len = 0;
    struct dx_ref r;

    if (cfg == NULL)
        return NULL;
    buf_printf(&b, "# dexec configuration: effective values (");
    buf_comment(&b, cfg->path != NULL ? cfg->path : "defaults");
    buf_printf(&b, ", environment applied)\n");
    if (cfg->env_plugin_path != NULL) {
        buf_printf(&b, "# DEXEC_PLUGIN_PATH=");
        buf_comment(&b, cfg->env_plugin_path);
        buf_printf(&b, " is searched before plugin_path\n");
    }
    for (size_t i = 0; key_at(cfg, i, &r); i++) {
        const char *name = r.key->name;
        size_t glen = group_len(name), common = 0, depth;

        /* the longest whole-group prefix shared with the open block */
        for (size_t l = 1; l <= glen && l <= open_len; l++) {
            if (name[l - 1] != open[l - 1])
                break;
            if ((l == glen || name[l] == '.') && (l == open_len || open[l] == '.'))
                common = l;
        }
        for (depth = group_depth(open, open_len); depth > group_depth(name, common); depth--)
            buf_printf(&b, "%*s};\n", (int)(2 * (depth - 1)), "");
        if (r.schema != NULL && r.key == &r.schema->keys[0]) {
            buf_printf(&b, "%*s# %s: the settings of plugin %s (", (int)(2 * depth), "",
                       r.schema->section, r.schema->plugin);
            buf_comment(&b, r.schema->file);
            buf_printf(&b, ")\n");
        }
        for (size_t start = common ? common + 1 : 0; start < glen;) {
            size_t end = start;

            while (end < glen && name[end] != '.')
                end++;
            buf_printf(&b, "%*s%.*s = {\n", (int)(2 * depth), "", (int)(end - start),
                       name + start);
            depth++;
            start = end + 1;
        }
        open = name;
        open_len = glen;
        buf_printf(&b, "%*s%s = ", (int)(2 * depth), "", name + (glen ? glen + 1 : 0));
        dump_value(&b, r.key, &r.slot->v);
        if (strcmp(r.slot->origin, "default") == 0) {
            buf_printf(&b, ";  # default\n");
        } else {
            buf_printf(&b, ";  # from ");
            buf_comment(&b, r.slot->origin);
            buf_printf(&b, "\n");
        }
    }
    for (size_t depth = group_depth(open, open_len); depth > 0; depth--)
        buf_printf(&b, "%*s};\n", (int)(2 * (depth - 1)), "");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- plugin search path ----------------------------------------------------------- */

char **dx_plugin_dirs(const dexec_config *cfg)
{
    const char *env = getenv("DEXEC_PLUGIN_PATH");
    char **v = calloc(1, sizeof(char *));
    size_t n = 0, cap = 1;

    if (v == NULL)
        return NULL;
    for (const char *p = env; p != NULL && *p != '\0';) {
        size_t len = strcspn(p, ":");

        if (len > 0 && list_push(&v, &n, &cap, strndup(p, len)) != 0)
            goto oom;
        p += len + (p[len] == ':');
    }
    if (cfg != NULL) {
        const struct dx_val *pv = &core_slot(cfg, "plugin_path")->v;

        for (size_t i = 0; i < pv->n; i++)
            if (list_push(&v, &n, &cap, strdup(pv->list[i])) != 0)
                goto oom;
    }
    if (list_push(&v, &n, &cap, strdup(DEXEC_PLUGINDIR)) != 0)
        goto oom;
    return v;
oom:
    dx_strv_free(v);
    return NULL;
}
