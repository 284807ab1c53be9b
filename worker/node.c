/*
 * node.c - the node agent (dexec-worker --node).
 *
 * One thread runs everything: the RPC server core (rpc_server.c: accept,
 * hello, framing, dispatch to the method table below) over the listener
 * and the engines' connections, and the stdout pipes of actors still
 * starting, watched through it. Actors are forked by libdexec's spawner
 * thread (dexec_process_spawn), which lives as long as the agent, so
 * their parent-death signal fires exactly when the agent dies. The loop
 * also reaps actors, finishes the kill
 * ladder of actors whose engine left, and publishes the node's free
 * resources in the registry about once a second.
 *
 * Accounting: an actor holds its CPUs (a disjoint set of this agent's
 * CPUs), GPUs (distinct device indices), memory and custom resources from
 * spawn until it is reaped; "free" is capacity minus what live actors hold.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <dexec/discovery.h>
#include <dexec/process.h>
#include <dexec/rpc.h>

#include "listen.h"
#include "node.h"
#include "rpc_server.h"

#define COMPONENT "node"
#define WRITE_TIMEOUT 5.0
#define TICK 0.05          /* reaping and the kill ladder run on this clock */
#define MAX_GPUS 64

typedef struct nactor {
    dexec_process *child;
    int pid;
    int id;
    int running;         /* not reaped yet */
    struct node *node;
    dxs_conn *owner;     /* the engine that asked for it; NULL once it left */
    uint32_t msgid;      /* its spawn_actor call, answered once the actor listens */
    int replied;
    int out_fd;          /* the actor's stdout, where it prints its address; -1 after */
    char out[512];
    size_t outlen;
    /* what it holds */
    int cpus, gpus;
    cpu_set_t cpuset;
    uint64_t gpumask;
    int64_t memory;
    dexec_value *labels;
    char tokfile[300];
    double kill_at;      /* SIGKILL time once SIGTERMed (+ timeouts.shutdown_grace); 0: none */
    char exit_desc[128];
    struct nactor *next;
} nactor;

typedef struct node {
    const dxn_options *opt;
    char *token;
    dxw_listener lis;
    char bound[512];
    char actor_host[300]; /* where actors listen: the agent's own host */
    char tmpdir[256]; /* private: token files and unix sockets of actors */
    const char *worker;
    char self_exe[PATH_MAX];
    /* capacity */
    int cpus, gpus;
    int64_t memory;
    dexec_value *resources;
    cpu_set_t pool, outside; /* CPUs actors may get; allowed CPUs they may not */
    dxs_server *rpc;
    double last_beat;
    nactor *actors;
    int next_id;
    /* registry */
    dexec_config *cfg;
    dexec_discovery_handle *disc;
    dexec_actor_info info;
    int ttl;
    int beat_failing;
    double grace; /* timeouts.shutdown_grace: SIGTERM to SIGKILL for actors */
} node;

static dxs_server *g_rpc;

static void on_signal(int sig)
{
    (void)sig;
    if (g_rpc != NULL)
        dxs_stop(g_rpc);
}

