/* testold.c - a test-only executor that says it was built for ABI 1.0, whose
 * request, output and actor structs had no struct_size: refused with EABI
 * before any of its code runs. */
#include "config.h"

#include "testbad.h"

static const dexec_executor_ops ops = {TESTBAD_OPS_INIT};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    .abi_major = DEXEC_ABI_MAJOR,
    .abi_minor = 0,
    .struct_size = sizeof(dexec_plugin_desc),
    .kind = DEXEC_PLUGIN_EXECUTOR,
    .name = "testold",
    .version = "0.0",
    .description = "ABI 1.0",
    .ops = &ops,
};
