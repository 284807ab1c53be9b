/*
 * minimal.c - the smallest executor plugin the loader accepts: the
 * "Minimal executor plugin" of <dexec/plugin.h>. tests/test-loader.c
 * builds it as dexec_minimal.so and runs an engine on it, so the example
 * in the header cannot drift from what the loader takes.
 *
 * One rank and no workers: it answers get_rank and check_health and
 * refuses to generate with DEXEC_ENOTSUP, which is what an operation a
 * plugin cannot do must return (every operation of dexec_executor_ops is
 * required; none may be NULL).
 *
 *   cc -shared -fPIC -fvisibility=hidden $(pkg-config --cflags dexec) \
 *      -o dexec_minimal.so minimal.c $(pkg-config --libs dexec)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/plugin.h>

struct dexec_executor {
    const dexec_host *host;
};

static dexec_status my_create(const dexec_host *host, dexec_executor **out, char *err,
                              size_t errlen)
{
    struct dexec_executor *ex = calloc(1, sizeof(*ex));

    if (ex == NULL) {
        snprintf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    ex->host = host;
    *out = ex;
    return DEXEC_OK;
}

static int my_num_ranks(const dexec_executor *ex)
{
    (void)ex;
    return 1;
}

static dexec_status my_rpc(dexec_executor *ex, const char *method, double timeout,
                           const dexec_value *args, const dexec_value *kwargs,
                           int unique_reply_rank, dexec_value **replies, char *err, size_t errlen)
{
    (void)ex, (void)timeout, (void)args, (void)kwargs;
    if (strcmp(method, "get_rank") != 0) {
        snprintf(err, errlen, "unknown method '%s' (this plugin knows: get_rank)", method);
        return DEXEC_ENOTFOUND;
    }
    if (unique_reply_rank >= 0) {
        *replies = dexec_value_int(0);
    } else {
        *replies = dexec_value_array();
        if (*replies != NULL)
            dexec_value_array_push(*replies, dexec_value_int(0));
    }
    return *replies != NULL ? DEXEC_OK : DEXEC_ENOMEM;
}

static dexec_status my_add(dexec_executor *ex, const dexec_request *reqs, size_t n,
                           dexec_output *outs, double timeout, dexec_progress_fn progress,
                           void *user, char *err, size_t errlen)
{
    (void)ex, (void)reqs, (void)n, (void)outs, (void)timeout, (void)progress, (void)user;
    snprintf(err, errlen, "this plugin generates nothing (it is the minimal example)");
    return DEXEC_ENOTSUP;
}

static dexec_status my_health(dexec_executor *ex, double timeout, char *err, size_t errlen)
{
    (void)ex, (void)timeout, (void)err, (void)errlen;
    return DEXEC_OK;
}

static void my_shutdown(dexec_executor *ex)
{
    free(ex);
}

static const dexec_executor_ops ops = {
    .struct_size = sizeof(dexec_executor_ops),
    .create = my_create,
    .num_ranks = my_num_ranks,
    .collective_rpc = my_rpc,
    .add_requests = my_add,
    .check_health = my_health,
    .shutdown = my_shutdown,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "minimal", "1.0", "the minimal example", &ops)};
