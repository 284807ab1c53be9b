/* testabi2.c - a test-only executor built for ABI 2.0: refused with EABI. */
#include "config.h"

#include "testbad.h"

static const dexec_executor_ops ops = {TESTBAD_OPS_INIT};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    .abi_major = 2,
    .abi_minor = DEXEC_ABI_MINOR,
    .struct_size = sizeof(dexec_plugin_desc),
    .kind = DEXEC_PLUGIN_EXECUTOR,
    .name = "testabi2",
    .version = "0.0",
    .description = "ABI 2",
    .ops = &ops,
};
