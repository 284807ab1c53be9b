/* cmd_rpc.c - `dexec rpc METHOD [ARGS...]`: collective_rpc on the
 * deployment's workers, replies printed as JSON. @FILE arguments are read
 * here, on the client, and sent as bin values (the tensor methods' raw
 * float32); --bin-out writes the bin values of the replies to a file. */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec rpc METHOD [--rank R] [--timeout S] [--bin-out FILE] [ARG...]\n\n"
            "Runs a worker method on every rank (collective_rpc) and prints the replies,\n"
            "ordered by rank, as JSON. Each ARG is parsed as JSON when it is valid JSON\n"
            "(42, 1.5, true, null, \"text\", [1,2], {\"k\": 1}), read as a bin value\n"
            "when it is @FILE (the file's bytes, read here), and taken as a string\n"
            "otherwise. Worker methods: get_rank, get_info, get_stats, load_model MODEL,\n"
            "check_health, echo ARGS..., debug_sleep SECONDS; for a published latent\n"
            "model latent_forward, latent_guided, latent_sample and vae_decode OPTIONS\n"
            "@TENSOR... (doc/protocol.md \"Tensor methods\").\n\n"
            "  -r, --rank R            print only rank R's reply (all ranks still run it)\n"
            "  -t, --timeout S         deadline in seconds (default timeouts.rpc)\n"
            "  -o, --bin-out FILE      write the bin values of the printed replies, in\n"
            "                          order, to FILE (a tensor method's raw float32)\n"
            "%s",
            cli_engine_opts_help);
}

/* The largest @FILE argument: a 512-px latent batch is a few MB, a decoded
 * image 3 MB; 256 MiB is far above any tensor method's input and below
 * the protocol's frame limit. */
#define RPC_MAX_FILE ((size_t)256 << 20)

/* @FILE -> a bin value of its bytes; NULL (message printed) on failure. */
static dexec_value *read_bin_arg(const char *path)
{
    FILE *f = fopen(path, "rbe");
    dexec_value *v = NULL;
    char *buf = NULL;
    long len;

    if (f == NULL) {
        fprintf(stderr, "dexec rpc: @%s: %s\n", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "dexec rpc: @%s: not a regular file (cannot find its size)\n", path);
    } else if ((size_t)len > RPC_MAX_FILE) {
        fprintf(stderr, "dexec rpc: @%s: %ld bytes, more than the %zu an argument may have\n",
                path, len, RPC_MAX_FILE);
    } else if ((buf = malloc((size_t)len + 1)) == NULL) {
        fprintf(stderr, "dexec rpc: @%s: out of memory\n", path);
    } else if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "dexec rpc: @%s: read error\n", path);
    } else {
        v = dexec_value_bin_take(buf, (size_t)len);
        buf = NULL;
    }
    free(buf);
    fclose(f);
    return v;
}

/* Writes every bin value under v, depth first, to f. */
static int write_bins(FILE *f, const dexec_value *v)
{
    size_t i;

    if (v == NULL)
        return 0;
    if (v->type == DEXEC_VAL_BIN)
        return fwrite(v->u.str.ptr, 1, v->u.str.len, f) == v->u.str.len ? 0 : -1;
    if (v->type == DEXEC_VAL_ARRAY)
        for (i = 0; i < v->u.arr.len; i++)
            if (write_bins(f, v->u.arr.items[i]) != 0)
                return -1;
    if (v->type == DEXEC_VAL_MAP)
        for (i = 0; i < v->u.map.len; i++)
            if (write_bins(f, v->u.map.items[i].val) != 0)
                return -1;
    return 0;
}

int cmd_rpc(int argc, char **argv)
{
    cli_engine_opts eo = {0};
    const char *method = NULL, *bin_out = NULL;
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
        if (strcmp(a, "-o") == 0 || strcmp(a, "--bin-out") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "dexec rpc: option %s needs a value\n", a);
                goto usage_error;
            }
            bin_out = argv[++i];
            continue;
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
        } else if (a[0] == '@') {
            dexec_value *v = read_bin_arg(a + 1);

            if (v == NULL) {
                dexec_value_free(args);
                return 2;
            }
            dexec_value_array_push(args, v);
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
        if (bin_out != NULL) {
            FILE *f = fopen(bin_out, "wbe");
            int bad = f == NULL || write_bins(f, replies) != 0;

            if ((f != NULL && fclose(f) != 0) || bad) {
                fprintf(stderr, "dexec rpc: --bin-out %s: %s\n", bin_out, strerror(errno));
                rc = 1;
            }
        }
    }
    dexec_value_free(replies);
    dexec_value_free(args);
    dexec_engine_free(e);
    return rc;

usage_error:
    dexec_value_free(args);
    return 2;
}
