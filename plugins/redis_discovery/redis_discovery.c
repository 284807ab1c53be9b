/*
 * redis_discovery.c - the redis_discovery plugin: named actors registered
 * in Redis. Not built yet: this descriptor lets the plugin be listed and
 * loaded, and open() says so instead of pretending to connect.
 */
#include "config.h"

#include <dexec/plugin.h>
#include <dexec/rpc.h>

#define NOT_BUILT "the redis_discovery plugin is not built yet"

static dexec_status rd_open(const dexec_host *host, const char *url, dexec_discovery **out,
                            char *err, size_t errlen)
{
    (void)host;
    (void)url;
    (void)out;
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

/* open() never succeeds, so nothing calls the operations below with a
 * handle; they exist because the loader requires a full table. */
static dexec_status rd_register(dexec_discovery *d, const dexec_actor_info *a, int ttl_s,
                                char *err, size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static dexec_status rd_heartbeat(dexec_discovery *d, const dexec_actor_info *a, int ttl_s,
                                 char *err, size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static dexec_status rd_resolve(dexec_discovery *d, const char *name, dexec_actor_info *out,
                               char *err, size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static dexec_status rd_list(dexec_discovery *d, const char *kind, dexec_actor_info **out,
                            size_t *n, char *err, size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static dexec_status rd_deregister(dexec_discovery *d, const dexec_actor_info *a, char *err,
                                  size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static void rd_close(dexec_discovery *d)
{
    (void)d;
}

static const dexec_discovery_ops rd_ops = {
    .struct_size = sizeof(dexec_discovery_ops),
    .open = rd_open,
    .register_actor = rd_register,
    .heartbeat = rd_heartbeat,
    .resolve = rd_resolve,
    .list = rd_list,
    .deregister = rd_deregister,
    .close = rd_close,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_DISCOVERY, "redis_discovery", PACKAGE_VERSION,
                           "named actors registered in Redis (not built yet)", &rd_ops)
};
