/*
 * registry.c - the worker's entry in the actor registry (dexec-worker
 * --name): registration, heartbeats and deregistration through the
 * discovery plugin.
 *
 * Heartbeats run on a thread of their own rather than in the server's I/O
 * loop: an unreachable registry can hold a call for the connect timeout
 * plus the command timeout, and the I/O loop must keep answering get_rank
 * within the engines' health deadline meanwhile.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <dexec/discovery.h>
#include <dexec/rpc.h>

#include "registry.h"

struct dxw_registry {
    dexec_config *cfg;
    dexec_discovery_handle *disc;
    dexec_actor_info info;
    int ttl;

    pthread_t thread;
    int thread_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stopping;
};

static double wall_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* host:port, with brackets for an IPv6 literal. */
static void tcp_address(const char *host, const char *port, char *out, size_t len)
{
    if (strchr(host, ':') != NULL && host[0] != '[')
        snprintf(out, len, "tcp:[%s]:%s", host, port);
    else
        snprintf(out, len, "tcp:%s:%s", host, port);
}

/* The first non-loopback address of this host's name, or -1. */
static int hostname_address(char *out, size_t len, char *why, size_t whylen)
{
    char name[256] = "";
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
    int rc;

    gethostname(name, sizeof(name) - 1);
    rc = getaddrinfo(name, NULL, &hints, &res);
    if (rc != 0) {
        snprintf(why, whylen, "the hostname %s does not resolve (%s)", name, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET) {
            const struct sockaddr_in *sa = (const struct sockaddr_in *)ai->ai_addr;

            if ((ntohl(sa->sin_addr.s_addr) >> 24) == 127)
                continue;
            inet_ntop(AF_INET, &sa->sin_addr, out, (socklen_t)len);
            break;
        }
        if (ai->ai_family == AF_INET6) {
            const struct sockaddr_in6 *sa = (const struct sockaddr_in6 *)ai->ai_addr;

            if (IN6_IS_ADDR_LOOPBACK(&sa->sin6_addr) || IN6_IS_ADDR_LINKLOCAL(&sa->sin6_addr))
                continue;
            inet_ntop(AF_INET6, &sa->sin6_addr, out, (socklen_t)len);
            break;
        }
    }
    freeaddrinfo(res);
    if (ai == NULL) {
        snprintf(why, whylen, "the hostname %s resolves only to loopback addresses", name);
        return -1;
    }
    return 0;
}

/* The address others should use to reach a worker listening on bound. */
static dexec_status advertised_address(const char *bound, const char *advertise, char *out,
                                       size_t len, char *err, size_t errlen)
{
    char host[256], port[16], ip[INET6_ADDRSTRLEN], why[300];

    if (strncmp(bound, "tcp:", 4) != 0 ||
        dexec_split_hostport(bound + 4, host, sizeof(host), port, sizeof(port)) != 0) {
        if (advertise != NULL) {
            dexec_errorf(err, errlen, "--advertise applies to TCP listeners, not %s", bound);
            return DEXEC_EINVAL;
        }
        snprintf(out, len, "%s", bound);
        return DEXEC_OK;
    }
    if (advertise != NULL) {
        if (strncmp(advertise, "tcp:", 4) == 0 || strncmp(advertise, "unix:", 5) == 0)
            snprintf(out, len, "%s", advertise);
        else
            tcp_address(advertise, port, out, len);
        return DEXEC_OK;
    }
    if (strcmp(host, "0.0.0.0") != 0 && strcmp(host, "::") != 0 && strcmp(host, "[::]") != 0) {
        snprintf(out, len, "%s", bound);
        return DEXEC_OK;
    }
    if (hostname_address(ip, sizeof(ip), why, sizeof(why)) != 0) {
        dexec_errorf(err, errlen,
                     "listening on %s, but %s: give --advertise HOST (an address other hosts "
                     "can reach)",
                     bound, why);
        return DEXEC_EINVAL;
    }
    tcp_address(ip, port, out, len);
    return DEXEC_OK;
}

