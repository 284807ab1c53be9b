/* testmismatch.c - a test-only executor whose descriptor names another
 * plugin ("other"): refused when loaded by the name of its file. */
#include "config.h"

#include "testbad.h"

static const dexec_executor_ops ops = {TESTBAD_OPS_INIT};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "other", "0.0", "misnamed", &ops)
};