/* Node agents answer for no rank. */
static void reply_err(dxs_conn *c, uint32_t msgid, dexec_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void reply_err(dxs_conn *c, uint32_t msgid, dexec_status code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    dxs_reply_err(c, msgid, code, -1, "%s", msg);
}

/* ---- accounting -------------------------------------------------------------------- */

typedef struct room {
    cpu_set_t busy; /* CPUs held by live actors */
    int cpus, gpus; /* free */
    uint64_t gpus_used;
    int64_t memory;
    dexec_value *resources; /* free amounts (MAP) */
} room;

static void room_compute(const node *n, room *r)
{
    CPU_ZERO(&r->busy);
    r->gpus_used = 0;
    r->memory = n->memory;
    r->resources = dexec_value_clone(n->resources);
    for (const nactor *a = n->actors; a != NULL; a = a->next) {
        if (!a->running)
            continue;
        CPU_OR(&r->busy, &r->busy, &a->cpuset);
        r->gpus_used |= a->gpumask;
        r->memory -= a->memory;
        for (size_t i = 0; a->labels != NULL && i < a->labels->u.map.len; i++) {
            const dexec_kv *kv = &a->labels->u.map.items[i];
            double have = dexec_value_as_float(dexec_value_map_get(r->resources, kv->key), 0);

            dexec_value_map_set(r->resources, kv->key,
                                dexec_value_float(have - dexec_value_as_float(kv->val, 0)));
        }
    }
    r->cpus = n->cpus - CPU_COUNT(&r->busy);
    r->gpus = n->gpus - __builtin_popcountll(r->gpus_used);
}

static dexec_value *resources_value(int cpus, int gpus, int64_t memory, const dexec_value *res)
{
    dexec_value *m = dexec_value_map();

    dexec_value_map_set(m, "cpus", dexec_value_int(cpus));
    dexec_value_map_set(m, "gpus", dexec_value_int(gpus));
    dexec_value_map_set(m, "memory", dexec_value_int(memory));
    dexec_value_map_set(m, "resources", res != NULL ? dexec_value_clone(res) : dexec_value_map());
    return m;
}

static dexec_value *node_meta(const node *n)
{
    dexec_value *m = dexec_value_map();
    room r;
    int live = 0;

    room_compute(n, &r);
    for (const nactor *a = n->actors; a != NULL; a = a->next)
        live += a->running;
    dexec_value_map_set(m, "kind", dexec_value_str("node"));
    dexec_value_map_set(m, "capacity",
                        resources_value(n->cpus, n->gpus, n->memory, n->resources));
    dexec_value_map_set(m, "free", resources_value(r.cpus, r.gpus, r.memory, r.resources));
    dexec_value_map_set(m, "actors", dexec_value_int(live));
    dexec_value_map_set(m, "version", dexec_value_str(dexec_version()));
    dexec_value_free(r.resources);
    return m;
}

/* ---- registry ------------------------------------------------------------------------ */

static void publish(node *n)
{
    char err[512];
    dexec_status st;

    dexec_value_free(n->info.meta);
    n->info.meta = node_meta(n);
    st = dexec_discovery_heartbeat(n->disc, &n->info, n->ttl, err, sizeof(err));
    if (st != DEXEC_OK && !n->beat_failing)
        dexec_log(DEXEC_LOG_WARN, COMPONENT, "node %s: registry update failed: %s",
                  n->info.name, err);
    else if (st == DEXEC_OK && n->beat_failing)
        dexec_log(DEXEC_LOG_INFO, COMPONENT, "node %s: registry reachable again", n->info.name);
    n->beat_failing = st != DEXEC_OK;
}

/* The address engines reach us at: --advertise (a host, or tcp:HOST:PORT),
 * else the bound one. */
static int advertised(const node *n, char *buf, size_t len)
{
    const char *adv = n->opt->advertise;
    char host[256], port[16];

    if (adv == NULL) {
        snprintf(buf, len, "%s", n->bound);
        return 0;
    }
    if (strncmp(adv, "tcp:", 4) == 0 || strncmp(adv, "unix:", 5) == 0) {
        snprintf(buf, len, "%s", adv);
        return 0;
    }
    if (strncmp(n->bound, "tcp:", 4) != 0 ||
        dexec_split_hostport(n->bound + 4, host, sizeof(host), port, sizeof(port)) != 0)
        return -1;
    snprintf(buf, len, strchr(adv, ':') ? "tcp:[%s]:%s" : "tcp:%s:%s", adv, port);
    return 0;
}

static int registry_open(node *n, char *err, size_t errlen)
{
    char host[256] = "", inst[96], addr[600];
    unsigned char rnd[8] = {0};
    int64_t ttl = 10;
    dexec_status st;

    st = dexec_config_load(NULL, &n->cfg, err, errlen);
    if (st != DEXEC_OK)
        return -1;
    dexec_config_get_int(n->cfg, "discovery.redis.ttl", &ttl);
    dexec_config_get_float(n->cfg, "timeouts.shutdown_grace", &n->grace);
    n->ttl = n->opt->ttl > 0 ? n->opt->ttl : (int)ttl;
    if (advertised(n, addr, sizeof(addr)) != 0) {
        dexec_errorf(err, errlen, "--advertise %s: a host needs a tcp: listener",
                     n->opt->advertise);
        return -1;
    }
    gethostname(host, sizeof(host) - 1);
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        memset(rnd, (int)getpid(), sizeof(rnd));
    snprintf(inst, sizeof(inst), "%s-%d-%02x%02x%02x%02x%02x%02x%02x%02x", host, (int)getpid(),
             rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    dexec_actor_info_init(&n->info);
    n->info.name = strdup(n->opt->name);
    n->info.address = strdup(addr);
    n->info.host = strdup(host);
    n->info.instance = strdup(inst);
    n->info.pid = (int)getpid();
    n->info.protocol = DEXEC_PROTOCOL_VERSION;
    n->info.started = (double)time(NULL);
    n->info.meta = node_meta(n);
    st = dexec_discovery_open(n->cfg, NULL, n->opt->registry, &n->disc, err, errlen);
    if (st == DEXEC_OK)
        st = dexec_discovery_register(n->disc, &n->info, n->ttl, err, errlen);
    return st == DEXEC_OK ? 0 : -1;
}

/* ---- actors -------------------------------------------------------------------------- */

static void actor_free(node *n, nactor *a)
{
    for (nactor **pp = &n->actors; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    }
    if (a->out_fd >= 0) {
        dxs_unwatch(n->rpc, a->out_fd);
        close(a->out_fd);
    }
    if (a->tokfile[0] != '\0')
        unlink(a->tokfile);
    if (n->actor_host[0] == '\0' && n->tmpdir[0] != '\0') {
        char sock[300];

        /* an actor killed by a signal leaves its unix socket file behind */
        snprintf(sock, sizeof(sock), "%s/actor-%d.sock", n->tmpdir, a->id);
        unlink(sock);
    }
    dexec_value_free(a->labels);
    free(a);
}

/* An actor ended: its resources are free again. */
static void actor_reaped(node *n, nactor *a)
{
    a->running = 0;
    dexec_describe_exit(dexec_process_status(a->child), a->exit_desc, sizeof(a->exit_desc));
    dexec_process_free(a->child);
    a->child = NULL;
    dexec_log(DEXEC_LOG_INFO, COMPONENT, "actor pid %d %s", (int)a->pid, a->exit_desc);
    if (a->owner != NULL && !a->replied) {
        reply_err(a->owner, a->msgid, DEXEC_EINIT,
                  "actor pid %d on node %s %s before it was ready (its log is in the node "
                  "agent's stderr)",
                  (int)a->pid, n->info.name, a->exit_desc);
        a->replied = 1;
    }
    if (a->owner == NULL)
        actor_free(n, a);
    publish(n);
}

/* The actor printed its address: answer the engine that asked. */
static void actor_ready(node *n, nactor *a, const char *address)
{
    dexec_value *r = dexec_value_map();

    dexec_value_map_set(r, "pid", dexec_value_int(a->pid));
    dexec_value_map_set(r, "address", dexec_value_str(address));
    dexec_value_map_set(r, "node", dexec_value_str(n->info.name));
    if (a->owner != NULL && !a->replied)
        dxs_reply_ok(a->owner, a->msgid, r);
    else
        dexec_value_free(r);
    a->replied = 1;
    /* the actor read its token at start */
    if (a->tokfile[0] != '\0') {
        unlink(a->tokfile);
        a->tokfile[0] = '\0';
    }
    dexec_log(DEXEC_LOG_INFO, COMPONENT, "actor pid %d listening on %s", (int)a->pid,
              address);
}

static void actor_read_out(void *arg, int fd)
{
    nactor *a = arg;
    node *n = a->node;
    ssize_t got = read(a->out_fd, a->out + a->outlen, sizeof(a->out) - 1 - a->outlen);
    char *nl;

    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (got > 0) {
        a->outlen += (size_t)got;
        a->out[a->outlen] = '\0';
        nl = strchr(a->out, '\n');
        if (nl == NULL && a->outlen < sizeof(a->out) - 1)
            return;
        if (nl != NULL)
            *nl = '\0';
        actor_ready(n, a, a->out);
    }
    /* an address, EOF or an error: nothing more to read (a failure is
     * reported when the actor is reaped) */
    dxs_unwatch(n->rpc, fd);
    close(a->out_fd);
    a->out_fd = -1;
}

/* The engine left: its actors go (SIGTERM now, SIGKILL after the grace). */
static void owner_left(node *n, dxs_conn *c)
{
    nactor *a = n->actors, *next;

    for (; a != NULL; a = next) {
        next = a->next;
        if (a->owner != c)
            continue;
        a->owner = NULL;
        if (!a->running) {
            actor_free(n, a);
            continue;
        }
        dexec_log(DEXEC_LOG_INFO, COMPONENT, "engine of actor pid %d left: stopping it",
                  (int)a->pid);
        dexec_process_signal(a->child, SIGTERM);
        a->kill_at = dexec_now() + n->grace;
    }
}

static int parse_spawn(const dexec_value *p, int *ranks, const char **model, const char **device,
                       const char **dtype, int *cpus, int *gpus, int64_t *memory,
                       const dexec_value **labels, const char **token, char *err, size_t errlen)
{
    const dexec_value *v;

    if (p == NULL || p->type != DEXEC_VAL_MAP) {
        snprintf(err, errlen, "spawn_actor: expected params [{ranks, model, device, dtype, cpus, "
                              "gpus, memory, resources, token, admin}]");
        return -1;
    }
    *ranks = (int)dexec_value_as_int(dexec_value_map_get(p, "ranks"), 1);
    *model = dexec_value_as_str(dexec_value_map_get(p, "model"), "fashion-dit");
    *device = dexec_value_as_str(dexec_value_map_get(p, "device"), "auto");
    *dtype = dexec_value_as_str(dexec_value_map_get(p, "dtype"), "float32");
    *cpus = (int)dexec_value_as_int(dexec_value_map_get(p, "cpus"), 1);
    *gpus = (int)dexec_value_as_int(dexec_value_map_get(p, "gpus"), 0);
    *memory = dexec_value_as_int(dexec_value_map_get(p, "memory"), 0);
    *token = dexec_value_as_str(dexec_value_map_get(p, "token"), NULL);
    v = dexec_value_map_get(p, "resources");
    *labels = v != NULL && v->type == DEXEC_VAL_MAP ? v : NULL;
    if (*ranks < 1 || *ranks > 64 || *cpus < 0 || *gpus < 0 || *gpus > MAX_GPUS ||
        *memory < 0 || (*model)[0] == '\0' || (*model)[0] == '-') {
        snprintf(err, errlen, "spawn_actor: ranks 1..64, cpus >= 0, gpus 0..%d, memory >= 0 and "
                              "a model name are required", MAX_GPUS);
        return -1;
    }
    if (strcmp(*device, "auto") != 0 && strcmp(*device, "cpu") != 0 &&
        strcmp(*device, "cuda") != 0) {
        snprintf(err, errlen, "spawn_actor: bad device '%s' (auto, cpu, cuda)", *device);
        return -1;
    }
    if (strcmp(*dtype, "float32") != 0 && strcmp(*dtype, "float16") != 0 &&
        strcmp(*dtype, "bfloat16") != 0) {
        snprintf(err, errlen, "spawn_actor: bad dtype '%.64s' (float32, float16, bfloat16)",
                 *dtype);
        return -1;
    }
    if (*token != NULL && strspn(*token, "0123456789abcdefABCDEF") != strlen(*token)) {
        snprintf(err, errlen, "spawn_actor: the token must be hex digits");
        return -1;
    }
    return 0;
}

static int write_token(const char *path, const char *token)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    size_t len = strlen(token);
    ssize_t w;

    if (fd < 0)
        return -1;
    w = write(fd, token, len);
    close(fd);
    return w == (ssize_t)len ? 0 : -1;
}

static void reap_and_kill(node *n);

/* Picks n CPUs not in avoid into *set, and writes them as a CPU list
 * ("0-3,8") for dexec_process_spawn. 0, or -1 when fewer are free or the
 * list does not fit. */
static int pick_cpus(int ncpus, const cpu_set_t *avoid, cpu_set_t *set, char *list, size_t len)
{
    cpu_set_t allowed;
    size_t off = 0;
    int k = 0;

    CPU_ZERO(set);
    list[0] = '\0';
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
        return -1;
    for (int i = 0; i < CPU_SETSIZE && k < ncpus; i++) {
        int w;

        if (!CPU_ISSET(i, &allowed) || CPU_ISSET(i, avoid))
            continue;
        CPU_SET(i, set);
        w = snprintf(list + off, len - off, "%s%d", k ? "," : "", i);
        if (w < 0 || (size_t)w >= len - off)
            return -1;
        off += (size_t)w;
        k++;
    }
    return k == ncpus ? 0 : -1;
}

/* spawn_actor's "env": absent, nil or a MAP of NAME: "value". */
static int check_env(const dexec_value *ev, char *err, size_t errlen)
{
    if (ev == NULL || ev->type == DEXEC_VAL_NIL)
        return 0;
    if (ev->type != DEXEC_VAL_MAP) {
        snprintf(err, errlen, "spawn_actor: env must be a map of NAME: \"value\"");
        return -1;
    }
    for (size_t k = 0; k < ev->u.map.len; k++) {
        const dexec_kv *kv = &ev->u.map.items[k];

        if (kv->val->type != DEXEC_VAL_STR || kv->key[0] == '\0' ||
            strchr(kv->key, '=') != NULL) {
            snprintf(err, errlen, "spawn_actor: env: %s must be a string under a name without '='",
                     kv->key);
            return -1;
        }
    }
    return 0;
}

/* The checked "env" as NAME=VALUE strings (dexec_env_free), NULL on ENOMEM. */
static char **env_list(const dexec_value *ev)
{
    size_t n = ev != NULL && ev->type == DEXEC_VAL_MAP ? ev->u.map.len : 0;
    char **env = calloc(n + 1, sizeof(*env));

    for (size_t k = 0; env != NULL && k < n; k++)
        if (asprintf(&env[k], "%s=%s", ev->u.map.items[k].key,
                     ev->u.map.items[k].val->u.str.ptr) < 0) {
            env[k] = NULL;
            dexec_env_free(env);
            env = NULL;
        }
    return env;
}

static void handle_spawn(node *n, dxs_conn *c, uint32_t id, const dexec_value *params)
{
    char **env;
    int ranks, cpus, gpus, pfd[2], admin;
    int64_t memory;
    const char *model, *device, *dtype, *token;
    const dexec_value *labels, *adm;
    char err[1024], missing[128], want[256], ranks_s[16], listen_s[320], devs[256];
    char *argv[24];
    char cpulist[1024] = "";
    dexec_spawn_args sa = {.struct_size = sizeof(sa), .argv = argv, .component = COMPONENT,
                           .label = "actor"};
    nactor *a;
    room r;
    int i = 0;
    cpu_set_t avoid;
    size_t off = 0;

    if (parse_spawn(dexec_value_array_get(params, 0), &ranks, &model, &device, &dtype, &cpus,
                    &gpus, &memory, &labels, &token, err, sizeof(err)) != 0) {
        reply_err(c, id, DEXEC_EINVAL, "%s", err);
        return;
    }
    /* "env": the engine's runtime_env.env_vars, {NAME: "value"} */
    if (check_env(dexec_value_map_get(dexec_value_array_get(params, 0), "env"), err,
                  sizeof(err)) != 0) {
        reply_err(c, id, DEXEC_EINVAL, "%s", err);
        return;
    }
    adm = dexec_value_map_get(dexec_value_array_get(params, 0), "admin");
    admin = adm != NULL && adm->type == DEXEC_VAL_BOOL && adm->u.b;
    if (admin && token == NULL) {
        /* the actor would serve load_model to anyone who can reach it */
        reply_err(c, id, DEXEC_EINVAL, "spawn_actor: admin needs a token");
        return;
    }
    /* an actor that exited since the last tick still counts until reaped:
     * reap now, so a spawn right after an engine left finds its room */
    reap_and_kill(n);
    room_compute(n, &r);
    dexec_resources_format(labels, want, sizeof(want));
    err[0] = '\0';
    if (cpus > r.cpus)
        snprintf(err, sizeof(err), "%d CPUs free", r.cpus);
    else if (gpus > r.gpus)
        snprintf(err, sizeof(err), "%d GPUs free", r.gpus);
    else if (memory > r.memory)
        snprintf(err, sizeof(err), "%lld bytes of memory free", (long long)r.memory);
    else if (!dexec_resources_fit(labels, r.resources, missing, sizeof(missing)))
        snprintf(err, sizeof(err), "no %s free", missing);
    dexec_value_free(r.resources);
    if (err[0] != '\0') {
        reply_err(c, id, DEXEC_ENOTFOUND,
                  "node %s has no room for {cpus=%d,gpus=%d,memory=%lld%s%s}: %s", n->info.name,
                  cpus, gpus, (long long)memory, want[0] ? ",labels=" : "", want, err);
        return;
    }
    a = calloc(1, sizeof(*a));
    if (a == NULL) {
        reply_err(c, id, DEXEC_ENOMEM, "out of memory");
        return;
    }
    a->id = ++n->next_id;
    a->out_fd = -1;
    a->cpus = cpus;
    a->gpus = gpus;
    a->memory = memory;
    a->labels = labels != NULL ? dexec_value_clone(labels) : NULL;
    /* disjoint CPU sets: everything held or outside the pool is avoided */
    CPU_OR(&avoid, &r.busy, &n->outside);
    if (cpus > 0 && pick_cpus(cpus, &avoid, &a->cpuset, cpulist, sizeof(cpulist)) != 0) {
        reply_err(c, id, DEXEC_ENOTFOUND,
                  "node %s: %d CPUs asked but fewer are free (CPU list too long or taken)",
                  n->info.name, cpus);
        actor_free(n, a);
        return;
    }
    devs[0] = '\0';
    for (int g = 0, k = 0; g < n->gpus && k < gpus; g++) {
        if (r.gpus_used & (1ull << g))
            continue;
        a->gpumask |= 1ull << g;
        off += (size_t)snprintf(devs + off, sizeof(devs) - off, "%s%d", k ? "," : "", g);
        k++;
    }
    sa.cpus = cpulist;
    sa.visible_gpus = devs;
    sa.memory_bytes = memory;

    snprintf(ranks_s, sizeof(ranks_s), "%d", ranks);
    if (n->actor_host[0] != '\0')
        snprintf(listen_s, sizeof(listen_s), "tcp:%s:0", n->actor_host);
    else
        snprintf(listen_s, sizeof(listen_s), "unix:%s/actor-%d.sock", n->tmpdir, a->id);
    argv[i++] = (char *)n->worker;
    argv[i++] = "--listen";
    argv[i++] = listen_s;
    argv[i++] = "--print-address";
    argv[i++] = "--ranks";
    argv[i++] = ranks_s;
    argv[i++] = "--rank";
    argv[i++] = "0";
    argv[i++] = "--model";
    argv[i++] = (char *)model;
    argv[i++] = "--device";
    argv[i++] = (char *)device;
    argv[i++] = "--dtype";
    argv[i++] = (char *)dtype;
    if (token != NULL) {
        snprintf(a->tokfile, sizeof(a->tokfile), "%s/actor-%d.token", n->tmpdir, a->id);
        if (write_token(a->tokfile, token) != 0) {
            reply_err(c, id, DEXEC_EIO, "node %s: cannot write %s: %s", n->info.name,
                      a->tokfile, strerror(errno));
            a->tokfile[0] = '\0';
            actor_free(n, a);
            return;
        }
        argv[i++] = "--token-file";
        argv[i++] = a->tokfile;
    } else if (n->opt->token_file != NULL) {
        argv[i++] = "--token-file";
        argv[i++] = (char *)n->opt->token_file;
    }
    if (n->opt->insecure)
        argv[i++] = "--insecure";
    if (admin)
        argv[i++] = "--allow-admin";
    argv[i] = NULL;
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        reply_err(c, id, DEXEC_EIO, "node %s: pipe: %s", n->info.name, strerror(errno));
        actor_free(n, a);
        return;
    }
    sa.stdout_fd = pfd[1];
    env = env_list(dexec_value_map_get(dexec_value_array_get(params, 0), "env"));
    sa.env = (const char *const *)env;
    if (env == NULL || dexec_process_spawn(&sa, &a->child, err, sizeof(err)) != DEXEC_OK) {
        close(pfd[0]);
        close(pfd[1]);
        if (env == NULL)
            reply_err(c, id, DEXEC_ENOMEM, "node %s: out of memory", n->info.name);
        else
            reply_err(c, id, DEXEC_EINIT, "node %s: %s", n->info.name, err);
        dexec_env_free(env);
        actor_free(n, a);
        return;
    }
    dexec_env_free(env);
    close(pfd[1]);
    a->pid = dexec_process_pid(a->child);
    fcntl(pfd[0], F_SETFL, fcntl(pfd[0], F_GETFL) | O_NONBLOCK);
    a->out_fd = pfd[0];
    a->node = n;
    if (dxs_watch(n->rpc, a->out_fd, actor_read_out, a) != 0) {
        /* it could never be answered: stop it, it is reaped as usual */
        reply_err(c, id, DEXEC_ENOMEM, "node %s: out of memory", n->info.name);
        a->replied = 1;
        dexec_process_signal(a->child, SIGKILL);
    }
    a->running = 1;
    a->owner = c;
    a->msgid = id;
    a->next = n->actors;
    n->actors = a;
    dexec_log(DEXEC_LOG_INFO, COMPONENT,
              "spawned actor pid %d: %d rank%s, %d CPUs, GPUs [%s], memory %lld, labels {%s}",
              (int)a->pid, ranks, ranks == 1 ? "" : "s", cpus, devs, (long long)memory,
              want);
    publish(n);
}

