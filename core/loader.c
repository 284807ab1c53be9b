/*
 * loader.c - finds, opens and checks plugins (executor backends, discovery
 * plugins and devices).
 *
 * A plugin is opened with dlopen(RTLD_NOW | RTLD_LOCAL) and accepted only
 * when its descriptor passes every check in plugin.h. dlopen runs the
 * object's constructors, so the checks that the descriptor's integers
 * decide (ABI version, size, kind, and that the symbol is exported at all)
 * are made first on the file itself (core/elf.c): a plugin built for
 * another ABI or meant as another kind never has any of its code run. The
 * name and the ops table are pointers that exist only once the object is
 * relocated, so they are checked after dlopen: a plugin that fails only
 * those has had its constructors run (and no other function called).
 * Opened objects are cached by real path and stay mapped for the life of
 * the process: a plugin may leave threads or destructors behind, and
 * unmapping their code under them would crash the host. DEXEC_PLUGIN_UNLOAD=1
 * makes dexec_plugin_release() unload objects nobody holds any more, so
 * leak checkers see a clean exit.
 */
#include "config.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <dexec/device.h>

#include "internal.h"

/* Plugins and their names are short; anything longer is a mistake. */
#define DX_PLUGIN_NAME_MAX 64

/* Upper bound for descriptor and ops sizes: a plugin that claims more is
 * corrupt, not from the future (new fields take the reserved space first). */
#define DX_STRUCT_SIZE_MAX 4096

/* One opened shared object, shared by every handle that loaded it. */
typedef struct dx_object {
    struct dx_object *next;
    char *realpath;
    void *dl;
    const dexec_plugin_desc *desc;
    unsigned refs;
} dx_object;

struct dexec_plugin_handle {
    dx_object *obj;
    char *file; /* the path it was found at, as searched or given */
};

/* dlopen() may run constructors that load further libraries, but never a
 * dexec plugin through us, so a plain mutex is enough. */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static dx_object *cache;

static const char *kind_name(uint32_t kind)
{
    switch (kind) {
    case DEXEC_PLUGIN_EXECUTOR: return "executor";
    case DEXEC_PLUGIN_DISCOVERY: return "discovery";
    case DEXEC_PLUGIN_DEVICE: return "device";
    }
    return NULL;
}

/* "an executor plugin", "a discovery plugin", "a device plugin" */
static const char *kind_phrase(uint32_t kind)
{
    switch (kind) {
    case DEXEC_PLUGIN_EXECUTOR: return "an executor plugin";
    case DEXEC_PLUGIN_DISCOVERY: return "a discovery plugin";
    case DEXEC_PLUGIN_DEVICE: return "a device plugin";
    }
    return "a plugin of unknown kind";
}

/* The setting that names a plugin of this kind. */
static const char *kind_setting(uint32_t kind)
{
    switch (kind) {
    case DEXEC_PLUGIN_EXECUTOR: return "distributed_executor_backend";
    case DEXEC_PLUGIN_DISCOVERY: return "external.discovery";
    default: return "device";
    }
}

static const char *kind_enum(uint32_t kind)
{
    switch (kind) {
    case DEXEC_PLUGIN_EXECUTOR: return "DEXEC_PLUGIN_EXECUTOR";
    case DEXEC_PLUGIN_DISCOVERY: return "DEXEC_PLUGIN_DISCOVERY";
    default: return "DEXEC_PLUGIN_DEVICE";
    }
}

