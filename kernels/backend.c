/*
 * backend.c - finding the op backends: the CPU one is built in
 * (cpu/ops_cpu.c); the CUDA one is the device plugin dexec_cuda.so, loaded
 * here on first use, so that nothing but that module links the CUDA
 * libraries and a host without them runs the CPU backend unchanged.
 */
#include <config.h>

#include <dlfcn.h>
#include <stdlib.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <dexec/plugin.h>
#include <dexec/rpc.h>

#include "ops.h"

#define DX_CUDA_MODULE "cuda"

void dxk_backend_free(dxk_backend *be)
{
    if (be != NULL)
        be->destroy(be);
}

/* The module's ops once loaded; loading failures are not remembered, so a
 * later call (after DEXEC_PLUGIN_PATH changed, in tests) searches again. */
static pthread_mutex_t cuda_lock = PTHREAD_MUTEX_INITIALIZER;
static const dexec_device_ops *cuda_ops;

/* Loads dexec_cuda.so. On failure err says what is missing and what to do
 * (without the "device cuda requested but" that callers put in front). */
static dexec_status cuda_module(const dexec_device_ops **out, char *err, size_t errlen)
{
    dexec_plugin_handle *h = NULL;
    char why[2048];
    dexec_status s = DEXEC_OK;

    pthread_mutex_lock(&cuda_lock);
    if (cuda_ops == NULL) {
        s = dexec_plugin_load(DX_CUDA_MODULE, DEXEC_PLUGIN_DEVICE, NULL, &h, why, sizeof why);
        if (s == DEXEC_OK) {
            /* the object stays mapped: the ops outlive the handle */
            cuda_ops = dexec_plugin_descriptor(h)->ops;
            dexec_plugin_release(h);
        }
    }
    *out = cuda_ops;
    pthread_mutex_unlock(&cuda_lock);
    if (s == DEXEC_OK)
        return DEXEC_OK;
    if (s == DEXEC_ENOTFOUND)
        dexec_errorf(err, errlen,
                     "the CUDA module is not installed: %s; install dexec's CUDA module "
                     "(dexec_cuda.so, built when configure finds nvcc and cuBLAS), or use "
                     "device = \"cpu\"",
                     why);
    else
        /* a dlopen failure is, in practice, a CUDA library missing */
        dexec_errorf(err, errlen, "the CUDA module cannot be used: %s; %s, or use device = \"cpu\"",
                     why,
                     strstr(why, "cannot be loaded") != NULL
                         ? "install the CUDA runtime and cuBLAS libraries it was built against"
                         : "install the module built with this dexec");
    return DEXEC_ENOTSUP;
}

int dxk_cuda_device_count(char *reason, size_t reasonlen)
{
    const dexec_device_ops *ops;
    char why[2560];

    if (cuda_module(&ops, why, sizeof why) != DEXEC_OK) {
        if (reason != NULL && reasonlen > 0)
            snprintf(reason, reasonlen, "%s", why);
        return 0;
    }
    return ops->probe(reason, reasonlen);
}

/* A device built against a newer dexec is fine; one whose struct is too
 * small to hold the ops this library calls, or that leaves one unset, is
 * refused before any op runs. */
static dexec_status check_device(dexec_device *d, char *err, size_t errlen)
{
    static const struct {
        const char *name;
        size_t offset;
    } fns[] = {
#define DX_FN(f) {#f, offsetof(dexec_device, f)}
        DX_FN(alloc),          DX_FN(release),        DX_FN(upload),
        DX_FN(download),       DX_FN(copy),           DX_FN(memory),
        DX_FN(linear),         DX_FN(ln_modulate),    DX_FN(attention),
        DX_FN(attention_scratch), DX_FN(gelu_tanh),   DX_FN(silu),
        DX_FN(timestep_embed), DX_FN(add_embedding),  DX_FN(patchify),
        DX_FN(unpatchify),     DX_FN(pos_embed_add),  DX_FN(gated_residual),
        DX_FN(euler),          DX_FN(cfg_combine),    DX_FN(sync),
#undef DX_FN
    };

    if (d->struct_size < DEXEC_DEVICE_SIZE_1_1) {
        dexec_errorf(err, errlen,
                     "the CUDA module's device struct has size %u, this dexec needs at least "
                     "%zu: install the module built with this dexec",
                     d->struct_size, (size_t)DEXEC_DEVICE_SIZE_1_1);
        return DEXEC_EPLUGIN;
    }
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        void (*fn)(void);

        memcpy(&fn, (const char *)d + fns[i].offset, sizeof fn);
        if (fn == NULL) {
            dexec_errorf(err, errlen,
                         "the CUDA module's device has no '%s' op: install the module built "
                         "with this dexec",
                         fns[i].name);
            return DEXEC_EPLUGIN;
        }
    }
    return DEXEC_OK;
}

/* The NVIDIA driver's library: present on every host where CUDA can run,
 * whatever the toolkit version. */
#define DX_CUDA_DRIVER_LIB "libcuda.so.1"

