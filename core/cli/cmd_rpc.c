/* cmd_rpc.c - `dexec rpc METHOD [ARGS...]`: collective_rpc on the
 * deployment's workers, replies printed as JSON (@FILE arguments are read
 * here, on the client, and sent as bin values: the tensor methods' raw
 * float32; --bin-out writes the bin values of the replies to a file); and
 * `dexec logs`, the workers' recent log lines (the get_logs method)
 * printed as text. */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec rpc METHOD [--rank R] [--timeout S] [--bin-out FILE] [ARG...]\n\n"
            "Runs a worker method on every rank (collective_rpc) and prints the replies,\n"
            "ordered by rank, as JSON. Each ARG is parsed as JSON when it is valid JSON\n"
            "(42, 1.5, true, null, \"text\", [1,2], {\"k\": 1}), read as a bin value\n"
            "when it is @FILE (the file's bytes, read here), and taken as a string\n"
            "otherwise. Worker methods: get_rank, get_info, get_stats, get_logs [N],\n"
            "cancel REQUEST_ID, load_model MODEL, check_health, echo ARGS...,\n"
            "debug_sleep SECONDS (load_model and debug_sleep only on workers started\n"
            "with --allow-admin); for a published latent model latent_forward,\n"
            "latent_guided, latent_sample, vae_decode and latent_noise OPTIONS @TENSOR...\n"
            "(doc/protocol.md \"Tensor methods\").\n\n"
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

/* Refuses, before the engine starts, a --bin-out the command could not
 * write: a directory, or a file in a directory that is missing or not
 * writable. 0 or -1 (message printed). */
static int check_bin_out(const char *path)
{
    struct stat sb;

    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "dexec rpc: --bin-out %s is a directory: name a file\n", path);
        return -1;
    }
    return cli_check_out_dir("dexec rpc: --bin-out", path);
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
            if (a[0] == '-') {
                fprintf(stderr, "dexec rpc: unknown option '%s' (see --help)\n", a);
                goto usage_error;
            }
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
    if (bin_out != NULL && check_bin_out(bin_out) != 0)
        goto usage_error;
    e = cli_open_engine(&eo, &rc);
    if (e == NULL) {
        dexec_value_free(args);
        return rc;
    }
    if (rank >= dexec_engine_num_ranks(e)) {
        fprintf(stderr,
                "dexec rpc: --rank %d is out of range: the deployment has %d rank(s) (0..%d)\n",
                rank, dexec_engine_num_ranks(e), dexec_engine_num_ranks(e) - 1);
        rc = 1;
    } else if (dexec_engine_collective_rpc(e, method, timeout, args, NULL, rank, &replies) !=
               DEXEC_OK) {
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

static void logs_usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec logs [--rank R] [-n N] [--json]\n\n"
            "Prints the last N log lines of every worker (the get_logs worker method:\n"
            "each worker keeps its last 1000 lines at info and worse), rank by rank, as\n"
            "RANK TIME LEVEL COMPONENT: MESSAGE. Works with every executor; with\n"
            "external it reads the workers systemd or Slurm started (an actor's ranks\n"
            "share one process, so they show the same lines).\n\n"
            "  -r, --rank R            only rank R\n"
            "  -n, --lines N           lines per rank (default 100)\n"
            "      --json              print the replies as JSON instead\n"
            "%s",
            cli_engine_opts_help);
}

static void print_line(int rank, const dexec_value *l)
{
    double t = dexec_value_as_float(dexec_value_map_get(l, "time"), 0);
    time_t sec = (time_t)t;
    struct tm tm;
    char when[32];

    gmtime_r(&sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    printf("%d %s.%03dZ %s %s: %s\n", rank, when, (int)((t - (double)sec) * 1000),
           dexec_value_as_str(dexec_value_map_get(l, "level"), "?"),
           dexec_value_as_str(dexec_value_map_get(l, "component"), "?"),
           dexec_value_as_str(dexec_value_map_get(l, "message"), ""));
}

int cmd_logs(int argc, char **argv)
{
    cli_engine_opts eo = {0};
    int rank = -1, json = 0, rc = 0;
    long lines = 100;
    dexec_value *args, *replies = NULL;
    dexec_engine *e;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = cli_engine_opt(&eo, argc, argv, &i);
        char *end;
        long v;

        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            logs_usage(stdout);
            return 0;
        }
        if (strcmp(a, "--json") == 0) {
            json = 1;
            continue;
        }
        if (strcmp(a, "-r") != 0 && strcmp(a, "--rank") != 0 && strcmp(a, "-n") != 0 &&
            strcmp(a, "--lines") != 0) {
            fprintf(stderr,
                    a[0] == '-' ? "dexec logs: unknown option '%s' (see --help)\n"
                                : "dexec logs: unexpected argument '%s' (see --help)\n",
                    a);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "dexec logs: option %s needs a value\n", a);
            return 2;
        }
        v = strtol(argv[++i], &end, 10);
        if (a[1] == 'r' || a[2] == 'r') {
            if (*end != '\0' || v < 0 || v > 100000) {
                fprintf(stderr, "dexec logs: --rank expects a rank number, got '%s'\n", argv[i]);
                return 2;
            }
            rank = (int)v;
        } else {
            if (*end != '\0' || v < 1 || v > DEXEC_LOG_KEEP_MAX) {
                fprintf(stderr, "dexec logs: -n expects 1..%d lines, got '%s'\n",
                        DEXEC_LOG_KEEP_MAX, argv[i]);
                return 2;
            }
            lines = v;
        }
    }
    e = cli_open_engine(&eo, &rc);
    if (e == NULL)
        return rc;
    args = dexec_value_array();
    dexec_value_array_push(args, dexec_value_int(lines));
    if (rank >= dexec_engine_num_ranks(e)) {
        fprintf(stderr,
                "dexec logs: --rank %d is out of range: the deployment has %d rank(s) (0..%d)\n",
                rank, dexec_engine_num_ranks(e), dexec_engine_num_ranks(e) - 1);
        rc = 1;
    } else if (dexec_engine_collective_rpc(e, "get_logs", 0, args, NULL, rank, &replies) !=
               DEXEC_OK) {
        fprintf(stderr, "dexec logs: %s\n", dexec_engine_last_error(e));
        rc = 1;
    } else if (json) {
        char *text = dexec_value_to_json(replies, 2);

        printf("%s\n", text != NULL ? text : "null");
        free(text);
    } else if (rank >= 0) {
        for (size_t k = 0; k < replies->u.arr.len; k++)
            print_line(rank, replies->u.arr.items[k]);
    } else {
        for (size_t r = 0; r < replies->u.arr.len; r++) {
            const dexec_value *one = replies->u.arr.items[r];

            for (size_t k = 0; one->type == DEXEC_VAL_ARRAY && k < one->u.arr.len; k++)
                print_line((int)r, one->u.arr.items[k]);
        }
    }
    dexec_value_free(replies);
    dexec_value_free(args);
    dexec_engine_free(e);
    return rc;
}
