/* cmd_rpc.c - `dexec rpc METHOD [ARGS...]`: collective_rpc on the
 * deployment's workers, replies printed as JSON. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec rpc METHOD [--rank R] [--timeout S] [ARG...]\n\n"
            "Runs a worker method on every rank (collective_rpc) and prints the replies,\n"
            "ordered by rank, as JSON. Each ARG is parsed as JSON when it is valid JSON\n"
            "(42, 1.5, true, null, \"text\", [1,2], {\"k\": 1}) and taken as a string\n"
            "otherwise. Worker methods: get_rank, get_info, get_stats, load_model MODEL,\n"
            "check_health, echo ARGS..., debug_sleep SECONDS (load_model and debug_sleep\n"
            "only on workers started with --allow-admin).\n\n"
            "  -r, --rank R            print only rank R's reply (all ranks still run it)\n"
            "  -t, --timeout S         deadline in seconds (default timeouts.rpc)\n"
            "%s",
            cli_engine_opts_help);
}

int cmd_rpc(int argc, char **argv)
{
    cli_engine_opts eo = {0};
    const char *method = NULL;
    int rank = -1, rc = 0;
    double timeout = 0;
    dexec_value *args = dexec_value_array(), *replies = NULL;
    dexec_engine *e;
    char *json;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = cli_engine_opt(&eo, argc, argv, &i);

        if (r < 0)
            goto usage_error;
        if (r > 0)
            continue;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            dexec_value_free(args);
            return 0;
        }
        if (strcmp(a, "-r") == 0 || strcmp(a, "--rank") == 0 || strcmp(a, "-t") == 0 ||
            strcmp(a, "--timeout") == 0) {
            char *end;

            if (i + 1 >= argc) {
                fprintf(stderr, "dexec rpc: option %s needs a value\n", a);
                goto usage_error;
            }
            errno = 0;
            if (a[1] == 'r' || a[2] == 'r') {
                long v = strtol(argv[++i], &end, 10);

                if (*end != '\0' || v < 0 || v > 100000) {
                    fprintf(stderr, "dexec rpc: --rank expects a rank number, got '%s'\n",
                            argv[i]);
                    goto usage_error;
                }
                rank = (int)v;
            } else {
                timeout = strtod(argv[++i], &end);
                if (*end != '\0' || timeout <= 0) {
                    fprintf(stderr, "dexec rpc: --timeout expects seconds > 0, got '%s'\n",
                            argv[i]);
                    goto usage_error;
                }
            }
            continue;
        }
        if (method == NULL) {
            method = a;
        } else {
            dexec_value *v = dexec_value_from_json(a, strlen(a), NULL, 0);

            dexec_value_array_push(args, v != NULL ? v : dexec_value_str(a));
        }
    }
    if (method == NULL) {
        fprintf(stderr, "dexec rpc: which method? (e.g. dexec rpc get_info)\n");
        goto usage_error;
    }
    e = cli_open_engine(&eo);
    if (e == NULL) {
        dexec_value_free(args);
        return 1;
    }
    if (dexec_engine_collective_rpc(e, method, timeout, args, NULL, rank, &replies) != DEXEC_OK) {
        fprintf(stderr, "dexec rpc: %s\n", dexec_engine_last_error(e));
        rc = 1;
    } else {
        json = dexec_value_to_json(replies, 2);
        printf("%s\n", json != NULL ? json : "null");
        free(json);
    }
    dexec_value_free(replies);
    dexec_value_free(args);
    dexec_engine_free(e);
    return rc;

usage_error:
    dexec_value_free(args);
    return 2;
}
