/* cmd_actors.c - "dexec actors": lists the workers (and node agents)
 * registered in the actor registry, each with a live ping, so a deployer
 * can tell a registered worker from one that merely has not expired yet. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/discovery.h>
#include <dexec/rpc.h>

#include "cli.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec actors [-c CONFIG] [--registry URL] [--token-file FILE]\n"
            "                    [--kind actor|node|all] [--timeout S]\n\n"
            "Lists the entries of the actor registry (workers started with dexec-worker\n"
            "--name, and node agents) with their address, rank, host, pid and age, and\n"
            "pings each one: connect, hello (with the configured token) and get_rank,\n"
            "within the deadline. STATUS is \"ok 0.4 ms\", \"rank mismatch: ...\" or\n"
            "\"unreachable: <reason>\" (a worker that died and whose entry has not\n"
            "expired yet).\n\n"
            "Options:\n"
            "  -c, --config FILE   configuration (default: $DEXEC_CONFIG, else defaults):\n"
            "                      discovery.redis.*, external.discovery, token files\n"
            "  -r, --registry URL  registry URL (default: $DEXEC_REGISTRY, else\n"
            "                      discovery.redis.url)\n"
            "  -T, --token-file F  the workers' token (default: external.token_file, else\n"
            "                      $DEXEC_TOKEN_FILE, else token_file)\n"
            "  -k, --kind KIND     actor, node or all (default all)\n"
            "  -t, --timeout S     deadline of each ping in seconds (default\n"
            "                      timeouts.health)\n"
            "  -h, --help          show this help\n\n"
            "Exit status: 0 when every entry answers, 1 when one does not or the registry\n"
            "cannot be read, 2 on a usage error.\n");
}

static void format_age(double s, char *buf, size_t len)
{
    long t = s > 0 ? (long)s : 0;

    if (t < 60)
        snprintf(buf, len, "%lds", t);
    else if (t < 3600)
        snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
    else if (t < 86400)
        snprintf(buf, len, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
    else
        snprintf(buf, len, "%ldd%02ldh", t / 86400, (t % 86400) / 3600);
}

/* connect + hello + get_rank; writes the STATUS column. Returns 1 if ok. */
static int ping(const dexec_actor_info *a, int is_node, const char *token, double timeout,
                char *status, size_t len)
{
    double t0 = dexec_now(), deadline = t0 + timeout;
    dexec_conn *c = NULL;
    dexec_value *res = NULL;
    char err[1024];
    dexec_status st;
    int ok = 0;

    st = dexec_conn_connect(a->address, timeout, &c, err, sizeof(err));
    if (st == DEXEC_OK) {
        double left = deadline - dexec_now();

        st = dexec_conn_hello(c, token, left > 0 ? left : 0.001, NULL, err, sizeof(err));
    }
    if (st == DEXEC_OK && !is_node)
        st = dexec_conn_call(c, "get_rank", NULL, deadline, &res, NULL, NULL, err, sizeof(err));
    if (st != DEXEC_OK) {
        snprintf(status, len, "unreachable: %s", err);
    } else if (!is_node && dexec_value_as_int(res, -1) != a->rank) {
        snprintf(status, len, "rank mismatch: it reports %lld, registered %d",
                 (long long)dexec_value_as_int(res, -1), a->rank);
    } else {
        snprintf(status, len, "ok %.1f ms", (dexec_now() - t0) * 1e3);
        ok = 1;
    }
    dexec_value_free(res);
    dexec_conn_free(c);
    return ok;
}

/* --token-file, else external.token_file, else token_file (which
 * $DEXEC_TOKEN_FILE overrides); NULL when none. */
static int load_token(const dexec_config *cfg, const char *given, char **token)
{
    const char *path = given != NULL ? given : "";
    char err[1024];

    *token = NULL;
    if (*path == '\0')
        dexec_config_get_string(cfg, "external.token_file", &path);
    if (path == NULL || *path == '\0')
        dexec_config_get_string(cfg, "token_file", &path);
    if (path == NULL || *path == '\0')
        return 0;
    if (dexec_token_read(path, token, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec actors: %s\n", err);
        return -1;
    }
    return 0;
}

int cmd_actors(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"registry", required_argument, NULL, 'r'},
        {"token-file", required_argument, NULL, 'T'},
        {"kind", required_argument, NULL, 'k'},
        {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *url = NULL, *kind = NULL, *token_file = NULL;
    double timeout = 0; /* 0: timeouts.health */
    dexec_config *cfg;
    dexec_discovery_handle *d = NULL;
    dexec_actor_info *all = NULL;
    size_t n = 0;
    char *token = NULL, err[2048];
    int c, failed = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, "c:r:T:k:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'r': url = optarg; break;
        case 'T':
            if (*optarg == '\0') {
                fprintf(stderr, "dexec actors: --token-file needs a file name\n");
                return 2;
            }
            token_file = optarg;
            break;
        case 'k':
            if (strcmp(optarg, "all") == 0) {
                kind = NULL;
            } else if (strcmp(optarg, "actor") == 0 || strcmp(optarg, "node") == 0) {
                kind = optarg;
            } else {
                fprintf(stderr, "dexec actors: bad --kind '%s' (actor, node, all)\n", optarg);
                return 2;
            }
            break;
        case 't': {
            char *end;

            timeout = strtod(optarg, &end);
            if (*end != '\0' || !(timeout > 0 && timeout <= 600)) {
                fprintf(stderr, "dexec actors: bad --timeout '%s' (seconds, > 0, <= 600)\n",
                        optarg);
                return 2;
            }
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dexec actors: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    cfg = cli_load_config(config_path);
    if (cfg == NULL)
        return CLI_USAGE;
    if (timeout <= 0)
        dexec_config_get_float(cfg, "timeouts.health", &timeout);
    if (load_token(cfg, token_file, &token) != 0) {
        dexec_config_free(cfg);
        return CLI_USAGE;
    }
    if (dexec_discovery_open(cfg, NULL, url, &d, err, sizeof(err)) != DEXEC_OK ||
        dexec_discovery_list(d, kind, &all, &n, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec actors: %s\n", err);
        failed = 1;
    } else if (n == 0) {
        /* not the URL: it may carry a password */
        printf("no %s registered\n",
               kind != NULL && strcmp(kind, "node") == 0 ? "node agents" : "actors");
    } else {
        printf("%-24s %-5s %-36s %-4s %-16s %-8s %-7s %s\n", "NAME", "KIND", "ADDRESS", "RANK",
               "HOST", "PID", "AGE", "STATUS");
        for (size_t i = 0; i < n; i++) {
            const char *k = dexec_value_as_str(dexec_value_map_get(all[i].meta, "kind"), "actor");
            int is_node = strcmp(k, "node") == 0;
            char age[32], status[1200];

            format_age(all[i].age_s, age, sizeof(age));
            if (!ping(&all[i], is_node, token, timeout, status, sizeof(status)))
                failed = 1;
            printf("%-24s %-5s %-36s %-4d %-16s %-8d %-7s %s\n", all[i].name,
                   is_node ? "node" : "actor", all[i].address, all[i].rank, all[i].host,
                   all[i].pid, age, status);
        }
    }
    for (size_t i = 0; i < n; i++)
        dexec_actor_info_clear(&all[i]);
    free(all);
    dexec_discovery_close(d);
    free(token);
    dexec_config_free(cfg);
    return failed;
}