static int valid_name(const char *name)
{
    size_t n = 0;

    for (const char *p = name; *p != '\0'; p++, n++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return 0;
    return n > 0 && n <= DX_PLUGIN_NAME_MAX;
}

static int unload_requested(void)
{
    const char *v = getenv("DEXEC_PLUGIN_UNLOAD");

    return v != NULL && strcmp(v, "1") == 0;
}

/* A function of an ops table the core calls, by name and offset. */
typedef struct ops_fn {
    const char *name;
    size_t offset;
} ops_fn;

static const ops_fn exec_fns[] = {
    {"create", offsetof(dexec_executor_ops, create)},
    {"num_ranks", offsetof(dexec_executor_ops, num_ranks)},
    {"collective_rpc", offsetof(dexec_executor_ops, collective_rpc)},
    {"add_requests", offsetof(dexec_executor_ops, add_requests)},
    {"check_health", offsetof(dexec_executor_ops, check_health)},
    {"shutdown", offsetof(dexec_executor_ops, shutdown)},
    {NULL, 0},
};
static const ops_fn disc_fns[] = {
    {"open", offsetof(dexec_discovery_ops, open)},
    {"register_actor", offsetof(dexec_discovery_ops, register_actor)},
    {"heartbeat", offsetof(dexec_discovery_ops, heartbeat)},
    {"resolve", offsetof(dexec_discovery_ops, resolve)},
    {"list", offsetof(dexec_discovery_ops, list)},
    {"deregister", offsetof(dexec_discovery_ops, deregister)},
    {"close", offsetof(dexec_discovery_ops, close)},
    {NULL, 0},
};
static const ops_fn device_fns[] = {
    {"probe", offsetof(dexec_device_ops, probe)},
    {"open", offsetof(dexec_device_ops, open)},
    {NULL, 0},
};

/* Checks the ops table of a plugin: present, of a plausible size, every
 * function the core calls set. */
static dexec_status check_ops(const char *path, const dexec_plugin_desc *d, char *err,
                              size_t errlen)
{
    const char *kind = kind_name(d->kind);
    const ops_fn *fns;
    size_t min_size;
    uint32_t size;

    if (d->ops == NULL)
        return dx_fail(err, errlen, DEXEC_EPLUGIN, "plugin %s: descriptor has no ops table", path);
    switch (d->kind) {
    case DEXEC_PLUGIN_EXECUTOR:
        min_size = offsetof(dexec_executor_ops, reserved);
        fns = exec_fns;
        break;
    case DEXEC_PLUGIN_DISCOVERY:
        min_size = offsetof(dexec_discovery_ops, reserved);
        fns = disc_fns;
        break;
    default:
        min_size = offsetof(dexec_device_ops, reserved);
        fns = device_fns;
        break;
    }
    /* Every ops table starts with its struct_size. */
    size = *(const uint32_t *)d->ops;
    if (size < min_size || size > DX_STRUCT_SIZE_MAX)
        return dx_fail(err, errlen, DEXEC_EABI,
                       "plugin %s: %s ops table size %u, this dexec expects at least %zu: "
                       "rebuild the plugin against dexec %d",
                       path, kind, size, min_size, DEXEC_ABI_MAJOR);
    for (const ops_fn *f = fns; f->name != NULL; f++) {
        void (*fn)(void);

        memcpy(&fn, (const char *)d->ops + f->offset, sizeof(fn));
        if (fn == NULL)
            return dx_fail(err, errlen, DEXEC_EPLUGIN,
                           "plugin %s: %s operation '%s' is missing (NULL in its ops table): "
                           "every operation is required (<dexec/plugin.h>); one the plugin "
                           "cannot do returns DEXEC_ENOTSUP with a message",
                           path, kind, f->name);
    }
    return DEXEC_OK;
}

/* The oldest minor of ABI 1 whose plugins this core loads. */
#define DX_ABI_MINOR_OLDEST 1

/* The descriptor's head: its integers, which the file holds as they will
 * be in memory (the pointers after them are relocated by dlopen). */
typedef struct desc_head {
    uint32_t abi_major, abi_minor, struct_size, kind;
} desc_head;

/* The checks plugin.h promises that the head alone decides. */
static dexec_status check_head(const char *path, const desc_head *d, dexec_plugin_kind kind,
                               char *err, size_t errlen)
{
    if (d->abi_major != DEXEC_ABI_MAJOR)
        return dx_fail(err, errlen, DEXEC_EABI,
                       "plugin %s: ABI %u.%u, this dexec speaks %d.%d: "
                       "rebuild the plugin against dexec %d",
                       path, d->abi_major, d->abi_minor, DEXEC_ABI_MAJOR, DEXEC_ABI_MINOR,
                       DEXEC_ABI_MAJOR);
    if (d->abi_minor > DEXEC_ABI_MINOR)
        return dx_fail(err, errlen, DEXEC_EABI,
                       "plugin %s: ABI %u.%u is newer than this dexec's %d.%d: "
                       "upgrade dexec, or rebuild the plugin against this one",
                       path, d->abi_major, d->abi_minor, DEXEC_ABI_MAJOR, DEXEC_ABI_MINOR);
    /* 1.1 put struct_size in front of the request, output, image, timings
     * and actor-info structs: a 1.0 plugin would read them at the wrong
     * offsets, so it is refused before any of its code runs. */
    if (d->abi_minor < DX_ABI_MINOR_OLDEST)
        return dx_fail(err, errlen, DEXEC_EABI,
                       "plugin %s: ABI %u.%u predates the sized request, output and actor "
                       "structs of ABI %d.%d: rebuild the plugin against this dexec",
                       path, d->abi_major, d->abi_minor, DEXEC_ABI_MAJOR, DX_ABI_MINOR_OLDEST);
    if (d->struct_size < sizeof(dexec_plugin_desc) || d->struct_size > DX_STRUCT_SIZE_MAX)
        return dx_fail(err, errlen, DEXEC_EABI,
                       "plugin %s: descriptor size %u, this dexec expects at least %zu: "
                       "rebuild the plugin against dexec %d",
                       path, d->struct_size, sizeof(dexec_plugin_desc), DEXEC_ABI_MAJOR);
    if (kind_name(d->kind) == NULL)
        return dx_fail(err, errlen, DEXEC_EPLUGIN,
                       "plugin %s: unknown plugin kind %u (executor is %d, discovery is %d, "
                       "device is %d)",
                       path, d->kind, DEXEC_PLUGIN_EXECUTOR, DEXEC_PLUGIN_DISCOVERY,
                       DEXEC_PLUGIN_DEVICE);
    if (kind != 0 && d->kind != (uint32_t)kind)
        return dx_fail(err, errlen, DEXEC_EPLUGIN,
                       "plugin %s is %s, not %s: %s is named by %s (or, if this is the plugin "
                       "you meant, set its kind in the descriptor to %s)",
                       path, kind_phrase(d->kind), kind_phrase((uint32_t)kind),
                       kind_phrase(d->kind), kind_setting(d->kind), kind_enum((uint32_t)kind));
    return DEXEC_OK;
}

/* Everything plugin.h promises about a descriptor. name is NULL when the
 * plugin was named by path. */
static dexec_status check_desc(const char *path, const dexec_plugin_desc *d,
                               dexec_plugin_kind kind, const char *name, char *err, size_t errlen)
{
    desc_head h = {d->abi_major, d->abi_minor, d->struct_size, d->kind};
    dexec_status st = check_head(path, &h, kind, err, errlen);

    if (st != DEXEC_OK)
        return st;
    if (d->name == NULL || !valid_name(d->name))
        return dx_fail(err, errlen, DEXEC_EPLUGIN,
                       "plugin %s: descriptor name '%s' is not a valid plugin name ([a-z0-9_]+)",
                       path, d->name != NULL ? d->name : "(null)");
    if (name != NULL && strcmp(d->name, name) != 0)
        return dx_fail(err, errlen, DEXEC_EPLUGIN,
                       "plugin %s calls itself '%s', but was loaded as '%s': "
                       "its file should be named dexec_%s.so",
                       path, d->name, name, d->name);
    st = check_ops(path, d, err, errlen);
    return st;
}

static dexec_status no_symbol(const char *path, int hidden, char *err, size_t errlen)
{
    if (hidden)
        return dx_fail(err, errlen, DEXEC_EPLUGIN,
                       "plugin %s does not export its " DEXEC_PLUGIN_SYMBOL " symbol (it is "
                       "defined with hidden visibility, as -fvisibility=hidden makes it): "
                       "declare it DEXEC_PLUGIN_EXPORT const dexec_plugin_desc "
                       DEXEC_PLUGIN_SYMBOL,
                       path);
    return dx_fail(err, errlen, DEXEC_EPLUGIN,
                   "plugin %s is not a dexec plugin (no " DEXEC_PLUGIN_SYMBOL " symbol): "
                   "define DEXEC_PLUGIN_EXPORT const dexec_plugin_desc " DEXEC_PLUGIN_SYMBOL
                   " (DEXEC_PLUGIN_EXPORT exports it under -fvisibility=hidden)",
                   path);
}

/* Checks the descriptor's head as the file holds it, before dlopen runs
 * any of the plugin's code (its constructors): a plugin of another ABI or
 * kind, or with no exported descriptor, is refused unopened. A file that
 * is not an ELF object of this host is left to dlopen to describe. */
static dexec_status check_file(const char *path, dexec_plugin_kind kind, char *err,
                               size_t errlen)
{
    desc_head h;
    int hidden, rc = dx_elf_symbol_head(path, DEXEC_PLUGIN_SYMBOL, &h, sizeof(h), &hidden);

    if (rc < 0)
        return DEXEC_OK;
    if (rc == 1)
        return no_symbol(path, hidden, err, errlen);
    return check_head(path, &h, kind, err, errlen);
}

/* Opens path (or finds it in the cache) and returns its object with a
 * reference taken. Called with cache_lock held. */
static dexec_status open_object(const char *path, dexec_plugin_kind kind, dx_object **out,
                                char *err, size_t errlen)
{
    dexec_status st;
    char real[PATH_MAX];
    const char *dlerr;
    dx_object *o;
    void *dl, *sym;

    if (realpath(path, real) == NULL) {
        if (errno == ENOENT || errno == ENOTDIR)
            return dx_fail(err, errlen, DEXEC_ENOTFOUND, "plugin %s: %s", path, strerror(errno));
        return dx_fail(err, errlen, DEXEC_EPLUGIN, "plugin %s: %s", path, strerror(errno));
    }
    for (o = cache; o != NULL; o = o->next) {
        if (strcmp(o->realpath, real) == 0) {
            o->refs++;
            *out = o;
            return DEXEC_OK;
        }
    }

    st = check_file(path, kind, err, errlen);
    if (st != DEXEC_OK)
        return st;
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        /* dlerror() text belongs to the next dl* call: copy it now. */
        dlerr = dlerror();
        return dx_fail(err, errlen, DEXEC_EPLUGIN, "plugin %s: cannot be loaded: %s", path,
                       dlerr != NULL ? dlerr : "unknown dlopen error");
    }
    dlerror();
    sym = dlsym(dl, DEXEC_PLUGIN_SYMBOL);
    if (sym == NULL) {
        if (unload_requested())
            dlclose(dl);
        return no_symbol(path, 0, err, errlen);
    }
    o = calloc(1, sizeof(*o));
    if (o == NULL || (o->realpath = strdup(real)) == NULL) {
        free(o);
        if (unload_requested())
            dlclose(dl);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "plugin %s: out of memory", path);
    }
    o->dl = dl;
    o->desc = sym;
    o->refs = 1;
    o->next = cache;
    cache = o;
    *out = o;
    return DEXEC_OK;
}

