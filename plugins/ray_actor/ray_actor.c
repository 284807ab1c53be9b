/*
 * ray_actor.c - the "ray_actor" executor: ONE actor process (dexec-worker
 * --ranks N) hosts every rank, and the engine owns it. The executor holds
 * one connection to the actor and forwards each call to it; the actor
 * fans calls out to its ranks.
 *
 * Where the actor runs (ray_init.address):
 *  - "local": spawned here over a socketpair, like the mp executor spawns
 *    its workers (libdexec's process services, <dexec/process.h>): it gets
 *    SIGKILL when the engine dies (PR_SET_PDEATHSIG, whichever thread
 *    created the engine) and exits on EOF of its control socket; its death is seen at once
 *    through EOF, with its exit status.
 *  - "slurm": a Slurm job step (<dexec/srun.h>) in the allocation this
 *    engine runs in, or in one srun asks for; the resources become the
 *    step's request, the actor listens on TCP with a token made for this
 *    engine and exits when the engine's connection to it closes; close
 *    ends the step (shutdown, grace, scancel).
 *  - "redis://..." or "auto" ($DEXEC_REGISTRY): placed on a node whose
 *    agent (dexec-worker --node) registered room for it and the custom
 *    resources asked for. The agent spawns it the same way and kills it
 *    when the engine's connection to the agent drops.
 *
 * Parallel groups (parallel.cfg x parallel.sequence > 1, doc/parallelism.md):
 * every cfg x sequence consecutive ranks of the actor form a group, formed
 * in the actor when it starts (worker method parallel_threads): the ranks
 * are threads of one process, so a group exchanges through the actor's
 * memory wherever the actor runs. The engine's slot is a group; each of its
 * requests runs on every member and the first member answers.
 *
 * Resources (ray_actor.*): cpus = CPU affinity, gpus = CUDA_VISIBLE_DEVICES,
 * memory = a hard limit (cgroup v2 memory.max, else RLIMIT_AS), resources
 * = labels a node must offer (see doc/ray-actor.md).
 *
 * Recovery (doc/configuration.md "Recovery", Ray's actor options): the
 * actor hosts every rank, so it is restarted as a whole: a dead actor
 * (EOF of its connection) is logged at once and started again through
 * the same path that created it (spawn here, placement on a node, a new
 * Slurm step), with the same ranks, limits and model, at most
 * max_restarts times over the engine's life; the requests of the step it
 * died in are dealt again to the new actor, each at most
 * max_task_retries times (a request lost more often fails as a possible
 * poison request). A step whose actor has sent nothing (no progress
 * notification) for timeouts.stall is declared hung: a local actor gets
 * SIGKILL, a remote one its connection shut (its agent or step then ends
 * it), and it is handled as a death. An actor that dies between calls is
 * restarted at the next call; while a restart runs check_health reports
 * it as restarting.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <dexec/discovery.h>
#include <dexec/group.h>
#include <dexec/plugin.h>
#include <dexec/process.h>
#include <dexec/rpc.h>
#include <dexec/srun.h>

#define COMPONENT "ray_actor"
/* how long the death of a remote actor may take to be explained by its agent */
#define REMOTE_STATUS_WAIT 1.0

/* What the actor needs, read from the configuration once. */
typedef struct actor_ask {
    int ranks;
    const char *model, *device, *dtype;
    int cpus, gpus;
    int64_t memory;
    const dexec_value *labels; /* borrowed from the config; MAP or NULL */
    int admin;                 /* allow_admin_methods: the actor gets --allow-admin */
    int gpus_follow_device;    /* device auto, ray_actor.gpus unset: no GPU on a node without */
    int pcfg, pseq;            /* parallel.cfg, parallel.sequence: in-process groups */
    double group_t;            /* timeouts.generate: each collective wait in a group */
} actor_ask;

struct dexec_executor {
    const dexec_host *host;
    int n;
    double grace;
    char label[160];
    dexec_conn *actor;
    /* local mode */
    int local;
    dexec_process *child;
    /* cluster mode: the agent that spawned the actor; dropping this
     * connection makes the agent kill the actor */
    dexec_conn *agent;
    int remote_pid;
    char node[128];
    char token[40]; /* the actor's own secret, made for this engine */
    /* slurm mode: srun, whose step hosts the actor */
    dexec_srun *srun;
    /* recovery */
    const char *address;  /* ray_init.address (the config's string) */
    actor_ask ask;        /* what the actor was created with */
    double init_t;
    dexec_group_recovery rec;
    int restarts;         /* restarts begun */
    uint64_t generation;  /* restarts that placed a new actor (under lk): which actor a
                             call used */
    uint64_t deaths;      /* deaths of the actor seen (under lk) */
    uint64_t dead_gen;    /* generation + 1 of the last death counted; 0: none */
    /* lk: read-held by every call on ex->actor, write-held to replace it */
    pthread_rwlock_t lk;
    pthread_mutex_t mu;   /* restarting, since, why */
    int restarting;
    double since;
    char why[512];
    char lost[1024]; /* why there is no actor: the death and the failed restart */
};

static double left_s(double deadline)
{
    double l = deadline - dexec_now();

    return l > 0 ? l : 0;
}

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* "{cpus=2,gpus=1,memory=1073741824,labels=gpu_worker}" */
static void format_ask(const actor_ask *a, char *buf, size_t len)
{
    char labels[256], mem[48] = "";

    dexec_resources_format(a->labels, labels, sizeof(labels));
    if (a->memory > 0)
        snprintf(mem, sizeof(mem), ",memory=%lld", (long long)a->memory);
    snprintf(buf, len, "{cpus=%d,gpus=%d%s%s%s}", a->cpus, a->gpus, mem,
             labels[0] ? ",labels=" : "", labels);
}

static dexec_status read_ask(const dexec_config *cfg, actor_ask *a, char *err, size_t errlen)
{
    int64_t n = 1, cpus = 1, gpus = -1, memory = 0;

    a->model = "fashion-dit";
    a->device = "auto";
    a->dtype = "float32";
    a->labels = NULL;
    dexec_config_get_int(cfg, "num_gpus", &n);
    dexec_config_get_string(cfg, "model", &a->model);
    dexec_config_get_string(cfg, "device", &a->device);
    dexec_config_get_string(cfg, "dtype", &a->dtype);
    dexec_config_get_int(cfg, "ray_actor.cpus", &cpus);
    dexec_config_get_int(cfg, "ray_actor.gpus", &gpus);
    dexec_config_get_int(cfg, "ray_actor.memory", &memory);
    dexec_config_get_map(cfg, "ray_actor.resources", &a->labels);
    a->admin = 0;
    dexec_config_get_bool(cfg, "allow_admin_methods", &a->admin);
    if (n < 1 || n > 64) {
        dexec_errorf(err, errlen, "num_gpus = %lld: the actor hosts 1 to 64 ranks", (long long)n);
        return DEXEC_EINVAL;
    }
    {
        int64_t pc = 1, ps = 1;

        /* parallel groups: cfg x sequence consecutive ranks of the actor,
         * threads of one process exchanging through its memory */
        dexec_config_get_int(cfg, "parallel.cfg", &pc);
        dexec_config_get_int(cfg, "parallel.sequence", &ps);
        if (pc < 1 || ps < 1 || n % (pc * ps) != 0) {
            dexec_errorf(err, errlen,
                         "num_gpus = %lld is not a multiple of parallel.cfg x parallel.sequence "
                         "= %lld x %lld: num_gpus = data-parallel groups x cfg x sequence",
                         (long long)n, (long long)pc, (long long)ps);
            return DEXEC_ECONFIG;
        }
        a->pcfg = (int)pc;
        a->pseq = (int)ps;
        a->group_t = 300.0;
        dexec_config_get_float(cfg, "timeouts.generate", &a->group_t);
    }
    a->ranks = (int)n;
    a->cpus = (int)cpus;
    a->memory = memory;
    /* a CPU actor needs no GPU unless one is asked for explicitly; with
     * device auto the actor computes on the CPU of a node that has no GPU,
     * so there it asks for none (the GPU count follows the device) */
    a->gpus_follow_device = gpus < 0 && strcmp(a->device, "auto") == 0;
    if (gpus < 0)
        gpus = strcmp(a->device, "cpu") == 0 ? 0 : n;
    a->gpus = (int)gpus;
    if (a->gpus < a->ranks && strcmp(a->device, "cpu") != 0) {
        dexec_errorf(err, errlen,
                     "ray_actor.gpus = %d but num_gpus = %d: each rank needs its own GPU "
                     "(set ray_actor.gpus >= num_gpus, or device = \"cpu\")",
                     a->gpus, a->ranks);
        return DEXEC_EINVAL;
    }
    return DEXEC_OK;
}

