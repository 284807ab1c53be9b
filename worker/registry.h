/*
 * registry.h - a worker's own entry in the actor registry: registered once
 * the worker listens and its model is loaded, kept alive by heartbeats,
 * deleted on a clean exit. The registry is reached through a discovery
 * plugin (redis_discovery by default) loaded at run time, so the worker
 * itself knows nothing about Redis.
 */
#ifndef DEXEC_WORKER_REGISTRY_H
#define DEXEC_WORKER_REGISTRY_H

#include <stddef.h>

#include <dexec/dexec.h>

typedef struct dxw_registry_opts {
    const char *name;      /* the actor name ([A-Za-z0-9_.-]+) */
    const char *url;       /* registry URL; NULL: $DEXEC_REGISTRY, else discovery.redis.url */
    const char *plugin;    /* discovery plugin name or path; NULL: external.discovery */
    const char *bound;     /* the address the worker listens on (dxw_listen's bound) */
    const char *advertise; /* address or host to register instead, or NULL */
    const char *model;     /* for the entry's metadata */
    int rank;              /* first rank served */
    int num_ranks;         /* ranks served */
    int ttl;               /* seconds; 0: discovery.redis.ttl */
} dxw_registry_opts;

typedef struct dxw_registry dxw_registry;

/* Loads the configuration ($DEXEC_CONFIG or defaults) and the discovery
 * plugin, registers the name and starts heartbeats every ttl/3 seconds on
 * a thread of their own. Errors: DEXEC_EINVAL with "name X is held by pid
 * P on host H ..." when another live instance holds the name, or the
 * address cannot be advertised; DEXEC_EIO / DEXEC_ETIMEDOUT when the
 * registry is unreachable; loader errors. *out is the caller's. */
dexec_status dxw_registry_open(const dxw_registry_opts *opts, dxw_registry **out, char *err,
                               size_t errlen);

/* The address registered (valid until dxw_registry_close). */
const char *dxw_registry_address(const dxw_registry *r);

/* Stops the heartbeats, deletes the entry if it is still ours and frees r.
 * NULL is accepted. */
void dxw_registry_close(dxw_registry *r);

#endif
