/* cmd_plugins.c - "dexec plugins": lists every plugin on the search path, as
 * the loader sees it, so a deployer can tell which file a backend name
 * resolves to and why a file is refused. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <dexec/device.h>
#include <dexec/plugin.h>

#include "cli.h"
#include "paths.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec plugins [-c CONFIG]\n\n"
            "Lists every dexec_NAME.so in the plugin search path, directory by directory\n"
            "in search order: $DEXEC_PLUGIN_PATH, the configuration's plugin_path, then\n"
            "the installed plugin directory (%s). For each file: kind, name,\n"
            "version, plugin ABI and path; a name found again in a later directory is\n"
            "marked as shadowed (the first one is used); a file that cannot be loaded\n"
            "is shown with the loader's reason. A device plugin (an op backend such as\n"
            "dexec_cuda.so) is also probed: \"status: usable, N device(s)\" or \"status:\n"
            "no usable device: REASON\" (no driver, no GPU, ...).\n\n"
            "Options:\n"
            "  -c, --config FILE  read plugin_path from FILE (default: $DEXEC_CONFIG)\n"
            "  -h, --help         show this help\n\n"
            "Exit status: 0 when every file loads, 1 when some file cannot be loaded or\n"
            "the configuration is bad, 2 on a usage error.\n",
            DEXEC_PLUGINDIR);
}

/* Names seen so far, with the file that provides each. */
typedef struct seen {
    char **names;
    char **files;
    size_t n, cap;
} seen;

static const char *seen_find(const seen *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->names[i], name) == 0)
            return s->files[i];
    return NULL;
}

static int seen_add(seen *s, const char *name, const char *file)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        char **names, **files;

        if ((names = realloc(s->names, cap * sizeof(*names))) == NULL)
            return -1;
        s->names = names;
        if ((files = realloc(s->files, cap * sizeof(*files))) == NULL)
            return -1;
        s->files = files;
        s->cap = cap;
    }
    s->names[s->n] = strdup(name);
    s->files[s->n] = strdup(file);
    if (s->names[s->n] == NULL || s->files[s->n] == NULL) {
        free(s->names[s->n]);
        free(s->files[s->n]);
        return -1;
    }
    s->n++;
    return 0;
}

static void seen_free(seen *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->names[i]);
        free(s->files[i]);
    }
    free(s->names);
    free(s->files);
}

static int is_plugin_file(const struct dirent *d)
{
    size_t len = strlen(d->d_name);

    return len > strlen("dexec_.so") && strncmp(d->d_name, "dexec_", 6) == 0 &&
           strcmp(d->d_name + len - 3, ".so") == 0;
}

static const char *kind_label(uint32_t kind)
{
    switch (kind) {
    case DEXEC_PLUGIN_EXECUTOR: return "executor";
    case DEXEC_PLUGIN_DISCOVERY: return "discovery";
    default: return "device";
    }
}

/* A device plugin that loads may still have no hardware to drive: its probe
 * says so. Not a failure of the listing (a CPU host with the CUDA module
 * installed is a normal setup: device = auto uses the CPU there). */
static void print_device_status(const dexec_plugin_desc *d)
{
    const dexec_device_ops *ops = d->ops;
    char reason[512] = "";
    int n = ops->probe(reason, sizeof(reason));

    if (n > 0)
        printf("             status: usable, %d device(s)\n", n);
    else
        printf("             status: no usable device: %s\n",
               reason[0] != '\0' ? reason : "(the plugin gave no reason)");
}

/* Lists one file; returns 0 when it loads, 1 when it does not. */
static int list_file(const char *path, const char *fname, seen *names)
{
    char err[1024], name[256];
    const char *shadow;
    const dexec_plugin_desc *d;
    dexec_plugin_handle *p = NULL;
    size_t len = strlen(fname) - strlen("dexec_") - strlen(".so");
    int failed = 0;

    snprintf(name, sizeof(name), "%.*s", (int)len, fname + strlen("dexec_"));
    /* The first file of a name is the one loading by name uses, broken or
     * not, so it shadows later ones either way. */
    shadow = seen_find(names, name);
    if (shadow == NULL && seen_add(names, name, path) != 0) {
        fprintf(stderr, "dexec plugins: out of memory\n");
        return 1;
    }
    if (dexec_plugin_load(path, 0, NULL, &p, err, sizeof(err)) != DEXEC_OK) {
        printf("  %-9s  %-18s %-10s %-5s %s\n", "error", name, "-", "-", path);
        printf("             %s\n", err);
        if (shadow != NULL)
            printf("             (shadowed by %s)\n", shadow);
        return 1;
    }
    d = dexec_plugin_descriptor(p);
    printf("  %-9s  %-18s %-10s %u.%-3u %s\n", kind_label(d->kind), d->name,
           d->version != NULL ? d->version : "?", d->abi_major, d->abi_minor, path);
    if (d->description != NULL && d->description[0] != '\0')
        printf("             %s\n", d->description);
    if (d->kind == DEXEC_PLUGIN_DEVICE && shadow == NULL)
        print_device_status(d);
    if (shadow != NULL)
        printf("             (shadowed by %s: that one is used for '%s')\n", shadow, name);
    if (strcmp(d->name, name) != 0) {
        printf("             refused when loaded by name: the descriptor says '%s', the file "
               "name says '%s'\n",
               d->name, name);
        failed = 1;
    }
    dexec_plugin_release(p);
    return failed;
}

static int list_dir(const char *dir, seen *names, int *nfiles)
{
    struct dirent **ents = NULL;
    char *path;
    int n, failed = 0;

    n = scandir(dir, &ents, is_plugin_file, alphasort);
    if (n < 0) {
        /* A missing directory is normal (nothing installed yet, a path
         * for another host); anything else is worth the error text. */
        if (errno == ENOENT)
            printf("%s: (does not exist)\n", dir);
        else
            printf("%s: (cannot be read: %s)\n", dir, strerror(errno));
        return 0;
    }
    printf("%s:%s\n", dir, n == 0 ? " (no plugins)" : "");
    for (int i = 0; i < n; i++) {
        if (asprintf(&path, "%s/%s", dir, ents[i]->d_name) < 0) {
            fprintf(stderr, "dexec plugins: out of memory\n");
            failed = 1;
        } else {
            failed |= list_file(path, ents[i]->d_name, names);
            free(path);
        }
        free(ents[i]);
        (*nfiles)++;
    }
    free(ents);
    return failed;
}

int cmd_plugins(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    dexec_config *cfg;
    seen names = {0};
    char **dirs;
    int c, failed = 0, nfiles = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config_path = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dexec plugins: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    cfg = cli_load_config(config_path);
    if (cfg == NULL)
        return CLI_USAGE;
    dirs = dexec_plugin_search_path(cfg);
    if (dirs == NULL) {
        fprintf(stderr, "dexec plugins: out of memory\n");
        dexec_config_free(cfg);
        return 1;
    }
    printf("Plugin search path (first match wins), ABI %d.%d:\n", DEXEC_ABI_MAJOR,
           DEXEC_ABI_MINOR);
    for (size_t i = 0; dirs[i] != NULL; i++)
        failed |= list_dir(dirs[i], &names, &nfiles);
    if (nfiles == 0)
        printf("No plugins found: set DEXEC_PLUGIN_PATH or plugin_path.\n");
    dexec_plugin_search_path_free(dirs);
    seen_free(&names);
    dexec_config_free(cfg);
    return failed ? 1 : 0;
}