/* "0,1,...,n-1" */
static void device_list(int n, char *buf, size_t len)
{
    size_t off = 0;

    buf[0] = '\0';
    for (int i = 0; i < n && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%d", i ? "," : "", i);
}

/* ---- the actor connection: hello and initialize ---------------------------------- */

/* The actor's ranks form parallel groups of cfg x sequence consecutive
 * ranks (doc/parallelism.md), as threads of the actor exchanging through
 * its memory: the worker method parallel_threads on every rank. The
 * model refuses a layout it cannot split (heads). */
static dexec_status form_groups(struct dexec_executor *ex, double deadline, char *err,
                                size_t errlen)
{
    dexec_value *params = dexec_value_array(), *args = dexec_value_array();
    dexec_value *o = dexec_value_map(), *res = NULL;
    char msg[1024];
    dexec_status st;

    dexec_value_map_set(o, "cfg", dexec_value_int(ex->ask.pcfg));
    dexec_value_map_set(o, "sequence", dexec_value_int(ex->ask.pseq));
    dexec_value_map_set(o, "timeout", dexec_value_float(ex->ask.group_t));
    dexec_value_array_push(args, o);
    dexec_value_array_push(params, dexec_value_str("parallel_threads"));
    dexec_value_array_push(params, args);
    dexec_value_array_push(params, dexec_value_map());
    if (params == NULL || params->u.arr.len != 3) {
        dexec_value_free(params);
        return DEXEC_ENOMEM;
    }
    st = dexec_conn_call(ex->actor, "collective_rpc", params, deadline, &res, NULL, NULL, msg,
                         sizeof(msg));
    dexec_value_free(params);
    dexec_value_free(res);
    if (st == DEXEC_OK)
        return DEXEC_OK;
    if (st == DEXEC_ETIMEDOUT) {
        dexec_errorf(err, errlen,
                     "%s did not form its parallel groups within timeouts.init (%.3g s)",
                     ex->label, ex->init_t);
        return st;
    }
    dexec_errorf(err, errlen, "%s: parallel groups of cfg %d x sequence %d: %s", ex->label,
                 ex->ask.pcfg, ex->ask.pseq, msg);
    return DEXEC_EWORKER;
}

static dexec_status start_actor(struct dexec_executor *ex, const char *token, double deadline,
                                double init_t, char *err, size_t errlen)
{
    dexec_value *res = NULL;
    char msg[1024];
    dexec_status st;

    st = dexec_conn_hello(ex->actor, token, left_s(deadline), NULL, msg, sizeof(msg));
    if (st == DEXEC_OK)
        st = dexec_conn_call(ex->actor, "initialize", NULL, deadline, &res, NULL, NULL, msg,
                             sizeof(msg));
    if (st == DEXEC_ETIMEDOUT) {
        dexec_errorf(err, errlen, "%s did not initialize within %.3g s (timeouts.init)",
                     ex->label, init_t);
    } else if (st == DEXEC_ECLOSED) {
        dexec_errorf(err, errlen, "%s", msg);
        st = DEXEC_EINIT;
    } else if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "%s failed to initialize: %s", ex->label, msg);
        st = DEXEC_EINIT;
    } else if (strcmp(dexec_value_as_str(dexec_value_map_get(res, "status"), ""), "ready") != 0) {
        dexec_errorf(err, errlen, "%s failed to initialize: %s", ex->label,
                     dexec_value_as_str(dexec_value_map_get(res, "error"), "no reason given"));
        st = DEXEC_EINIT;
    }
    dexec_value_free(res);
    if (st == DEXEC_OK && ex->ask.pcfg * ex->ask.pseq > 1)
        st = form_groups(ex, deadline, err, errlen);
    return st;
}

/* ---- local mode ------------------------------------------------------------------ */

/* The actor's connection saw EOF: say how it ended. EOF comes a moment
 * before the kernel makes the exit status available, so wait a little. */
static void local_on_death(void *user, dexec_conn *c, char *buf, size_t len)
{
    struct dexec_executor *ex = user;
    char how[128];

    (void)c;
    if (dexec_process_reap(ex->child, 0.5)) {
        dexec_describe_exit(dexec_process_status(ex->child), how, sizeof(how));
        snprintf(buf, len, "actor died: %s", how);
    } else {
        snprintf(buf, len, "actor closed its connection (process still running)");
    }
}

/* Ray refuses to schedule an actor whose custom resources no node offers;
 * here the only node is this host, labelled by $DEXEC_NODE_RESOURCES. */
static dexec_status check_local_labels(const actor_ask *a, char *err, size_t errlen)
{
    const char *env = getenv("DEXEC_NODE_RESOURCES");
    char missing[128], want[256], perr[256];
    dexec_value *have;
    int fit;

    if (a->labels == NULL || a->labels->type != DEXEC_VAL_MAP || a->labels->u.map.len == 0)
        return DEXEC_OK;
    have = dexec_resources_parse(env, perr, sizeof(perr));
    if (have == NULL) {
        dexec_errorf(err, errlen, "DEXEC_NODE_RESOURCES: %s", perr);
        return DEXEC_ECONFIG;
    }
    fit = dexec_resources_fit(a->labels, have, missing, sizeof(missing));
    dexec_value_free(have);
    if (fit)
        return DEXEC_OK;
    dexec_resources_format(a->labels, want, sizeof(want));
    dexec_errorf(err, errlen,
                 "ray_actor.resources asks for {%s} but this host does not offer %s "
                 "(DEXEC_NODE_RESOURCES=\"%s\"): label the host with DEXEC_NODE_RESOURCES, "
                 "or place the actor on a node with ray_init.address",
                 want, missing, env != NULL ? env : "");
    return DEXEC_ENOTFOUND;
}