static void handle_actor_status(node *n, dxs_conn *c, uint32_t id, const dexec_value *params)
{
    int64_t pid = dexec_value_as_int(dexec_value_array_get(params, 0), -1);
    dexec_value *r;

    for (nactor *a = n->actors; a != NULL; a = a->next) {
        if (a->pid != pid)
            continue;
        r = dexec_value_map();
        dexec_value_map_set(r, "pid", dexec_value_int(pid));
        dexec_value_map_set(r, "running", dexec_value_bool(a->running));
        if (!a->running)
            dexec_value_map_set(r, "exit", dexec_value_str(a->exit_desc));
        dxs_reply_ok(c, id, r);
        return;
    }
    reply_err(c, id, DEXEC_ENOTFOUND, "node %s has no actor with pid %lld", n->info.name,
              (long long)pid);
}

/* ---- engine connections ------------------------------------------------------------------ */

static dexec_value *hello_reply(void *user)
{
    node *n = user;
    dexec_value *r = dexec_value_map();

    dexec_value_map_set(r, "protocol", dexec_value_int(DEXEC_PROTOCOL_VERSION));
    dexec_value_map_set(r, "kind", dexec_value_str("node"));
    dexec_value_map_set(r, "name", dexec_value_str(n->info.name));
    dexec_value_map_set(r, "pid", dexec_value_int(getpid()));
    dexec_value_map_set(r, "host", dexec_value_str(n->info.host));
    dexec_value_map_set(r, "rank", dexec_value_int(0));
    dexec_value_map_set(r, "version", dexec_value_str(dexec_version()));
    return r;
}

