/*
 * external.c - the "external" executor (alias external_launcher): connects
 * to workers it did not start and does not own.
 *
 * Worker names come from external.worker_names (DIFFUSION_WORKER_ACTOR_NAMES
 * overrides it in the config loader), else diffusion_worker_0 ..
 * diffusion_worker_<num_gpus-1>; name i is rank i. With names given,
 * num_gpus set to another count is refused (at its default it follows
 * the names). A name that is an
 * address (unix:/PATH, tcp:HOST:PORT) is used as is; any other name is
 * resolved through the discovery plugin named by external.discovery.
 *
 * A registry entry is only a claim: the worker may have died a moment ago
 * and its key not expired yet. So every worker is confirmed with connect +
 * hello (and its name checked against the hello reply), asked to
 * initialize, and health-checked the way the reference does it: get_rank
 * must return the worker's index within timeouts.health.
 *
 * Closing only disconnects: the workers keep running for the next engine.
 *
 * Recovery (doc/configuration.md "Recovery"): nothing is restarted, since
 * the engine does not own the workers. A worker that dies or hangs
 * (timeouts.stall: its connection is shut) is logged at once and the
 * requests it held are dealt again to the live ranks (max_task_retries).
 * Before each step, collective_rpc and check_health every dead rank's
 * name is resolved again and, when a worker answers as that name (it
 * came back, registered under the same name), reconnected: the rank is
 * live again from that call on.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/discovery.h>
#include <dexec/group.h>
#include <dexec/plugin.h>
#include <dexec/rpc.h>

/* What the death callback needs to name the worker. */
typedef struct ext_peer {
    char name[160];
    char address[300];
    double retry_at; /* no reconnect before (dexec_now), after one that timed out */
} ext_peer;

struct dexec_executor {
    const dexec_host *host;
    int n;
    char **names;
    char **addresses;
    dexec_group *group;
    ext_peer *peers; /* one per rank; the group's death callbacks point here */
    char *token;     /* the workers' token, for reconnecting; NULL when none */
    double init_t, health_t;
    pthread_mutex_t rlock; /* one reconnect pass at a time */
};

static double left_s(double deadline)
{
    double l = deadline - dexec_now();

    return l > 0 ? l : 0;
}

static int is_address(const char *s)
{
    return strncmp(s, "unix:", 5) == 0 || strncmp(s, "tcp:", 4) == 0;
}