static dexec_status spawn_local(struct dexec_executor *ex, const actor_ask *a, char *err,
                                size_t errlen)
{
    char ranks_s[16], devs[256], cpus[1024] = "", perr[512];
    char *argv[] = {(char *)ex->host->worker_path, "--listen", "fd:3", "--ranks", ranks_s,
                    "--rank", "0", "--model", (char *)a->model, "--device", (char *)a->device,
                    "--dtype", (char *)a->dtype, a->admin ? "--allow-admin" : NULL, NULL};
    dexec_spawn_args sa = {.struct_size = sizeof(sa), .argv = argv, .stdout_fd = -1,
                           .cpus = cpus, .visible_gpus = devs, .memory_bytes = a->memory,
                           .component = COMPONENT, .label = "actor"};
    dexec_status st;
    int64_t num_cpus = -1, num_gpus = -1;
    char **env;
    int sv[2];

    st = check_local_labels(a, err, errlen);
    if (st != DEXEC_OK)
        return st;
    /* ray.init(num_cpus=, num_gpus=): what this host may hand out */
    dexec_config_get_int(ex->host->config, "ray_init.num_cpus", &num_cpus);
    dexec_config_get_int(ex->host->config, "ray_init.num_gpus", &num_gpus);
    if (num_cpus >= 0 && a->cpus > num_cpus) {
        dexec_errorf(err, errlen,
                     "ray_actor.cpus = %d but ray_init.num_cpus = %lld: the actor asks for more "
                     "CPUs than this host declares (lower ray_actor.cpus or raise "
                     "ray_init.num_cpus)",
                     a->cpus, (long long)num_cpus);
        return DEXEC_EINVAL;
    }
    if (num_gpus >= 0 && a->gpus > num_gpus) {
        dexec_errorf(err, errlen,
                     "ray_actor.gpus = %d but ray_init.num_gpus = %lld: the actor asks for more "
                     "GPUs than this host declares (lower ray_actor.gpus or raise "
                     "ray_init.num_gpus)",
                     a->gpus, (long long)num_gpus);
        return DEXEC_EINVAL;
    }
    if (a->cpus > dexec_cpus_allowed()) {
        dexec_errorf(err, errlen, "ray_actor.cpus = %d but only %d CPUs are available", a->cpus,
                     dexec_cpus_allowed());
        return DEXEC_EINVAL;
    }
    if (a->cpus > 0) {
        st = dexec_cpus_pick(a->cpus, NULL, cpus, sizeof(cpus), perr, sizeof(perr));
        if (st != DEXEC_OK) {
            dexec_errorf(err, errlen, "ray_actor.cpus = %d: %s", a->cpus, perr);
            return st;
        }
    }
    device_list(a->gpus, devs, sizeof(devs));
    snprintf(ranks_s, sizeof(ranks_s), "%d", a->ranks);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        dexec_errorf(err, errlen, "socketpair: %s", strerror(errno));
        return DEXEC_EIO;
    }
    sa.ctl_fd = sv[1];
    /* runtime_env.env_vars; the actor's CUDA_VISIBLE_DEVICES wins in spawn */
    env = dexec_runtime_env(ex->host->config, NULL, COMPONENT);
    if (env == NULL) {
        close(sv[0]);
        close(sv[1]);
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    sa.env = (const char *const *)env;
    st = dexec_process_spawn(&sa, &ex->child, err, errlen);
    dexec_env_free(env);
    close(sv[1]);
    if (st != DEXEC_OK) {
        close(sv[0]);
        return st;
    }
    ex->local = 1;
    snprintf(ex->label, sizeof(ex->label), "actor (pid %d)", dexec_process_pid(ex->child));
    if (dexec_conn_from_fd(sv[0], ex->label, &ex->actor) != DEXEC_OK) {
        close(sv[0]);
        return DEXEC_ENOMEM;
    }
    dexec_conn_on_death(ex->actor, local_on_death, ex);
    return DEXEC_OK;
}

/* ---- cluster mode ------------------------------------------------------------------ */

/* The remote actor's connection saw EOF: ask its agent how it ended. */
static void remote_on_death(void *user, dexec_conn *c, char *buf, size_t len)
{
    struct dexec_executor *ex = user;
    double deadline = dexec_now() + REMOTE_STATUS_WAIT;
    char msg[256];

    (void)c;
    snprintf(buf, len, "actor on %s closed its connection", ex->node);
    while (ex->agent != NULL && dexec_now() < deadline) {
        dexec_value *params = dexec_value_array(), *res = NULL;
        dexec_status st;

        dexec_value_array_push(params, dexec_value_int(ex->remote_pid));
        st = dexec_conn_call(ex->agent, "actor_status", params, deadline, &res, NULL, NULL, msg,
                             sizeof(msg));
        dexec_value_free(params);
        if (st != DEXEC_OK) {
            snprintf(buf, len, "actor on %s closed its connection (its agent: %s)", ex->node,
                     msg);
            return;
        }
        if (!dexec_value_as_int(dexec_value_map_get(res, "running"), 1)) {
            snprintf(buf, len, "actor died: %s",
                     dexec_value_as_str(dexec_value_map_get(res, "exit"), "exited"));
            dexec_value_free(res);
            return;
        }
        dexec_value_free(res);
        sleep_s(0.05);
    }
}

/* The room a node's registration says it has left, as a fit test. */
static int node_fits(const dexec_actor_info *node, const actor_ask *a, char *why, size_t len)
{
    const dexec_value *free_ = dexec_value_map_get(node->meta, "free");
    char missing[128];

    if (free_ == NULL) {
        snprintf(why, len, "%s: registration has no free resources", node->name);
        return 0;
    }
    if (dexec_value_as_int(dexec_value_map_get(free_, "cpus"), 0) < a->cpus) {
        snprintf(why, len, "%s: %lld CPUs free", node->name,
                 (long long)dexec_value_as_int(dexec_value_map_get(free_, "cpus"), 0));
        return 0;
    }
    if (dexec_value_as_int(dexec_value_map_get(free_, "gpus"), 0) < a->gpus) {
        snprintf(why, len, "%s: %lld GPUs free", node->name,
                 (long long)dexec_value_as_int(dexec_value_map_get(free_, "gpus"), 0));
        return 0;
    }
    if (dexec_value_as_int(dexec_value_map_get(free_, "memory"), 0) < a->memory) {
        snprintf(why, len, "%s: %lld bytes of memory free", node->name,
                 (long long)dexec_value_as_int(dexec_value_map_get(free_, "memory"), 0));
        return 0;
    }
    if (!dexec_resources_fit(a->labels, dexec_value_map_get(free_, "resources"), missing,
                           sizeof(missing))) {
        snprintf(why, len, "%s: no %s free", node->name, missing);
        return 0;
    }
    return 1;
}

static dexec_value *spawn_params(const actor_ask *a, const char *token, const dexec_config *cfg)
{
    dexec_value *p = dexec_value_array(), *m = dexec_value_map();
    const dexec_value *env = NULL;

    /* runtime_env.env_vars travel to the agent, which applies them under
     * the actor's own CUDA_VISIBLE_DEVICES */
    if (dexec_config_get_map(cfg, "runtime_env.env_vars", &env) == DEXEC_OK && env != NULL &&
        env->u.map.len > 0)
        dexec_value_map_set(m, "env", dexec_value_clone(env));
    dexec_value_map_set(m, "ranks", dexec_value_int(a->ranks));
    dexec_value_map_set(m, "model", dexec_value_str(a->model));
    dexec_value_map_set(m, "device", dexec_value_str(a->device));
    dexec_value_map_set(m, "dtype", dexec_value_str(a->dtype));
    dexec_value_map_set(m, "cpus", dexec_value_int(a->cpus));
    dexec_value_map_set(m, "gpus", dexec_value_int(a->gpus));
    dexec_value_map_set(m, "memory", dexec_value_int(a->memory));
    dexec_value_map_set(m, "resources",
                        a->labels != NULL ? dexec_value_clone(a->labels) : dexec_value_map());
    dexec_value_map_set(m, "token", dexec_value_str(token));
    if (a->admin)
        dexec_value_map_set(m, "admin", dexec_value_bool(1));
    dexec_value_array_push(p, m);
    return p;
}

/* A fresh secret for the actor, so only this engine can talk to it. */
static dexec_status make_token(char *buf, size_t len, char *err, size_t errlen)
{
    unsigned char raw[16];
    size_t got = 0;

    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            dexec_errorf(err, errlen, "getrandom: %s", strerror(errno));
            return DEXEC_EIO;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof(raw) && 2 * i + 2 < len; i++)
        snprintf(buf + 2 * i, 3, "%02x", raw[i]);
    return DEXEC_OK;
}