static int m_spawn_actor(void *user, dxs_conn *c, uint32_t id, dexec_value *params)
{
    handle_spawn(user, c, id, params);
    dexec_value_free(params);
    return 0;
}

static int m_actor_status(void *user, dxs_conn *c, uint32_t id, dexec_value *params)
{
    handle_actor_status(user, c, id, params);
    dexec_value_free(params);
    return 0;
}

static dexec_value *a_get_info(void *user, const dexec_value *params)
{
    (void)params;
    return node_meta(user);
}

/* The method table: what the core dispatches to after hello. */
static const dxs_method node_methods[] = {
    {"spawn_actor", m_spawn_actor, NULL, NULL},
    {"actor_status", m_actor_status, NULL, NULL},
    {"get_info", NULL, NULL, a_get_info},
    {NULL, NULL, NULL, NULL},
};

static void conn_closed(void *user, dxs_conn *c)
{
    owner_left(user, c);
}

static void reap_and_kill(node *n)
{
    double now = dexec_now();
    nactor *a = n->actors, *next;

    for (; a != NULL; a = next) {
        next = a->next;
        if (!a->running)
            continue;
        if (dexec_process_reap(a->child, 0)) {
            actor_reaped(n, a);
        } else if (a->kill_at > 0 && now >= a->kill_at) {
            dexec_log(DEXEC_LOG_WARN, COMPONENT, "actor pid %d ignored SIGTERM: SIGKILL",
                      (int)a->pid);
            dexec_process_signal(a->child, SIGKILL);
            a->kill_at = 0;
        }
    }
}

