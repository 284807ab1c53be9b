/* testnewer.c - a test-only executor built for a newer minor ABI than the
 * core's: refused with EABI. */
#include "config.h"

#include "testbad.h"

static const dexec_executor_ops ops = {TESTBAD_OPS_INIT};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    .abi_major = DEXEC_ABI_MAJOR,
    .abi_minor = DEXEC_ABI_MINOR + 1,
    .struct_size = sizeof(dexec_plugin_desc),
    .kind = DEXEC_PLUGIN_EXECUTOR,
    .name = "testnewer",
    .version = "0.0",
    .description = "newer minor",
    .ops = &ops,
};
