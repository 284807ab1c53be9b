/* testhidden.c - a test-only executor whose descriptor is defined but not
 * exported (hidden visibility, as -fvisibility=hidden makes a descriptor
 * declared without DEXEC_PLUGIN_EXPORT): refused with a hint. */
#include "config.h"

#include "testbad.h"

static const dexec_executor_ops ops = {TESTBAD_OPS_INIT};

__attribute__((visibility("hidden"))) const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_EXECUTOR, "testhidden", "0.0", "hidden", &ops)};
