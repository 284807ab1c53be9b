/* testdisc.c - a test-only discovery plugin: loads and passes every check,
 * but open() refuses (it has no registry), which is all the loader tests
 * need of a discovery plugin. The refusal echoes the URL, as a careless
 * plugin might, so the tests can check that its password is masked. */
#include "config.h"

#include <dexec/plugin.h>
#include <dexec/rpc.h>

static dexec_status td_open(const dexec_host *host, const char *url, dexec_discovery **out,
                            char *err, size_t errlen)
{
    dexec_errorf(err, errlen, "testdisc has no registry (asked for %s)",
                 url != NULL ? url : "its configured one");
    return DEXEC_ENOTSUP;
}

static dexec_status td_register(dexec_discovery *d, const dexec_actor_info *a, int ttl_s,
                                char *err, size_t errlen)
{
    return DEXEC_ENOTSUP;
}

static dexec_status td_resolve(dexec_discovery *d, const char *name, dexec_actor_info *out,
                               char *err, size_t errlen)
{
    return DEXEC_ENOTSUP;
}

static dexec_status td_list(dexec_discovery *d, const char *kind, dexec_actor_info **out,
                            size_t *n, char *err, size_t errlen)
{
    return DEXEC_ENOTSUP;
}

static dexec_status td_deregister(dexec_discovery *d, const dexec_actor_info *a, char *err,
                                  size_t errlen)
{
    return DEXEC_ENOTSUP;
}

static void td_close(dexec_discovery *d)
{
}

static const dexec_discovery_ops td_ops = {
    .struct_size = sizeof(dexec_discovery_ops),
    .open = td_open,
    .register_actor = td_register,
    .heartbeat = td_register,
    .resolve = td_resolve,
    .list = td_list,
    .deregister = td_deregister,
    .close = td_close,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_DISCOVERY, "testdisc", "0.0", "test discovery", &td_ops)
};