static void free_strv(char **v, int n)
{
    if (v == NULL)
        return;
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void destroy(struct dexec_executor *ex)
{
    /* disconnect only: dexec_group_free closes the sockets, nothing else */
    dexec_group_free(ex->group);
    free(ex->peers);
    free_strv(ex->names, ex->n);
    free_strv(ex->addresses, ex->n);
    free(ex->token);
    pthread_mutex_destroy(&ex->rlock);
    free(ex);
}

/* The worker list: configured names, or diffusion_worker_0..num_gpus-1. */
static dexec_status worker_names(struct dexec_executor *ex, char *err, size_t errlen)
{
    const char *const *items = NULL;
    size_t n = 0, named = 0;
    int64_t ngpus = 1;

    dexec_config_get_list(ex->host->config, "external.worker_names", &named, &items);
    dexec_config_get_int(ex->host->config, "num_gpus", &ngpus);
    n = named;
    if (n == 0)
        n = (size_t)(ngpus > 0 ? ngpus : 1);
    /* the names decide the ranks; a num_gpus set to something else is a
     * mistake, not a request to use some of them */
    if (named > 0 && (size_t)ngpus != named &&
        strcmp(dexec_config_origin(ex->host->config, "num_gpus"), "default") != 0) {
        const char *from = dexec_config_origin(ex->host->config, "external.worker_names");

        dexec_errorf(err, errlen,
                     "num_gpus = %lld (from %s) but %zu worker name(s) are given "
                     "(external.worker_names, from %s): each name is one rank; set num_gpus = "
                     "%zu, or name %lld workers",
                     (long long)ngpus, dexec_config_origin(ex->host->config, "num_gpus"), named,
                     from != NULL ? from : "?", named, (long long)ngpus);
        return DEXEC_ECONFIG;
    }
    if (n > 1024) {
        dexec_errorf(err, errlen, "%zu workers named; at most 1024", n);
        return DEXEC_EINVAL;
    }
    ex->names = calloc(n, sizeof(*ex->names));
    ex->addresses = calloc(n, sizeof(*ex->addresses));
    if (ex->names == NULL || ex->addresses == NULL)
        return DEXEC_ENOMEM;
    ex->n = (int)n;
    for (size_t i = 0; i < n; i++) {
        char def[64];

        snprintf(def, sizeof(def), "diffusion_worker_%zu", i);
        ex->names[i] = strdup(named > 0 ? items[i] : def);
        if (ex->names[i] == NULL)
            return DEXEC_ENOMEM;
        if (ex->names[i][0] == '\0') {
            dexec_errorf(err, errlen, "worker name %zu is empty", i);
            return DEXEC_EINVAL;
        }
    }
    return DEXEC_OK;
}

/* Turns every name into an address; the discovery plugin is loaded only
 * when some name needs it. */
static dexec_status resolve_names(struct dexec_executor *ex, char *err, size_t errlen)
{
    dexec_discovery_handle *d = NULL;
    dexec_status st = DEXEC_OK;
    char msg[2048];

    for (int i = 0; i < ex->n && st == DEXEC_OK; i++) {
        dexec_actor_info a;

        dexec_actor_info_init(&a);

        if (is_address(ex->names[i])) {
            ex->addresses[i] = strdup(ex->names[i]);
            st = ex->addresses[i] != NULL ? DEXEC_OK : DEXEC_ENOMEM;
            continue;
        }
        if (d == NULL) {
            st = dexec_discovery_open(ex->host->config, NULL, NULL, &d, msg, sizeof(msg));
            if (st != DEXEC_OK) {
                dexec_errorf(err, errlen, "cannot look up worker %s: %s", ex->names[i], msg);
                break;
            }
        }
        st = dexec_discovery_resolve(d, ex->names[i], &a, msg, sizeof(msg));
        if (st == DEXEC_ENOTFOUND) {
            dexec_errorf(err, errlen,
                         "worker %d: %s; start it with dexec-worker --name %s "
                         "--registry URL, or fix external.worker_names / "
                         "DIFFUSION_WORKER_ACTOR_NAMES",
                         i, msg, ex->names[i]);
        } else if (st != DEXEC_OK) {
            dexec_errorf(err, errlen, "cannot look up worker %s: %s", ex->names[i],
                         msg);
        } else {
            ex->host->log(DEXEC_LOG_DEBUG, "external",
                          "%s -> %s (pid %d on %s, registered %.0f s ago)", ex->names[i],
                          a.address, a.pid, a.host, a.age_s);
            ex->addresses[i] = a.address;
            a.address = NULL;
            dexec_actor_info_clear(&a);
        }
    }
    dexec_discovery_close(d);
    return st;
}

static void on_death(void *user, dexec_conn *c, char *buf, size_t len)
{
    const ext_peer *p = user;

    (void)c;
    snprintf(buf, len, "external worker %s at %s closed the connection", p->name, p->address);
}

/* Reads the token of external.token_file, else token_file; NULL when none. */
static dexec_status read_token(const dexec_config *cfg, char **token, char *err, size_t errlen)
{
    const char *path = "";

    *token = NULL;
    dexec_config_get_string(cfg, "external.token_file", &path);
    if (path == NULL || *path == '\0')
        dexec_config_get_string(cfg, "token_file", &path);
    if (path == NULL || *path == '\0')
        return DEXEC_OK;
    return dexec_token_read(path, token, err, errlen);
}

/* connect + hello to rank i, checking that the worker answers as its name. */
static dexec_status connect_worker(struct dexec_executor *ex, int i, ext_peer *peer,
                                   const char *token, double deadline, dexec_conn **out,
                                   char *err, size_t errlen)
{
    dexec_conn *c = NULL;
    dexec_value *info = NULL;
    char msg[1024], label[512];
    const char *who;
    dexec_status st;

    st = dexec_conn_connect(ex->addresses[i], left_s(deadline), &c, msg, sizeof(msg));
    if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "worker %d (%s) at %s does not answer: %s%s", i,
                     ex->names[i], ex->addresses[i], msg,
                     is_address(ex->names[i]) ? ""
                                              : " (a stale registry entry expires within "
                                                "discovery.redis.ttl seconds)");
        return st;
    }
    snprintf(label, sizeof(label), "rank %d (%s at %s)", i, ex->names[i], ex->addresses[i]);
    dexec_conn_set_label(c, label);
    snprintf(peer->name, sizeof(peer->name), "%s", ex->names[i]);
    snprintf(peer->address, sizeof(peer->address), "%s", ex->addresses[i]);
    dexec_conn_on_death(c, on_death, peer);
    *out = c; /* the caller's, even when hello fails */
    st = dexec_conn_hello(c, token, left_s(deadline), &info, msg, sizeof(msg));
    if (st != DEXEC_OK) {
        /* msg names the rank, the worker and its address already (the label) */
        dexec_errorf(err, errlen, "%s", msg);
        return st;
    }
    who = dexec_value_as_str(dexec_value_map_get(info, "name"), NULL);
    if (!is_address(ex->names[i]) && who != NULL && strcmp(who, ex->names[i]) != 0) {
        dexec_errorf(err, errlen,
                     "worker %d: the address %s registered for %s is now served by "
                     "a worker named %s",
                     i, ex->addresses[i], ex->names[i], who);
        st = DEXEC_EINIT;
    }
    dexec_value_free(info);
    return st;
}

