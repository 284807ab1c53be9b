/*
 * ops_cuda.cu - the device plugin "cuda" (dexec_cuda.so, <dexec/device.h>):
 * its descriptor, finding a device, the device object, device buffers,
 * sticky error reporting, the linear layers, and the half-precision
 * weights. The other ops live in attention.cu, layernorm.cu,
 * elementwise.cu, embed.cu and conv.cu.
 *
 * Linear layers are cuBLAS SGEMM in plain FP32 math: TF32 tensor cores
 * would be several times faster but move results by ~1e-3, and a request
 * must give the same image on a GPU as on the CPU (within 1e-4). Only when
 * the user asks for half-precision weights (dtype float16 / bfloat16,
 * doc/model.md "Half precision") do linear_half and conv2d_half run
 * cublasGemmEx on half operands with float32 accumulation (CUBLAS_COMPUTE_32F).
 */
#include <config.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_cuda.h"

/* Like dxc_errorf(), which the module does not call: it uses no function
 * of libdexec, so tests/gpu/run.sh can build it with the CUDA toolkit alone. */
static void dxc_errorf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void dxc_errorf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void dxc_fail(dxc *c, dexec_status s, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (c->fail != DEXEC_OK)
        return;
    c->fail = s;
    n = snprintf(c->msg, sizeof c->msg, "cuda gpu %d: ", c->gpu);
    if (n < 0 || (size_t)n >= sizeof c->msg)
        return;
    va_start(ap, fmt);
    vsnprintf(c->msg + n, sizeof c->msg - (size_t)n, fmt, ap);
    va_end(ap);
}

bool dxc_cuda_ok(dxc *c, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return true;
    dxc_fail(c, e == cudaErrorMemoryAllocation ? DEXEC_ENOMEM : DEXEC_EIO, "%s: %s (%s)", what,
             cudaGetErrorString(e), cudaGetErrorName(e));
    return false;
}

bool dxc_blas_ok(dxc *c, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return true;
    dxc_fail(c, s == CUBLAS_STATUS_ALLOC_FAILED ? DEXEC_ENOMEM : DEXEC_EIO, "%s: %s (%s)", what,
             cublasGetStatusString(s), cublasGetStatusName(s));
    return false;
}

/* The CUDA runtime keeps the current device per thread; the thread that
 * issues ops need not be the one that created the backend. */
static bool dxc_current(dxc *c)
{
    int cur;

    if (cudaGetDevice(&cur) == cudaSuccess && cur == c->gpu)
        return true;
    return dxc_cuda_ok(c, cudaSetDevice(c->gpu), "making the device current");
}

bool dxc_enter(dxk_backend *be)
{
    dxc *c = dxc_of(be);

    return c->fail == DEXEC_OK && dxc_current(c);
}

bool dxc_launched(dxc *c, const char *kernel)
{
    char what[96];
    cudaError_t e = cudaGetLastError();

    if (e == cudaSuccess)
        return true;
    snprintf(what, sizeof what, "launching %s", kernel);
    return dxc_cuda_ok(c, e, what);
}

unsigned dxc_blocks(size_t n)
{
    /* enough blocks to fill an H100 several times over; the grid-stride
     * loop covers the rest */
    const size_t max_blocks = 8192;
    size_t b = (n + DXC_THREADS - 1) / DXC_THREADS;

    return (unsigned)(b < 1 ? 1 : b > max_blocks ? max_blocks : b);
}

