/*
 * external.c - the external executor: connects to named workers it does
 * not own. Not built yet: this descriptor lets the plugin be listed and
 * loaded, and create() says so instead of pretending to start anything.
 */
#include "config.h"

#include <dexec/plugin.h>
#include <dexec/rpc.h>

#define NOT_BUILT "the external executor is not built yet"

static dexec_status ext_create(const dexec_host *host, dexec_executor **out, char *err,
                               size_t errlen)
{
    (void)host;
    (void)out;
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

/* create() never succeeds, so the core never calls the operations below
 * with an executor; they exist because the loader requires a full table. */
static int ext_num_ranks(const dexec_executor *ex)
{
    (void)ex;
    return 0;
}

static dexec_status ext_rpc(dexec_executor *ex, const char *method, double timeout,
                            const dexec_value *args, const dexec_value *kwargs,
                            int unique_reply_rank, dexec_value **replies, char *err,
                            size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static dexec_status ext_add(dexec_executor *ex, const dexec_request *reqs, size_t n,
                            dexec_output *outs, double timeout, dexec_progress_fn progress,
                            void *user, char *err, size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static dexec_status ext_health(dexec_executor *ex, double timeout, char *err, size_t errlen)
{
    dexec_errorf(err, errlen, NOT_BUILT);
    return DEXEC_ENOTSUP;
}

static void ext_shutdown(dexec_executor *ex)
{
    (void)ex;
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
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "external", PACKAGE_VERSION,
                           "connects to workers started elsewhere (not built yet)", &ext_ops)
};
