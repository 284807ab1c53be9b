/*
 * main.c - dexec-worker: serves one rank (or, with --ranks N, an actor
 * hosting N ranks) over the worker protocol on a unix socket, a TCP port or
 * an inherited socket.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <dexec/rpc.h>

#include "listen.h"
#include "kernels.h"
#include "node.h"
#include "registry.h"
#include "safetensors.h"
#include "server.h"

static dxw_server *g_server;

/* After the loop stops, how long the ranks get to reach the end of their
 * current denoising step (their requests are cancelled) before the worker
 * leaves without them. */
#define STOP_WAIT_S 2.0

static void on_signal(int sig)
{
    (void)sig;
    if (g_server != NULL)
        dxw_server_stop(g_server);
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec-worker --listen ADDRESS [OPTIONS]\n\n"
            "Serves a diffusion model over the dexec worker protocol (doc/protocol.md).\n\n"
            "  -l, --listen ADDRESS    unix:/PATH, tcp:HOST:PORT (port 0: any) or fd:N (an\n"
            "                          inherited connected socket; its EOF ends the worker)\n"
            "  -r, --rank N            rank served (default 0)\n"
            "      --ranks N           host N ranks in this process (an actor), ranks\n"
            "                          RANK..RANK+N-1, rank i on CUDA device i\n"
            "  -m, --model NAME|PATH   model (default fashion-dit)\n"
            "  -d, --device DEV        auto, cpu or cuda (default auto)\n"
            "      --dtype TYPE        weights on the device: float32 (default), float16 or\n"
            "                          bfloat16 (CUDA only: half-precision weights, float32\n"
            "                          accumulation; the pixels change slightly)\n"
            "      --token-file FILE   require this shared token in hello (file mode 0600;\n"
            "                          \"-\": the first line of standard input)\n"
            "      --owned SECONDS     the first client to say hello owns this worker: the\n"
            "                          worker exits when that connection closes, or when\n"
            "                          no client said hello within SECONDS\n"
            "      --insecure          allow a non-loopback TCP listener without a token,\n"
            "                          and a unix socket in a directory others can enter\n"
            "      --allow-admin       serve load_model and debug_sleep (methods that open\n"
            "                          files or hold the process) to authenticated clients\n"
            "      --max-frame BYTES   largest frame accepted (default 256 MiB); before hello\n"
            "                          --hello-max-frame\n"
            "      --frame-timeout S   drop a client whose frame, once begun, does not arrive\n"
            "                          whole within S seconds (default 120; 0: no limit)\n"
            "      --idle-timeout S    drop a client silent for S seconds after hello\n"
            "                          (default 0: no limit)\n"
            "      --handshake-timeout S  drop a client that has not said hello within S\n"
            "                          seconds (default 30; 0: no limit)\n"
            "      --hello-max-frame BYTES  largest frame before hello (default 8192,\n"
            "                          at least 512)\n"
            "      --max-unauthenticated N  connections kept without hello; beyond it the\n"
            "                          oldest is closed (default 128)\n"
            "      --print-address     print the address listened on to stdout, once ready\n"
            "      --name NAME         register in the actor registry under NAME once ready\n"
            "                          (deregistered on a clean exit)\n"
            "      --registry URL      registry: redis://[:PASSWORD@]HOST[:PORT][/DB] or\n"
            "                          unix:/PATH (default: $DEXEC_REGISTRY, else\n"
            "                          discovery.redis.url of $DEXEC_CONFIG)\n"
            "      --ttl SECONDS       lifetime of the entry without a heartbeat (default:\n"
            "                          discovery.redis.ttl); heartbeats every ttl/3 s\n"
            "      --advertise ADDR    address to register instead of the one listened on\n"
            "                          (a host, or tcp:HOST:PORT); needed for tcp:0.0.0.0\n"
            "                          when the hostname resolves only to loopback\n"
            "      --log-level LEVEL   error, warn, info or debug (default: $DEXEC_LOG_LEVEL)\n"
            "\nNode agent (places ray_actor actors on this host, see doc/ray-actor.md):\n"
            "      --node              run as the node agent instead of serving a model\n"
            "      --node-name NAME    register as NAMESPACE:node:NAME (with --registry)\n"
            "      --cpus N            CPUs actors may have (default: all this process may use)\n"
            "      --gpus N            GPUs actors may have (default: the /dev/nvidiaN present)\n"
            "      --memory BYTES      memory actors may reserve (default: physical memory)\n"
            "      --resources LIST    custom resources offered, e.g. gpu_worker=1,ssd=2\n"
            "  -h, --help              this help\n"
            "  -V, --version           version\n");
}

