/* cmd_config.c - "dexec config": checks a configuration file and prints the
 * effective configuration (file, defaults and environment, with where each
 * value came from), and lists the keys of the schema: the core's and the
 * settings plugins declare (marked with the plugin). */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec config check [-s KEY=VALUE]... [[-c] FILE]\n"
            "       dexec config keys [[-c] FILE]\n"
            "       dexec config --help\n\n"
            "check  validates FILE (default: $DEXEC_CONFIG, else the defaults), applies\n"
            "       the environment (DEXEC_LOG_LEVEL, DIFFUSION_WORKER_ACTOR_NAMES) and\n"
            "       then each -s KEY=VALUE, and prints the effective configuration as\n"
            "       libconfig text, every key with a comment saying where its value\n"
            "       came from; the sections of plugins (discovery.redis of redis_discovery)\n"
            "       are checked and printed like the core's keys. The output is itself a\n"
            "       valid configuration file, except that passwords and secrets are\n"
            "       masked (\"****\"). A num_gpus that is set (not the default) must be\n"
            "       a multiple of parallel.cfg x parallel.sequence, as the engine requires;\n"
            "       left at its default, a note says what it needs.\n"
            "keys   lists every key with its type, default, accepted values and meaning:\n"
            "       the core's, then the settings of every plugin in the search path\n"
            "       ($DEXEC_PLUGIN_PATH, FILE's plugin_path, the plugin directory),\n"
            "       each marked \"(plugin NAME)\".\n\n"
            "Options of check:\n"
            "  -c, --config FILE    the file to check (the same as giving FILE)\n"
            "  -s, --set KEY=VALUE  override a key as on a command line: \"2\", \"4.5\",\n"
            "                       \"mp\", \"a,b\" for lists, \"name=1,other=2\" for maps\n"
            "  -h, --help           show this help\n\n"
            "Exit status of check: 0 when the configuration is valid, 1 when it is not\n"
            "(the message names the file, the line and the key), 2 on a usage error;\n"
            "of keys: 2 when FILE does not load.\n"
            "See dexec.conf(5).\n");
}

static int config_keys(const char *path)
{
    const char *key, *type, *def, *range, *doc, *plugin;
    dexec_config *cfg = cli_load_config(path);
    char err[2048];
    int rc = 0;

    if (cfg == NULL)
        return CLI_USAGE;
    /* a plugin with a broken table is reported; the others are still listed */
    if (dexec_config_add_plugin_settings(cfg, NULL, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec config keys: %s\n", err);
        rc = 1;
    }
    for (size_t i = 0;
         dexec_config_schema_key(cfg, i, &key, &type, &def, &range, &doc, &plugin) == DEXEC_OK;
         i++) {
        printf("%-32s %-8s default %s%s%s", key, type,
               *def != '\0' ? def : (strcmp(type, "string") == 0 ? "\"\"" : "empty"),
               *range != '\0' ? "; accepts " : "", range);
        if (plugin != NULL)
            printf("  (plugin %s)", plugin);
        printf("\n    %s\n", doc);
    }
    dexec_config_free(cfg);
    return rc;
}

static int config_check(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char **sets = calloc((size_t)argc, sizeof(char *));
    size_t nsets = 0;
    const char *path = NULL;
    dexec_config *cfg;
    char *text;
    int c;

    if (sets == NULL) {
        fprintf(stderr, "dexec config: out of memory\n");
        return 1;
    }
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:s:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 's':
            if (strchr(optarg, '=') == NULL) {
                fprintf(stderr, "dexec config check: -s wants KEY=VALUE, got '%s'\n", optarg);
                free(sets);
                return 2;
            }
            sets[nsets++] = optarg;
            break;
        case 'h':
            usage(stdout);
            free(sets);
            return 0;
        default:
            usage(stderr);
            free(sets);
            return 2;
        }
    }
    if (optind < argc && path == NULL)
        path = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "dexec config check: unexpected argument '%s'\n", argv[optind]);
        free(sets);
        return 2;
    }
    cfg = cli_load_config(path);
    if (cfg == NULL) {
        free(sets);
        return 1;
    }
    for (size_t i = 0; i < nsets; i++) {
        char *eq = strchr(sets[i], '='), err[1024];

        *eq = '\0';
        if (dexec_config_set(cfg, sets[i], eq + 1, err, sizeof(err)) != DEXEC_OK) {
            /* not the value: it may be a password (the message masks it) */
            fprintf(stderr, "dexec: set: %s\n", err); /* err names the key */
            dexec_config_free(cfg);
            free(sets);
            return 1;
        }
    }
    free(sets);
    {
        /* what the executors refuse at create (mp, ray_actor): checked
         * when num_gpus is set, since --num-gpus on a command line may
         * still change the default */
        int64_t n = 1, pc = 1, ps = 1;
        const char *from = dexec_config_origin(cfg, "num_gpus");

        dexec_config_get_int(cfg, "num_gpus", &n);
        dexec_config_get_int(cfg, "parallel.cfg", &pc);
        dexec_config_get_int(cfg, "parallel.sequence", &ps);
        if (from != NULL && strcmp(from, "default") != 0 && pc * ps > 1 && n % (pc * ps) != 0) {
            fprintf(stderr,
                    "dexec: %s: num_gpus = %lld is not a multiple of parallel.cfg x "
                    "parallel.sequence = %lld x %lld: num_gpus = data-parallel groups x cfg x "
                    "sequence\n",
                    from, (long long)n, (long long)pc, (long long)ps);
            dexec_config_free(cfg);
            return 1;
        }
        if ((from == NULL || strcmp(from, "default") == 0) && pc * ps > 1 && n % (pc * ps) != 0)
            fprintf(stderr,
                    "dexec: note: num_gpus is not set (default %lld), and parallel.cfg x "
                    "parallel.sequence = %lld x %lld needs a multiple of %lld: give it with "
                    "--num-gpus when you run, or here with -s num_gpus=N to check it\n",
                    (long long)n, (long long)pc, (long long)ps, (long long)(pc * ps));
    }
    text = dexec_config_dump(cfg);
    dexec_config_free(cfg);
    if (text == NULL) {
        fprintf(stderr, "dexec config: out of memory\n");
        return 1;
    }
    fputs(text, stdout);
    free(text);
    return 0;
}

int cmd_config(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "check") == 0)
        return config_check(argc - 1, argv + 1);
    if (strcmp(argv[1], "keys") == 0) {
        int a = 2;

        if (argc > a && (strcmp(argv[a], "-c") == 0 || strcmp(argv[a], "--config") == 0))
            a++;
        if (argc > a + 1 || (argc == a && a == 3)) {
            fprintf(stderr, "dexec config keys: unexpected argument '%s'\n", argv[argc - 1]);
            return 2;
        }
        if (argc > a && (strcmp(argv[a], "-h") == 0 || strcmp(argv[a], "--help") == 0)) {
            usage(stdout);
            return 0;
        }
        if (argc > a && argv[a][0] == '-' && argv[a][1] != '\0') {
            fprintf(stderr,
                    "dexec config keys: unknown option '%s' (see dexec config --help; a file "
                    "whose name starts with '-': ./%s)\n",
                    argv[a], argv[a]);
            return 2;
        }
        return config_keys(argc > a ? argv[a] : NULL);
    }
    fprintf(stderr, "dexec config: unknown subcommand '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
