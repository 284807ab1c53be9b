/* testold.c - a test-only plugin as ABI 1.0 built it: abi_minor 0 and its
 * descriptor's reserved words zero. It still loads, and has no settings.
 * (A 1.0 descriptor's reserved[0] is where 1.1 keeps the settings table:
 * here it holds a table the core must ignore, because 1.0 promised only
 * zeros there and the core reads the field from 1.1 plugins only.) */
#include "config.h"

#include "testbad.h"

static const dexec_executor_ops ops = {TESTBAD_OPS_INIT};

static const dexec_setting ignored[] = {
    {.name = "x", .type = DEXEC_SETTING_INT, .def = "1", .doc = "never attached"},
};
static const dexec_settings ignored_table = {DEXEC_SETTINGS_INIT("testold", ignored)};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    .abi_major = DEXEC_ABI_MAJOR,
    .abi_minor = 0,
    .struct_size = sizeof(dexec_plugin_desc),
    .kind = DEXEC_PLUGIN_EXECUTOR,
    .name = "testold",
    .version = "0.0",
    .description = "built for ABI 1.0",
    .ops = &ops,
    .settings = &ignored_table,
};