static dexec_status ext_create(const dexec_host *host, dexec_executor **out, char *err,
                               size_t errlen)
{
    struct dexec_executor *ex;
    double init_t = 60.0, health_t = 5.0, deadline;
    char *token = NULL, msg[1024];
    uint32_t *ids = NULL;
    dexec_status st;

    dexec_config_get_float(host->config, "timeouts.init", &init_t);
    dexec_config_get_float(host->config, "timeouts.health", &health_t);
    deadline = dexec_now() + init_t;
    ex = calloc(1, sizeof(*ex));
    if (ex == NULL)
        return DEXEC_ENOMEM;
    ex->host = host;
    ex->init_t = init_t;
    ex->health_t = health_t;
    pthread_mutex_init(&ex->rlock, NULL);
    st = worker_names(ex, err, errlen);
    if (st == DEXEC_OK)
        st = read_token(host->config, &token, err, errlen);
    if (st == DEXEC_OK)
        st = resolve_names(ex, err, errlen);
    if (st == DEXEC_OK) {
        ex->group = dexec_group_new(ex->n);
        ex->peers = calloc((size_t)ex->n, sizeof(*ex->peers));
        ids = calloc((size_t)ex->n, sizeof(*ids));
        if (ex->group == NULL || ex->peers == NULL || ids == NULL)
            st = DEXEC_ENOMEM;
    }
    for (int i = 0; i < ex->n && st == DEXEC_OK; i++) {
        dexec_conn *c = NULL;

        st = connect_worker(ex, i, &ex->peers[i], token, deadline, &c, err, errlen);
        if (c != NULL)
            dexec_group_set(ex->group, i, c);
    }
    ex->token = token;
    for (int i = 0; i < ex->n && st == DEXEC_OK; i++)
        st = dexec_conn_send(dexec_group_conn(ex->group, i), "initialize", NULL, NULL, NULL,
                             &ids[i], err, errlen);
    for (int i = 0; i < ex->n && st == DEXEC_OK; i++) {
        dexec_value *res = NULL;

        st = dexec_conn_wait(dexec_group_conn(ex->group, i), ids[i], deadline, &res, msg,
                             sizeof(msg));
        if (st == DEXEC_ETIMEDOUT) {
            dexec_errorf(err, errlen,
                         "worker %d (%s) did not initialize within %.3g s "
                         "(timeouts.init)",
                         i, ex->names[i], init_t);
        } else if (st != DEXEC_OK) {
            dexec_errorf(err, errlen, "worker %d (%s) failed to initialize: %s", i,
                         ex->names[i], msg);
            st = DEXEC_EINIT;
        } else if (strcmp(dexec_value_as_str(dexec_value_map_get(res, "status"), ""), "ready")) {
            dexec_errorf(err, errlen, "worker %d (%s) failed to initialize: %s", i,
                         ex->names[i],
                         dexec_value_as_str(dexec_value_map_get(res, "error"), "no reason given"));
            st = DEXEC_EINIT;
        }
        dexec_value_free(res);
    }
    free(ids);
    if (st == DEXEC_OK)
        st = dexec_group_check_health(ex->group, health_t, err, errlen);
    if (st == DEXEC_OK)
        st = dexec_group_form_from_config(ex->group, host->config, err, errlen);
    if (st != DEXEC_OK) {
        destroy(ex);
        return st;
    }
    {
        double write_t = 30.0;

        /* a worker silent past timeouts.health during a call is probed and,
         * unanswered, reported in that call */
        dexec_config_get_float(host->config, "timeouts.write", &write_t);
        for (int i = 0; i < ex->n; i++)
            dexec_conn_set_timeouts(dexec_group_conn(ex->group, i), write_t, health_t);
        dexec_group_recovery rec;

        /* no restarts (not ours); re-deals, and hung workers dropped */
        dexec_group_recovery_from_config(host->config, &rec);
        rec.max_restarts = 0;
        rec.component = "external";
        dexec_group_set_recovery(ex->group, &rec);
    }
    host->log(DEXEC_LOG_INFO, "external", "connected to %d external worker(s)", ex->n);
    *out = ex;
    return DEXEC_OK;
}

