/* main.c - the dexec command-line tool: dispatches to subcommands. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/plugin.h>

#include "cli.h"

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *help;
} commands[] = {
    {"generate", cmd_generate, "generate images from a prompt"},
    {"serve", cmd_serve, "serve images over HTTP (OpenAI Images API, metrics, a page to try it)"},
    {"health", cmd_health, "check that every worker of a deployment answers"},
    {"rpc", cmd_rpc, "call a worker method on every rank and print the replies as JSON"},
    {"logs", cmd_logs, "print the workers' recent log lines (get_logs)"},
    {"actors", cmd_actors, "list the actors registered in the discovery registry"},
    {"plugins", cmd_plugins, "list the plugins on the search path"},
    {"config", cmd_config, "check a configuration file and print the effective one"},
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: dexec COMMAND [OPTIONS]\n"
                 "       dexec --help | --version\n\n"
                 "A diffusion-model executor: runs a diffusion transformer on local or\n"
                 "remote workers chosen by a configuration file.\n\nCommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(out, "\n'dexec COMMAND --help' describes a command's options; see dexec(1) and\n"
                 "dexec.conf(5). Environment: DEXEC_CONFIG, DEXEC_PLUGIN_PATH, DEXEC_LOG_LEVEL,\n"
                 "DIFFUSION_WORKER_ACTOR_NAMES.\n");
}

dexec_config *cli_load_config(const char *path)
{
    char err[1024];
    dexec_config *cfg = NULL;

    if (dexec_config_load(path, &cfg, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec: %s\n", err);
        return NULL;
    }
    return cfg;
}

int main(int argc, char **argv)
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
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("dexec %s (plugin ABI %d.%d)\n", dexec_version(), DEXEC_ABI_MAJOR,
               DEXEC_ABI_MINOR);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "dexec: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