void *dxc_malloc(dxc *c, size_t bytes, const char *what)
{
    void *p = NULL;
    size_t used;
    cudaError_t e;

    if (c->nallocs == c->cap) {
        size_t ncap = c->cap ? 2 * c->cap : 64;
        dxc_alloc *a = (dxc_alloc *)realloc(c->allocs, ncap * sizeof *a);

        if (a == NULL) {
            dxc_fail(c, DEXEC_ENOMEM, "%s: out of host memory", what);
            return NULL;
        }
        c->allocs = a;
        c->cap = ncap;
    }
    e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;

        cudaGetLastError(); /* a failed cudaMalloc is not sticky: clear it */
        cudaMemGetInfo(&free_b, &total_b);
        dxc_fail(c, e == cudaErrorMemoryAllocation ? DEXEC_ENOMEM : DEXEC_EIO,
                 "%s: cannot allocate %zu MiB of device memory (%zu of %zu MiB free, %zu MiB "
                 "held by this backend): %s",
                 what, bytes >> 20, free_b >> 20, total_b >> 20, c->used >> 20,
                 cudaGetErrorString(e));
        return NULL;
    }
    c->allocs[c->nallocs].p = p;
    c->allocs[c->nallocs].bytes = bytes;
    c->nallocs++;
    /* atomics: model info reads the counters from another thread while a
     * request allocates (the table itself is the op thread's alone) */
    used = __atomic_add_fetch(&c->used, bytes, __ATOMIC_RELAXED);
    if (used > __atomic_load_n(&c->peak, __ATOMIC_RELAXED))
        __atomic_store_n(&c->peak, used, __ATOMIC_RELAXED);
    return p;
}

void dxc_free(dxc *c, void *p)
{
    size_t i;

    if (p == NULL)
        return;
    /* buffers tend to be released in reverse order of allocation */
    for (i = c->nallocs; i > 0; i--) {
        if (c->allocs[i - 1].p == p)
            break;
    }
    if (i == 0) {
        dxc_fail(c, DEXEC_EINVAL, "release of %p, which this backend did not allocate", p);
        return;
    }
    __atomic_sub_fetch(&c->used, c->allocs[i - 1].bytes, __ATOMIC_RELAXED);
    c->allocs[i - 1] = c->allocs[--c->nallocs];
    /* cudaFree waits for the device: no queued kernel still uses p */
    dxc_cuda_ok(c, cudaFree(p), "cudaFree");
}

/* ---- buffers ---- */

static float *cu_alloc(dxk_backend *be, size_t n)
{
    dxc *c = dxc_of(be);
    char what[64];

    if (n > SIZE_MAX / sizeof(float)) {
        dxc_fail(c, DEXEC_ENOMEM, "cannot allocate %zu floats: the size overflows", n);
        return NULL;
    }
    /* allocation works after an op failed: the caller learns of the
     * failure at its next sync and frees what it holds */
    if (!dxc_current(c))
        return NULL;
    snprintf(what, sizeof what, "alloc of %zu floats", n);
    return (float *)dxc_malloc(c, n * sizeof(float), what);
}

static void cu_release(dxk_backend *be, float *p)
{
    dxc *c = dxc_of(be);

    if (p != NULL && dxc_current(c))
        dxc_free(c, p);
}

/* From pageable host memory cudaMemcpyAsync copies src to a staging
 * buffer before it returns: the caller may reuse src at once. */
static void cu_upload(dxk_backend *be, float *dst, const float *src, size_t n)
{
    dxc *c = dxc_of(be);

    if (n == 0 || !dxc_enter(be))
        return;
    dxc_cuda_ok(c, cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyHostToDevice, c->stream),
                "upload");
}

/* Returns with dst filled: the host reads it next, without a sync. */
static void cu_download(dxk_backend *be, float *dst, const float *src, size_t n)
{
    dxc *c = dxc_of(be);

    if (n == 0 || !dxc_enter(be))
        return;
    if (dxc_cuda_ok(c,
                    cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyDeviceToHost, c->stream),
                    "download"))
        dxc_cuda_ok(c, cudaStreamSynchronize(c->stream), "download (waiting for the queued ops)");
}

static void cu_copy(dxk_backend *be, float *dst, const float *src, size_t n)
{
    dxc *c = dxc_of(be);

    if (n == 0 || dst == src || !dxc_enter(be))
        return;
    /* cudaMemcpy has memcpy's contract, not memmove's; no caller needs an
     * overlapping copy, so one is reported rather than half done */
    if (dst < src + n && src < dst + n) {
        dxc_fail(c, DEXEC_EINVAL, "copy of %zu floats between overlapping buffers", n);
        return;
    }
    dxc_cuda_ok(c, cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyDeviceToDevice, c->stream),
                "copy");
}