/* Every TICK: reap, the kill ladder, and the registry about once a second. */
static void tick(void *user)
{
    node *n = user;

    reap_and_kill(n);
    if (dexec_now() - n->last_beat >= 1.0) {
        n->last_beat = dexec_now();
        publish(n);
    }
}

/* ---- start and stop ---------------------------------------------------------------------- */

static int count_gpus(void)
{
    DIR *d = opendir("/dev");
    struct dirent *e;
    int n = 0;

    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, "nvidia", 6) == 0 && e->d_name[6] >= '0' && e->d_name[6] <= '9' &&
            strspn(e->d_name + 6, "0123456789") == strlen(e->d_name + 6))
            n++;
    closedir(d);
    return n;
}

static int capacity_init(node *n, char *err, size_t errlen)
{
    const dxn_options *o = n->opt;
    cpu_set_t allowed;
    int avail, k = 0;

    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
        snprintf(err, errlen, "sched_getaffinity: %s", strerror(errno));
        return -1;
    }
    avail = CPU_COUNT(&allowed);
    n->cpus = o->cpus >= 0 ? o->cpus : avail;
    if (n->cpus > avail) {
        snprintf(err, errlen, "--cpus %d: this process may use only %d CPUs", n->cpus, avail);
        return -1;
    }
    CPU_ZERO(&n->pool);
    CPU_ZERO(&n->outside);
    for (int i = 0; i < CPU_SETSIZE; i++) {
        if (!CPU_ISSET(i, &allowed))
            continue;
        if (k++ < n->cpus)
            CPU_SET(i, &n->pool);
        else
            CPU_SET(i, &n->outside);
    }
    n->gpus = o->gpus >= 0 ? o->gpus : count_gpus();
    if (n->gpus > MAX_GPUS) {
        snprintf(err, errlen, "--gpus %d: at most %d", n->gpus, MAX_GPUS);
        return -1;
    }
    n->memory = o->memory >= 0 ? o->memory
                               : (int64_t)sysconf(_SC_PHYS_PAGES) * (int64_t)sysconf(_SC_PAGESIZE);
    n->resources = dexec_resources_parse(o->resources, err, errlen);
    return n->resources != NULL ? 0 : -1;
}