/* Asks node's agent to spawn the actor; on success ex->agent and ex->actor
 * are connected. DEXEC_ENOTFOUND when the agent says it has no room. */
static dexec_status place_on(struct dexec_executor *ex, const dexec_actor_info *node,
                             const actor_ask *a, const char *node_token, const char *token,
                             double deadline, char *err, size_t errlen)
{
    dexec_value *params, *res = NULL;
    char msg[1024], host[256], port[16], addr[300];
    const char *actor_addr;
    dexec_status st;

    st = dexec_conn_connect(node->address, left_s(deadline), &ex->agent, msg, sizeof(msg));
    if (st == DEXEC_OK) {
        char label[200];

        snprintf(label, sizeof(label), "node agent %s (%s)", node->name, node->address);
        dexec_conn_set_label(ex->agent, label);
        st = dexec_conn_hello(ex->agent, node_token, left_s(deadline), NULL, msg, sizeof(msg));
    }
    if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "node %s: %s", node->name, msg);
        return st == DEXEC_EAUTH ? st : DEXEC_EINIT;
    }
    params = spawn_params(a, token, ex->host->config);
    st = dexec_conn_call(ex->agent, "spawn_actor", params, deadline, &res, NULL, NULL, msg,
                         sizeof(msg));
    dexec_value_free(params);
    if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "node %s: spawn_actor: %s", node->name, msg);
        dexec_value_free(res);
        return st == DEXEC_ENOTFOUND ? st : st == DEXEC_ETIMEDOUT ? st : DEXEC_EINIT;
    }
    ex->remote_pid = (int)dexec_value_as_int(dexec_value_map_get(res, "pid"), -1);
    actor_addr = dexec_value_as_str(dexec_value_map_get(res, "address"), "");
    snprintf(ex->node, sizeof(ex->node), "%s", node->name);
    snprintf(ex->label, sizeof(ex->label), "actor (pid %d on %s)", ex->remote_pid, node->name);
    /* the actor listens where its agent does; reach it through the
     * address the agent was reached at, whatever it bound to */
    if (strncmp(node->address, "tcp:", 4) == 0 && strncmp(actor_addr, "tcp:", 4) == 0 &&
        dexec_split_hostport(node->address + 4, host, sizeof(host), port, sizeof(port)) == 0 &&
        dexec_split_hostport(actor_addr + 4, addr, sizeof(addr), port, sizeof(port)) == 0)
        snprintf(addr, sizeof(addr), strchr(host, ':') ? "tcp:[%s]:%s" : "tcp:%s:%s", host,
                 port);
    else
        snprintf(addr, sizeof(addr), "%s", actor_addr);
    dexec_value_free(res);
    st = dexec_conn_connect(addr, left_s(deadline), &ex->actor, msg, sizeof(msg));
    if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "%s at %s: %s", ex->label, addr, msg);
        return DEXEC_EINIT;
    }
    dexec_conn_set_label(ex->actor, ex->label);
    dexec_conn_on_death(ex->actor, remote_on_death, ex);
    return DEXEC_OK;
}

static dexec_status place_remote(struct dexec_executor *ex, const actor_ask *a,
                                 const char *address, double deadline, char *err,
                                 size_t errlen)
{
    const char *url = address, *token_file = "";
    dexec_discovery_handle *d = NULL;
    dexec_actor_info *nodes = NULL;
    size_t nn = 0;
    char *node_token = NULL, why[2048] = "", want[512], msg[512];
    dexec_status st;

    if (strcmp(address, "auto") == 0) {
        url = getenv("DEXEC_REGISTRY");
        if (url == NULL || url[0] == '\0') {
            dexec_errorf(err, errlen,
                         "ray_init.address = \"auto\" but DEXEC_REGISTRY is not set: set it "
                         "to the registry URL (redis://HOST:PORT/DB) or give the URL in "
                         "ray_init.address");
            return DEXEC_ECONFIG;
        }
    }
    dexec_config_get_string(ex->host->config, "token_file", &token_file);
    if (token_file != NULL && token_file[0] != '\0') {
        st = dexec_token_read(token_file, &node_token, err, errlen);
        if (st != DEXEC_OK)
            return st;
    }
    st = make_token(ex->token, sizeof(ex->token), err, errlen);
    if (st != DEXEC_OK)
        goto done;
    /* the same registry client the node agents and external workers use */
    st = dexec_discovery_open(ex->host->config, NULL, url, &d, err, errlen);
    if (st != DEXEC_OK)
        goto done;
    url = dexec_discovery_url(d); /* from here on, without its password */
    st = dexec_discovery_list(d, "node", &nodes, &nn, msg, sizeof(msg));
    if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "registry %s: %s", url, msg);
        goto done;
    }
    format_ask(a, want, sizeof(want));
    st = DEXEC_ENOTFOUND;
    for (size_t i = 0; i < nn && st == DEXEC_ENOTFOUND; i++) {
        const dexec_value *cap = dexec_value_map_get(nodes[i].meta, "capacity");
        actor_ask here = *a;
        char one[256];

        if (a->gpus_follow_device && dexec_value_as_int(dexec_value_map_get(cap, "gpus"), 0) == 0)
            here.gpus = 0;
        if (!node_fits(&nodes[i], &here, one, sizeof(one))) {
            dexec_log(DEXEC_LOG_DEBUG, COMPONENT, "not placing on %s", one);
            snprintf(why + strlen(why), sizeof(why) - strlen(why), "%s%s", why[0] ? "; " : "",
                     one);
            continue;
        }
        st = place_on(ex, &nodes[i], &here, node_token, ex->token, deadline, msg, sizeof(msg));
        if (st != DEXEC_OK) {
            /* the registration was stale or another engine came first */
            dexec_log(DEXEC_LOG_INFO, COMPONENT, "%s", msg);
            snprintf(why + strlen(why), sizeof(why) - strlen(why), "%s%s", why[0] ? "; " : "",
                     msg);
            dexec_conn_free(ex->actor);
            dexec_conn_free(ex->agent);
            ex->actor = ex->agent = NULL;
            if (st != DEXEC_ETIMEDOUT)
                st = DEXEC_ENOTFOUND;
        }
    }
    if (st == DEXEC_ETIMEDOUT) {
        dexec_errorf(err, errlen, "placing the actor: %s", msg);
    } else if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "no node has room for %s (%zu node%s registered at %s%s%s)",
                     want, nn, nn == 1 ? "" : "s", url, why[0] ? ": " : "", why);
    }
done:
    for (size_t i = 0; i < nn; i++)
        dexec_actor_info_clear(&nodes[i]);
    free(nodes);
    dexec_discovery_close(d);
    free(node_token);
    return st;
}

/* ---- Slurm mode ---------------------------------------------------------------------- */

/* The actor's connection saw EOF: its step ended, or the actor did. */
static void slurm_on_death(void *user, dexec_conn *c, char *buf, size_t len)
{
    struct dexec_executor *ex = user;
    char how[128], msgs[512];
    int status;

    (void)c;
    if (dexec_srun_exited(ex->srun, 1.0, &status)) {
        dexec_describe_exit(status, how, sizeof(how));
        dexec_srun_messages(ex->srun, msgs, sizeof(msgs));
        snprintf(buf, len, "actor died: step %s ended, srun %s%s%s", dexec_srun_step(ex->srun),
                 how, msgs[0] ? ": " : "", msgs);
    } else {
        snprintf(buf, len, "actor in step %s closed its connection (the step is still running)",
                 dexec_srun_step(ex->srun));
    }
}

/* ray_actor.resources as node features: "gpu_worker&ssd". A feature has no
 * amount, so only 1 is accepted. */