static void cu_memory(dxk_backend *be, size_t *used, size_t *peak)
{
    *used = __atomic_load_n(&dxc_of(be)->used, __ATOMIC_RELAXED);
    *peak = __atomic_load_n(&dxc_of(be)->peak, __ATOMIC_RELAXED);
}

/* ---- linear ---- */

/* y[M,N] = b broadcast over the rows: the GEMM then accumulates onto it
 * (beta = 1), which costs one write of y instead of a second pass. */
static __global__ void fill_rows_kernel(float *__restrict__ y, const float *__restrict__ b,
                                        size_t total, int N)
{
    DXC_FOR_EACH(i, total)
    {
        y[i] = b[i % N];
    }
}

static void cu_linear(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                      int M, int N, int K)
{
    dxc *c = dxc_of(be);
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s;
    char what[96];

    if (M <= 0 || N <= 0 || !dxc_enter(be))
        return;
    if (b != NULL) {
        size_t total = (size_t)M * N;

        fill_rows_kernel<<<dxc_blocks(total), DXC_THREADS, 0, c->stream>>>(y, b, total, N);
        if (!dxc_launched(c, "fill_rows (linear bias)"))
            return;
    }
    /* cuBLAS is column-major: row-major y[M,N] is the column-major N x M
     * matrix y^T = W x^T. Row-major W[N,K] is column-major W^T (K x N),
     * hence OP_T; row-major x[M,K] is column-major x^T (K x M) as is. */
    s = cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w, K, x, K,
                    b != NULL ? &one : &zero, y, N);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(what, sizeof what, "linear M=%d N=%d K=%d (cublasSgemm)", M, N, K);
        dxc_blas_ok(c, s, what);
    }
}

/* ---- half-precision weights (1.3) ---- */

bool dxc_half_ok(dxc *c, int dtype, const char *op)
{
    if (dtype == DEXEC_DTYPE_F16 || dtype == DEXEC_DTYPE_BF16)
        return true;
    dxc_fail(c, DEXEC_EINVAL, "%s: dtype %d is neither float16 (%d) nor bfloat16 (%d)", op,
             dtype, DEXEC_DTYPE_F16, DEXEC_DTYPE_BF16);
    return false;
}

/* Weights converted per host copy: 4 Mi of them (8 MiB of host memory). */
#define DXC_HALF_CHUNK ((size_t)4 << 20)

/* Largest magnitude float16 holds; larger values would become inf. */
#define DXC_F16_MAX 65504.0f

/* The conversion runs on the host (round-to-nearest-even, as the device's
 * intrinsics, which cuda_fp16.h and cuda_bf16.h also give host code), in
 * chunks, so a weight never exists in float32 on the device. */
static void *cu_upload_half(dxk_backend *be, const float *src, size_t n, int dtype)
{
    dxc *c = dxc_of(be);
    const size_t chunk = n < DXC_HALF_CHUNK ? n : DXC_HALF_CHUNK;
    char what[96];
    uint16_t *stage;
    void *dst;
    size_t off, i, over = 0;
    float big = 0;

    if (!dxc_half_ok(c, dtype, "upload_half") || !dxc_enter(be))
        return NULL;
    if (n > SIZE_MAX / 2) {
        dxc_fail(c, DEXEC_ENOMEM, "upload_half: cannot allocate %zu weights: the size overflows",
                 n);
        return NULL;
    }
    snprintf(what, sizeof what, "upload_half of %zu %s weights", n,
             dtype == DEXEC_DTYPE_F16 ? "float16" : "bfloat16");
    dst = dxc_malloc(c, n * 2, what);
    if (dst == NULL)
        return NULL;
    stage = (uint16_t *)malloc((chunk ? chunk : 1) * sizeof *stage);
    if (stage == NULL) {
        dxc_fail(c, DEXEC_ENOMEM, "%s: out of host memory", what);
        dxc_free(c, dst);
        return NULL;
    }
    for (off = 0; off < n; off += chunk) {
        const size_t len = n - off < chunk ? n - off : chunk;

        if (dtype == DEXEC_DTYPE_F16) {
            __half *h = (__half *)stage;

            for (i = 0; i < len; i++) {
                const float v = src[off + i];

                if (!(fabsf(v) <= DXC_F16_MAX) && !isnan(v)) {
                    over++;
                    if (fabsf(v) > big)
                        big = fabsf(v);
                }
                h[i] = __float2half_rn(v);
            }
        } else {
            __nv_bfloat16 *h = (__nv_bfloat16 *)stage;

            for (i = 0; i < len; i++)
                h[i] = __float2bfloat16_rn(src[off + i]);
        }
        /* from pageable memory the copy has left stage when the call
         * returns, so the next chunk may overwrite it */
        if (!dxc_cuda_ok(c,
                         cudaMemcpyAsync((char *)dst + off * 2, stage, len * 2,
                                         cudaMemcpyHostToDevice, c->stream),
                         "upload_half"))
            break;
    }
    dxc_cuda_ok(c, cudaStreamSynchronize(c->stream), "upload_half (waiting for the copies)");
    free(stage);
    if (over > 0)
        dxc_fail(c, DEXEC_EINVAL,
                 "%zu of %zu weights are beyond float16's range (+-65504; the largest is "
                 "%g): use dtype = \"bfloat16\" or \"float32\" for this model",
                 over, n, (double)big);
    if (c->fail != DEXEC_OK) {
        dxc_free(c, dst);
        return NULL;
    }
    return dst;
}