/* Actors listen on the agent's own host (a fresh port each), or in the
 * private directory when the agent listens on a unix socket. */
static void actor_listen_host(node *n)
{
    char port[16];

    n->actor_host[0] = '\0';
    if (strncmp(n->bound, "tcp:", 4) == 0 &&
        dexec_split_hostport(n->bound + 4, n->actor_host, sizeof(n->actor_host), port,
                             sizeof(port)) == 0 &&
        strchr(n->actor_host, ':') != NULL) {
        char v6[sizeof(n->actor_host)];

        snprintf(v6, sizeof(v6), "[%s]", n->actor_host);
        snprintf(n->actor_host, sizeof(n->actor_host), "%s", v6);
    }
}

/* The agent is stopping: its actors go with it (SIGTERM, the grace,
 * SIGKILL, reap; they have no connection to us to ask them first). */
static void stop_all(node *n)
{
    size_t k = 0, cnt = 0;
    dexec_process **procs;

    for (nactor *a = n->actors; a != NULL; a = a->next)
        cnt += a->running != 0;
    procs = calloc(cnt > 0 ? cnt : 1, sizeof(*procs));
    for (nactor *a = n->actors; a != NULL; a = a->next)
        if (a->running && procs != NULL)
            procs[k++] = a->child;
    /* without memory for the list, dexec_process_free kills each at once */
    dexec_process_stop_all(procs, NULL, k, n->grace);
    free(procs);
    while (n->actors != NULL) {
        if (n->actors->running) {
            n->actors->running = 0;
            dexec_process_free(n->actors->child);
        }
        actor_free(n, n->actors);
    }
}