static dexec_status slurm_constraint(const actor_ask *a, char *buf, size_t len, char *err,
                                     size_t errlen)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; a->labels != NULL && a->labels->type == DEXEC_VAL_MAP &&
                       i < a->labels->u.map.len;
         i++) {
        const dexec_kv *kv = &a->labels->u.map.items[i];

        if (dexec_value_as_float(kv->val, 1) != 1) {
            dexec_errorf(err, errlen,
                         "ray_actor.resources: %s = %g, but Slurm node features have no "
                         "amount: ask for %s = 1 (the node's feature), or place the actor "
                         "with ray_init.address = \"local\" or a registry",
                         kv->key, dexec_value_as_float(kv->val, 1), kv->key);
            return DEXEC_EINVAL;
        }
        used += (size_t)snprintf(buf + used, used < len ? len - used : 0, "%s%s",
                                 used ? "&" : "", kv->key);
    }
    return used < len ? DEXEC_OK : DEXEC_EINVAL;
}

static dexec_status place_slurm(struct dexec_executor *ex, const actor_ask *a, double deadline,
                                char *err, size_t errlen)
{
    const dexec_config *cfg = ex->host->config;
    const char *const *opts = NULL;
    char ranks_s[16], constraint[512], msg[1024];
    char *argv[] = {(char *)ex->host->worker_path, "--ranks", ranks_s, "--model",
                    (char *)a->model, "--device", (char *)a->device, "--dtype",
                    (char *)a->dtype, NULL};
    char **extra = NULL;
    size_t nopts = 0;
    dexec_srun_args sa = {.struct_size = sizeof(sa), .worker_argv = argv, .ntasks = 1,
                          .cpus_per_task = a->cpus, .gres_gpus = a->gpus,
                          .memory_bytes = a->memory, .constraint = constraint,
                          .job_name = "dexec-actor", .label = "actor"};
    dexec_status st;

    st = slurm_constraint(a, constraint, sizeof(constraint), err, errlen);
    if (st != DEXEC_OK)
        return st;
    st = make_token(ex->token, sizeof(ex->token), err, errlen);
    if (st != DEXEC_OK)
        return st;
    snprintf(ranks_s, sizeof(ranks_s), "%d", a->ranks);
    dexec_config_get_string(cfg, "slurm.partition", &sa.partition);
    dexec_config_get_string(cfg, "slurm.account", &sa.account);
    dexec_config_get_string(cfg, "slurm.time", &sa.time_limit);
    dexec_config_get_list(cfg, "slurm.options", &nopts, &opts);
    extra = calloc(nopts + 1, sizeof(*extra));
    if (extra == NULL)
        return DEXEC_ENOMEM;
    for (size_t i = 0; i < nopts; i++)
        extra[i] = (char *)opts[i];
    sa.extra = extra;
    sa.token = ex->token;
    /* the actor waits for our hello no longer than we wait for it */
    sa.owner_wait = left_s(deadline) + 1;
    st = dexec_srun_start(&sa, deadline, &ex->srun, err, errlen);
    free(extra);
    if (st != DEXEC_OK)
        return st;
    snprintf(ex->label, sizeof(ex->label), "actor (Slurm step %s on %s)",
             dexec_srun_step(ex->srun), dexec_srun_node(ex->srun, 0));
    st = dexec_conn_connect(dexec_srun_address(ex->srun, 0), left_s(deadline), &ex->actor, msg,
                            sizeof(msg));
    if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "%s at %s: %s", ex->label, dexec_srun_address(ex->srun, 0),
                     msg);
        return DEXEC_EINIT;
    }
    dexec_conn_set_label(ex->actor, ex->label);
    dexec_conn_on_death(ex->actor, slurm_on_death, ex);
    return DEXEC_OK;
}

/* ---- lifecycle ---------------------------------------------------------------------- */

/* Stops the actor: shutdown RPC, grace, SIGTERM, grace, SIGKILL, reap. A
 * remote actor is stopped by its agent once our connection to it drops. */
static void stop_actor(struct dexec_executor *ex)
{
    double deadline = dexec_now() + ex->grace;
    char msg[256];

    if (ex->local) {
        dexec_process_stop(ex->child, ex->actor, ex->grace);
        return;
    }
    if (ex->actor != NULL && !dexec_conn_dead(ex->actor))
        dexec_conn_call(ex->actor, "shutdown", NULL, deadline, NULL, NULL, NULL, msg,
                        sizeof(msg));
    if (ex->srun != NULL) {
        /* the actor exits, its task and step end, srun exits; else scancel */
        dexec_srun_stop(ex->srun, ex->grace);
        return;
    }
    if (ex->actor != NULL) {
        /* the actor closes its connections as it exits */
        while (!dexec_conn_poll_dead(ex->actor) && left_s(deadline) > 0)
            sleep_s(0.01);
    }
}

/* Drops what is left of a dead or hung actor: a local one is killed if it
 * still runs and reaped; a remote one's agent kills it when our connection
 * to the agent drops; a Slurm step is ended. No call may be in flight. */
static void drop_actor(struct dexec_executor *ex)
{
    if (ex->child != NULL && !dexec_process_reap(ex->child, 0)) {
        dexec_process_signal(ex->child, SIGKILL);
        dexec_process_reap(ex->child, 5.0);
    }
    if (ex->srun != NULL)
        dexec_srun_stop(ex->srun, 0);
    dexec_conn_free(ex->actor);
    dexec_conn_free(ex->agent);
    dexec_process_free(ex->child);
    dexec_srun_free(ex->srun);
    ex->actor = ex->agent = NULL;
    ex->child = NULL;
    ex->srun = NULL;
    ex->local = 0;
}

static void destroy(struct dexec_executor *ex)
{
    dexec_conn_free(ex->actor);
    dexec_conn_free(ex->agent);
    dexec_process_free(ex->child);
    dexec_srun_free(ex->srun);
    pthread_rwlock_destroy(&ex->lk);
    pthread_mutex_destroy(&ex->mu);
    free(ex);
}

/* Creates the actor where ray_init.address says and initializes it. */
static dexec_status place_actor(struct dexec_executor *ex, char *err, size_t errlen)
{
    double deadline = dexec_now() + ex->init_t;
    dexec_status st;

    if (strcmp(ex->address, "local") == 0) {
        st = spawn_local(ex, &ex->ask, err, errlen);
        if (st == DEXEC_OK)
            st = start_actor(ex, NULL, deadline, ex->init_t, err, errlen);
    } else if (strcmp(ex->address, "slurm") == 0) {
        st = place_slurm(ex, &ex->ask, deadline, err, errlen);
        if (st == DEXEC_OK)
            st = start_actor(ex, ex->token, deadline, ex->init_t, err, errlen);
    } else {
        st = place_remote(ex, &ex->ask, ex->address, deadline, err, errlen);
        if (st == DEXEC_OK)
            st = start_actor(ex, ex->token, deadline, ex->init_t, err, errlen);
    }
    return st;
}

/* The actor is dead (why says how): restart it if max_restarts allows.
 * Called with ex->lk write-held. DEXEC_OK: a new actor is ready. */