/* Drops a reference; the last one unloads the object only on request.
 * Called with cache_lock held. */
static void put_object(dx_object *o)
{
    if (--o->refs > 0 || !unload_requested())
        return;
    for (dx_object **pp = &cache; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == o) {
            *pp = o->next;
            break;
        }
    }
    dlclose(o->dl);
    free(o->realpath);
    free(o);
}

static dexec_status load_file(const char *path, dexec_plugin_kind kind, const char *name,
                              dexec_plugin_handle **out, char *err, size_t errlen)
{
    dexec_plugin_handle *p;
    dx_object *o = NULL;
    dexec_status st;

    pthread_mutex_lock(&cache_lock);
    st = open_object(path, kind, &o, err, errlen);
    if (st == DEXEC_OK) {
        st = check_desc(path, o->desc, kind, name, err, errlen);
        if (st != DEXEC_OK)
            put_object(o);
    }
    pthread_mutex_unlock(&cache_lock);
    if (st != DEXEC_OK)
        return st;

    p = calloc(1, sizeof(*p));
    if (p == NULL || (p->file = strdup(path)) == NULL) {
        free(p);
        pthread_mutex_lock(&cache_lock);
        put_object(o);
        pthread_mutex_unlock(&cache_lock);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "plugin %s: out of memory", path);
    }
    p->obj = o;
    *out = p;
    return DEXEC_OK;
}

