/*
 * ops_cpu.c - the CPU backend of ops.h. Every linear layer and both
 * attention products are OpenBLAS SGEMM calls, all on the backend's pool
 * (as many threads as OpenBLAS uses) with single-threaded SGEMMs: a
 * linear's output columns are split between the threads (OpenBLAS's own
 * threads, spinning after each call, took the cores from the pool's other
 * ops), and the attention's heads are spread over them (threading each
 * small T x T x head_dim product makes every call wait for its slowest
 * thread). GELU and LayerNorm are split over the same pool; the adaLN
 * modulation (few rows) streams its weights (dxk_cpu_linear_few).
 */
#include <config.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "../kernels.h"
#include "ops.h"
#include "pool.h"

/* OpenBLAS extensions, weak: a reference BLAS lacks them, and then the
 * backend runs single-threaded. */
#pragma weak openblas_get_num_threads
#pragma weak openblas_set_num_threads
#pragma weak openblas_get_parallel
/* OpenBLAS DYNAMIC_ARCH: the core whose kernels were chosen at load;
 * weak, absent from a single-target OpenBLAS. */
char *openblas_get_corename(void);
#pragma weak openblas_get_corename

/* Below this many floats an element-wise op is not worth waking threads. */
#define DX_PAR_MIN 65536

typedef struct dx_cpu {
    dexec_status fail; /* sticky first failure */
    char msg[256];
    size_t used, peak;
    /* position embedding of the last grid asked for: recomputing T*D
     * sines in double at every step would cost as much as a small GEMM */
    float *pos;
    int pos_h, pos_w, pos_d;
    float *col; /* conv2d's im2col panel */
    size_t col_n;
    float *wg_u, *wg_v, *wg_m; /* Winograd: weights, input and product tiles */
    size_t wg_u_n, wg_v_n, wg_m_n;
    float *gn_ab; /* dxk_cpu_conv3's GroupNorm scale and shift per channel */
    size_t gn_ab_n;
    dxk_pool *pool; /* NULL: one thread */
} dx_cpu;

/* conv2d makes its im2col panel in bands of output rows, each at most this
 * many floats (64 MiB): a 3x3 convolution of 512 channels at 256x256 would
 * otherwise need a 1.2 GB panel. */
#define DX_COL_MAX (16u * 1024u * 1024u)

static int dx_blas_threads(void)
{
    return openblas_get_num_threads ? openblas_get_num_threads() : 1;
}

static void dx_blas_set_threads(int n)
{
    if (openblas_set_num_threads)
        openblas_set_num_threads(n);
}

/* OpenBLAS's DYNAMIC_ARCH picks its kernels from the CPU's family and
 * model number, and a model it does not know (OpenBLAS 0.3.21, Debian 12,
 * on Emerald Rapids: family 6 model 207) falls back to its Prescott (SSE3)
 * kernels, a fifth of the AVX-512 SGEMM rate. Returns the core to ask for
 * through OPENBLAS_CORETYPE when OpenBLAS chose one of those old cores on
 * a CPU with AVX2 or AVX-512 and OPENBLAS_CORETYPE is not set (copying the
 * core OpenBLAS chose to was), else NULL. */
static const char *dx_blas_core_wanted(char *was, size_t waslen)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const char *const old[] = {"Prescott", "Core2",   "Penryn",   "Dunnington",
                                      "Nehalem",  "Atom",    "Nano",     "Katmai",
                                      "Coppermine", "Northwood", "Banias", "Athlon",
                                      "Opteron",  "Opteron_SSE3", "Barcelona", "Bobcat",
                                      "Unknown"};
    const char *core;
    size_t i;

    if (!openblas_get_corename || getenv("OPENBLAS_CORETYPE") != NULL ||
        (core = openblas_get_corename()) == NULL)
        return NULL;
    for (i = 0; i < sizeof old / sizeof old[0]; i++)
        if (strcmp(core, old[i]) == 0)
            break;
    if (i == sizeof old / sizeof old[0])
        return NULL;
    snprintf(was, waslen, "%s", core);
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
#if defined(__clang__)
        return "SkylakeX"; /* clang's __builtin_cpu_supports may lack avx512bf16 */
#else
        return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
#endif
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
#else
    (void)was;
    (void)waslen;
#endif
    return NULL;
}

/* OpenBLAS reads OPENBLAS_CORETYPE when it is loaded, before main(); its
 * kernels cannot be swapped safely afterwards (its server threads read
 * the kernel table as they start: swapping it under them crashed workers
 * at start-up). So the programs re-execute themselves with the variable
 * set, first thing in main() (kernels.h). */
void dxk_blas_core_reexec(char **argv)
{
    char was[32];
    const char *want = dx_blas_core_wanted(was, sizeof was);

    char self[4096];
    ssize_t n;

    if (want == NULL || argv == NULL || argv[0] == NULL ||
        setenv("OPENBLAS_CORETYPE", want, 0) != 0)
        return;
    /* the program's own path, so that the process keeps its name (comm:
     * what ps, top and the journal show); /proc/self/exe itself would name
     * it "exe". That path fails if the file was replaced since the start
     * (an upgrade): then /proc/self/exe, still the running file. */
    n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        execv(self, argv);
    }
    execv("/proc/self/exe", argv);
    /* exec failed: go on with OpenBLAS's own choice (logged below) */
    unsetenv("OPENBLAS_CORETYPE");
}

/* Says once (info level) that OpenBLAS runs old kernels where a program did
 * not re-execute itself (dxk_blas_core_reexec). */
static void dx_blas_core_note(void)
{
    char was[32];
    const char *want = dx_blas_core_wanted(was, sizeof was);

    if (want != NULL)
        dexec_log(DEXEC_LOG_INFO, "kernels",
                  "cpu: OpenBLAS runs its %s kernels on this CPU, which has %s: set "
                  "OPENBLAS_CORETYPE=%s before the program starts for its faster ones",
                  was, strcmp(want, "Haswell") == 0 ? "AVX2" : "AVX-512", want);
}

static pthread_once_t dx_blas_once = PTHREAD_ONCE_INIT;

/* Pool threads of an OpenMP OpenBLAS have their own thread count, which
 * must be 1 (a pthreads OpenBLAS has one global count, set around jobs). */
static void dx_pool_thread_init(void)
{
    if (openblas_get_parallel && openblas_get_parallel() == 2)
        dx_blas_set_threads(1);
}

/* Allocations carry their size in front so memory() can report use. */
typedef struct dx_cpu_hdr {
    size_t n;
    size_t pad; /* keeps the payload 16-byte aligned */
} dx_cpu_hdr;

static dx_cpu *dx_priv(dxk_backend *be)
{
    return be->priv;
}

/* GCC's -O2 vectorises only loops whose trip count is known; the
 * element-wise loops here run over whole tensors, so they ask for the
 * dynamic cost model, and for if-conversion of the clamps in dx_expf,
 * non-trapping compares (no flags are read, so results do not change;
 * clang's -O2 vectorises these loops as they are). */
#if defined(__GNUC__) && !defined(__clang__)
#define DX_VECTORIZE                                                                        \
    __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic", "no-trapping-math")))
#else
#define DX_VECTORIZE
#endif

/* The x86-64 baseline is SSE2; the element-wise loops and the Winograd
 * transforms also get AVX2 and AVX-512 versions, chosen at load by the CPU
 * (GCC's target_clones, glibc ifunc). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define DX_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DX_CLONES
#endif

/* expf without libm: GELU and SiLU call it for every activation, and the
 * libm calls (tanhf, expf) were a third of a DiT-S step. Cody-Waite
 * reduction x = n ln2 + r, a degree-6 polynomial for e^r on |r| <= ln2/2
 * (relative error below 2e-7), and 2^n built in the exponent bits. No
 * branches, so the loops that call it vectorise. */
DX_VECTORIZE static inline float dx_expf(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float c, n, r, p;
    union {
        uint32_t i;
        float f;
    } u;

    /* written so that NaN clamps to 88 (every compare with NaN is false):
     * the exponent arithmetic stays defined, and NaN is returned below */
    c = x < 88.0f ? x : 88.0f;
    c = c > -87.0f ? c : -87.0f;
    /* round to nearest by the 1.5 * 2^23 trick: no branch, no call */
    n = (c * log2e + 12582912.0f) - 12582912.0f;
    r = c - n * ln2_hi - n * ln2_lo;
    p = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666672e-1f +
                    r * (4.16666418e-2f + r * (8.33333842e-3f + r * 1.38888624e-3f)))));
    u.i = (uint32_t)((int32_t)n + 127) << 23;
    return x == x ? p * u.f : x;
}

