/*
 * ray_actor.c - the ray_actor executor: one owned actor process hosting all
 * ranks. Not built yet: this descriptor lets the plugin be listed and
 * loaded, and create() says so instead of pretending to start anything.
 */
#include "config.h"

#include <dexec/plugin.h>
#include <dexec/rpc.h>

#define NOT_BUILT "the ray_actor executor is not built yet"

static dexec_status ray_create(const dexec_host *host, dexec_executor **out, char *err,
                               size_t errlen)
{
    (void)host;
    (void)out;
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

/* create() never succeeds, so the core never calls the operations below
 * with an executor; they exist because the loader requires a full table. */
static int ray_num_ranks(const dexec_executor *ex)
{
    (void)ex;
    return 0;
}

static dexec_status ray_rpc(dexec_executor *ex, const char *method, double timeout,
                            const dexec_value *args, const dexec_value *kwargs,
                            int unique_reply_rank, dexec_value **replies, char *err,
                            size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static dexec_status ray_add(dexec_executor *ex, const dexec_request *reqs, size_t n,
                            dexec_output *outs, double timeout, dexec_progress_fn progress,
                            void *user, char *err, size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static dexec_status ray_health(dexec_executor *ex, double timeout, char *err, size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static void ray_shutdown(dexec_executor *ex)
{
    (void)ex;
}

static const dexec_executor_ops ray_ops = {
    .struct_size = sizeof(dexec_executor_ops),
    .flags = DEXEC_EXECUTOR_OWNS_WORKERS | DEXEC_EXECUTOR_MULTI_NODE,
    .create = ray_create,
    .num_ranks = ray_num_ranks,
    .collective_rpc = ray_rpc,
    .add_requests = ray_add,
    .check_health = ray_health,
    .shutdown = ray_shutdown,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "ray_actor", PACKAGE_VERSION,
                           "one owned actor process hosting all ranks (not built yet)", &ray_ops)
};