/* Resolves rank i's name again (an address is used as is). */
static dexec_status resolve_again(struct dexec_executor *ex, int i, char *err, size_t errlen)
{
    dexec_discovery_handle *d = NULL;
    dexec_actor_info a;
    dexec_status st;
    char msg[1024];

    if (is_address(ex->names[i]))
        return DEXEC_OK;
    st = dexec_discovery_open(ex->host->config, NULL, NULL, &d, msg, sizeof(msg));
    if (st != DEXEC_OK) {
        dexec_errorf(err, errlen, "cannot look up worker %s: %s", ex->names[i], msg);
        return st;
    }
    dexec_actor_info_init(&a);
    st = dexec_discovery_resolve(d, ex->names[i], &a, msg, sizeof(msg));
    if (st == DEXEC_OK) {
        free(ex->addresses[i]);
        ex->addresses[i] = a.address;
        a.address = NULL;
    } else {
        dexec_errorf(err, errlen, "worker %d: %s", i, msg);
    }
    dexec_actor_info_clear(&a);
    dexec_discovery_close(d);
    return st;
}

/* Every dead rank whose worker is back under its name (same name, maybe
 * another address) is reconnected: connect, hello (the name checked),
 * initialize. A rank whose worker is not back stays dead until the next
 * call tries again. */