static float *cpu_alloc(dxk_backend *be, size_t n)
{
    dx_cpu *c = dx_priv(be);
    dx_cpu_hdr *h;
    size_t used;

    if (n > (SIZE_MAX - sizeof *h) / sizeof(float) ||
        (h = malloc(sizeof *h + (n ? n : 1) * sizeof(float))) == NULL) {
        if (c->fail == DEXEC_OK) {
            c->fail = DEXEC_ENOMEM;
            snprintf(c->msg, sizeof c->msg, "cpu: out of memory allocating %zu floats", n);
        }
        return NULL;
    }
    h->n = n;
    /* atomics: model info reads these from another thread mid-request */
    used = __atomic_add_fetch(&c->used, n * sizeof(float), __ATOMIC_RELAXED);
    if (used > __atomic_load_n(&c->peak, __ATOMIC_RELAXED))
        __atomic_store_n(&c->peak, used, __ATOMIC_RELAXED);
    return (float *)(h + 1);
}

static void cpu_release(dxk_backend *be, float *p)
{
    dx_cpu_hdr *h;

    if (p == NULL)
        return;
    h = (dx_cpu_hdr *)(void *)p - 1;
    __atomic_sub_fetch(&dx_priv(be)->used, h->n * sizeof(float), __ATOMIC_RELAXED);
    free(h);
}

static void cpu_copy(dxk_backend *be, float *dst, const float *src, size_t n)
{
    (void)be;
    if (n > 0 && dst != src)
        memmove(dst, src, n * sizeof *dst);
}

static void cpu_memory(dxk_backend *be, size_t *used, size_t *peak)
{
    *used = __atomic_load_n(&dx_priv(be)->used, __ATOMIC_RELAXED);
    *peak = __atomic_load_n(&dx_priv(be)->peak, __ATOMIC_RELAXED);
}

/* Rows a linear computes in whole tiles (see cpu_linear). */
#define DX_ROW_UNIT 4

/* One call of OpenBLAS for y[M, N] = x[M, K] W^T (+ y when acc). */
static void dx_sgemm_nt(float *y, const float *x, const float *w, int M, int N, int K, int ldy,
                        int acc)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K,
                acc ? 1.0f : 0.0f, y, ldy);
}

/* y[M, N] = x[M, K] W^T (+ y when acc) with a whole number of DX_ROW_UNIT
 * row tiles: see cpu_linear. */
static void dx_linear_rows(float *y, const float *x, const float *w, int M, int N, int K, int ldy,
                           int acc)
{
    const int r = M % DX_ROW_UNIT;
    int i;

    if (r != 0) {
        /* OpenBLAS computes the last M mod 4 rows with its tail kernels
         * (a single row with GEMV), whose sums can differ in the last bit
         * from the same rows computed in a full tile (measured with
         * OpenBLAS 0.3.21): compute them as a tile of 4 (the tail rows,
         * then copies of the last), so that a row's result does not
         * depend on how many rows share the call. A sequence-parallel
         * shard then equals the same rows of the whole image, and a cfg
         * pair's batch of one the same image of a batch of two
         * (doc/parallelism.md). At most 3 rows of extra work; without
         * memory for it, the plain call. */
        float *x4 = malloc(DX_ROW_UNIT * ((size_t)K + (size_t)N) * sizeof *x4), *y4;
        const size_t m0 = (size_t)(M - r);

        if (x4 != NULL) {
            y4 = x4 + DX_ROW_UNIT * (size_t)K;
            for (i = 0; i < DX_ROW_UNIT; i++) {
                const size_t src = m0 + (size_t)(i < r ? i : r - 1);

                memcpy(x4 + (size_t)i * K, x + src * K, (size_t)K * sizeof *x4);
                memcpy(y4 + (size_t)i * N, y + src * ldy, (size_t)N * sizeof *y4);
            }
            if (m0 > 0)
                dx_sgemm_nt(y, x, w, (int)m0, N, K, ldy, acc);
            dx_sgemm_nt(y4, x4, w, DX_ROW_UNIT, N, K, N, acc);
            for (i = 0; i < r; i++)
                memcpy(y + (m0 + (size_t)i) * ldy, y4 + (size_t)i * N, (size_t)N * sizeof *y);
            free(x4);
            return;
        }
    }
    dx_sgemm_nt(y, x, w, M, N, K, ldy, acc);
}

typedef struct dx_lin_job {
    float *y;
    const float *x, *w, *b;
    int M, N, K, chunk;
} dx_lin_job;

/* task i: output columns [i chunk, (i + 1) chunk), the bias copied into
 * them first (by the thread that then accumulates onto them: in its cache,
 * and in parallel) */
static void dx_lin_task(void *arg, int task, int thread)
{
    const dx_lin_job *j = arg;
    const int n0 = task * j->chunk, nn = j->N - n0 < j->chunk ? j->N - n0 : j->chunk;
    int i;

    (void)thread;
    if (nn <= 0)
        return;
    if (j->b != NULL)
        for (i = 0; i < j->M; i++)
            memcpy(j->y + (size_t)i * j->N + n0, j->b + n0, (size_t)nn * sizeof *j->y);
    dx_linear_rows(j->y + n0, j->x, j->w + (size_t)n0 * j->K, j->M, nn, j->K, j->N, j->b != NULL);
}

/* Output columns (weight rows) per task of a split linear: a multiple of
 * 64 (OpenBLAS's AVX-512 SGEMM computes 16 weight rows at a time; a
 * chunk's result equals the same columns of the whole call), and at least
 * DX_LIN_MIN_CHUNK of them. */
#define DX_LIN_MIN_CHUNK 128

static void cpu_linear(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                       int M, int N, int K)
{
    dx_cpu *c = dx_priv(be);
    const int nt = dxk_pool_size(c->pool);
    int i, saved;

    if (M <= 0 || N <= 0)
        return;
    /* The output columns are split over the backend's pool, each part one
     * single-threaded OpenBLAS call, rather than OpenBLAS threading one
     * call: OpenBLAS's threads synchronise between blocks of K, and keep
     * spinning (sched_yield) for a while after each call, taking the
     * cores from the pool's attention, LayerNorm and GELU. The split
     * depends on N alone, never on M, so a row's result still does not
     * depend on how many rows share the call. */
    if (nt > 1 && N >= 2 * DX_LIN_MIN_CHUNK) {
        int chunk = (N + nt - 1) / nt;
        dx_lin_job j;

        chunk = (chunk + 63) / 64 * 64;
        if (chunk < DX_LIN_MIN_CHUNK)
            chunk = DX_LIN_MIN_CHUNK;
        j = (dx_lin_job){y, x, w, b, M, N, K, chunk};
        saved = dx_blas_threads();
        dx_blas_set_threads(1);
        dxk_pool_run(c->pool, (N + chunk - 1) / chunk, dx_lin_task, &j);
        dx_blas_set_threads(saved);
        return;
    }
    if (b != NULL)
        for (i = 0; i < M; i++)
            memcpy(y + (size_t)i * N, b, (size_t)N * sizeof *y);
    dx_linear_rows(y, x, w, M, N, K, N, b != NULL);
}

/* y[M, N] = x[M, K] W^T + b for few rows M (the adaLN modulation: one
 * row per image). OpenBLAS's SGEMM packs the whole weight before using
 * each value M times; here each weight row is streamed once from memory
 * and dotted with the M rows of x (in L1) in DX_GV_LANES lanes, 4 rows of
 * x at a time. A row's sums are taken in the same order whatever M is:
 * the rows are independent by construction. */
#define DX_GV_LANES 16

DX_CLONES DX_VECTORIZE static void dx_gemv_rows(float *y, const float *x, const float *w,
                                                const float *b, int M, int N, int K, int n0, int n1)
{
    const int kv = K / DX_GV_LANES * DX_GV_LANES;
    int n, m, i, k, l;

    for (n = n0; n < n1; n++) {
        const float *wr = w + (size_t)n * K;

        for (m = 0; m < M; m += 4) {
            const int mm = M - m < 4 ? M - m : 4;
            float acc[4][DX_GV_LANES];

            for (i = 0; i < 4; i++)
                for (l = 0; l < DX_GV_LANES; l++)
                    acc[i][l] = 0.0f;
            for (k = 0; k < kv; k += DX_GV_LANES)
                for (i = 0; i < mm; i++) {
                    const float *xr = x + (size_t)(m + i) * K + k;

                    for (l = 0; l < DX_GV_LANES; l++)
                        acc[i][l] += xr[l] * wr[k + l];
                }
            for (i = 0; i < mm; i++) {
                const float *xr = x + (size_t)(m + i) * K;
                float s = 0.0f;

                for (l = 0; l < DX_GV_LANES; l++)
                    s += acc[i][l];
                for (k = kv; k < K; k++)
                    s += xr[k] * wr[k];
                y[(size_t)(m + i) * N + n] = (b != NULL ? b[n] : 0.0f) + s;
            }
        }
    }
}

typedef struct dx_gemv_job {
    float *y;
    const float *x, *w, *b;
    int M, N, K, nthreads;
} dx_gemv_job;

static void dx_gemv_task(void *arg, int task, int thread)
{
    const dx_gemv_job *j = arg;

    (void)thread;
    dx_gemv_rows(j->y, j->x, j->w, j->b, j->M, j->N, j->K, (int)((long)j->N * task / j->nthreads),
                 (int)((long)j->N * (task + 1) / j->nthreads));
}