/* Appends "s" to buf at *len, truncating silently (the message is for
 * humans and ends with the directories, the least important part). */
static void append(char *buf, size_t size, size_t *len, const char *s)
{
    int n;

    if (*len >= size)
        return;
    n = snprintf(buf + *len, size - *len, "%s", s);
    if (n > 0)
        *len += (size_t)n < size - *len ? (size_t)n : size - *len - 1;
}

static dexec_status not_found(const char *name, const char *file, char **dirs, char *err,
                              size_t errlen)
{
    char list[2048];
    size_t len = 0;

    list[0] = '\0';
    for (size_t i = 0; dirs[i] != NULL; i++) {
        if (i > 0)
            append(list, sizeof(list), &len, ", ");
        append(list, sizeof(list), &len, dirs[i]);
    }
    if (len == 0)
        append(list, sizeof(list), &len, "(no directories)");
    return dx_fail(err, errlen, DEXEC_ENOTFOUND,
                   "plugin '%s' not found: no %s in %s "
                   "(set DEXEC_PLUGIN_PATH or plugin_path, or give the plugin's path)",
                   name, file, list);
}

dexec_status dexec_plugin_load(const char *name_or_path, dexec_plugin_kind kind,
                               const dexec_config *cfg, dexec_plugin_handle **out, char *err,
                               size_t errlen)
{
    char file[DX_PLUGIN_NAME_MAX + 16];
    const char *name;
    char **dirs;
    int searched_all = 1;
    dexec_status st;

    if (out == NULL || name_or_path == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "dexec_plugin_load: %s is NULL",
                       out == NULL ? "out" : "name_or_path");
    *out = NULL;
    if (kind != 0 && kind_name(kind) == NULL)
        return dx_fail(err, errlen, DEXEC_EINVAL, "dexec_plugin_load: unknown plugin kind %d",
                       (int)kind);
    if (strchr(name_or_path, '/') != NULL)
        return load_file(name_or_path, kind, NULL, out, err, errlen);

    name = name_or_path;
    if (strcmp(name, "external_launcher") == 0)
        name = "external";
    if (!valid_name(name))
        return dx_fail(err, errlen, DEXEC_EPLUGIN,
                       "invalid plugin name '%s': a name is 1 to %d of [a-z0-9_] "
                       "(a value containing '/' is a path)",
                       name, DX_PLUGIN_NAME_MAX);
    snprintf(file, sizeof(file), "dexec_%s.so", name);

    dirs = dx_plugin_dirs(cfg);
    if (dirs == NULL)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "plugin '%s': out of memory", name);
    st = DEXEC_ENOTFOUND;
    for (size_t i = 0; dirs[i] != NULL; i++) {
        struct stat sb;
        char *path;

        if (asprintf(&path, "%s/%s", dirs[i], file) < 0) {
            st = dx_fail(err, errlen, DEXEC_ENOMEM, "plugin '%s': out of memory", name);
            searched_all = 0;
            break;
        }
        /* The first directory holding the file wins, even when that file is
         * broken: falling through to another copy would hide the problem. */
        if (stat(path, &sb) == 0) {
            st = load_file(path, kind, name, out, err, errlen);
            searched_all = 0;
            free(path);
            break;
        }
        free(path);
    }
    if (searched_all)
        st = not_found(name, file, dirs, err, errlen);
    dx_strv_free(dirs);
    return st;
}