/* --token-file -: the token is the first line of standard input (how an
 * owner that starts us through srun hands it over without a file on shared
 * storage or a command line others can read). 0, or -1 after saying why. */
static int read_stdin_token(char **token)
{
    char buf[4096];
    size_t len;

    if (fgets(buf, sizeof(buf), stdin) == NULL) {
        fprintf(stderr, "dexec-worker: --token-file -: standard input ended before a token\n");
        return -1;
    }
    len = strcspn(buf, "\r\n");
    buf[len] = '\0';
    if (len == 0) {
        fprintf(stderr, "dexec-worker: --token-file -: the first line of standard input is "
                        "empty\n");
        return -1;
    }
    *token = strdup(buf);
    explicit_bzero(buf, sizeof(buf));
    return *token != NULL ? 0 : -1;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"rank", required_argument, NULL, 'r'},
        {"ranks", required_argument, NULL, 'R'},
        {"model", required_argument, NULL, 'm'},
        {"device", required_argument, NULL, 'd'},
        {"dtype", required_argument, NULL, 1021},
        {"token-file", required_argument, NULL, 't'},
        {"insecure", no_argument, NULL, 'I'},
        {"allow-admin", no_argument, NULL, 1020},
        {"max-frame", required_argument, NULL, 'F'},
        {"print-address", no_argument, NULL, 'P'},
        {"frame-timeout", required_argument, NULL, 1006},
        {"idle-timeout", required_argument, NULL, 1007},
        {"handshake-timeout", required_argument, NULL, 1008},
        {"hello-max-frame", required_argument, NULL, 1009},
        {"max-unauthenticated", required_argument, NULL, 1010},
        {"log-level", required_argument, NULL, 'L'},
        {"name", required_argument, NULL, 'N'},
        {"registry", required_argument, NULL, 'G'},
        {"ttl", required_argument, NULL, 'T'},
        {"advertise", required_argument, NULL, 'A'},
        {"owned", required_argument, NULL, 'O'},
        {"node", no_argument, NULL, 1000},
        {"node-name", required_argument, NULL, 1001},
        {"cpus", required_argument, NULL, 1002},
        {"gpus", required_argument, NULL, 1003},
        {"memory", required_argument, NULL, 1004},
        {"resources", required_argument, NULL, 1005},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    dxw_options opt = {.num_ranks = 1, .model = "fashion-dit", .device = "auto",
                       .max_frame = DEXEC_FRAME_MAX_DEFAULT, .frame_timeout = 120.0,
                       .hello_timeout = 30.0, .hello_max_frame = 8192, .hello_max_conns = 128};
    const char *listen_addr = NULL, *token_file = NULL;
    dxw_registry_opts reg_opt = {0};
    dxw_registry *registry = NULL;
    char *token = NULL, err[1024], bound[512];
    int insecure = 0, print_address = 0, c, fd = -1, status, node = 0;
    dxn_options nopt = {.cpus = -1, .gpus = -1, .memory = -1};
    dxw_listener lis = {.fd = -1};
    struct sigaction sa;

    /* before any thread: OpenBLAS's kernels for this CPU (kernels.h) */
    dxk_blas_core_reexec(argv);
    dexec_log_set_program("dexec-worker");
    /* the recent lines get_logs serves (info and worse, whatever reaches
     * stderr): what a deployer reads through `dexec logs` */
    dexec_log_keep(1000, DEXEC_LOG_INFO);
    /* a model file truncated under its mapping fails requests, naming the
     * file, instead of killing the worker with SIGBUS */
    dxk_st_catch_sigbus();
    while ((c = getopt_long(argc, argv, "l:r:m:d:hV", longopts, NULL)) != -1) {
        switch (c) {
        case 'l': listen_addr = optarg; break;
        case 'r': opt.base_rank = atoi(optarg); break;
        case 'R': opt.num_ranks = atoi(optarg); break;
        case 'm': opt.model = optarg; break;
        case 'd': opt.device = optarg; break;
        case 1021: opt.dtype = optarg; break;
        case 't': token_file = optarg; break;
        case 'I': insecure = 1; break;
        case 'F': opt.max_frame = (size_t)strtoull(optarg, NULL, 10); break;
        case 'P': print_address = 1; break;
        case 1000: node = 1; break;
        case 1001: nopt.name = optarg; break;
        case 1002: nopt.cpus = atoi(optarg); break;
        case 1003: nopt.gpus = atoi(optarg); break;
        case 1004: nopt.memory = strtoll(optarg, NULL, 10); break;
        case 1005: nopt.resources = optarg; break;
        case 1006:
        case 1007:
        case 1008: {
            char *end;
            double v = strtod(optarg, &end);

            if (*optarg == '\0' || *end != '\0' || !(v >= 0) || v > 86400) {
                fprintf(stderr, "dexec-worker: --%s expects seconds in 0..86400 (0: no limit), "
                                "got '%s'\n",
                        c == 1006 ? "frame-timeout" : c == 1007 ? "idle-timeout"
                                                                : "handshake-timeout",
                        optarg);
                return 2;
            }
            if (c == 1006)
                opt.frame_timeout = v;
            else if (c == 1007)
                opt.idle_timeout = v;
            else
                opt.hello_timeout = v;
            break;
        }
        case 1009:
        case 1010: {
            char *end;
            unsigned long long v = strtoull(optarg, &end, 10);
            unsigned long long lo = c == 1009 ? 512 : 1, hi = c == 1009 ? 1048576 : 65536;

            if (*optarg == '\0' || *end != '\0' || *optarg == '-' || v < lo || v > hi) {
                fprintf(stderr, "dexec-worker: --%s expects %s in %llu..%llu, got '%s'\n",
                        c == 1009 ? "hello-max-frame" : "max-unauthenticated",
                        c == 1009 ? "bytes" : "a count", lo, hi, optarg);
                return 2;
            }
            if (c == 1009)
                opt.hello_max_frame = (size_t)v;
            else
                opt.hello_max_conns = (int)v;
            break;
        }
        case 1020: opt.allow_admin = 1; break;
        case 'N': reg_opt.name = optarg; break;
        case 'G': reg_opt.url = optarg; break;
        case 'T': reg_opt.ttl = atoi(optarg); break;
        case 'A': reg_opt.advertise = optarg; break;
        case 'O': opt.owner_wait = strtod(optarg, NULL); break;
        case 'L':
            if (dexec_log_level_parse(optarg) < 0) {
                fprintf(stderr, "dexec-worker: bad --log-level '%s' (error, warn, info, debug)\n",
                        optarg);
                return 2;
            }
            dexec_log_set_level((dexec_log_level)dexec_log_level_parse(optarg));
            break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("dexec-worker %s\n", dexec_version()); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dexec-worker: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (node && opt.allow_admin) {
        /* an actor gets it from spawn_actor's "admin", which its engine sets */
        fprintf(stderr, "dexec-worker: --allow-admin applies to a worker, not to --node (an "
                        "actor serves administrative methods when its engine's "
                        "allow_admin_methods is true)\n");
        return 2;
    }
    if (node) {
        nopt.listen = listen_addr;
        nopt.registry = reg_opt.url;
        nopt.advertise = reg_opt.advertise;
        nopt.ttl = reg_opt.ttl;
        nopt.token_file = token_file;
        nopt.insecure = insecure;
        nopt.max_frame = opt.max_frame;
        nopt.frame_timeout = opt.frame_timeout;
        nopt.idle_timeout = opt.idle_timeout;
        nopt.hello_timeout = opt.hello_timeout;
        nopt.hello_max_frame = opt.hello_max_frame;
        nopt.hello_max_conns = opt.hello_max_conns;
        nopt.print_address = print_address;
        return dxn_run(&nopt);
    }
    if (listen_addr == NULL) {
        fprintf(stderr, "dexec-worker: --listen is required (unix:/PATH, tcp:HOST:PORT, fd:N)\n");
        return 2;
    }
    if (opt.base_rank < 0 || opt.num_ranks < 1 || opt.num_ranks > 64) {
        fprintf(stderr, "dexec-worker: --rank must be >= 0 and --ranks in 1..64\n");
        return 2;
    }
    if ((reg_opt.url != NULL || reg_opt.advertise != NULL || reg_opt.ttl != 0) &&
        reg_opt.name == NULL) {
        fprintf(stderr, "dexec-worker: --registry, --ttl and --advertise need --name\n");
        return 2;
    }
    if (reg_opt.name != NULL && (reg_opt.ttl < 0 || reg_opt.ttl > 3600)) {
        fprintf(stderr, "dexec-worker: --ttl must be in 1..3600 seconds\n");
        return 2;
    }
    if (reg_opt.name != NULL && strncmp(listen_addr, "fd:", 3) == 0) {
        fprintf(stderr, "dexec-worker: --name needs a unix: or tcp: listener, not %s\n",
                listen_addr);
        return 2;
    }
    opt.name = reg_opt.name;
    if (opt.max_frame < 4096) {
        fprintf(stderr, "dexec-worker: --max-frame must be at least 4096\n");
        return 2;
    }
    if (strcmp(opt.device, "auto") != 0 && strcmp(opt.device, "cpu") != 0 &&
        strcmp(opt.device, "cuda") != 0) {
        fprintf(stderr, "dexec-worker: bad --device '%s' (auto, cpu, cuda)\n", opt.device);
        return 2;
    }
    if (opt.dtype != NULL && strcmp(opt.dtype, "float32") != 0 &&
        strcmp(opt.dtype, "float16") != 0 && strcmp(opt.dtype, "bfloat16") != 0) {
        fprintf(stderr, "dexec-worker: bad --dtype '%s' (float32, float16, bfloat16)\n",
                opt.dtype);
        return 2;
    }
    if (opt.dtype != NULL && strcmp(opt.dtype, "float32") != 0 && strcmp(opt.device, "cpu") == 0) {
        /* refused here, not at the first engine's hello: a worker that
         * could never open its model would wait for engines to fail */
        fprintf(stderr,
                "dexec-worker: --dtype %s is not supported with --device cpu: the CPU backend "
                "computes in float32 (float16 and bfloat16 files are converted when loaded); "
                "start it with --dtype float32 (the default) or --device cuda\n",
                opt.dtype);
        return 2;
    }
    if (opt.owner_wait < 0 || opt.owner_wait > 86400 ||
        (opt.owner_wait > 0 && strncmp(listen_addr, "fd:", 3) == 0)) {
        fprintf(stderr, "dexec-worker: --owned takes 1..86400 seconds, with a unix: or tcp: "
                        "listener\n");
        return 2;
    }
    if (token_file != NULL && strcmp(token_file, "-") == 0) {
        if (read_stdin_token(&token) != 0)
            return 1;
    } else if (token_file != NULL &&
               dexec_token_read(token_file, &token, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec-worker: %s\n", err);
        return 1;
    }
    opt.token = token;

    signal(SIGPIPE, SIG_IGN);
    if (strncmp(listen_addr, "fd:", 3) == 0) {
        char *end;
        long n = strtol(listen_addr + 3, &end, 10);

        if (*end != '\0' || n < 0 || n > INT_MAX) {
            fprintf(stderr, "dexec-worker: bad address '%s': expected fd:N\n", listen_addr);
            return 2;
        }
        fd = (int)n;
        opt.exit_on_eof = 1;
    } else if (dxw_listen(listen_addr, token != NULL, insecure, &lis, bound, sizeof(bound), err,
                          sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec-worker: %s\n", err);
        free(token);
        return 1;
    }

    {
        /* the host peers reach this worker at: its advertised or bound TCP
         * address, a wildcard one named by the host name */
        static char chost[256];
        const char *a = reg_opt.advertise != NULL ? reg_opt.advertise : bound;

        if (strncmp(listen_addr, "fd:", 3) != 0 && strncmp(a, "tcp:", 4) == 0) {
            const char *h = a + 4, *colon = strrchr(h, ':');

            if (colon != NULL && h[0] == '[')
                snprintf(chost, sizeof(chost), "%.*s", (int)(colon - h - 2), h + 1);
            else if (colon != NULL)
                snprintf(chost, sizeof(chost), "%.*s", (int)(colon - h), h);
            if (strcmp(chost, "0.0.0.0") == 0 || strcmp(chost, "::") == 0 || strcmp(chost, "") == 0)
                gethostname(chost, sizeof(chost) - 1);
            opt.coll_host = chost;
        }
    }
    if (dxw_server_new(&opt, &g_server, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec-worker: %s\n", err);
        dxw_listener_close(&lis);
        free(token);
        return 1;
    }
    if (opt.exit_on_eof)
        dxw_server_add_connection(g_server, fd);
    else
        dxw_server_add_listener(g_server, lis.fd);

    if (reg_opt.name != NULL) {
        reg_opt.bound = bound;
        reg_opt.model = opt.model;
        reg_opt.rank = opt.base_rank;
        reg_opt.num_ranks = opt.num_ranks;
        if (dxw_registry_open(&reg_opt, &registry, err, sizeof(err)) != DEXEC_OK) {
            fprintf(stderr, "dexec-worker: %s\n", err);
            dxw_server_free(g_server);
            lis.fd = -1; /* closed by the server; the socket file is still ours */
            dxw_listener_close(&lis);
            free(token);
            return 1;
        }
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (!opt.exit_on_eof) {
        dexec_log(DEXEC_LOG_INFO, "worker", "rank %d listening on %s", opt.base_rank, bound);
        if (print_address) {
            printf("%s\n", bound);
            fflush(stdout);
        }
    }
    status = dxw_server_run(g_server);
    dxw_registry_close(registry);
    /* listeners keep lis.fd; only the unix socket file is ours to remove */
    lis.fd = -1;
    dxw_listener_close(&lis);
    /* the running requests were cancelled: each ends at its next step */
    for (double give_up = dexec_now() + STOP_WAIT_S;
         dxw_server_busy(g_server) && dexec_now() < give_up;)
        usleep(10000);
    if (dxw_server_busy(g_server)) {
        /* a step longer than the wait: leave without exit()'s handlers, since
         * OpenBLAS's destructor joins its threads while a rank still waits on
         * them in an SGEMM (a worker then hung until its owner's SIGKILL) */
        dexec_log(DEXEC_LOG_WARN, "worker",
                  "a rank was still computing %.0f s after the stop: leaving without waiting "
                  "for its step",
                  STOP_WAIT_S);
        fflush(NULL);
        _exit(status);
    } else {
        dxw_server *s = g_server;

        /* a late SIGTERM (an owner's shutdown ladder) must not reach a freed server */
        g_server = NULL;
        dxw_server_free(s);
    }
    free(token);
    return status;
}
