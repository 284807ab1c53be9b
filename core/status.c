/* status.c - names of status codes, version, and small shared helpers. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

const char *dexec_status_name(dexec_status s)
{
    switch (s) {
    case DEXEC_OK: return "ok";
    case DEXEC_EINVAL: return "invalid argument";
    case DEXEC_ENOMEM: return "out of memory";
    case DEXEC_ECONFIG: return "configuration error";
    case DEXEC_ENOTFOUND: return "not found";
    case DEXEC_EPLUGIN: return "plugin load error";
    case DEXEC_EABI: return "plugin ABI mismatch";
    case DEXEC_EINIT: return "initialization failed";
    case DEXEC_ETIMEDOUT: return "timed out";
    case DEXEC_EUNHEALTHY: return "unhealthy";
    case DEXEC_EWORKER: return "worker error";
    case DEXEC_EPROTO: return "protocol error";
    case DEXEC_ECLOSED: return "closed";
    case DEXEC_EIO: return "I/O error";
    case DEXEC_ENOTSUP: return "not supported";
    case DEXEC_EAUTH: return "authentication failed";
    case DEXEC_EAGAIN: return "queue full";
    case DEXEC_ECANCELED: return "cancelled";
    }
    return "unknown status";
}

const char *dexec_version(void)
{
    return PACKAGE_VERSION;
}

void dexec_errorf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

dexec_status dx_fail(char *err, size_t errlen, dexec_status code, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

char *dx_strdup(const char *s)
{
    return s == NULL ? NULL : strdup(s);
}

dexec_status dexec_struct_check(const char *type, uint32_t struct_size, size_t oldest,
                                size_t largest, char *err, size_t errlen)
{
    if (type == NULL)
        type = "struct";
    if (struct_size < oldest)
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "%s.struct_size is %u, below the smallest %s this dexec reads "
                       "(%zu bytes, ABI 1.1): initialise it with %s_init()",
                       type, struct_size, type, oldest, type);
    if (struct_size > largest)
        return dx_fail(err, errlen, DEXEC_EINVAL,
                       "%s.struct_size is %u, above sizeof(%s) (%zu): not an initialised %s "
                       "of ABI %d.x; initialise it with %s_init()",
                       type, struct_size, type, largest, type, DEXEC_ABI_MAJOR, type);
    return DEXEC_OK;
}

void dx_struct_import(void *dst, size_t known, const void *src)
{
    uint32_t size, keep;

    memcpy(&size, src, sizeof(size));
    memcpy(&keep, dst, sizeof(keep));
    memcpy(dst, src, size < known ? size : known);
    memcpy(dst, &keep, sizeof(keep));
}

double dx_now_coarse(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
        return dexec_now();
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double dexec_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double dx_remaining(double deadline)
{
    double left = deadline - dexec_now();

    return left > 0 ? left : 0;
}

void dx_strv_free(char **v)
{
    if (v == NULL)
        return;
    for (char **p = v; *p != NULL; p++)
        free(*p);
    free(v);
}