const dexec_plugin_desc *dexec_plugin_descriptor(const dexec_plugin_handle *p)
{
    return p != NULL ? p->obj->desc : NULL;
}

const char *dexec_plugin_file(const dexec_plugin_handle *p)
{
    return p != NULL ? p->file : NULL;
}

void dexec_plugin_release(dexec_plugin_handle *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&cache_lock);
    put_object(p->obj);
    pthread_mutex_unlock(&cache_lock);
    free(p->file);
    free(p);
}

static int plugin_file_name(const struct dirent *e)
{
    size_t len = strlen(e->d_name);

    return len > 9 && strncmp(e->d_name, "dexec_", 6) == 0 &&
           strcmp(e->d_name + len - 3, ".so") == 0;
}

void dx_plugin_foreach(const dexec_config *cfg,
                       int (*fn)(const dexec_plugin_desc *d, const char *file, void *user),
                       void *user)
{
    char **dirs = dx_plugin_dirs(cfg), **seen = NULL;
    size_t nseen = 0;
    int stop = 0;

    for (size_t i = 0; dirs != NULL && dirs[i] != NULL && !stop; i++) {
        struct dirent **names = NULL;
        int n = scandir(dirs[i], &names, plugin_file_name, alphasort);

        for (int k = 0; k < n; k++) {
            const char *file = names[k]->d_name;
            char name[DX_PLUGIN_NAME_MAX + 1], *path = NULL, **grown;
            size_t nlen = strlen(file) - 9; /* "dexec_" NAME ".so" */
            dexec_plugin_handle *h = NULL;
            int dup = 0;

            for (size_t j = 0; j < nseen && !dup; j++)
                dup = strcmp(seen[j], file) == 0;
            /* checked like a bare name: the descriptor must carry the file's name */
            if (!stop && !dup && nlen <= DX_PLUGIN_NAME_MAX) {
                memcpy(name, file + 6, nlen);
                name[nlen] = '\0';
                if (asprintf(&path, "%s/%s", dirs[i], file) < 0)
                    path = NULL;
                if (path != NULL && valid_name(name) &&
                    load_file(path, 0, name, &h, NULL, 0) == DEXEC_OK) {
                    stop = fn(h->obj->desc, path, user);
                    dexec_plugin_release(h);
                }
            }
            free(path);
            grown = realloc(seen, (nseen + 1) * sizeof(*seen));
            if (grown != NULL && (grown[nseen] = strdup(file)) != NULL)
                nseen++;
            if (grown != NULL)
                seen = grown;
            free(names[k]);
        }
        free(names);
    }
    for (size_t j = 0; j < nseen; j++)
        free(seen[j]);
    free(seen);
    dx_strv_free(dirs);
}

char **dexec_plugin_search_path(const dexec_config *cfg)
{
    return dx_plugin_dirs(cfg);
}

void dexec_plugin_search_path_free(char **dirs)
{
    dx_strv_free(dirs);
}

/* The 1.1 fields exist in every 1.x entry, so clearing needs no size check. */
void dexec_actor_info_clear(dexec_actor_info *a)
{
    uint32_t size;

    if (a == NULL)
        return;
    size = a->struct_size;
    free(a->name);
    free(a->address);
    free(a->host);
    free(a->instance);
    dexec_value_free(a->meta);
    dexec_actor_info_init_sized(a, size);
}

void dexec_actor_info_init_sized(dexec_actor_info *a, size_t struct_size)
{
    if (a == NULL)
        return;
    memset(a, 0, sizeof(*a));
    a->struct_size = (uint32_t)struct_size;
}