int dxk_cpu_linear_few(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                       int M, int N, int K)
{
    dx_cpu *c;
    dx_gemv_job j;

    if (be == NULL || be->linear != cpu_linear)
        return 0;
    c = dx_priv(be);
    if (M <= 0 || N <= 0)
        return 1;
    j = (dx_gemv_job){y, x, w, b, M, N, K, dxk_pool_size(c->pool)};
    if ((size_t)N * K < DX_PAR_MIN)
        dx_gemv_rows(y, x, w, b, M, N, K, 0, N);
    else
        dxk_pool_run(c->pool, j.nthreads, dx_gemv_task, &j);
    return 1;
}

/* Independent lanes of a vectorised sum (softmax, LayerNorm): a single
 * running sum or maximum is a chain of dependent instructions that a
 * vector unit cannot split. */
#define DX_SM_LANES 16

typedef struct dx_ln_job {
    float *y;
    const float *x, *shift, *scale;
    int mod_stride, B, T, D, nthreads;
    double eps;
} dx_ln_job;

/* rows [lo, hi) of the B*T rows */
DX_CLONES DX_VECTORIZE static void dx_ln_rows(const dx_ln_job *j, int lo, int hi)
{
    const int T = j->T, D = j->D;
    int row, d;

    for (row = lo; row < hi; row++) {
        const float *sh = j->shift + (size_t)(row / T) * j->mod_stride;
        const float *sc = j->scale + (size_t)(row / T) * j->mod_stride;
        const float *xr = j->x + (size_t)row * D;
        float *yr = j->y + (size_t)row * D;
        double mean = 0.0, var = 0.0, acc[DX_SM_LANES];
        const int dv = D / DX_SM_LANES * DX_SM_LANES;
        float m, rs;
        int l;

        /* double accumulation (the golden model is checked to 1e-5), in
         * DX_SM_LANES independent lanes so that it vectorises */
        for (l = 0; l < DX_SM_LANES; l++)
            acc[l] = 0.0;
        for (d = 0; d < dv; d += DX_SM_LANES)
            for (l = 0; l < DX_SM_LANES; l++)
                acc[l] += xr[d + l];
        for (d = dv; d < D; d++)
            mean += xr[d];
        for (l = 0; l < DX_SM_LANES; l++)
            mean += acc[l];
        mean /= D;
        for (l = 0; l < DX_SM_LANES; l++)
            acc[l] = 0.0;
        for (d = 0; d < dv; d += DX_SM_LANES)
            for (l = 0; l < DX_SM_LANES; l++) {
                double e = xr[d + l] - mean;

                acc[l] += e * e;
            }
        for (d = dv; d < D; d++) {
            double e = xr[d] - mean;

            var += e * e;
        }
        for (l = 0; l < DX_SM_LANES; l++)
            var += acc[l];
        var /= D;
        m = (float)mean;
        rs = (float)(1.0 / sqrt(var + j->eps));
        for (d = 0; d < D; d++)
            yr[d] = (xr[d] - m) * rs * (1.0f + sc[d]) + sh[d];
    }
}

static void dx_ln_task(void *arg, int task, int thread)
{
    const dx_ln_job *j = arg;
    int rows = j->B * j->T;

    (void)thread;
    dx_ln_rows(j, (int)((long)rows * task / j->nthreads),
               (int)((long)rows * (task + 1) / j->nthreads));
}

static void cpu_ln_modulate(dxk_backend *be, float *y, const float *x, const float *shift,
                            const float *scale, int mod_stride, int B, int T, int D)
{
    dx_cpu *c = dx_priv(be);
    dx_ln_job j = {y, x, shift, scale, mod_stride, B, T, D, dxk_pool_size(c->pool), 1e-6};

    if ((size_t)B * T * D < DX_PAR_MIN)
        dx_ln_rows(&j, 0, B * T);
    else
        dxk_pool_run(c->pool, j.nthreads, dx_ln_task, &j);
}

static void cpu_ln_modulate_eps(dxk_backend *be, float *y, const float *x, const float *shift,
                                const float *scale, int mod_stride, int B, int T, int D,
                                float eps)
{
    dx_cpu *c = dx_priv(be);
    dx_ln_job j = {y, x, shift, scale, mod_stride, B, T, D, dxk_pool_size(c->pool), eps};

    if ((size_t)B * T * D < DX_PAR_MIN)
        dx_ln_rows(&j, 0, B * T);
    else
        dxk_pool_run(c->pool, j.nthreads, dx_ln_task, &j);
}

static size_t cpu_attention_scratch(dxk_backend *be, int B, int T, int H)
{
    (void)B;
    (void)H;
    return (size_t)T * T * dxk_pool_size(dx_priv(be)->pool); /* one score matrix per thread */
}

/* Softmax of each row of s [rows, cols], in place. The maximum and the
 * sum are taken in DX_SM_LANES independent lanes, so that they vectorise
 * (one running maximum, or one double sum, is a chain of dependent
 * instructions a vector unit cannot split: it was 40 % of the attention's
 * time); each lane sums at most cols / DX_SM_LANES values in [0, 1], and
 * the lanes are added in double. The order depends on cols alone, not on
 * the row or the number of rows. */
DX_CLONES DX_VECTORIZE static void cpu_softmax_rows(float *s, int rows, int cols)
{
    const int cv = cols / DX_SM_LANES * DX_SM_LANES;
    int i, j, l;

    for (i = 0; i < rows; i++) {
        float *r = s + (size_t)i * cols;
        float mx = r[0], ml[DX_SM_LANES], sl[DX_SM_LANES];
        double sum = 0.0;
        float inv;

        if (cv > 0) {
            for (l = 0; l < DX_SM_LANES; l++)
                ml[l] = r[l];
            for (j = DX_SM_LANES; j < cv; j += DX_SM_LANES)
                for (l = 0; l < DX_SM_LANES; l++)
                    ml[l] = r[j + l] > ml[l] ? r[j + l] : ml[l];
            for (l = 0; l < DX_SM_LANES; l++)
                mx = ml[l] > mx ? ml[l] : mx;
        }
        for (j = cv; j < cols; j++)
            mx = r[j] > mx ? r[j] : mx;
        for (l = 0; l < DX_SM_LANES; l++)
            sl[l] = 0.0f;
        for (j = 0; j < cv; j += DX_SM_LANES)
            for (l = 0; l < DX_SM_LANES; l++) {
                float e = dx_expf(r[j + l] - mx);

                r[j + l] = e;
                sl[l] += e;
            }
        for (j = cv; j < cols; j++) {
            r[j] = dx_expf(r[j] - mx);
            sum += r[j];
        }
        for (l = 0; l < DX_SM_LANES; l++)
            sum += sl[l];
        inv = (float)(1.0 / sum);
        for (j = 0; j < cols; j++)
            r[j] *= inv;
    }
}

typedef struct dx_att_job {
    float *out, *scratch;
    const float *qkv;
    int T, H, D;
} dx_att_job;

/* task = b*H + h: one head of one image */
static void dx_att_task(void *arg, int task, int thread)
{
    const dx_att_job *j = arg;
    const int T = j->T, D = j->D, hd = D / j->H, ld = 3 * D;
    const int b = task / j->H, h = task % j->H;
    const float scale = (float)(1.0 / sqrt((double)hd));
    /* q, k and v are read in place with a leading dimension of 3D: no
     * gather into per-head copies */
    const float *q = j->qkv + (size_t)b * T * ld + (size_t)h * hd;
    const float *k = q + D, *v = q + 2 * (size_t)D;
    float *o = j->out + (size_t)b * T * D + (size_t)h * hd;
    float *s = j->scratch + (size_t)thread * T * T;

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, ld, k, ld, 0.0f, s,
                T);
    cpu_softmax_rows(s, T, T);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, s, T, v, ld, 0.0f, o,
                D);
}

static void cpu_attention(dxk_backend *be, float *out, const float *qkv, float *scratch, int B,
                          int T, int H, int D)
{
    dx_cpu *c = dx_priv(be);
    dx_att_job j = {out, scratch, qkv, T, H, D};
    int saved;

    if (c->pool == NULL) {
        dxk_pool_run(NULL, B * H, dx_att_task, &j);
        return;
    }
    /* heads in parallel, each SGEMM in its own thread */
    saved = dx_blas_threads();
    dx_blas_set_threads(1);
    dxk_pool_run(c->pool, B * H, dx_att_task, &j);
    dx_blas_set_threads(saved);
}

DX_CLONES DX_VECTORIZE static void dx_gelu(float *x, size_t n)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    size_t i;

    /* 0.5 (1 + tanh(u)) = 1 / (1 + e^(-2u)): one exponential, no tanhf */
    for (i = 0; i < n; i++) {
        float v = x[i];

        x[i] = v / (1.0f + dx_expf(-2.0f * k * (v + 0.044715f * v * v * v)));
    }
}

typedef struct dx_slice_job {
    float *x;
    size_t n;
    int nthreads;
} dx_slice_job;

