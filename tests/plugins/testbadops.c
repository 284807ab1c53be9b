/* testbadops.c - a test-only executor whose ops table lacks add_requests. */
#include "config.h"

#include "testbad.h"

static const dexec_executor_ops ops = {
    .struct_size = sizeof(dexec_executor_ops),
    .create = tb_create,
    .num_ranks = tb_num_ranks,
    .collective_rpc = tb_rpc,
    .check_health = tb_health,
    .shutdown = tb_shutdown,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "testbadops", "0.0", "no add_requests", &ops)
};