static dexec_status restart_actor(struct dexec_executor *ex, const char *why, char *err,
                                  size_t errlen)
{
    double t0 = dexec_now();
    dexec_status st;
    char msg[1024];

    if (ex->restarts >= ex->rec.max_restarts) {
        dexec_errorf(err, errlen, "%s; not restarted (max_restarts = %d%s)", why,
                     ex->rec.max_restarts, ex->rec.max_restarts > 0 ? ", all used" : "");
        return DEXEC_EWORKER;
    }
    ex->restarts++;
    pthread_mutex_lock(&ex->mu);
    ex->restarting = 1;
    ex->since = t0;
    snprintf(ex->why, sizeof(ex->why), "%s", why);
    pthread_mutex_unlock(&ex->mu);
    ex->host->log(DEXEC_LOG_WARN, COMPONENT, "%s; restarting it (restart %d of %d)", why,
                  ex->restarts, ex->rec.max_restarts);
    drop_actor(ex);
    st = place_actor(ex, msg, sizeof(msg));
    if (st != DEXEC_OK) {
        drop_actor(ex);
        dexec_errorf(err, errlen, "%s; restart %d failed: %s", why, ex->restarts, msg);
        snprintf(ex->lost, sizeof(ex->lost), "%s", err);
        ex->host->log(DEXEC_LOG_ERROR, COMPONENT, "%s", err);
    } else {
        ex->generation++;
        ex->host->log(DEXEC_LOG_WARN, COMPONENT,
                      "actor restarted in %.2f s (restart %d of max_restarts = %d): %s",
                      dexec_now() - t0, ex->restarts, ex->rec.max_restarts, ex->label);
    }
    pthread_mutex_lock(&ex->mu);
    ex->restarting = 0;
    pthread_mutex_unlock(&ex->mu);
    return st;
}

/* Counts the death of the actor of generation gen once, however many
 * calls saw it (ex->lk write-held). 1 for the call that counted it: the
 * one that speaks of it. */
static int count_death(struct dexec_executor *ex, uint64_t gen)
{
    if (ex->dead_gen == gen + 1)
        return 0;
    ex->dead_gen = gen + 1;
    ex->deaths++;
    return 1;
}

/* How the dead actor ended, from its connection. */
static void death_of(struct dexec_executor *ex, char *why, size_t len)
{
    if (ex->actor == NULL)
        snprintf(why, len, "%s", ex->lost);
    else if (dexec_conn_call(ex->actor, "get_rank", NULL, dexec_now(), NULL, NULL, NULL, why,
                             len) == DEXEC_OK)
        snprintf(why, len, "%s is alive", ex->label);
}

/* Takes ex->lk (read) for a call, with a live actor when it can: an actor
 * that died since the last call is restarted first (max_restarts). */
static void begin_call(struct dexec_executor *ex)
{
    pthread_rwlock_rdlock(&ex->lk);
    if (ex->actor != NULL && !dexec_conn_poll_dead(ex->actor))
        return;
    pthread_rwlock_unlock(&ex->lk);
    pthread_rwlock_wrlock(&ex->lk);
    if ((ex->actor == NULL || dexec_conn_poll_dead(ex->actor)) &&
        ex->restarts < ex->rec.max_restarts) {
        char why[512], msg[1024];

        if (ex->actor != NULL)
            count_death(ex, ex->generation);
        death_of(ex, why, sizeof(why));
        restart_actor(ex, why, msg, sizeof(msg));
    }
    pthread_rwlock_unlock(&ex->lk);
    pthread_rwlock_rdlock(&ex->lk);
}

static dexec_status ray_create(const dexec_host *host, dexec_executor **out, char *err,
                               size_t errlen)
{
    struct dexec_executor *ex;
    const char *address = "local";
    double init_t = 60.0, grace = 5.0;
    actor_ask ask;
    dexec_status st;

    dexec_config_get_float(host->config, "timeouts.init", &init_t);
    dexec_config_get_float(host->config, "timeouts.shutdown_grace", &grace);
    dexec_config_get_string(host->config, "ray_init.address", &address);
    st = read_ask(host->config, &ask, err, errlen);
    if (st != DEXEC_OK)
        return st;
    ex = calloc(1, sizeof(*ex));
    if (ex == NULL)
        return DEXEC_ENOMEM;
    ex->host = host;
    ex->n = ask.ranks;
    ex->grace = grace;
    ex->address = address;
    ex->ask = ask;
    ex->init_t = init_t;
    pthread_rwlock_init(&ex->lk, NULL);
    pthread_mutex_init(&ex->mu, NULL);
    dexec_group_recovery_from_config(host->config, &ex->rec);
    st = place_actor(ex, err, errlen);
    if (st != DEXEC_OK) {
        stop_actor(ex);
        destroy(ex);
        return st;
    }
    {
        double write_t = 30.0, health_t = 5.0;

        /* an actor silent past timeouts.health during a call is probed
         * and, unanswered, reported in that call */
        dexec_config_get_float(host->config, "timeouts.write", &write_t);
        dexec_config_get_float(host->config, "timeouts.health", &health_t);
        dexec_conn_set_timeouts(ex->actor, write_t, health_t);
    }
    host->log(DEXEC_LOG_INFO, COMPONENT, "%s ready with %d rank%s", ex->label, ex->n,
              ex->n == 1 ? "" : "s");
    *out = ex;
    return DEXEC_OK;
}

static int ray_num_ranks(const dexec_executor *ex)
{
    return ex->n;
}

/* A call on the actor failed: the error the executor reports. */
static dexec_status call_error(const struct dexec_executor *ex, dexec_status st, const char *what,
                               double timeout, const char *msg, char *err, size_t errlen)
{
    if (st == DEXEC_ETIMEDOUT) {
        dexec_errorf(err, errlen, "%s: no reply from %s (ranks 0..%d) within %.3g s", what,
                     ex->label, ex->n - 1, timeout);
        return DEXEC_ETIMEDOUT;
    }
    /* a dead actor's message already names it; an error reply names its rank */
    if (st == DEXEC_ECLOSED || strncmp(msg, "rank ", 5) == 0)
        dexec_errorf(err, errlen, "%s: %s", what, msg);
    else
        dexec_errorf(err, errlen, "%s: rank 0: %s", what, msg);
    return DEXEC_EWORKER;
}

static dexec_status ray_collective_rpc(dexec_executor *ex, const char *method, double timeout,
                                       const dexec_value *args, const dexec_value *kwargs,
                                       int unique_reply_rank, dexec_value **replies, char *err,
                                       size_t errlen)
{
    dexec_value *params = dexec_value_array(), *res = NULL;
    char what[200], msg[1024];
    dexec_status st;

    *replies = NULL;
    if ((args != NULL && args->type != DEXEC_VAL_ARRAY) ||
        (kwargs != NULL && kwargs->type != DEXEC_VAL_MAP)) {
        dexec_value_free(params);
        dexec_errorf(err, errlen, "collective_rpc %s: args must be an array and kwargs a map",
                     method);
        return DEXEC_EINVAL;
    }
    dexec_value_array_push(params, dexec_value_str(method));
    dexec_value_array_push(params, args != NULL ? dexec_value_clone(args) : dexec_value_array());
    dexec_value_array_push(params, kwargs != NULL ? dexec_value_clone(kwargs) : dexec_value_map());
    if (params == NULL || params->u.arr.len != 3) {
        dexec_value_free(params);
        return DEXEC_ENOMEM;
    }
    snprintf(what, sizeof(what), "collective_rpc %s", method);
    begin_call(ex);
    if (ex->actor == NULL) {
        st = DEXEC_ECLOSED;
        death_of(ex, msg, sizeof(msg));
    } else {
        st = dexec_conn_call(ex->actor, "collective_rpc", params, dexec_now() + timeout, &res,
                             NULL, NULL, msg, sizeof(msg));
    }
    pthread_rwlock_unlock(&ex->lk);
    dexec_value_free(params);
    if (st != DEXEC_OK)
        return call_error(ex, st, what, timeout, msg, err, errlen);
    if (res == NULL || res->type != DEXEC_VAL_ARRAY || res->u.arr.len != (size_t)ex->n) {
        dexec_value_free(res);
        dexec_errorf(err, errlen, "%s: %s did not reply with one result per rank (%d)", what,
                     ex->label, ex->n);
        return DEXEC_EPROTO;
    }
    if (unique_reply_rank >= 0) {
        *replies = res->u.arr.items[unique_reply_rank];
        res->u.arr.items[unique_reply_rank] = NULL;
        dexec_value_free(res);
        if (*replies == NULL)
            *replies = dexec_value_nil();
    } else {
        *replies = res;
    }
    return DEXEC_OK;
}