static void dx_gelu_task(void *arg, int task, int thread)
{
    const dx_slice_job *j = arg;
    size_t lo = j->n * (size_t)task / (size_t)j->nthreads;
    size_t hi = j->n * (size_t)(task + 1) / (size_t)j->nthreads;

    (void)thread;
    dx_gelu(j->x + lo, hi - lo);
}

static void cpu_gelu_tanh(dxk_backend *be, float *x, size_t n)
{
    dx_cpu *c = dx_priv(be);
    dx_slice_job j = {x, n, dxk_pool_size(c->pool)};

    if (n < DX_PAR_MIN)
        dx_gelu(x, n);
    else
        dxk_pool_run(c->pool, j.nthreads, dx_gelu_task, &j);
}

DX_VECTORIZE static void cpu_silu(dxk_backend *be, float *y, const float *x, size_t n)
{
    size_t i;

    (void)be;
    for (i = 0; i < n; i++)
        y[i] = x[i] / (1.0f + dx_expf(-x[i]));
}

static void cpu_timestep_embed(dxk_backend *be, float *out, const double *t, int B)
{
    const int half = DXK_TFREQ_DIM / 2;
    int b, k;

    (void)be;
    for (b = 0; b < B; b++) {
        for (k = 0; k < half; k++) {
            /* in double: t*f reaches 1000 and float would lose 1e-4 of it */
            double a = t[b] * exp(-log(10000.0) * k / half);

            out[(size_t)b * DXK_TFREQ_DIM + k] = (float)cos(a);
            out[(size_t)b * DXK_TFREQ_DIM + half + k] = (float)sin(a);
        }
    }
}

static void cpu_add_embedding(dxk_backend *be, float *c, const float *table, const int *y, int B,
                              int D)
{
    int b, d;

    (void)be;
    for (b = 0; b < B; b++)
        for (d = 0; d < D; d++)
            c[(size_t)b * D + d] += table[(size_t)y[b] * D + d];
}

static void cpu_patchify(dxk_backend *be, float *tok, const float *img, int B, int C, int H,
                         int W, int p)
{
    int h = H / p, w = W / p, F = C * p * p;
    int b, gy, gx, c, py, px;

    (void)be;
    for (b = 0; b < B; b++)
        for (gy = 0; gy < h; gy++)
            for (gx = 0; gx < w; gx++) {
                float *o = tok + ((size_t)b * h * w + (size_t)gy * w + gx) * F;

                for (c = 0; c < C; c++)
                    for (py = 0; py < p; py++)
                        for (px = 0; px < p; px++)
                            *o++ = img[(((size_t)b * C + c) * H + (size_t)gy * p + py) * W +
                                       (size_t)gx * p + px];
            }
}

static void cpu_unpatchify(dxk_backend *be, float *img, const float *tok, int B, int C, int H,
                           int W, int p)
{
    int h = H / p, w = W / p, F = C * p * p;
    int b, gy, gx, c, py, px;

    (void)be;
    for (b = 0; b < B; b++)
        for (gy = 0; gy < h; gy++)
            for (gx = 0; gx < w; gx++) {
                const float *in = tok + ((size_t)b * h * w + (size_t)gy * w + gx) * F;

                for (py = 0; py < p; py++)
                    for (px = 0; px < p; px++)
                        for (c = 0; c < C; c++)
                            img[(((size_t)b * C + c) * H + (size_t)gy * p + py) * W +
                                (size_t)gx * p + px] = *in++;
            }
}

/* E(d, q) of doc/model-format.md, written to out[0..d-1] */
static void dx_sincos(float *out, int d, double q)
{
    int half = d / 2, k;

    for (k = 0; k < half; k++) {
        double a = q / pow(10000.0, (double)k / half);

        out[k] = (float)sin(a);
        out[half + k] = (float)cos(a);
    }
}

static void cpu_pos_embed_add(dxk_backend *be, float *tok, int B, int h, int w, int D)
{
    dx_cpu *c = dx_priv(be);
    size_t T = (size_t)h * w, i;
    int b, gy, gx;

    if (c->pos == NULL || c->pos_h != h || c->pos_w != w || c->pos_d != D) {
        float *p = realloc(c->pos, T * D * sizeof *p);

        if (p == NULL) {
            if (c->fail == DEXEC_OK) {
                c->fail = DEXEC_ENOMEM;
                snprintf(c->msg, sizeof c->msg, "cpu: out of memory for the position embedding");
            }
            return;
        }
        c->pos = p;
        for (gy = 0; gy < h; gy++)
            for (gx = 0; gx < w; gx++) {
                float *r = p + ((size_t)gy * w + gx) * D;

                dx_sincos(r, D / 2, gy);
                dx_sincos(r + D / 2, D / 2, gx);
            }
        c->pos_h = h;
        c->pos_w = w;
        c->pos_d = D;
    }
    for (b = 0; b < B; b++) {
        float *o = tok + (size_t)b * T * D;

        for (i = 0; i < T * D; i++)
            o[i] += c->pos[i];
    }
}

DX_VECTORIZE static void cpu_gated_residual(dxk_backend *be, float *x, const float *y,
                                            const float *gate, int gate_stride, int B, int T,
                                            int D)
{
    int b, t, d;

    (void)be;
    for (b = 0; b < B; b++) {
        const float *g = gate + (size_t)b * gate_stride;

        for (t = 0; t < T; t++) {
            float *xr = x + ((size_t)b * T + t) * D;
            const float *yr = y + ((size_t)b * T + t) * D;

            for (d = 0; d < D; d++)
                xr[d] += g[d] * yr[d];
        }
    }
}

DX_VECTORIZE static void cpu_euler(dxk_backend *be, float *x, const float *v, float dt, size_t n)
{
    size_t i;

    (void)be;
    for (i = 0; i < n; i++)
        x[i] += dt * v[i];
}

DX_VECTORIZE static void cpu_cfg_combine(dxk_backend *be, float *out, const float *vc,
                                         const float *vu, float g, size_t n)
{
    size_t i;

    (void)be;
    for (i = 0; i < n; i++)
        out[i] = vu[i] + g * (vc[i] - vu[i]);
}

static void dx_cpu_fail(dx_cpu *c, const char *what)
{
    if (c->fail == DEXEC_OK) {
        c->fail = DEXEC_ENOMEM;
        snprintf(c->msg, sizeof c->msg, "cpu: out of memory for %s", what);
    }
}

typedef struct dx_col_job {
    float *col;
    const float *x; /* one image, [Cin, H, W] */
    int Cin, H, W, k, r0, rows;
} dx_col_job;

/* task = input channel: its k*k rows of the panel for output rows
 * [r0, r0 + rows), zero where the window leaves the image */
static void dx_col_task(void *arg, int ci, int thread)
{
    const dx_col_job *j = arg;
    const int k = j->k, pad = (k - 1) / 2, W = j->W, n = j->rows * W;
    int ky, kx, oy, ox;

    (void)thread;
    for (ky = 0; ky < k; ky++)
        for (kx = 0; kx < k; kx++) {
            float *o = j->col + ((size_t)ci * k * k + (size_t)ky * k + kx) * n;

            for (oy = 0; oy < j->rows; oy++) {
                int iy = j->r0 + oy + ky - pad;
                const float *xr = j->x + ((size_t)ci * j->H + iy) * W;
                float *orow = o + (size_t)oy * W;

                if (iy < 0 || iy >= j->H) {
                    memset(orow, 0, (size_t)W * sizeof *orow);
                    continue;
                }
                for (ox = 0; ox < W; ox++) {
                    int ix = ox + kx - pad;

                    orow[ox] = ix >= 0 && ix < W ? xr[ix] : 0.0f;
                }
            }
        }
}


/* ---- 3x3 convolution by Winograd F(4x4, 3x3) ---------------------------
 *
 * Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016):
 * each 4x4 block of outputs of one (output, input) channel pair is
 * A^T [(G g G^T) . (B^T d B)] A over the 6x6 input patch d around it, so
 * the 144 multiply-adds per block and channel pair of a direct 3x3
 * convolution become 36, done as 36 SGEMMs (one per element of the 6x6
 * transformed tile) of [Cout x Cin] x [Cin x tiles]. The transforms are
 * linear passes over the input, the weights and the output (vectorised
 * over DX_WG_L tiles side by side). Interpolation points 0, +-1, +-2 and
 * infinity; in FP32 the result differs from a direct convolution by a few
 * 1e-6 relative (tests/test-published.c test_conv2d_winograd). Used for
 * 3x3 convolutions with at least DX_WG_MIN input and output channels;
 * the others (the VAE's conv_in from 4 channels, conv_out to 3) stay on
 * im2col. */
#define DX_WG_L 16   /* tiles transformed together */
#define DX_WG_MIN 16 /* channels in and out for Winograd */


typedef struct dx_wg_job {
    float *u, *v, *m, *y;
    const float *x, *w, *b;
    int Cin, Cout, H, W, tw, ty0, nty, nt;
    /* the fused input stage (dxk_cpu_conv3): x is [Cin, H/2, W/2] repeated
     * 2x2 when up2; each input value becomes x * ga[ci] + gb[ci] when ga is
     * set (GroupNorm folded into a per-channel scale and shift), then
     * SiLU'd when silu; acc adds the result to y instead of storing it */
    const float *ga, *gb;
    int up2, silu, acc;
} dx_wg_job;