static void *heartbeat_main(void *arg)
{
    dxw_registry *r = arg;
    double period = r->ttl / 3.0;
    int failing = 0;

    if (period < 0.5)
        period = 0.5;
    pthread_mutex_lock(&r->lock);
    while (!r->stopping) {
        struct timespec until;
        double t;
        char err[1024];
        dexec_status st;

        clock_gettime(CLOCK_MONOTONIC, &until);
        t = (double)until.tv_sec + (double)until.tv_nsec / 1e9 + period;
        until.tv_sec = (time_t)t;
        until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
        while (!r->stopping && pthread_cond_timedwait(&r->cond, &r->lock, &until) != ETIMEDOUT)
            ;
        if (r->stopping)
            break;
        pthread_mutex_unlock(&r->lock);
        st = dexec_discovery_heartbeat(r->disc, &r->info, r->ttl, err, sizeof(err));
        /* log a change of state once, not every period */
        if (st != DEXEC_OK && !failing)
            dexec_log(DEXEC_LOG_WARN, "registry", "%s: heartbeat failed: %s (retrying every %.3g s)",
                      r->info.name, err, period);
        else if (st == DEXEC_OK && failing)
            dexec_log(DEXEC_LOG_INFO, "registry", "%s: registry reachable again, entry refreshed",
                      r->info.name);
        failing = st != DEXEC_OK;
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static void registry_free(dxw_registry *r)
{
    dexec_discovery_close(r->disc);
    dexec_actor_info_clear(&r->info);
    dexec_config_free(r->cfg);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r);
}

static dexec_status fill_info(dxw_registry *r, const dxw_registry_opts *o, const char *address)
{
    char host[256] = "", inst[96];
    unsigned char rnd[8] = {0};
    dexec_value *meta = dexec_value_map();

    gethostname(host, sizeof(host) - 1);
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        /* only uniqueness matters here, not secrecy */
        uint64_t x = (uint64_t)(wall_now() * 1e6) ^ ((uint64_t)getpid() << 32);

        memcpy(rnd, &x, sizeof(rnd));
    }
    snprintf(inst, sizeof(inst), "%s-%d-%02x%02x%02x%02x%02x%02x%02x%02x", host, (int)getpid(),
             rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    dexec_actor_info_init(&r->info);
    r->info.name = strdup(o->name);
    r->info.address = strdup(address);
    r->info.host = strdup(host);
    r->info.instance = strdup(inst);
    r->info.rank = o->rank;
    r->info.pid = (int)getpid();
    r->info.protocol = DEXEC_PROTOCOL_VERSION;
    r->info.started = wall_now();
    if (meta != NULL) {
        dexec_value_map_set(meta, "kind", dexec_value_str("actor"));
        dexec_value_map_set(meta, "ranks", dexec_value_int(o->num_ranks > 0 ? o->num_ranks : 1));
        if (o->model != NULL)
            dexec_value_map_set(meta, "model", dexec_value_str(o->model));
        dexec_value_map_set(meta, "version", dexec_value_str(dexec_version()));
    }
    r->info.meta = meta;
    if (r->info.name == NULL || r->info.address == NULL || r->info.host == NULL ||
        r->info.instance == NULL || meta == NULL)
        return DEXEC_ENOMEM;
    return DEXEC_OK;
}

dexec_status dxw_registry_open(const dxw_registry_opts *o, dxw_registry **out, char *err,
                               size_t errlen)
{
    dxw_registry *r;
    char address[512];
    int64_t ttl = 10;
    dexec_status st;

    st = advertised_address(o->bound, o->advertise, address, sizeof(address), err, errlen);
    if (st != DEXEC_OK)
        return st;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return DEXEC_ENOMEM;
    pthread_mutex_init(&r->lock, NULL);
    {
        pthread_condattr_t ca;

        /* heartbeats keep their period when the wall clock is set */
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&r->cond, &ca);
        pthread_condattr_destroy(&ca);
    }
    st = dexec_config_load(NULL, &r->cfg, err, errlen);
    if (st != DEXEC_OK)
        goto fail;
    dexec_config_get_int(r->cfg, "discovery.redis.ttl", &ttl);
    r->ttl = o->ttl > 0 ? o->ttl : (int)ttl;
    st = fill_info(r, o, address);
    if (st != DEXEC_OK)
        goto fail;
    st = dexec_discovery_open(r->cfg, o->plugin, o->url, &r->disc, err, errlen);
    if (st != DEXEC_OK)
        goto fail;
    st = dexec_discovery_register(r->disc, &r->info, r->ttl, err, errlen);
    if (st != DEXEC_OK)
        goto fail;
    if (pthread_create(&r->thread, NULL, heartbeat_main, r) != 0) {
        dexec_errorf(err, errlen, "cannot start the heartbeat thread: %s", strerror(errno));
        dexec_discovery_deregister(r->disc, &r->info, NULL, 0);
        st = DEXEC_EIO;
        goto fail;
    }
    r->thread_started = 1;
    dexec_log(DEXEC_LOG_INFO, "registry", "registered as %s at %s (ttl %d s, instance %s)",
              r->info.name, r->info.address, r->ttl, r->info.instance);
    *out = r;
    return DEXEC_OK;
fail:
    registry_free(r);
    return st;
}

const char *dxw_registry_address(const dxw_registry *r)
{
    return r->info.address;
}

void dxw_registry_close(dxw_registry *r)
{
    char err[1024];

    if (r == NULL)
        return;
    if (r->thread_started) {
        pthread_mutex_lock(&r->lock);
        r->stopping = 1;
        pthread_cond_signal(&r->cond);
        pthread_mutex_unlock(&r->lock);
        pthread_join(r->thread, NULL);
    }
    if (dexec_discovery_deregister(r->disc, &r->info, err, sizeof(err)) != DEXEC_OK)
        dexec_log(DEXEC_LOG_WARN, "registry",
                  "%s: could not remove the entry (it expires within %d s): %s", r->info.name,
                  r->ttl, err);
    else
        dexec_log(DEXEC_LOG_INFO, "registry", "%s: deregistered", r->info.name);
    registry_free(r);
}