/* y[i] = x[i] rounded to T */
template <typename T>
static __global__ void round_kernel(T *__restrict__ y, const float *__restrict__ x, size_t n)
{
    DXC_FOR_EACH(i, n)
    {
        dxc_store(&y[i], x[i]);
    }
}

/* linear() with half weights: x rounded into the kept scratch c->xh, then
 * one cublasGemmEx of two half operands accumulated in float32 (tensor
 * cores) onto y, float32. */
static void cu_linear_half(dxk_backend *be, float *y, const float *x, const void *w, int dtype,
                           const float *b, int M, int N, int K)
{
    dxc *c = dxc_of(be);
    const float one = 1.0f, zero = 0.0f;
    const size_t nx = (size_t)M * K;
    const cudaDataType_t t = dxc_half_type(dtype);
    cublasStatus_t s;
    char what[112];

    if (M <= 0 || N <= 0 || K <= 0 || !dxc_half_ok(c, dtype, "linear_half") || !dxc_enter(be))
        return;
    if (c->xh_n < nx) {
        dxc_free(c, c->xh);
        c->xh = NULL;
        c->xh_n = 0;
        c->xh = dxc_malloc(c, nx * 2, "linear_half's input in half precision");
        if (c->xh == NULL)
            return;
        c->xh_n = nx;
    }
    if (dtype == DEXEC_DTYPE_F16)
        round_kernel<__half><<<dxc_blocks(nx), DXC_THREADS, 0, c->stream>>>((__half *)c->xh, x,
                                                                              nx);
    else
        round_kernel<__nv_bfloat16>
            <<<dxc_blocks(nx), DXC_THREADS, 0, c->stream>>>((__nv_bfloat16 *)c->xh, x, nx);
    if (!dxc_launched(c, "round (linear_half input)"))
        return;
    if (b != NULL) {
        size_t total = (size_t)M * N;

        fill_rows_kernel<<<dxc_blocks(total), DXC_THREADS, 0, c->stream>>>(y, b, total, N);
        if (!dxc_launched(c, "fill_rows (linear_half bias)"))
            return;
    }
    /* the layout of cu_linear: column-major y^T (N x M) = W (OP_T of
     * column-major K x N) times x^T (K x M) */
    s = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w, t, K, c->xh, t, K,
                     b != NULL ? &one : &zero, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(what, sizeof what, "linear_half M=%d N=%d K=%d %s (cublasGemmEx)", M, N, K,
                 dtype == DEXEC_DTYPE_F16 ? "float16" : "bfloat16");
        dxc_blas_ok(c, s, what);
    }
}

/* ---- control ---- */