/* L <= DX_WG_L floats; the whole-group case as a fixed-length loop, which
 * becomes vector moves (a memcpy of L floats becomes rep movsq) */
static inline __attribute__((always_inline)) void dx_wg_copy(float *restrict d,
                                                             const float *restrict s, int L)
{
    int l;

    if (L == DX_WG_L) {
        for (l = 0; l < DX_WG_L; l++)
            d[l] = s[l];
    } else {
        for (l = 0; l < L; l++)
            d[l] = s[l];
    }
}

/* G applied to 3 values of L lanes: o[0..5] */
#define DX_WG_G(o, g0, g1, g2, L)                                                            \
    do {                                                                                    \
        int l_;                                                                             \
        for (l_ = 0; l_ < (L); l_++) {                                                      \
            float a_ = (g0)[l_], b_ = (g1)[l_], c_ = (g2)[l_];                              \
            (o)[0][l_] = a_ * 0.25f;                                                        \
            (o)[1][l_] = -(a_ + b_ + c_) * (1.0f / 6.0f);                                   \
            (o)[2][l_] = -(a_ - b_ + c_) * (1.0f / 6.0f);                                   \
            (o)[3][l_] = a_ * (1.0f / 24.0f) + b_ * (1.0f / 12.0f) + c_ * (1.0f / 6.0f);    \
            (o)[4][l_] = a_ * (1.0f / 24.0f) - b_ * (1.0f / 12.0f) + c_ * (1.0f / 6.0f);    \
            (o)[5][l_] = c_;                                                                \
        }                                                                                   \
    } while (0)

/* U[e][co][ci] = (G g G^T)[e] for output channel `co`, DX_WG_L input
 * channels side by side */
DX_CLONES DX_VECTORIZE static void dx_wg_weight_task(void *arg, int co, int thread)
{
    const dx_wg_job *j = arg;
    const size_t plane = (size_t)j->Cout * j->Cin;
    const float *wc = j->w + (size_t)co * j->Cin * 9;
    float *uc = j->u + (size_t)co * j->Cin;
    int ci0, r, c, l, L, e;

    (void)thread;
    for (ci0 = 0; ci0 < j->Cin; ci0 += DX_WG_L) {
        float g[9][DX_WG_L], t[6][3][DX_WG_L], tc[6][DX_WG_L], u[6][6][DX_WG_L];

        L = j->Cin - ci0 < DX_WG_L ? j->Cin - ci0 : DX_WG_L;
        for (e = 0; e < 9; e++)
            for (l = 0; l < DX_WG_L; l++)
                g[e][l] = l < L ? wc[(size_t)(ci0 + l) * 9 + e] : 0.0f;
        for (c = 0; c < 3; c++) { /* t = G g, column c */
            DX_WG_G(tc, g[c], g[3 + c], g[6 + c], DX_WG_L);
            for (r = 0; r < 6; r++)
                for (l = 0; l < DX_WG_L; l++)
                    t[r][c][l] = tc[r][l];
        }
        for (r = 0; r < 6; r++) /* u = t G^T, row r */
            DX_WG_G(u[r], t[r][0], t[r][1], t[r][2], DX_WG_L);
        for (e = 0; e < 36; e++) {
            float *dst = uc + (size_t)e * plane + ci0;

            dx_wg_copy(dst, u[e / 6][e % 6], L);
        }
    }
}

/* B^T d (or its transpose applied on the right), over L lanes */
#define DX_WG_BT(o, d, L)                                                                   \
    do {                                                                                    \
        int l_;                                                                             \
        for (l_ = 0; l_ < (L); l_++) {                                                      \
            float d0 = (d)[0][l_], d1 = (d)[1][l_], d2 = (d)[2][l_];                        \
            float d3 = (d)[3][l_], d4 = (d)[4][l_], d5 = (d)[5][l_];                        \
            (o)[0][l_] = 4.0f * d0 - 5.0f * d2 + d4;                                        \
            (o)[1][l_] = -4.0f * d1 - 4.0f * d2 + d3 + d4;                                  \
            (o)[2][l_] = 4.0f * d1 - 4.0f * d2 - d3 + d4;                                   \
            (o)[3][l_] = -2.0f * d1 - d2 + 2.0f * d3 + d4;                                  \
            (o)[4][l_] = 2.0f * d1 - d2 - 2.0f * d3 + d4;                                   \
            (o)[5][l_] = 4.0f * d1 - 5.0f * d3 + d5;                                        \
        }                                                                                   \
    } while (0)

/* V[e][ci][t] = (B^T d B)[e] for input channel `ci`, the band's tiles */
/* Input row iy of channel ci as the convolution sees it, into row[1..W]:
 * the source row (of the half-size image when up2, each value twice),
 * scaled, shifted and SiLU'd when the job says so (the zero padding
 * around it is not: PyTorch pads the normalised tensor). */
DX_CLONES DX_VECTORIZE static void dx_wg_load_row(const dx_wg_job *j, int ci, int iy, float *row)
{
    const int W = j->W, ws = j->up2 ? W / 2 : W, hs = j->up2 ? j->H / 2 : j->H;
    const float *src = j->x + ((size_t)ci * hs + (size_t)(j->up2 ? iy / 2 : iy)) * ws;
    float *dst = j->up2 ? row + 1 + W : row + 1; /* up2: staged past the row, then spread */
    int i;

    if (j->ga != NULL) {
        const float a = j->ga[ci], sh = j->gb[ci];

        if (j->silu)
            for (i = 0; i < ws; i++) {
                float v = src[i] * a + sh;

                dst[i] = v / (1.0f + dx_expf(-v));
            }
        else
            for (i = 0; i < ws; i++)
                dst[i] = src[i] * a + sh;
    } else {
        memcpy(dst, src, (size_t)ws * sizeof(float));
    }
    if (j->up2)
        for (i = 0; i < ws; i++)
            row[1 + 2 * i] = row[2 + 2 * i] = dst[i];
}

/* entries of one phase of a patch row (tiles of a row, W <= 4096, plus a
 * group's overrun and the next tile's first columns) */
#define DX_WG_PHN (1024 + DX_WG_L + 1)

DX_CLONES DX_VECTORIZE static void dx_wg_input_task(void *arg, int ci, int thread)
{
    const dx_wg_job *j = arg;
    const int W = j->W, H = j->H, tw = j->tw, nph = tw + DX_WG_L + 1;
    const size_t plane = (size_t)j->Cin * j->nt, rlen = (size_t)4 * nph;
    /* each patch row split by column phase: ph[r][p][t] is the row's value
     * at column 4t + p - 1 (zero outside the image), so that column c of
     * the patches of tiles t..t+15 is ph[r][c % 4][t + c / 4 ...], 16
     * consecutive floats; rows in a ring, since consecutive 6-row patches
     * overlap by 2 rows (loaded, normalised and SiLU'd once) */
    float ph[6][4][DX_WG_PHN], (*pr[6])[DX_WG_PHN];
    float row[4 * DX_WG_PHN + 2048]; /* a row as loaded, room for up2's half row */
    int ty, tx0, r, c, l, L, e, p;

    (void)thread;
    for (r = 0; r < 6; r++)
        pr[r] = ph[r];
    for (ty = 0; ty < j->nty; ty++) {
        const int iy0 = (j->ty0 + ty) * 4 - 1;

        if (ty > 0) {
            float(*f0)[DX_WG_PHN] = pr[0], (*f1)[DX_WG_PHN] = pr[1];

            pr[0] = pr[4];
            pr[1] = pr[5];
            pr[4] = pr[2];
            pr[5] = pr[3];
            pr[2] = f0;
            pr[3] = f1;
        }
        for (r = ty > 0 ? 2 : 0; r < 6; r++) {
            const int iy = iy0 + r;

            if (iy >= 0 && iy < H) {
                dx_wg_load_row(j, ci, iy, row);
                /* zero only the padding: column -1 and beyond W */
                row[0] = 0.0f;
                memset(row + 1 + W, 0, (rlen - 1 - (size_t)W) * sizeof(float));
                for (p = 0; p < 4; p++)
                    for (l = 0; l < nph; l++)
                        pr[r][p][l] = row[4 * l + p];
            } else {
                for (p = 0; p < 4; p++)
                    memset(pr[r][p], 0, (size_t)nph * sizeof(float));
            }
        }
        for (tx0 = 0; tx0 < tw; tx0 += DX_WG_L) {
            float t[6][6][DX_WG_L], o[6][6][DX_WG_L];
            const size_t t0 = (size_t)ty * tw + tx0;

            L = tw - tx0 < DX_WG_L ? tw - tx0 : DX_WG_L;
            /* t[.][c] = B^T d[.][c]: over rows, column by column (local
             * arrays, not pointers into ph and t: with those GCC could not
             * rule out aliasing and left the transform scalar) */
            for (c = 0; c < 6; c++) {
                float dc[6][DX_WG_L], oc[6][DX_WG_L];

                for (r = 0; r < 6; r++)
                    for (l = 0; l < DX_WG_L; l++)
                        dc[r][l] = pr[r][c & 3][tx0 + l + (c >> 2)];
                DX_WG_BT(oc, dc, DX_WG_L);
                for (r = 0; r < 6; r++)
                    for (l = 0; l < DX_WG_L; l++)
                        t[r][c][l] = oc[r][l];
            }
            /* o[r] = t[r] B: over columns, row by row */
            for (r = 0; r < 6; r++)
                DX_WG_BT(o[r], t[r], DX_WG_L);
            for (e = 0; e < 36; e++) {
                float *dst = j->v + (size_t)e * plane + (size_t)ci * j->nt + t0;

                dx_wg_copy(dst, o[e / 6][e % 6], L);
            }
        }
    }
}

