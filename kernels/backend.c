/*
 * backend.c - what the model needs to know about backends whatever this
 * build contains: releasing one, and the answers a build without CUDA gives
 * when asked for a GPU (the CUDA build replaces these in cuda/ops_cuda.cu).
 */
#include <config.h>

#include <stdio.h>

#include "ops.h"

void dxk_backend_free(dxk_backend *be)
{
    if (be != NULL)
        be->destroy(be);
}

/* DXK_CUDA_BACKEND is defined where kernels/cuda/ is compiled in (a build
 * whose configure found nvcc and cuBLAS). */
#ifndef DXK_CUDA_BACKEND
#ifdef HAVE_CUDA
#define DX_NO_CUDA_WHY "this dexec's CUDA backend (kernels/cuda) is not part of this build"
#else
#define DX_NO_CUDA_WHY "this dexec was built without CUDA (configure found no nvcc)"
#endif

int dxk_cuda_device_count(char *reason, size_t reasonlen)
{
    if (reason != NULL && reasonlen > 0)
        snprintf(reason, reasonlen, "%s", DX_NO_CUDA_WHY);
    return 0;
}

dexec_status dxk_backend_cuda(int gpu, dxk_backend **out, char *err, size_t errlen)
{
    (void)gpu;
    *out = NULL;
    if (err != NULL && errlen > 0)
        snprintf(err, errlen,
                 "device cuda requested but %s: rebuild with --with-cuda, or use device = "
                 "\"cpu\"",
                 DX_NO_CUDA_WHY);
    return DEXEC_ENOTSUP;
}
#endif