static dexec_status cu_sync(dxk_backend *be, char *err, size_t errlen)
{
    dxc *c = dxc_of(be);

    /* waits even after a failure: the caller frees buffers next */
    if (dxc_current(c))
        dxc_cuda_ok(c, cudaStreamSynchronize(c->stream),
                    "running the queued ops (CUDA_LAUNCH_BLOCKING=1 tells which one failed)");
    if (c->fail != DEXEC_OK && err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", c->msg);
    return c->fail;
}

static void dxc_release_all(dxc *c)
{
    size_t i;

    if (c->stream != NULL)
        cudaStreamSynchronize(c->stream);
    for (i = 0; i < c->nallocs; i++)
        cudaFree(c->allocs[i].p);
    if (c->blas != NULL)
        cublasDestroy(c->blas);
    if (c->stream != NULL)
        cudaStreamDestroy(c->stream);
    free(c->allocs);
    free(c);
}

static void cu_destroy(dxk_backend *be)
{
    dxc *c = dxc_of(be);

    /* the model has released its buffers; what is left (the position
     * embedding, or buffers a caller leaked) goes with the backend */
    dxc_current(c);
    dxc_release_all(c);
    free(be);
}

/* ---- creation ---- */

static int cu_probe(char *reason, size_t reasonlen)
{
    int n = 0, driver = 0;
    cudaError_t e = cudaGetDeviceCount(&n);

    if (reason != NULL && reasonlen > 0)
        reason[0] = '\0';
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (reason == NULL || reasonlen == 0)
            return 0;
        /* with no driver at all the runtime says "driver version is
         * insufficient", which sends people looking for the wrong fix */
        if (e == cudaErrorInsufficientDriver && cudaDriverGetVersion(&driver) == cudaSuccess &&
            driver == 0)
            snprintf(reason, reasonlen, "no NVIDIA driver is installed (libcuda.so.1 not found)");
        else
            snprintf(reason, reasonlen, "%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
        return 0;
    }
    if (n == 0 && reason != NULL && reasonlen > 0)
        snprintf(reason, reasonlen, "the CUDA driver reports no device");
    return n;
}

/* Checks that the device can run this build's kernels: a build for sm_90
 * has no code an older GPU can load, and the first op would fail. */
static dexec_status dxc_check_arch(int gpu, const cudaDeviceProp *prop, char *err, size_t errlen)
{
    cudaFuncAttributes fa;
    cudaError_t e = cudaFuncGetAttributes(&fa, fill_rows_kernel);

    if (e == cudaSuccess)
        return DEXEC_OK;
    cudaGetLastError();
    dxc_errorf(err, errlen,
            "device cuda requested but gpu %d (%s, compute capability %d.%d) cannot run the "
            "kernels of this build: %s; reconfigure with NVCCFLAGS=\"-O3 -gencode "
            "arch=compute_%d%d,code=sm_%d%d\"",
            gpu, prop->name, prop->major, prop->minor, cudaGetErrorString(e), prop->major,
            prop->minor, prop->major, prop->minor);
    return DEXEC_ENOTSUP;
}

static dexec_status cu_open(int gpu, dxk_backend **out, char *err, size_t errlen)
{
    char reason[160];
    cudaDeviceProp prop;
    dxk_backend *be;
    dxc *c;
    cudaError_t e;
    cublasStatus_t bs;
    dexec_status s;
    int n = cu_probe(reason, sizeof reason);

    *out = NULL;
    if (n == 0) {
        dxc_errorf(err, errlen,
                   "device cuda requested but no CUDA device can be used: %s; %s, or use "
                   "device = \"cpu\"",
                   reason,
                   strstr(reason, "driver") != NULL
                       ? "install the NVIDIA driver (nvidia-smi must list a GPU)"
                       : "check that nvidia-smi lists a GPU and CUDA_VISIBLE_DEVICES");
        return DEXEC_ENOTSUP;
    }
    if (gpu < 0 || gpu >= n) {
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");

        dxc_errorf(err, errlen,
                "device cuda requested on gpu %d, but this process sees %d CUDA device(s) "
                "(CUDA_VISIBLE_DEVICES=%s)",
                gpu, n, vis != NULL ? vis : "unset");
        return DEXEC_ENOTSUP;
    }
    e = cudaSetDevice(gpu);
    if (e == cudaSuccess)
        e = cudaGetDeviceProperties(&prop, gpu);
    if (e != cudaSuccess) {
        cudaGetLastError();
        dxc_errorf(err, errlen, "device cuda requested but gpu %d cannot be used: %s (%s)", gpu,
                cudaGetErrorString(e), cudaGetErrorName(e));
        return DEXEC_ENOTSUP;
    }
    s = dxc_check_arch(gpu, &prop, err, errlen);
    if (s != DEXEC_OK)
        return s;

    be = (dxk_backend *)calloc(1, sizeof *be);
    c = (dxc *)calloc(1, sizeof *c);
    if (be == NULL || c == NULL) {
        free(be);
        free(c);
        dxc_errorf(err, errlen, "cuda backend: out of memory");
        return DEXEC_ENOMEM;
    }
    c->gpu = gpu;
    e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        c->stream = NULL;
        dxc_errorf(err, errlen, "cuda gpu %d (%s): creating a stream: %s", gpu, prop.name,
                cudaGetErrorString(e));
        dxc_release_all(c);
        free(be);
        return e == cudaErrorMemoryAllocation ? DEXEC_ENOMEM : DEXEC_EIO;
    }
    bs = cublasCreate(&c->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        c->blas = NULL;
    } else {
        bs = cublasSetStream(c->blas, c->stream);
        /* plain FP32: no TF32 tensor cores (see the top of this file) */
        if (bs == CUBLAS_STATUS_SUCCESS)
            bs = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);
    }
    if (bs != CUBLAS_STATUS_SUCCESS) {
        dxc_errorf(err, errlen, "cuda gpu %d (%s): setting up cuBLAS: %s", gpu, prop.name,
                cublasGetStatusString(bs));
        dxc_release_all(c);
        free(be);
        return bs == CUBLAS_STATUS_ALLOC_FAILED ? DEXEC_ENOMEM : DEXEC_EIO;
    }

    be->struct_size = sizeof *be;
    be->name = "cuda";
    snprintf(be->device_name, sizeof be->device_name, "%.*s", (int)sizeof be->device_name - 1,
             prop.name);
    be->host_memory = 0;
    be->priv = c;
    be->alloc = cu_alloc;
    be->release = cu_release;
    be->upload = cu_upload;
    be->download = cu_download;
    be->copy = cu_copy;
    be->memory = cu_memory;
    be->linear = cu_linear;
    be->ln_modulate = dxc_ln_modulate;
    be->attention = dxc_attention;
    be->attention_scratch = dxc_attention_scratch;
    be->gelu_tanh = dxc_gelu_tanh;
    be->silu = dxc_silu;
    be->timestep_embed = dxc_timestep_embed;
    be->add_embedding = dxc_add_embedding;
    be->patchify = dxc_patchify;
    be->unpatchify = dxc_unpatchify;
    be->pos_embed_add = dxc_pos_embed_add;
    be->gated_residual = dxc_gated_residual;
    be->euler = dxc_euler;
    be->cfg_combine = dxc_cfg_combine;
    be->sync = cu_sync;
    be->destroy = cu_destroy;
    be->conv2d = dxc_conv2d;
    be->group_norm = dxc_group_norm;
    be->upsample_nearest2x = dxc_upsample_nearest2x;
    be->ln_modulate_eps = dxc_ln_modulate_eps;
    be->upload_half = cu_upload_half;
    be->linear_half = cu_linear_half;
    be->conv2d_half = dxc_conv2d_half;
    *out = be;
    return DEXEC_OK;
}

/* ---- the plugin ---- */

static const dexec_device_ops cu_ops = {
    /* .struct_size */ sizeof(dexec_device_ops),
    /* .flags */ 0,
    /* .probe */ cu_probe,
    /* .open */ cu_open,
    /* .reserved */ {},
};

/* The module's one exported symbol (local.am exports nothing else). */
extern "C" DEXEC_PLUGIN_EXPORT const dexec_plugin_desc dexec_plugin = {
    DEXEC_PLUGIN_DESC_INIT(DEXEC_PLUGIN_DEVICE, "cuda", PACKAGE_VERSION,
                           "CUDA op backend: cuBLAS SGEMM and CUDA kernels (FP32; "
                           "float16/bfloat16 weights on request)",
                           &cu_ops),
    .settings = NULL,
    .reserved = {}};