/* M[e] = U[e] V[e]: one of the 36 products, single-threaded */
static void dx_wg_gemm_task(void *arg, int e, int thread)
{
    const dx_wg_job *j = arg;

    (void)thread;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->Cout, j->nt, j->Cin, 1.0f,
                j->u + (size_t)e * j->Cout * j->Cin, j->Cin, j->v + (size_t)e * j->Cin * j->nt,
                j->nt, 0.0f, j->m + (size_t)e * j->Cout * j->nt, j->nt);
}

/* y[co] block rows of the band = A^T m A + bias */
DX_CLONES DX_VECTORIZE static void dx_wg_output_task(void *arg, int co, int thread)
{
    const dx_wg_job *j = arg;
    const int W = j->W, H = j->H, tw = j->tw;
    const size_t plane = (size_t)j->Cout * j->nt;
    const float bias = j->b != NULL ? j->b[co] : 0.0f;
    float *yc = j->y + (size_t)co * H * W;
    int ty, tx0, r, c, l, L, e;

    (void)thread;
    for (ty = 0; ty < j->nty; ty++)
        for (tx0 = 0; tx0 < tw; tx0 += DX_WG_L) {
            float m[6][6][DX_WG_L], t[4][6][DX_WG_L], o[4][4 * DX_WG_L];
            const size_t t0 = (size_t)ty * tw + tx0;
            int oy0 = (j->ty0 + ty) * 4, ncol;

            L = tw - tx0 < DX_WG_L ? tw - tx0 : DX_WG_L;
            if (L < DX_WG_L)
                memset(m, 0, sizeof m);
            for (e = 0; e < 36; e++) {
                const float *src = j->m + (size_t)e * plane + (size_t)co * j->nt + t0;

                dx_wg_copy(m[e / 6][e % 6], src, L);
            }
            for (c = 0; c < 6; c++) /* t = A^T m, column by column */
                for (l = 0; l < DX_WG_L; l++) {
                    float m0 = m[0][c][l], m1 = m[1][c][l], m2 = m[2][c][l];
                    float m3 = m[3][c][l], m4 = m[4][c][l], m5 = m[5][c][l];

                    t[0][c][l] = m0 + m1 + m2 + m3 + m4;
                    t[1][c][l] = m1 - m2 + 2.0f * (m3 - m4);
                    t[2][c][l] = m1 + m2 + 4.0f * (m3 + m4);
                    t[3][c][l] = m1 - m2 + 8.0f * (m3 - m4) + m5;
                }
            for (r = 0; r < 4; r++) /* o = t A, row by row, lanes side by side */
                for (l = 0; l < DX_WG_L; l++) {
                    float m0 = t[r][0][l], m1 = t[r][1][l], m2 = t[r][2][l];
                    float m3 = t[r][3][l], m4 = t[r][4][l], m5 = t[r][5][l];

                    o[r][l * 4 + 0] = m0 + m1 + m2 + m3 + m4 + bias;
                    o[r][l * 4 + 1] = m1 - m2 + 2.0f * (m3 - m4) + bias;
                    o[r][l * 4 + 2] = m1 + m2 + 4.0f * (m3 + m4) + bias;
                    o[r][l * 4 + 3] = m1 - m2 + 8.0f * (m3 - m4) + m5 + bias;
                }
            ncol = W - tx0 * 4 < L * 4 ? W - tx0 * 4 : L * 4;
            for (r = 0; r < 4 && oy0 + r < H; r++) {
                float *yr = yc + (size_t)(oy0 + r) * W + (size_t)tx0 * 4;

                if (j->acc)
                    for (l = 0; l < ncol; l++)
                        yr[l] += o[r][l];
                else
                    memcpy(yr, o[r], (size_t)ncol * sizeof(float));
            }
        }
}

/* Scratch of n floats, 64-byte aligned: the Winograd transforms store 16
 * floats (a cache line) at a time, and malloc's large blocks start 16
 * bytes into a page, which made every such store straddle two lines. */
static int dx_grow(dx_cpu *c, float **p, size_t *have, size_t n, const char *what)
{
    void *q;

    if (*have >= n)
        return 0;
    free(*p);
    *p = NULL;
    *have = 0;
    if (n > SIZE_MAX / sizeof(float) || posix_memalign(&q, 64, n * sizeof(float)) != 0) {
        dx_cpu_fail(c, what);
        return -1;
    }
    *p = q;
    *have = n;
    return 0;
}

/* sum of x[0..n-1] (of (x - m)^2 when sq), in double, in DX_GN_L
 * independent lanes so that the loop vectorises */
#define DX_GN_L 16
DX_CLONES DX_VECTORIZE static double dx_gn_sum(const float *x, size_t n, double m, int sq)
{
    double acc[DX_GN_L] = {0}, s = 0.0;
    size_t i = 0;
    int l;

    if (sq)
        for (; i + DX_GN_L <= n; i += DX_GN_L)
            for (l = 0; l < DX_GN_L; l++) {
                double e = x[i + l] - m;

                acc[l] += e * e;
            }
    else
        for (; i + DX_GN_L <= n; i += DX_GN_L)
            for (l = 0; l < DX_GN_L; l++)
                acc[l] += x[i + l];
    for (; i < n; i++)
        s += sq ? (x[i] - m) * (x[i] - m) : x[i];
    for (l = 0; l < DX_GN_L; l++)
        s += acc[l];
    return s;
}

/* GroupNorm statistics of one image folded into a per-channel scale and
 * shift: task = group */
typedef struct dx_gnab_job {
    const float *x, *gamma, *beta;
    float *a, *b;
    int C, G;
    size_t HW;
    double eps;
} dx_gnab_job;

static void dx_gnab_task(void *arg, int g, int thread)
{
    const dx_gnab_job *j = arg;
    const int cpg = j->C / j->G;
    const size_t n = (size_t)cpg * j->HW;
    const float *xg = j->x + (size_t)g * n;
    double mean, var;
    int ch;

    (void)thread;
    /* as dx_gn_task: two passes in double */
    mean = dx_gn_sum(xg, n, 0.0, 0) / (double)n;
    var = dx_gn_sum(xg, n, mean, 1) / (double)n;
    for (ch = g * cpg; ch < (g + 1) * cpg; ch++) {
        const float a = (float)(j->gamma[ch] / sqrt(var + j->eps));

        j->a[ch] = a;
        j->b[ch] = (float)(j->beta[ch] - mean * a);
    }
}

/* a 3x3, stride 1, pad 1 convolution of B images by F(4x4, 3x3), with the
 * input stage of dxk_cpu_conv3 (pre may be NULL: a plain convolution) */
