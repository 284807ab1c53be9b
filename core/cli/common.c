/* common.c - what the engine-driving subcommands share: the options that
 * pick a configuration, a backend and a device, and opening the engine. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

const char cli_engine_opts_help[] =
    "  -c, --config FILE       configuration file (default: $DEXEC_CONFIG, else defaults)\n"
    "      --backend NAME      executor: mp, ray_actor, external, or a plugin path\n"
    "      --device DEV        auto, cpu or cuda\n"
    "      --dtype TYPE        weights on the device: float32, float16 or bfloat16\n"
    "                          (half types: CUDA only)\n"
    "      --num-gpus N        number of ranks\n"
    "  -m, --model NAME|PATH   model (a bundled name or a .safetensors path)\n"
    "      --set KEY=VALUE     any other configuration key (repeatable, at most 16)\n";

static int take(int argc, char **argv, int *i, const char **dst)
{
    const char *arg = argv[*i], *eq = strchr(arg, '=');

    if (arg[1] == '-' && eq != NULL) {
        *dst = eq + 1;
        return 1;
    }
    if (*i + 1 >= argc) {
        fprintf(stderr, "dexec: option %s needs a value\n", arg);
        return -1;
    }
    *dst = argv[++*i];
    return 1;
}

static int is_opt(const char *arg, const char *s, const char *l)
{
    size_t n = strlen(l);

    return (s != NULL && strcmp(arg, s) == 0) || strcmp(arg, l) == 0 ||
           (strncmp(arg, l, n) == 0 && arg[n] == '=');
}

int cli_engine_opt(cli_engine_opts *o, int argc, char **argv, int *i)
{
    const char *a = argv[*i];

    if (is_opt(a, "-c", "--config"))
        return take(argc, argv, i, &o->config);
    if (is_opt(a, NULL, "--backend"))
        return take(argc, argv, i, &o->backend);
    if (is_opt(a, NULL, "--device"))
        return take(argc, argv, i, &o->device);
    if (is_opt(a, NULL, "--dtype"))
        return take(argc, argv, i, &o->dtype);
    if (is_opt(a, NULL, "--num-gpus"))
        return take(argc, argv, i, &o->num_gpus);
    if (is_opt(a, "-m", "--model"))
        return take(argc, argv, i, &o->model);
    if (is_opt(a, NULL, "--set")) {
        const char *kv;
        char *eq;

        if (take(argc, argv, i, &kv) < 0)
            return -1;
        eq = strchr(kv, '=');
        if (eq == NULL || eq == kv) {
            fprintf(stderr, "dexec: --set expects KEY=VALUE, got '%s'\n", kv);
            return -1;
        }
        if (o->nset >= (int)(sizeof(o->set_key) / sizeof(o->set_key[0]))) {
            fprintf(stderr, "dexec: too many --set options (at most %zu)\n",
                    sizeof(o->set_key) / sizeof(o->set_key[0]));
            return -1;
        }
        *eq = '\0'; /* argv's own storage: the key ends here */
        o->set_key[o->nset] = kv;
        o->set_val[o->nset++] = eq + 1;
        return 1;
    }
    return 0;
}

dexec_config *cli_engine_config(const cli_engine_opts *o)
{
    const char *keys[] = {"distributed_executor_backend", "device", "dtype", "num_gpus",
                          "model"};
    const char *vals[] = {o->backend, o->device, o->dtype, o->num_gpus, o->model};
    dexec_config *cfg = cli_load_config(o->config);
    char err[2048];

    if (cfg == NULL)
        return NULL;
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        if (vals[k] != NULL && dexec_config_set(cfg, keys[k], vals[k], err, sizeof(err)) != DEXEC_OK) {
            fprintf(stderr, "dexec: %s\n", err);
            dexec_config_free(cfg);
            return NULL;
        }
    }
    for (int k = 0; k < o->nset; k++) {
        if (dexec_config_set(cfg, o->set_key[k], o->set_val[k], err, sizeof(err)) != DEXEC_OK) {
            fprintf(stderr, "dexec: %s\n", err);
            dexec_config_free(cfg);
            return NULL;
        }
    }
    return cfg;
}

dexec_engine *cli_open_engine(const cli_engine_opts *o, int *exit_status)
{
    dexec_config *cfg = cli_engine_config(o);
    dexec_engine *e = NULL;
    char err[2048];

    *exit_status = CLI_USAGE;
    if (cfg == NULL)
        return NULL;
    *exit_status = CLI_FAILED;
    if (dexec_engine_create(cfg, &e, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec: %s\n", err);
        e = NULL;
    } else {
        *exit_status = 0;
    }
    dexec_config_free(cfg);
    return e;
}

int cli_check_out_dir(const char *what, const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[4096];
    struct stat sb;

    if (slash == NULL)
        strcpy(dir, ".");
    else if (slash == path)
        strcpy(dir, "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    if (stat(dir, &sb) != 0) {
        fprintf(stderr, "%s %s: directory %s: %s\n", what, path, dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "%s %s: %s is not a directory\n", what, path, dir);
        return -1;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "%s %s: cannot create files in %s: %s\n", what, path, dir,
                strerror(errno));
        return -1;
    }
    return 0;
}