static void reconnect_dead(struct dexec_executor *ex)
{
    pthread_mutex_lock(&ex->rlock);
    for (int i = 0; i < ex->n; i++) {
        /* every request of a step asks (the engine sends one at a time): a
         * worker that is back answers at once, and one behind a cut link
         * costs at most timeouts.health, then no request waits on it for
         * as long again */
        double now = dexec_now(), deadline = now + ex->init_t;
        double reach = now + (ex->health_t < ex->init_t ? ex->health_t : ex->init_t);
        dexec_conn *c = NULL;
        dexec_value *res = NULL;
        char msg[1024];
        dexec_status st;

        if (now < ex->peers[i].retry_at || !dexec_group_rank_dead(ex->group, i))
            continue;
        st = resolve_again(ex, i, msg, sizeof(msg));
        if (st == DEXEC_OK)
            st = connect_worker(ex, i, &ex->peers[i], ex->token, reach, &c, msg, sizeof(msg));
        if (st == DEXEC_ETIMEDOUT)
            ex->peers[i].retry_at = dexec_now() + ex->health_t;
        if (st == DEXEC_OK) {
            st = dexec_conn_call(c, "initialize", NULL, deadline, &res, NULL, NULL, msg,
                                 sizeof(msg));
            if (st == DEXEC_OK &&
                strcmp(dexec_value_as_str(dexec_value_map_get(res, "status"), ""), "ready")) {
                snprintf(msg, sizeof(msg), "worker %d (%s) failed to initialize: %s", i,
                         ex->names[i],
                         dexec_value_as_str(dexec_value_map_get(res, "error"), "no reason given"));
                st = DEXEC_EINIT;
            }
            dexec_value_free(res);
        }
        if (st == DEXEC_OK)
            st = dexec_group_revive(ex->group, i, c);
        if (st == DEXEC_OK) {
            ex->host->log(DEXEC_LOG_WARN, "external", "rank %d (%s) reconnected at %s", i,
                          ex->names[i], ex->addresses[i]);
        } else {
            dexec_conn_free(c);
            ex->host->log(DEXEC_LOG_DEBUG, "external", "rank %d (%s) still dead: %s", i,
                          ex->names[i], msg);
        }
    }
    pthread_mutex_unlock(&ex->rlock);
}

static int ext_num_ranks(const dexec_executor *ex)
{
    return ex->n;
}

static dexec_status ext_rpc(dexec_executor *ex, const char *method, double timeout,
                            const dexec_value *args, const dexec_value *kwargs,
                            int unique_reply_rank, dexec_value **replies, char *err,
                            size_t errlen)
{
    reconnect_dead(ex);
    return dexec_group_collective_rpc(ex->group, method, timeout, args, kwargs,
                                      unique_reply_rank, replies, err, errlen);
}

static dexec_status ext_add(dexec_executor *ex, const dexec_request *reqs, size_t n,
                            dexec_output *outs, double timeout, dexec_progress_fn progress,
                            void *user, char *err, size_t errlen)
{
    reconnect_dead(ex);
    return dexec_group_generate(ex->group, reqs, n, outs, timeout, progress, user, err, errlen);
}

static dexec_status ext_add_on(dexec_executor *ex, int slot, const dexec_request *reqs, size_t n,
                               dexec_output *outs, double timeout, dexec_progress_fn progress,
                               void *user, char *err, size_t errlen)
{
    reconnect_dead(ex);
    return dexec_group_generate_on(ex->group, slot, reqs, n, outs, timeout, progress, user, err,
                                   errlen);
}

static dexec_status ext_rank_stats(dexec_executor *ex, int rank, dexec_rank_stats *out)
{
    return dexec_group_rank_stats(ex->group, rank, out);
}

static dexec_status ext_health(dexec_executor *ex, double timeout, char *err, size_t errlen)
{
    reconnect_dead(ex);
    return dexec_group_check_health(ex->group, timeout, err, errlen);
}

static void ext_shutdown(dexec_executor *ex)
{
    if (ex == NULL)
        return;
    destroy(ex);
}

static const dexec_executor_ops ext_ops = {
    .struct_size = sizeof(dexec_executor_ops),
    .flags = DEXEC_EXECUTOR_MULTI_NODE,
    .create = ext_create,
    .num_ranks = ext_num_ranks,
    .collective_rpc = ext_rpc,
    .add_requests = ext_add,
    .check_health = ext_health,
    .shutdown = ext_shutdown,
    .add_requests_on = ext_add_on,
    .rank_stats = ext_rank_stats,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "external", PACKAGE_VERSION,
                           "connects to workers started elsewhere, by name or address; never "
                           "stops them",
                           &ext_ops)};