static void dx_conv3_winograd(dx_cpu *c, float *y, const float *x, const float *w,
                              const float *b, int B, int Cin, int H, int W, int Cout,
                              const dxk_conv_pre *pre, int acc)
{
    const int tw = (W + 3) / 4, th = (H + 3) / 4;
    const int up2 = pre != NULL && pre->up2;
    const size_t wide = (size_t)(Cin > Cout ? Cin : Cout);
    const size_t xplane = (size_t)Cin * (up2 ? (size_t)(H / 2) * (W / 2) : (size_t)H * W);
    int band = (int)(DX_COL_MAX / (36 * wide * (size_t)tw)), img, ty0, saved = 0;
    dx_wg_job j;
    dx_gnab_job gj;

    if (band < 1)
        band = 1;
    if (band > th)
        band = th;
    if (dx_grow(c, &c->wg_u, &c->wg_u_n, (size_t)36 * Cout * Cin, "the Winograd weights") ||
        dx_grow(c, &c->wg_v, &c->wg_v_n, (size_t)36 * Cin * band * tw, "the Winograd input") ||
        dx_grow(c, &c->wg_m, &c->wg_m_n, (size_t)36 * Cout * band * tw, "the Winograd product") ||
        (pre != NULL && pre->gamma != NULL &&
         dx_grow(c, &c->gn_ab, &c->gn_ab_n, (size_t)2 * Cin, "the GroupNorm scales")))
        return;
    memset(&j, 0, sizeof j);
    j.u = c->wg_u;
    j.v = c->wg_v;
    j.m = c->wg_m;
    j.w = w;
    j.b = b;
    j.Cin = Cin;
    j.Cout = Cout;
    j.H = H;
    j.W = W;
    j.tw = tw;
    j.up2 = up2;
    j.acc = acc;
    memset(&gj, 0, sizeof gj);
    if (pre != NULL && pre->gamma != NULL) {
        j.ga = gj.a = c->gn_ab;
        j.gb = gj.b = c->gn_ab + Cin;
        j.silu = pre->silu;
        gj.gamma = pre->gamma;
        gj.beta = pre->beta;
        gj.C = Cin;
        gj.G = pre->G;
        gj.HW = xplane / (size_t)Cin;
        gj.eps = pre->eps;
    }
    dxk_pool_run(c->pool, Cout, dx_wg_weight_task, &j);
    if (c->pool != NULL) {
        saved = dx_blas_threads();
        dx_blas_set_threads(1);
    }
    for (img = 0; img < B; img++) {
        j.x = x + (size_t)img * xplane;
        j.y = y + (size_t)img * Cout * H * W;
        if (j.ga != NULL) {
            gj.x = j.x;
            dxk_pool_run(c->pool, gj.G, dx_gnab_task, &gj);
        }
        for (ty0 = 0; ty0 < th; ty0 += band) {
            j.ty0 = ty0;
            j.nty = th - ty0 < band ? th - ty0 : band;
            j.nt = j.nty * tw;
            dxk_pool_run(c->pool, Cin, dx_wg_input_task, &j);
            dxk_pool_run(c->pool, 36, dx_wg_gemm_task, &j);
            dxk_pool_run(c->pool, Cout, dx_wg_output_task, &j);
        }
    }
    if (c->pool != NULL)
        dx_blas_set_threads(saved);
}

static void cpu_conv2d(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                       int B, int Cin, int H, int W, int Cout, int k);

/* ---- 3x3 convolution to a few channels, direct ------------------------
 *
 * The VAE's conv_out makes 3 channels from 128 at the image's full size;
 * as im2col + SGEMM it wrote a panel of 9 x 128 values per pixel (300 MB
 * at 256 px) for 3 multiply-adds each. Directly, a band of DX_DC_ROWS
 * output rows keeps its Cout accumulator rows in cache, and each input
 * channel's rows (with the input stage of dxk_cpu_conv3: GroupNorm, SiLU,
 * upsampling) are loaded once per band and swept by the 9 taps of every
 * output channel, vectorised along the row. Used for fewer than
 * DX_WG_MIN output channels. */
#define DX_DC_ROWS 16

typedef struct dx_dc_job {
    dx_wg_job in; /* x (all B images), H, W, up2, ga, gb, silu: the input stage */
    float *y, *scratch;
    const float *w, *b;
    int Cin, Cout, nb, acc;
    size_t xplane, per_thread, rstride;
} dx_dc_job;

/* task = image * nb + band */
DX_CLONES DX_VECTORIZE static void dx_dc_task(void *arg, int task, int thread)
{
    const dx_dc_job *j = arg;
    const int H = j->in.H, W = j->in.W, img = task / j->nb, oy0 = (task % j->nb) * DX_DC_ROWS;
    const int rows = H - oy0 < DX_DC_ROWS ? H - oy0 : DX_DC_ROWS;
    float *acc = j->scratch + (size_t)thread * j->per_thread;
    float *in = acc + (size_t)j->Cout * DX_DC_ROWS * W;
    dx_wg_job src = j->in;
    int ci, co, r, ky, ox;

    src.x = j->in.x + (size_t)img * j->xplane;
    if (src.ga != NULL) {
        src.ga += (size_t)img * 2 * j->Cin;
        src.gb = src.ga + j->Cin;
    }
    for (co = 0; co < j->Cout; co++)
        for (r = 0; r < rows; r++) {
            float *a = acc + ((size_t)co * DX_DC_ROWS + r) * W;
            const float bias = j->b != NULL ? j->b[co] : 0.0f;

            for (ox = 0; ox < W; ox++)
                a[ox] = bias;
        }
    for (ci = 0; ci < j->Cin; ci++) {
        /* input rows oy0-1 .. oy0+rows, zero-padded by one column a side */
        for (r = 0; r < rows + 2; r++) {
            float *row = in + (size_t)r * j->rstride;
            const int iy = oy0 - 1 + r;

            if (iy >= 0 && iy < H) {
                dx_wg_load_row(&src, ci, iy, row);
                row[0] = 0.0f;
                row[W + 1] = 0.0f;
            } else {
                memset(row, 0, (size_t)(W + 2) * sizeof(float));
            }
        }
        for (co = 0; co < j->Cout; co++) {
            const float *wc = j->w + ((size_t)co * j->Cin + ci) * 9;

            for (r = 0; r < rows; r++) {
                float *restrict a = acc + ((size_t)co * DX_DC_ROWS + r) * W;

                for (ky = 0; ky < 3; ky++) {
                    const float *restrict x0 = in + (size_t)(r + ky) * j->rstride;
                    const float w0 = wc[ky * 3], w1 = wc[ky * 3 + 1], w2 = wc[ky * 3 + 2];

                    for (ox = 0; ox < W; ox++)
                        a[ox] += w0 * x0[ox] + w1 * x0[ox + 1] + w2 * x0[ox + 2];
                }
            }
        }
    }
    for (co = 0; co < j->Cout; co++)
        for (r = 0; r < rows; r++) {
            const float *a = acc + ((size_t)co * DX_DC_ROWS + r) * W;
            float *yr = j->y + (((size_t)img * j->Cout + co) * H + oy0 + r) * W;

            if (j->acc)
                for (ox = 0; ox < W; ox++)
                    yr[ox] += a[ox];
            else
                memcpy(yr, a, (size_t)W * sizeof(float));
        }
}

static void dx_conv3_direct(dx_cpu *c, float *y, const float *x, const float *w, const float *b,
                            int B, int Cin, int H, int W, int Cout, const dxk_conv_pre *pre)
{
    const int up2 = pre != NULL && pre->up2, nt = dxk_pool_size(c->pool);
    dx_dc_job j;
    dx_gnab_job gj;
    int img;

    memset(&j, 0, sizeof j);
    j.in.x = x;
    j.in.H = H;
    j.in.W = W;
    j.in.up2 = up2;
    j.y = y;
    j.w = w;
    j.b = b;
    j.Cin = Cin;
    j.Cout = Cout;
    j.nb = (H + DX_DC_ROWS - 1) / DX_DC_ROWS;
    j.acc = pre != NULL && pre->acc;
    j.xplane = (size_t)Cin * (up2 ? (size_t)(H / 2) * (W / 2) : (size_t)H * W);
    /* a row: W + 2 padded values, then room for the half row up2 stages */
    j.rstride = (size_t)W + 2 + (size_t)W / 2 + 16;
    j.per_thread = (size_t)Cout * DX_DC_ROWS * W + (DX_DC_ROWS + 2) * j.rstride;
    if (dx_grow(c, &c->col, &c->col_n, j.per_thread * nt, "the convolution's rows") ||
        (pre != NULL && pre->gamma != NULL &&
         dx_grow(c, &c->gn_ab, &c->gn_ab_n, (size_t)2 * Cin * B, "the GroupNorm scales")))
        return;
    j.scratch = c->col;
    if (pre != NULL && pre->gamma != NULL) {
        /* the statistics of every image first: one band job for them all */
        memset(&gj, 0, sizeof gj);
        gj.gamma = pre->gamma;
        gj.beta = pre->beta;
        gj.C = Cin;
        gj.G = pre->G;
        gj.HW = j.xplane / (size_t)Cin;
        gj.eps = pre->eps;
        for (img = 0; img < B; img++) {
            gj.x = x + (size_t)img * j.xplane;
            gj.a = c->gn_ab + (size_t)img * 2 * Cin;
            gj.b = gj.a + Cin;
            dxk_pool_run(c->pool, gj.G, dx_gnab_task, &gj);
        }
        j.in.silu = pre->silu;
    }
    if (pre != NULL && pre->gamma != NULL)
        j.in.ga = c->gn_ab; /* image i's scales at 2 Cin i, its shifts Cin after */
    dxk_pool_run(c->pool, B * j.nb, dx_dc_task, &j);
}

/* the shapes dx_conv3_winograd takes */
static int dx_wg_fits(int Cin, int W, int Cout)
{
    return Cin >= DX_WG_MIN && Cout >= DX_WG_MIN && W <= 4 * 1024;
}