typedef struct progress_ctx {
    dexec_progress_fn fn;
    void *user;
    size_t n;          /* requests in this call */
    const size_t *idx; /* their indexes in the step */
    /* the stall watchdog */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    double heard; /* when the actor last said something */
    int done, hung;
} progress_ctx;

static void on_progress(void *user, const char *method, const dexec_value *params)
{
    progress_ctx *p = user;
    int64_t pos = dexec_value_as_int(dexec_value_array_get(params, 1), -1);

    pthread_mutex_lock(&p->mu);
    p->heard = dexec_now();
    pthread_mutex_unlock(&p->mu);
    if (strcmp(method, "progress") != 0 || p->fn == NULL || pos < 0 || (size_t)pos >= p->n)
        return;
    p->fn(p->user, p->idx[pos], (int)dexec_value_as_int(dexec_value_array_get(params, 2), 0),
          (int)dexec_value_as_int(dexec_value_array_get(params, 3), 0),
          (int)dexec_value_as_int(dexec_value_array_get(params, 4), 0));
}

typedef struct watchdog {
    struct dexec_executor *ex;
    progress_ctx *pc;
} watchdog;

/* timeouts.stall: an actor that says nothing for that long while it holds
 * requests is declared hung and ended (SIGKILL here, its connection shut
 * elsewhere); the call then fails as for a death. */