/* Removes the agent's private directory and what is left in it (the files
 * of actors that died without cleaning up: only this agent writes there). */
static void remove_private_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;

    if (d != NULL) {
        while ((e = readdir(d)) != NULL)
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    if (rmdir(dir) != 0 && errno != ENOENT)
        dexec_log(DEXEC_LOG_WARN, COMPONENT, "cannot remove %s: %s", dir, strerror(errno));
}

int dxn_run(const dxn_options *o)
{
    node n;
    char err[1024];
    const char *tmp = getenv("TMPDIR");
    const char *worker = getenv("DEXEC_WORKER");
    struct sigaction sa;
    ssize_t len;
    int status = 1;

    memset(&n, 0, sizeof(n));
    n.grace = 5.0; /* until the configuration says otherwise */
    n.opt = o;
    n.lis.fd = -1;
    if (o->name == NULL || o->name[0] == '\0') {
        fprintf(stderr, "dexec-worker: --node needs --node-name NAME\n");
        return 2;
    }
    if (o->listen == NULL || strncmp(o->listen, "fd:", 3) == 0) {
        fprintf(stderr, "dexec-worker: --node needs --listen tcp:HOST:PORT or unix:/PATH\n");
        return 2;
    }
    if (capacity_init(&n, err, sizeof(err)) != 0) {
        fprintf(stderr, "dexec-worker: %s\n", err);
        dexec_value_free(n.resources);
        return 2;
    }
    if (worker != NULL && worker[0] != '\0') {
        n.worker = worker;
    } else {
        len = readlink("/proc/self/exe", n.self_exe, sizeof(n.self_exe) - 1);
        if (len <= 0) {
            fprintf(stderr, "dexec-worker: cannot find its own program: %s (set DEXEC_WORKER)\n",
                    strerror(errno));
            dexec_value_free(n.resources);
            return 1;
        }
        n.self_exe[len] = '\0';
        n.worker = n.self_exe;
    }
    if (o->token_file != NULL && dexec_token_read(o->token_file, &n.token, err, sizeof(err)) !=
                                     DEXEC_OK) {
        fprintf(stderr, "dexec-worker: %s\n", err);
        dexec_value_free(n.resources);
        return 1;
    }
    snprintf(n.tmpdir, sizeof(n.tmpdir), "%s/dexec-node-XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (mkdtemp(n.tmpdir) == NULL) {
        fprintf(stderr, "dexec-worker: cannot create %s: %s\n", n.tmpdir, strerror(errno));
        n.tmpdir[0] = '\0';
        goto out;
    }
    if (dxw_listen(o->listen, n.token != NULL, o->insecure, &n.lis, n.bound, sizeof(n.bound),
                   err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec-worker: %s\n", err);
        goto out;
    }
    {
        dxs_config rc = {
            .component = COMPONENT,
            .role = "node agent",
            .token = n.token,
            .max_frame = o->max_frame,
            .rank = -1,
            .write_timeout = WRITE_TIMEOUT,
            .hello_timeout = o->hello_timeout,
            .hello_max_frame = o->hello_max_frame,
            .hello_max_conns = o->hello_max_conns,
            .frame_timeout = o->frame_timeout,
            .idle_timeout = o->idle_timeout,
            .tick_interval = TICK,
            .methods = node_methods,
            .hello_reply = hello_reply,
            .tick = tick,
            .closed = conn_closed,
            .user = &n,
        };

        n.rpc = dxs_server_new(&rc, err, sizeof(err));
    }
    if (n.rpc == NULL) {
        fprintf(stderr, "dexec-worker: %s\n", err);
        goto out;
    }
    dxs_add_listener(n.rpc, n.lis.fd);
    n.lis.fd = -1; /* the server's now; the socket file is still ours to remove */
    actor_listen_host(&n);
    if (registry_open(&n, err, sizeof(err)) != 0) {
        fprintf(stderr, "dexec-worker: node %s: %s\n", o->name, err);
        goto out;
    }
    g_rpc = n.rpc;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    dexec_log(DEXEC_LOG_INFO, COMPONENT,
              "node %s listening on %s (registered as %s): %d CPUs, %d GPUs, %lld bytes",
              o->name, n.bound, n.info.address, n.cpus, n.gpus, (long long)n.memory);
    if (o->print_address) {
        printf("%s\n", n.info.address);
        fflush(stdout);
    }
    n.last_beat = dexec_now();
    status = dxs_run(n.rpc);
out:
    g_rpc = NULL;
    stop_all(&n);
    dxs_server_free(n.rpc);
    if (n.disc != NULL)
        dexec_discovery_deregister(n.disc, &n.info, err, sizeof(err));
    dexec_discovery_close(n.disc);
    dexec_actor_info_clear(&n.info);
    dexec_config_free(n.cfg);
    dxw_listener_close(&n.lis);
    if (n.tmpdir[0] != '\0')
        remove_private_dir(n.tmpdir);
    dexec_value_free(n.resources);
    free(n.token);
    return status;
}