int dxk_cpu_conv3(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                  int B, int Cin, int H, int W, int Cout, const dxk_conv_pre *pre)
{
    dx_cpu *c;

    if (be != NULL && be->conv2d == cpu_conv2d && Cout < DX_WG_MIN && W <= 4 * 1024 &&
        Cin >= 1 && Cout >= 1 && !(pre != NULL && pre->up2 && (H % 2 != 0 || W % 2 != 0)) &&
        !(pre != NULL && pre->gamma != NULL && (pre->G <= 0 || Cin % pre->G != 0))) {
        c = dx_priv(be);
        if (c->fail == DEXEC_OK && B > 0 && H > 0)
            dx_conv3_direct(c, y, x, w, b, B, Cin, H, W, Cout, pre);
        return 1;
    }
    if (be == NULL || be->conv2d != cpu_conv2d || !dx_wg_fits(Cin, W, Cout) ||
        (pre != NULL && pre->up2 && (H % 2 != 0 || W % 2 != 0)) ||
        (pre != NULL && pre->gamma != NULL && (pre->G <= 0 || Cin % pre->G != 0)))
        return 0;
    c = dx_priv(be);
    if (c->fail == DEXEC_OK && B > 0 && H > 0)
        dx_conv3_winograd(c, y, x, w, b, B, Cin, H, W, Cout, pre, pre != NULL && pre->acc);
    return 1;
}

static void cpu_conv2d(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                       int B, int Cin, int H, int W, int Cout, int k)
{
    dx_cpu *c = dx_priv(be);
    const size_t HW = (size_t)H * W, K = (size_t)Cin * k * k;
    int img, r0, band, co;

    if (c->fail != DEXEC_OK || B <= 0 || Cout <= 0 || HW == 0)
        return;
    if (k == 3 && dx_wg_fits(Cin, W, Cout)) {
        dx_conv3_winograd(c, y, x, w, b, B, Cin, H, W, Cout, NULL, 0);
        return;
    }
    if (k == 3 && Cout < DX_WG_MIN && W <= 4 * 1024) {
        dx_conv3_direct(c, y, x, w, b, B, Cin, H, W, Cout, NULL);
        return;
    }
    band = (int)(DX_COL_MAX / (K * (size_t)W));
    if (band < 1)
        band = 1;
    if (band > H)
        band = H;
    if (k > 1 && c->col_n < K * (size_t)band * W) {
        float *p = realloc(c->col, K * (size_t)band * W * sizeof *p);

        if (p == NULL) {
            dx_cpu_fail(c, "the convolution panel");
            return;
        }
        c->col = p;
        c->col_n = K * (size_t)band * W;
    }
    for (img = 0; img < B; img++) {
        const float *xi = x + (size_t)img * Cin * HW;
        float *yi = y + (size_t)img * Cout * HW;

        if (b != NULL)
            for (co = 0; co < Cout; co++) {
                float *r = yi + (size_t)co * HW;
                size_t i;

                for (i = 0; i < HW; i++)
                    r[i] = b[co];
            }
        if (k == 1) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Cout, (int)HW, Cin, 1.0f, w,
                        Cin, xi, (int)HW, b != NULL ? 1.0f : 0.0f, yi, (int)HW);
            continue;
        }
        for (r0 = 0; r0 < H; r0 += band) {
            int rows = H - r0 < band ? H - r0 : band, n = rows * W;
            dx_col_job j = {c->col, xi, Cin, H, W, k, r0, rows};

            dxk_pool_run(c->pool, Cin, dx_col_task, &j);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Cout, n, (int)K, 1.0f, w,
                        (int)K, c->col, n, b != NULL ? 1.0f : 0.0f, yi + (size_t)r0 * W,
                        (int)HW);
        }
    }
}

typedef struct dx_gn_job {
    float *y;
    const float *x, *gamma, *beta;
    int C, HW, G, silu;
    double eps;
} dx_gn_job;

/* task = b*G + g: one group of one image */
DX_CLONES DX_VECTORIZE static void dx_gn_task(void *arg, int task, int thread)
{
    const dx_gn_job *j = arg;
    const int cpg = j->C / j->G, b = task / j->G, g = task % j->G;
    const size_t HW = (size_t)j->HW, n = (size_t)cpg * HW;
    const size_t off = ((size_t)b * j->C + (size_t)g * cpg) * HW;
    const float *xg = j->x + off;
    float *yg = j->y + off;
    double mean, var;
    size_t i;
    int ch;

    (void)thread;
    /* double accumulation: a group holds up to 512/32 x 512^2 values */
    mean = dx_gn_sum(xg, n, 0.0, 0) / (double)n;
    var = dx_gn_sum(xg, n, mean, 1) / (double)n;
    for (ch = 0; ch < cpg; ch++) {
        const int cc = g * cpg + ch;
        const float a = (float)(j->gamma[cc] / sqrt(var + j->eps));
        const float sh = (float)(j->beta[cc] - mean * a);
        const float *xr = xg + (size_t)ch * HW;
        float *yr = yg + (size_t)ch * HW;

        if (j->silu)
            for (i = 0; i < HW; i++) {
                float v = xr[i] * a + sh;

                yr[i] = v / (1.0f + dx_expf(-v));
            }
        else
            for (i = 0; i < HW; i++)
                yr[i] = xr[i] * a + sh;
    }
}

static void cpu_group_norm(dxk_backend *be, float *y, const float *x, const float *gamma,
                           const float *beta, int B, int C, int HW, int G, float eps, int silu)
{
    dx_cpu *c = dx_priv(be);
    dx_gn_job j = {y, x, gamma, beta, C, HW, G, silu, eps};

    if (c->fail != DEXEC_OK || B <= 0 || G <= 0 || C % G != 0)
        return;
    dxk_pool_run(c->pool, B * G, dx_gn_task, &j);
}

static void cpu_upsample_nearest2x(dxk_backend *be, float *y, const float *x, int B, int C,
                                   int H, int W)
{
    size_t plane, p;
    int oy, ox;

    (void)be;
    plane = (size_t)B * C;
    for (p = 0; p < plane; p++) {
        const float *xp = x + p * H * W;
        float *yp = y + p * 4 * H * W;

        for (oy = 0; oy < 2 * H; oy++) {
            const float *xr = xp + (size_t)(oy / 2) * W;
            float *yr = yp + (size_t)oy * 2 * W;

            for (ox = 0; ox < 2 * W; ox++)
                yr[ox] = xr[ox / 2];
        }
    }
}

static dexec_status cpu_sync(dxk_backend *be, char *err, size_t errlen)
{
    dx_cpu *c = dx_priv(be);

    if (c->fail != DEXEC_OK && err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", c->msg);
    return c->fail;
}

static void cpu_destroy(dxk_backend *be)
{
    dx_cpu *c = dx_priv(be);

    dxk_pool_free(c->pool);
    free(c->pos);
    free(c->col);
    free(c->wg_u);
    free(c->wg_v);
    free(c->wg_m);
    free(c->gn_ab);
    free(c);
    free(be);
}

/* The CPU model name from /proc/cpuinfo, for model info replies. */
static void dx_cpu_name(char *out, size_t outlen)
{
    char line[256];
    FILE *f = fopen("/proc/cpuinfo", "re");

    snprintf(out, outlen, "cpu");
    if (f == NULL)
        return;
    while (fgets(line, sizeof line, f) != NULL) {
        char *colon = strchr(line, ':');

        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
            colon++;
            while (*colon == ' ' || *colon == '\t')
                colon++;
            colon[strcspn(colon, "\n")] = '\0';
            snprintf(out, outlen, "%s", colon);
            break;
        }
    }
    fclose(f);
}

dexec_status dxk_backend_cpu(dxk_backend **out, char *err, size_t errlen)
{
    dxk_backend *be = calloc(1, sizeof *be);
    dx_cpu *c = calloc(1, sizeof *c);

    *out = NULL;
    if (be == NULL || c == NULL) {
        free(be);
        free(c);
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "cpu backend: out of memory");
        return DEXEC_ENOMEM;
    }
    pthread_once(&dx_blas_once, dx_blas_core_note);
    /* no pool is no error: the ops then run in the caller alone */
    c->pool = dxk_pool_new(dx_blas_threads(), dx_pool_thread_init);
    be->struct_size = sizeof *be;
    be->name = "cpu";
    dx_cpu_name(be->device_name, sizeof be->device_name);
    be->host_memory = 1;
    be->priv = c;
    be->alloc = cpu_alloc;
    be->release = cpu_release;
    be->upload = cpu_copy;
    be->download = cpu_copy;
    be->copy = cpu_copy;
    be->memory = cpu_memory;
    be->linear = cpu_linear;
    be->ln_modulate = cpu_ln_modulate;
    be->attention = cpu_attention;
    be->attention_scratch = cpu_attention_scratch;
    be->gelu_tanh = cpu_gelu_tanh;
    be->silu = cpu_silu;
    be->timestep_embed = cpu_timestep_embed;
    be->add_embedding = cpu_add_embedding;
    be->patchify = cpu_patchify;
    be->unpatchify = cpu_unpatchify;
    be->pos_embed_add = cpu_pos_embed_add;
    be->gated_residual = cpu_gated_residual;
    be->euler = cpu_euler;
    be->cfg_combine = cpu_cfg_combine;
    be->sync = cpu_sync;
    be->destroy = cpu_destroy;
    be->conv2d = cpu_conv2d;
    be->group_norm = cpu_group_norm;
    be->upsample_nearest2x = cpu_upsample_nearest2x;
    be->ln_modulate_eps = cpu_ln_modulate_eps;
    *out = be;
    return DEXEC_OK;
}