int dxk_cuda_driver_present(char *reason, size_t reasonlen)
{
    const char *dlerr;
    void *dl;

    /* Opened and kept: when it is there, the CUDA module opens it next. */
    dl = dlopen(DX_CUDA_DRIVER_LIB, RTLD_LAZY | RTLD_LOCAL);
    if (dl != NULL)
        return 1;
    dlerr = dlerror();
    if (reason != NULL && reasonlen > 0)
        snprintf(reason, reasonlen, "no NVIDIA driver: %s", dlerr != NULL ? dlerr : DX_CUDA_DRIVER_LIB);
    return 0;
}

dexec_status dxk_backend_cuda(int gpu, dxk_backend **out, char *err, size_t errlen)
{
    const dexec_device_ops *ops;
    char why[2560];
    dexec_status s;

    *out = NULL;
    if (cuda_module(&ops, why, sizeof why) != DEXEC_OK) {
        dexec_errorf(err, errlen, "device cuda requested but %s", why);
        return DEXEC_ENOTSUP;
    }
    s = ops->open(gpu, out, err, errlen);
    if (s != DEXEC_OK) {
        *out = NULL;
        return s;
    }
    if ((*out)->destroy == NULL) {
        dexec_errorf(err, errlen,
                     "the CUDA module's device has no 'destroy' op: install the module built "
                     "with this dexec");
        *out = NULL; /* cannot be freed: leaked, with the module refused */
        return DEXEC_EPLUGIN;
    }
    s = check_device(*out, err, errlen);
    if (s != DEXEC_OK) {
        dxk_backend_free(*out);
        *out = NULL;
    }
    return s;
}

dexec_status dxk_backend_latent_ops(const dxk_backend *be, char *err, size_t errlen)
{
    static const struct {
        const char *name;
        size_t offset;
    } fns[] = {
#define DX_FN(f) {#f, offsetof(dexec_device, f)}
        DX_FN(conv2d), DX_FN(group_norm), DX_FN(upsample_nearest2x), DX_FN(ln_modulate_eps),
#undef DX_FN
    };

    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        void (*fn)(void) = NULL;

        if (be->struct_size >= fns[i].offset + sizeof fn)
            memcpy(&fn, (const char *)be + fns[i].offset, sizeof fn);
        if (fn == NULL) {
            dexec_errorf(err, errlen,
                         "device %s has no '%s' op, which the latent models (published DiT/SiT "
                         "and their autoencoder) need: use device = \"cpu\" for this model, or "
                         "install a %s module built with this dexec",
                         be->name, fns[i].name, be->name);
            return DEXEC_ENOTSUP;
        }
    }
    return DEXEC_OK;
}

static const char *const dx_dtypes[] = {"float32", "float16", "bfloat16"};

dexec_status dxk_wdtype_parse(const char *name, int *out, char *err, size_t errlen)
{
    for (int i = 0; i < 3; i++) {
        if (name != NULL && strcmp(name, dx_dtypes[i]) == 0) {
            *out = i; /* DEXEC_DTYPE_F32, _F16, _BF16 */
            return DEXEC_OK;
        }
    }
    dexec_errorf(err, errlen, "dtype '%s' is not one of float32, float16, bfloat16",
                 name != NULL ? name : "(null)");
    return DEXEC_EINVAL;
}

const char *dxk_wdtype_name(int dtype)
{
    return dtype >= 0 && dtype < 3 ? dx_dtypes[dtype] : "unknown";
}

dexec_status dxk_backend_half(const dxk_backend *be, int dtype, char *err, size_t errlen)
{
    if (dtype == DEXEC_DTYPE_F32)
        return DEXEC_OK;
    if (strcmp(be->name, "cpu") == 0) {
        dexec_errorf(err, errlen, DEXEC_DTYPE_CPU_REFUSAL, dxk_wdtype_name(dtype));
        return DEXEC_ENOTSUP;
    }
    if (be->struct_size < DEXEC_DEVICE_SIZE_1_3 || be->upload_half == NULL ||
        be->linear_half == NULL || be->conv2d_half == NULL) {
        dexec_errorf(err, errlen,
                     "dtype = \"%s\" is not supported on device %s: it keeps no half-precision "
                     "weights; use dtype = \"float32\", or install a %s module built with this "
                     "dexec",
                     dxk_wdtype_name(dtype), be->name, be->name);
        return DEXEC_ENOTSUP;
    }
    return DEXEC_OK;
}

dexec_status dxk_upload_half(dxk_backend *be, const float *host, size_t n, int dtype,
                             float ***list, size_t *count, const void **out, char *err,
                             size_t errlen)
{
    float **grown = realloc(*list, (*count + 1) * sizeof *grown);
    char berr[256];
    dexec_status s;
    void *buf;

    *out = NULL;
    if (grown == NULL) {
        dexec_errorf(err, errlen, "out of host memory");
        return DEXEC_ENOMEM;
    }
    *list = grown;
    buf = be->upload_half(be, host, n, dtype);
    if (buf == NULL) {
        s = be->sync(be, berr, sizeof berr);
        dexec_errorf(err, errlen, "keeping %zu weights as %s on %s: %s", n,
                     dxk_wdtype_name(dtype), be->name,
                     s != DEXEC_OK ? berr : "the device returned no buffer");
        return s != DEXEC_OK ? s : DEXEC_ENOMEM;
    }
    (*list)[(*count)++] = (float *)buf;
    *out = buf;
    return DEXEC_OK;
}