static void *watchdog_main(void *arg)
{
    watchdog *w = arg;
    progress_ctx *p = w->pc;
    struct dexec_executor *ex = w->ex;

    pthread_mutex_lock(&p->mu);
    while (!p->done) {
        double now = dexec_now(), wake = p->heard + ex->rec.stall_s;
        struct timespec ts;

        if (now >= wake) {
            p->hung = 1;
            pthread_mutex_unlock(&p->mu);
            ex->host->log(DEXEC_LOG_WARN, COMPONENT,
                          "%s: nothing heard for %.1f s while it holds requests "
                          "(timeouts.stall = %.3g s); %s",
                          ex->label, now - p->heard, ex->rec.stall_s,
                          ex->local ? "killing it" : "dropping it");
            if (ex->local)
                dexec_process_signal(ex->child, SIGKILL);
            else
                dexec_conn_shutdown(ex->actor);
            return NULL;
        }
        if (wake > now + 0.25)
            wake = now + 0.25;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)(wake - now);
        ts.tv_nsec += (long)(((wake - now) - (double)(time_t)(wake - now)) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* One generate call on the actor for the requests idx[0..m), on the
 * actor's rank `slot`, or its parallel group `slot` when its ranks form
 * groups (< 0: dealt by the actor); called with ex->lk read-held and a
 * live actor. */
static dexec_status call_generate(struct dexec_executor *ex, int slot, const dexec_request *reqs,
                                  const size_t *idx, size_t m, double deadline,
                                  dexec_progress_fn progress, void *user, dexec_value **res,
                                  int *hung, char *msg, size_t msglen)
{
    dexec_value *params = dexec_value_array(), *batch = dexec_value_array();
    progress_ctx pc = {.fn = progress, .user = user, .n = m, .idx = idx,
                       .heard = dexec_now()};
    watchdog w = {.ex = ex, .pc = &pc};
    pthread_t th;
    int watching = 0;
    dexec_status st;

    *hung = 0;
    for (size_t j = 0; j < m; j++)
        dexec_value_array_push(batch, dexec_request_to_value(&reqs[idx[j]]));
    dexec_value_array_push(params, batch);
    if (slot >= 0 && ex->ask.pcfg * ex->ask.pseq > 1) {
        /* a parallel group of the actor's ranks: all of its members */
        dexec_value *g = dexec_value_map();

        dexec_value_map_set(g, "group", dexec_value_int(slot));
        dexec_value_array_push(params, g);
    } else if (slot >= 0) {
        dexec_value_array_push(params, dexec_value_int(slot));
    }
    if (params == NULL || params->u.arr.len != (slot >= 0 ? 2u : 1u) || batch->u.arr.len != m) {
        dexec_value_free(params);
        snprintf(msg, msglen, "out of memory");
        return DEXEC_ENOMEM;
    }
    pthread_mutex_init(&pc.mu, NULL);
    pthread_cond_init(&pc.cv, NULL);
    if (ex->rec.stall_s > 0)
        watching = pthread_create(&th, NULL, watchdog_main, &w) == 0;
    st = dexec_conn_call(ex->actor, "generate", params, deadline, res, on_progress, &pc, msg,
                         msglen);
    if (watching) {
        pthread_mutex_lock(&pc.mu);
        pc.done = 1;
        pthread_cond_signal(&pc.cv);
        pthread_mutex_unlock(&pc.mu);
        pthread_join(th, NULL);
    }
    *hung = pc.hung;
    pthread_cond_destroy(&pc.cv);
    pthread_mutex_destroy(&pc.mu);
    dexec_value_free(params);
    return st;
}

static void fail_output(dexec_output *o, dexec_status st, const char *msg)
{
    dexec_output_clear(o);
    o->status = st;
    o->error = strdup(msg);
    o->rank = -1;
}

/* generate on the actor (on its rank slot when slot >= 0); a dead or hung
 * actor is restarted (max_restarts) and the step's requests dealt to the
 * new one (max_task_retries each). */
static dexec_status ray_generate(dexec_executor *ex, int slot, const dexec_request *reqs,
                                 size_t n, dexec_output *outs, double timeout,
                                 dexec_progress_fn progress, void *user, char *err,
                                 size_t errlen)
{
    double start = dexec_now();
    const int grouped = ex->ask.pcfg * ex->ask.pseq > 1;
    size_t *idx = calloc(n ? n : 1, sizeof(*idx)), m = n, failed = 0;
    int *tries = calloc(n ? n : 1, sizeof(*tries));
    char msg[1024], m2[1400];
    dexec_status st = DEXEC_OK;

    if (idx == NULL || tries == NULL) {
        free(idx);
        free(tries);
        return DEXEC_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    begin_call(ex);
    while (m > 0) {
        dexec_value *res = NULL;
        int hung = 0, first;
        size_t keep = 0;
        /* the engine's dispatchers call at once: the actor this call used,
         * so that a death several calls see is restarted once */
        uint64_t used = ex->generation;

        if (ex->actor == NULL) {
            death_of(ex, msg, sizeof(msg));
            st = DEXEC_ECLOSED;
        } else {
            st = call_generate(ex, slot, reqs, idx, m, start + timeout, progress, user, &res,
                               &hung,
                               msg, sizeof(msg));
        }
        if (st == DEXEC_OK) {
            if (res == NULL || res->type != DEXEC_VAL_ARRAY || res->u.arr.len != m) {
                dexec_value_free(res);
                pthread_rwlock_unlock(&ex->lk);
                free(idx);
                free(tries);
                dexec_errorf(err, errlen, "generate: %s did not reply with %zu outputs",
                             ex->label, m);
                return DEXEC_EPROTO;
            }
            for (size_t j = 0; j < m; j++) {
                dexec_output *o = &outs[idx[j]];

                if (dexec_output_from_value(res->u.arr.items[j], o, msg, sizeof(msg)) !=
                    DEXEC_OK)
                    fail_output(o, DEXEC_EPROTO, msg);
                o->timings.total_s = dexec_now() - start;
                /* a parallel group that failed the request (a member gave
                 * up) failed it as the executor, as mp's groups count it
                 * (core/group.c); a request refused for its own input or
                 * cancelled failed alone */
                if (grouped && o->status != DEXEC_OK && o->status != DEXEC_EINVAL &&
                    o->status != DEXEC_ECANCELED) {
                    failed++;
                    if (o->status == DEXEC_ETIMEDOUT)
                        st = DEXEC_ETIMEDOUT;
                }
            }
            dexec_value_free(res);
            break;
        }
        if (st != DEXEC_ECLOSED || ex->actor == NULL) {
            /* not a death, or no actor to restart: every request left fails */
            if (st == DEXEC_ECLOSED)
                snprintf(m2, sizeof(m2), "generate: %s", msg);
            else
                call_error(ex, st, "generate", timeout, msg, m2, sizeof(m2));
            for (size_t j = 0; j < m; j++)
                fail_output(&outs[idx[j]], st == DEXEC_ETIMEDOUT ? st : DEXEC_EWORKER, m2);
            failed += m;
            break;
        }
        /* the actor died (or was ended as hung) holding idx[0..m) */
        if (hung)
            snprintf(msg, sizeof(msg), "%s: hung (nothing heard for %.3g s, timeouts.stall), "
                     "ended", ex->label, ex->rec.stall_s);
        for (size_t j = 0; j < m; j++) {
            size_t i = idx[j];

            if (++tries[i] <= ex->rec.max_task_retries) {
                idx[keep++] = i;
                continue;
            }
            if (ex->rec.max_task_retries == 0)
                snprintf(m2, sizeof(m2), "generate: %s", msg);
            else
                snprintf(m2, sizeof(m2),
                         "generate: request %zu was lost with its worker %d times "
                         "(max_task_retries = %d): it may be what kills them; last: %s",
                         i, tries[i], ex->rec.max_task_retries, msg);
            fail_output(&outs[i], DEXEC_EWORKER, m2);
            failed++;
        }
        m = keep;
        pthread_rwlock_unlock(&ex->lk);
        pthread_rwlock_wrlock(&ex->lk);
        first = ex->generation == used && count_death(ex, used);
        if (ex->generation != used && ex->actor != NULL) {
            /* another call restarted it already: on to the new actor */
        } else if (ex->restarts < ex->rec.max_restarts) {
            restart_actor(ex, msg, m2, sizeof(m2));
        } else {
            /* said once per death: every call on the dead actor (one per
             * slot, each image of a batch) comes here */
            if (first)
                ex->host->log(DEXEC_LOG_WARN, COMPONENT, "%s; not restarted (max_restarts = %d%s)",
                              msg, ex->rec.max_restarts,
                              ex->rec.max_restarts > 0 ? ", all used" : "");
            for (size_t j = 0; j < m; j++) {
                snprintf(m2, sizeof(m2), "generate: %s", msg);
                fail_output(&outs[idx[j]], DEXEC_EWORKER, m2);
                failed++;
            }
            m = 0;
        }
        pthread_rwlock_unlock(&ex->lk);
        pthread_rwlock_rdlock(&ex->lk);
    }
    pthread_rwlock_unlock(&ex->lk);
    free(idx);
    free(tries);
    if (n > 0 && failed == n) {
        dexec_errorf(err, errlen, "%s", outs[0].error != NULL ? outs[0].error : "generate failed");
        return st == DEXEC_ETIMEDOUT ? DEXEC_ETIMEDOUT : DEXEC_EWORKER;
    }
    return DEXEC_OK;
}

static dexec_status ray_add_requests(dexec_executor *ex, const dexec_request *reqs, size_t n,
                                     dexec_output *outs, double timeout,
                                     dexec_progress_fn progress, void *user, char *err,
                                     size_t errlen)
{
    return ray_generate(ex, -1, reqs, n, outs, timeout, progress, user, err, errlen);
}

/* ABI 1.2: the actor runs the requests on its rank `slot` (the worker
 * protocol's generate takes the rank), or on its parallel group `slot`
 * (cfg x sequence ranks), so the engine keeps every rank of the actor
 * busy. */
static dexec_status ray_add_requests_on(dexec_executor *ex, int slot, const dexec_request *reqs,
                                        size_t n, dexec_output *outs, double timeout,
                                        dexec_progress_fn progress, void *user, char *err,
                                        size_t errlen)
{
    int slots = ex->n / (ex->ask.pcfg * ex->ask.pseq);

    if (slot < 0 || slot >= slots) {
        dexec_errorf(err, errlen, "generate: slot %d is outside 0..%d", slot, slots - 1);
        return DEXEC_EINVAL;
    }
    return ray_generate(ex, slot, reqs, n, outs, timeout, progress, user, err, errlen);
}

/* ABI 1.2: every rank lives in the one actor, so each has its deaths and
 * restarts. */
static dexec_status ray_rank_stats(dexec_executor *ex, int rank, dexec_rank_stats *out)
{
    if (rank < 0 || rank >= ex->n)
        return DEXEC_EINVAL;
    pthread_rwlock_rdlock(&ex->lk);
    out->deaths = ex->deaths;
    out->restarts = ex->generation;
    pthread_rwlock_unlock(&ex->lk);
    return DEXEC_OK;
}

static dexec_status ray_check_health(dexec_executor *ex, double timeout, char *err,
                                     size_t errlen)
{
    char msg[1024];
    dexec_status st;

    pthread_mutex_lock(&ex->mu);
    if (ex->restarting) {
        dexec_errorf(err, errlen,
                     "actor unhealthy: restarting (restart %d of max_restarts = %d, for %.1f s) "
                     "after: %s",
                     ex->restarts, ex->rec.max_restarts, dexec_now() - ex->since, ex->why);
        pthread_mutex_unlock(&ex->mu);
        return DEXEC_EUNHEALTHY;
    }
    pthread_mutex_unlock(&ex->mu);
    begin_call(ex);
    if (ex->actor == NULL) {
        st = DEXEC_ECLOSED;
        death_of(ex, msg, sizeof(msg));
    } else {
        st = dexec_conn_call(ex->actor, "check_health", NULL, dexec_now() + timeout, NULL, NULL,
                             NULL, msg, sizeof(msg));
    }
    pthread_rwlock_unlock(&ex->lk);
    if (st == DEXEC_OK)
        return DEXEC_OK;
    if (st == DEXEC_ETIMEDOUT)
        dexec_errorf(err, errlen, "%s unhealthy: no answer to check_health within %.3g s",
                     ex->label, timeout);
    else if (st == DEXEC_ECLOSED) /* msg names the actor: "actor (pid P): actor died: ..." */
        dexec_errorf(err, errlen, "actor unhealthy: %s", msg);
    else
        dexec_errorf(err, errlen, "%s unhealthy: %s", ex->label, msg);
    return DEXEC_EUNHEALTHY;
}

static void ray_shutdown(dexec_executor *ex)
{
    if (ex == NULL)
        return;
    stop_actor(ex);
    destroy(ex);
}

static const dexec_executor_ops ray_ops = {
    .struct_size = sizeof(dexec_executor_ops),
    .flags = DEXEC_EXECUTOR_OWNS_WORKERS | DEXEC_EXECUTOR_MULTI_NODE,
    .create = ray_create,
    .num_ranks = ray_num_ranks,
    .collective_rpc = ray_collective_rpc,
    .add_requests = ray_add_requests,
    .add_requests_on = ray_add_requests_on,
    .rank_stats = ray_rank_stats,
    .check_health = ray_check_health,
    .shutdown = ray_shutdown,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "ray_actor", PACKAGE_VERSION,
                           "one owned actor process hosting all ranks: here, on a node, or in a Slurm step",
                           &ray_ops)};
