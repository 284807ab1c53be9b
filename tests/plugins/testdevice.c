/* testdevice.c - a test-only device plugin: loads and passes every check,
 * but has no hardware (probe() says so, open() refuses), which is what the
 * loader and "dexec plugins" tests need of a device plugin. */
#include "config.h"

#include <stdio.h>

#include <dexec/device.h>

#define TD_NO_HARDWARE "testdevice has no hardware"

static int td_probe(char *reason, size_t reasonlen)
{
    if (reason != NULL && reasonlen > 0)
        snprintf(reason, reasonlen, "%s", TD_NO_HARDWARE);
    return 0;
}

static dexec_status td_open(int index, dexec_device **out, char *err, size_t errlen)
{
    *out = NULL;
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s (device %d)", TD_NO_HARDWARE, index);
    return DEXEC_ENOTSUP;
}

static const dexec_device_ops td_ops = {
    .struct_size = sizeof(dexec_device_ops),
    .probe = td_probe,
    .open = td_open,
};

DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_DEVICE, "testdevice", "1.0", "test device", &td_ops)};
