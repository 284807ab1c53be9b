/*
 * gpu_check.c - a standalone check and benchmark of the CUDA backend
 * (kernels/cuda/) for GPU machines that have the CUDA toolkit and a C
 * compiler but none of dexec's build dependencies (no autotools, Check,
 * OpenBLAS). tests/gpu/run.sh builds it with nvcc and runs it. The module's
 * sources are compiled in, and reached through the module's own descriptor
 * (dexec_plugin, the symbol the loader reads from dexec_cuda.so), so the
 * check drives the same entry points the worker does.
 *
 * 1. Every op of the CUDA backend against a naive reference written here
 *    (plain C loops, double accumulation; independent of the CPU backend),
 *    relative error <= 1e-4 of the tensor's scale, NaN never passes; the
 *    latent models' ops (conv2d, group_norm, upsample_nearest2x,
 *    ln_modulate_eps) too.
 *    The half-precision ops (linear_half, conv2d_half with float16 and
 *    bfloat16 weights from upload_half) against the reference on the
 *    operands rounded the same way (1e-3) and on float32 (4e-3 / 3e-2).
 * 2. One denoising step of a DiT-S-sized model with random weights (width
 *    384, depth 12, 6 heads, 256 tokens, batch 2 for classifier-free
 *    guidance) on both, compared the same way.
 * 3. Timings on the GPU: that step, each op at its DiT-S shape, the
 *    autoencoder's widest 3x3 convolution and GroupNorm, and cuBLAS
 *    SGEMM (FP32, through the backend's linear op) at the step's shapes
 *    and at 4096^3, so the step can be read against what SGEMM reaches.
 *
 * Exit status: 0 all checks pass, 1 a mismatch or a backend failure, 77 no
 * CUDA device (the reason is printed), 2 bad usage.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops.h"

/* from kernels/cuda/ops_cuda.cu, compiled into this program */
extern const dexec_plugin_desc dexec_plugin;

#define TOL 1e-4

static int failures;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (p == NULL) {
        fprintf(stderr, "gpu_check: out of host memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* ---- the reference backend: host memory, double arithmetic ------------ */

static float *ref_alloc(dxk_backend *be, size_t n)
{
    (void)be;
    return xmalloc(n * sizeof(float));
}

static void ref_release(dxk_backend *be, float *p)
{
    (void)be;
    free(p);
}

static void ref_copy(dxk_backend *be, float *dst, const float *src, size_t n)
{
    (void)be;
    memmove(dst, src, n * sizeof *dst);
}

static void ref_memory(dxk_backend *be, size_t *used, size_t *peak)
{
    (void)be;
    *used = *peak = 0;
}

static void ref_linear(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                       int M, int N, int K)
{
    int i, n, k;

    (void)be;
    for (i = 0; i < M; i++) {
        const float *xr = x + (size_t)i * K;

        for (n = 0; n < N; n++) {
            const float *wr = w + (size_t)n * K;
            /* four chains: a single one would be latency bound, and the
             * DiT-S step does 24 GFLOP through here */
            double a0 = 0, a1 = 0, a2 = 0, a3 = 0;

            for (k = 0; k + 3 < K; k += 4) {
                a0 += (double)xr[k] * wr[k];
                a1 += (double)xr[k + 1] * wr[k + 1];
                a2 += (double)xr[k + 2] * wr[k + 2];
                a3 += (double)xr[k + 3] * wr[k + 3];
            }
            for (; k < K; k++)
                a0 += (double)xr[k] * wr[k];
            y[(size_t)i * N + n] = (float)((b != NULL ? b[n] : 0.0) + a0 + a1 + a2 + a3);
        }
    }
}

static void ref_ln_modulate(dxk_backend *be, float *y, const float *x, const float *shift,
                            const float *scale, int mod_stride, int B, int T, int D)
{
    int b, t, d;

    (void)be;
    for (b = 0; b < B; b++)
        for (t = 0; t < T; t++) {
            const float *xr = x + ((size_t)b * T + t) * D;
            float *yr = y + ((size_t)b * T + t) * D;
            const float *sh = shift + (size_t)b * mod_stride, *sc = scale + (size_t)b * mod_stride;
            double mean = 0, var = 0, rs;

            for (d = 0; d < D; d++)
                mean += xr[d];
            mean /= D;
            for (d = 0; d < D; d++)
                var += (xr[d] - mean) * (xr[d] - mean);
            rs = 1.0 / sqrt(var / D + 1e-6);
            for (d = 0; d < D; d++)
                yr[d] = (float)((xr[d] - mean) * rs * (1.0 + sc[d]) + sh[d]);
        }
}

static size_t ref_attention_scratch(dxk_backend *be, int B, int T, int H)
{
    (void)be;
    (void)B;
    (void)H;
    return (size_t)T;
}

/* One query row at a time; the scores of the row in double. */
static void ref_attention(dxk_backend *be, float *out, const float *qkv, float *scratch, int B,
                          int T, int H, int D)
{
    const int hd = D / H;
    const double scale = 1.0 / sqrt((double)hd);
    double *s = xmalloc((size_t)T * sizeof *s), *o = xmalloc((size_t)hd * sizeof *o);
    int b, h, i, j, d;

    (void)be;
    (void)scratch;
    for (b = 0; b < B; b++)
        for (h = 0; h < H; h++)
            for (i = 0; i < T; i++) {
                const float *q = qkv + ((size_t)b * T + i) * 3 * D + (size_t)h * hd;
                double mx = -INFINITY, sum = 0;

                for (j = 0; j < T; j++) {
                    const float *k = qkv + ((size_t)b * T + j) * 3 * D + D + (size_t)h * hd;
                    double acc = 0;

                    for (d = 0; d < hd; d++)
                        acc += (double)q[d] * k[d];
                    s[j] = acc * scale;
                    if (s[j] > mx)
                        mx = s[j];
                }
                for (d = 0; d < hd; d++)
                    o[d] = 0;
                for (j = 0; j < T; j++) {
                    const float *v = qkv + ((size_t)b * T + j) * 3 * D + 2 * D + (size_t)h * hd;
                    double e = exp(s[j] - mx);

                    sum += e;
                    for (d = 0; d < hd; d++)
                        o[d] += e * v[d];
                }
                for (d = 0; d < hd; d++)
                    out[((size_t)b * T + i) * D + (size_t)h * hd + d] = (float)(o[d] / sum);
            }
    free(s);
    free(o);
}

static void ref_gelu_tanh(dxk_backend *be, float *x, size_t n)
{
    size_t i;

    (void)be;
    for (i = 0; i < n; i++) {
        double v = x[i];

        x[i] = (float)(0.5 * v *
                       (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (v + 0.044715 * v * v * v))));
    }
}

static void ref_silu(dxk_backend *be, float *y, const float *x, size_t n)
{
    size_t i;

    (void)be;
    for (i = 0; i < n; i++)
        y[i] = (float)(x[i] / (1.0 + exp(-(double)x[i])));
}

static void ref_timestep_embed(dxk_backend *be, float *out, const double *t, int B)
{
    int b, k;

    (void)be;
    for (b = 0; b < B; b++)
        for (k = 0; k < 128; k++) {
            double a = t[b] * exp(-log(10000.0) * k / 128.0);

            out[(size_t)b * 256 + k] = (float)cos(a);
            out[(size_t)b * 256 + 128 + k] = (float)sin(a);
        }
}

static void ref_add_embedding(dxk_backend *be, float *c, const float *table, const int *y, int B,
                              int D)
{
    int b, d;

    (void)be;
    for (b = 0; b < B; b++)
        for (d = 0; d < D; d++)
            c[(size_t)b * D + d] = (float)((double)c[(size_t)b * D + d] +
                                           table[(size_t)y[b] * D + d]);
}

/* Both directions walk the pixels and compute where each one lives in the
 * token tensor: the opposite of the backends' loops, so a shared mistake
 * is unlikely. */
static size_t ref_token_index(int b, int c, int yy, int xx, int C, int H, int W, int p,
                              int cpp_order)
{
    const int w = W / p, T = (H / p) * w, F = C * p * p;
    const int tok = (yy / p) * w + xx / p, py = yy % p, px = xx % p;
    const int f = cpp_order ? (c * p + py) * p + px : (py * p + px) * C + c;

    return ((size_t)b * T + tok) * F + f;
}

static void ref_patchify(dxk_backend *be, float *tok, const float *img, int B, int C, int H,
                         int W, int p)
{
    int b, c, yy, xx;

    (void)be;
    for (b = 0; b < B; b++)
        for (c = 0; c < C; c++)
            for (yy = 0; yy < H / p * p; yy++)
                for (xx = 0; xx < W / p * p; xx++)
                    tok[ref_token_index(b, c, yy, xx, C, H, W, p, 1)] =
                        img[(((size_t)b * C + c) * H + yy) * W + xx];
}

static void ref_unpatchify(dxk_backend *be, float *img, const float *tok, int B, int C, int H,
                           int W, int p)
{
    int b, c, yy, xx;

    (void)be;
    for (b = 0; b < B; b++)
        for (c = 0; c < C; c++)
            for (yy = 0; yy < H / p * p; yy++)
                for (xx = 0; xx < W / p * p; xx++)
                    img[(((size_t)b * C + c) * H + yy) * W + xx] =
                        tok[ref_token_index(b, c, yy, xx, C, H, W, p, 0)];
}

/* E(d, q)[j] of doc/model-format.md: sin(q w_k) for j = k < d/2, cos(q w_k)
 * for j = d/2 + k, w_k = 1 / 10000^(k / (d/2)). */
static double ref_sincos(int d, double q, int j)
{
    const int half = d / 2;
    const int k = j < half ? j : j - half;
    const double a = q * pow(10000.0, -(double)k / half);

    return j < half ? sin(a) : cos(a);
}

static void ref_pos_embed_add(dxk_backend *be, float *tok, int B, int h, int w, int D)
{
    int b, gy, gx, j;

    (void)be;
    for (b = 0; b < B; b++)
        for (gy = 0; gy < h; gy++)
            for (gx = 0; gx < w; gx++) {
                float *r = tok + (((size_t)b * h + gy) * w + gx) * D;

                for (j = 0; j < D; j++) {
                    double e = j < D / 2 ? ref_sincos(D / 2, gy, j)
                                         : ref_sincos(D / 2, gx, j - D / 2);

                    r[j] = (float)((double)r[j] + e);
                }
            }
}

static void ref_gated_residual(dxk_backend *be, float *x, const float *y, const float *gate,
                               int gate_stride, int B, int T, int D)
{
    int b, t, d;

    (void)be;
    for (b = 0; b < B; b++)
        for (t = 0; t < T; t++)
            for (d = 0; d < D; d++) {
                size_t i = ((size_t)b * T + t) * D + d;

                x[i] = (float)((double)x[i] + (double)gate[(size_t)b * gate_stride + d] * y[i]);
            }
}

static void ref_euler(dxk_backend *be, float *x, const float *v, float dt, size_t n)
{
    size_t i;

    (void)be;
    for (i = 0; i < n; i++)
        x[i] = (float)((double)x[i] + (double)dt * v[i]);
}

static void ref_cfg_combine(dxk_backend *be, float *out, const float *vc, const float *vu, float g,
                            size_t n)
{
    size_t i;

    (void)be;
    for (i = 0; i < n; i++)
        out[i] = (float)((double)vu[i] + (double)g * ((double)vc[i] - vu[i]));
}

/* ln_modulate with its eps given */
static void ref_ln_modulate_eps(dxk_backend *be, float *y, const float *x, const float *shift,
                                const float *scale, int mod_stride, int B, int T, int D,
                                float eps)
{
    int b, t, d;

    (void)be;
    for (b = 0; b < B; b++)
        for (t = 0; t < T; t++) {
            const float *xr = x + ((size_t)b * T + t) * D;
            float *yr = y + ((size_t)b * T + t) * D;
            const float *sh = shift + (size_t)b * mod_stride, *sc = scale + (size_t)b * mod_stride;
            double mean = 0, var = 0, rs;

            for (d = 0; d < D; d++)
                mean += xr[d];
            mean /= D;
            for (d = 0; d < D; d++)
                var += (xr[d] - mean) * (xr[d] - mean);
            rs = 1.0 / sqrt(var / D + (double)eps);
            for (d = 0; d < D; d++)
                yr[d] = (float)((xr[d] - mean) * rs * (1.0 + sc[d]) + sh[d]);
        }
}

/* The convolution by its definition: one output at a time, in double. */
static void ref_conv2d(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                       int B, int Cin, int H, int W, int Cout, int k)
{
    const int pad = (k - 1) / 2;
    int n, co, oy, ox, ci, ky, kx;

    (void)be;
    for (n = 0; n < B; n++)
        for (co = 0; co < Cout; co++)
            for (oy = 0; oy < H; oy++)
                for (ox = 0; ox < W; ox++) {
                    double a = b != NULL ? b[co] : 0.0;

                    for (ci = 0; ci < Cin; ci++)
                        for (ky = 0; ky < k; ky++)
                            for (kx = 0; kx < k; kx++) {
                                int iy = oy + ky - pad, ix = ox + kx - pad;

                                if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                                    continue;
                                a += (double)x[(((size_t)n * Cin + ci) * H + iy) * W + ix] *
                                     w[(((size_t)co * Cin + ci) * k + ky) * k + kx];
                            }
                    y[(((size_t)n * Cout + co) * H + oy) * W + ox] = (float)a;
                }
}

static void ref_group_norm(dxk_backend *be, float *y, const float *x, const float *gamma,
                           const float *beta, int B, int C, int HW, int G, float eps, int silu)
{
    const int cpg = C / G;
    int b, g;

    (void)be;
    for (b = 0; b < B; b++)
        for (g = 0; g < G; g++) {
            const size_t off = ((size_t)b * C + (size_t)g * cpg) * HW, n = (size_t)cpg * HW;
            double mean = 0, var = 0, rs;
            size_t i;

            for (i = 0; i < n; i++)
                mean += x[off + i];
            mean /= (double)n;
            for (i = 0; i < n; i++)
                var += (x[off + i] - mean) * (x[off + i] - mean);
            rs = 1.0 / sqrt(var / (double)n + (double)eps);
            for (i = 0; i < n; i++) {
                const int cc = g * cpg + (int)(i / (size_t)HW);
                double v = (x[off + i] - mean) * rs * gamma[cc] + beta[cc];

                y[off + i] = (float)(silu ? v / (1.0 + exp(-v)) : v);
            }
        }
}

static void ref_upsample_nearest2x(dxk_backend *be, float *y, const float *x, int B, int C, int H,
                                   int W)
{
    size_t p;
    int oy, ox;

    (void)be;
    for (p = 0; p < (size_t)B * C; p++)
        for (oy = 0; oy < 2 * H; oy++)
            for (ox = 0; ox < 2 * W; ox++)
                y[(p * 2 * H + oy) * 2 * W + ox] = x[(p * H + oy / 2) * W + ox / 2];
}

static dexec_status ref_sync(dxk_backend *be, char *err, size_t errlen)
{
    (void)be;
    (void)err;
    (void)errlen;
    return DEXEC_OK;
}

static void ref_destroy(dxk_backend *be)
{
    free(be);
}

static dxk_backend *ref_backend(void)
{
    dxk_backend *be = xmalloc(sizeof *be);

    memset(be, 0, sizeof *be);
    be->name = "reference";
    snprintf(be->device_name, sizeof be->device_name, "naive C, double");
    be->host_memory = 1;
    be->alloc = ref_alloc;
    be->release = ref_release;
    be->upload = ref_copy;
    be->download = ref_copy;
    be->copy = ref_copy;
    be->memory = ref_memory;
    be->linear = ref_linear;
    be->ln_modulate = ref_ln_modulate;
    be->attention = ref_attention;
    be->attention_scratch = ref_attention_scratch;
    be->gelu_tanh = ref_gelu_tanh;
    be->silu = ref_silu;
    be->timestep_embed = ref_timestep_embed;
    be->add_embedding = ref_add_embedding;
    be->patchify = ref_patchify;
    be->unpatchify = ref_unpatchify;
    be->pos_embed_add = ref_pos_embed_add;
    be->gated_residual = ref_gated_residual;
    be->euler = ref_euler;
    be->cfg_combine = ref_cfg_combine;
    be->sync = ref_sync;
    be->destroy = ref_destroy;
    be->conv2d = ref_conv2d;
    be->group_norm = ref_group_norm;
    be->upsample_nearest2x = ref_upsample_nearest2x;
    be->ln_modulate_eps = ref_ln_modulate_eps;
    return be;
}

/* ---- comparing the two ------------------------------------------------- */

static dxk_backend *ref, *gpu;
static uint64_t seed = 1;

static double uniform(double lo, double hi)
{
    uint64_t z = (seed += UINT64_C(0x9E3779B97F4A7C15));

    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    z ^= z >> 31;
    return lo + (hi - lo) * (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* The first failure of the CUDA backend ends the run: later results would
 * be those of ops that did nothing. */
static void gpu_sync_or_die(const char *when)
{
    char err[512];

    if (gpu->sync(gpu, err, sizeof err) != DEXEC_OK) {
        printf("FAIL  %s: %s\n", when, err);
        exit(1);
    }
}

typedef struct twin {
    float *r, *g; /* reference and GPU copies */
    size_t n;
} twin;

static twin twin_new(size_t n, double lo, double hi)
{
    float *h = xmalloc(n * sizeof *h);
    twin t;
    size_t i;

    for (i = 0; i < n; i++)
        h[i] = (float)uniform(lo, hi);
    t.n = n;
    t.r = ref->alloc(ref, n);
    t.g = gpu->alloc(gpu, n);
    if (t.g == NULL)
        gpu_sync_or_die("alloc");
    ref->upload(ref, t.r, h, n);
    gpu->upload(gpu, t.g, h, n);
    free(h);
    return t;
}

static void twin_free(twin *t)
{
    ref->release(ref, t->r);
    gpu->release(gpu, t->g);
}

/* max |gpu - ref| / max |ref|; INFINITY when anything is not finite */
static double rel_err(const float *g, const float *r, size_t n)
{
    double num = 0, den = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        double d = fabs((double)g[i] - r[i]);

        if (!isfinite(g[i]) || !isfinite(r[i]))
            return INFINITY;
        if (d > num)
            num = d;
        if (fabs(r[i]) > den)
            den = fabs(r[i]);
    }
    return den > 0 ? num / den : num;
}

static void report(const char *op, const char *shape, double e)
{
    int ok = e <= TOL; /* false for NaN */

    printf("%-4s  %-16s %-34s %10.2e\n", ok ? "ok" : "FAIL", op, shape, e);
    if (!ok)
        failures++;
}

static void check(const char *op, const char *shape, const twin *t)
{
    float *g = xmalloc(t->n * sizeof *g);

    gpu->download(gpu, g, t->g, t->n);
    gpu_sync_or_die(op);
    report(op, shape, rel_err(g, t->r, t->n));
    free(g);
}

static void check_ops(void)
{
    static const int lin[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 300}, {512, 1152, 384},
                                 {512, 384, 1536}};
    static const int ln[][3] = {{1, 1, 4}, {2, 5, 64}, {2, 256, 384}, {1, 3, 1152}};
    static const int att[][4] = {{1, 1, 1, 8}, {2, 7, 3, 16}, {2, 256, 6, 64}, {1, 2500, 6, 16}};
    static const int pat[][5] = {{2, 3, 16, 12, 4}, {2, 4, 32, 32, 2}, {1, 1, 5, 3, 1}};
    static const int pos[][4] = {{1, 4, 4, 64}, {2, 16, 16, 384}, {2, 3, 7, 64}, {1, 4, 4, 64}};
    char shape[64];
    size_t s;
    int wb;

    for (s = 0; s < sizeof lin / sizeof lin[0]; s++)
        for (wb = 0; wb < 2; wb++) {
            const int M = lin[s][0], N = lin[s][1], K = lin[s][2];
            twin x = twin_new((size_t)M * K, -1, 1), w = twin_new((size_t)N * K, -0.1, 0.1);
            twin b = twin_new(N, -1, 1), y = twin_new((size_t)M * N, -1, 1);

            ref->linear(ref, y.r, x.r, w.r, wb ? b.r : NULL, M, N, K);
            gpu->linear(gpu, y.g, x.g, w.g, wb ? b.g : NULL, M, N, K);
            snprintf(shape, sizeof shape, "M=%d N=%d K=%d%s", M, N, K, wb ? " +bias" : "");
            check("linear", shape, &y);
            twin_free(&x);
            twin_free(&w);
            twin_free(&b);
            twin_free(&y);
        }

    for (s = 0; s < sizeof ln / sizeof ln[0]; s++) {
        const int B = ln[s][0], T = ln[s][1], D = ln[s][2];
        twin x = twin_new((size_t)B * T * D, 90, 110), m = twin_new((size_t)B * 6 * D, -1, 1);
        twin y = twin_new((size_t)B * T * D, 0, 1);

        ref->ln_modulate(ref, y.r, x.r, m.r, m.r + D, 6 * D, B, T, D);
        gpu->ln_modulate(gpu, y.g, x.g, m.g, m.g + D, 6 * D, B, T, D);
        snprintf(shape, sizeof shape, "B=%d T=%d D=%d", B, T, D);
        check("ln_modulate", shape, &y);
        ref->ln_modulate(ref, x.r, x.r, m.r + 3 * D, m.r + 4 * D, 6 * D, B, T, D);
        gpu->ln_modulate(gpu, x.g, x.g, m.g + 3 * D, m.g + 4 * D, 6 * D, B, T, D);
        check("ln_modulate", "(in place)", &x);
        twin_free(&x);
        twin_free(&m);
        twin_free(&y);
    }

    for (s = 0; s < sizeof att / sizeof att[0]; s++) {
        const int B = att[s][0], T = att[s][1], H = att[s][2], D = H * att[s][3];
        twin qkv = twin_new((size_t)B * T * 3 * D, -2, 2), o = twin_new((size_t)B * T * D, 0, 1);
        float *sg = gpu->alloc(gpu, gpu->attention_scratch(gpu, B, T, H));

        ref->attention(ref, o.r, qkv.r, NULL, B, T, H, D);
        gpu->attention(gpu, o.g, qkv.g, sg, B, T, H, D);
        snprintf(shape, sizeof shape, "B=%d T=%d H=%d D=%d", B, T, H, D);
        check("attention", shape, &o);
        gpu->release(gpu, sg);
        twin_free(&qkv);
        twin_free(&o);
    }

    {
        const size_t n = 100003;
        const int B = 2, T = 37, D = 96;
        twin x = twin_new(n, -6, 6), y = twin_new(n, 0, 1), v, g;

        ref->gelu_tanh(ref, x.r, n);
        gpu->gelu_tanh(gpu, x.g, n);
        check("gelu_tanh", "n=100003", &x);
        ref->silu(ref, y.r, x.r, n);
        gpu->silu(gpu, y.g, x.g, n);
        check("silu", "n=100003", &y);
        ref->silu(ref, y.r, y.r, n);
        gpu->silu(gpu, y.g, y.g, n);
        check("silu", "(in place)", &y);
        twin_free(&x);
        twin_free(&y);

        x = twin_new((size_t)B * T * D, -1, 1);
        y = twin_new((size_t)B * T * D, -1, 1);
        g = twin_new((size_t)B * 6 * D, -1, 1);
        ref->gated_residual(ref, x.r, y.r, g.r + 2 * D, 6 * D, B, T, D);
        gpu->gated_residual(gpu, x.g, y.g, g.g + 2 * D, 6 * D, B, T, D);
        check("gated_residual", "B=2 T=37 D=96", &x);
        twin_free(&x);
        twin_free(&y);
        twin_free(&g);

        x = twin_new(n, -1, 1);
        v = twin_new(2 * n, -1, 1);
        ref->euler(ref, x.r, v.r, -0.125f, n);
        gpu->euler(gpu, x.g, v.g, -0.125f, n);
        check("euler", "n=100003", &x);
        ref->cfg_combine(ref, v.r, v.r, v.r + n, 4.0f, n);
        gpu->cfg_combine(gpu, v.g, v.g, v.g + n, 4.0f, n);
        check("cfg_combine", "n=100003 (out = vc)", &v);
        twin_free(&x);
        twin_free(&v);
    }

    {
        enum { NB = 70, D = 96, K = 11 };
        double t[NB];
        int y[NB], i;
        twin tf = twin_new((size_t)NB * DXK_TFREQ_DIM, 0, 1);
        twin c = twin_new((size_t)NB * D, -1, 1), table = twin_new((size_t)K * D, -1, 1);

        for (i = 0; i < NB; i++) {
            t[i] = i == 0 ? 0.0 : i == 1 ? 1000.0 : uniform(0, 1000);
            y[i] = i % K;
        }
        ref->timestep_embed(ref, tf.r, t, NB);
        gpu->timestep_embed(gpu, tf.g, t, NB);
        memset(t, 0, sizeof t); /* host arguments are not read after the call */
        check("timestep_embed", "B=70", &tf);
        ref->add_embedding(ref, c.r, table.r, y, NB, D);
        gpu->add_embedding(gpu, c.g, table.g, y, NB, D);
        memset(y, 0, sizeof y);
        check("add_embedding", "B=70 D=96", &c);
        twin_free(&tf);
        twin_free(&c);
        twin_free(&table);
    }

    for (s = 0; s < sizeof pat / sizeof pat[0]; s++) {
        const int B = pat[s][0], C = pat[s][1], H = pat[s][2], W = pat[s][3], p = pat[s][4];
        const size_t n = (size_t)B * C * H * W;
        twin img = twin_new(n, -1, 1), tok = twin_new(n, -1, 1), back = twin_new(n, -1, 1);

        ref->patchify(ref, tok.r, img.r, B, C, H, W, p);
        gpu->patchify(gpu, tok.g, img.g, B, C, H, W, p);
        snprintf(shape, sizeof shape, "B=%d C=%d %dx%d p=%d", B, C, H, W, p);
        check("patchify", shape, &tok);
        ref->unpatchify(ref, back.r, tok.r, B, C, H, W, p);
        gpu->unpatchify(gpu, back.g, tok.g, B, C, H, W, p);
        check("unpatchify", shape, &back);
        twin_free(&img);
        twin_free(&tok);
        twin_free(&back);
    }

    for (s = 0; s < sizeof pos / sizeof pos[0]; s++) {
        const int B = pos[s][0], h = pos[s][1], w = pos[s][2], D = pos[s][3];
        twin tok = twin_new((size_t)B * h * w * D, -1, 1);

        ref->pos_embed_add(ref, tok.r, B, h, w, D);
        gpu->pos_embed_add(gpu, tok.g, B, h, w, D);
        snprintf(shape, sizeof shape, "B=%d %dx%d D=%d", B, h, w, D);
        check("pos_embed_add", shape, &tok);
        twin_free(&tok);
    }

    /* the latent models' ops. The last conv2d shape (Cin 64, 3x3, 40x40)
     * is one band of the im2col panel; the one with H = 1 has no rows
     * above or below, W = 1 no columns beside. */
    {
        static const int conv[][6] = {{1, 1, 1, 1, 1, 1}, {2, 3, 5, 7, 4, 3},  {1, 4, 1, 9, 2, 3},
                                      {2, 5, 6, 1, 3, 3}, {2, 8, 9, 11, 16, 1}, {1, 64, 40, 40, 32, 3}};
        static const int gn[][4] = {{1, 4, 1, 2}, {2, 64, 49, 32}, {1, 128, 4096, 32}};

        for (s = 0; s < sizeof conv / sizeof conv[0]; s++)
            for (wb = 0; wb < 2; wb++) {
                const int B = conv[s][0], Ci = conv[s][1], H = conv[s][2], W = conv[s][3];
                const int Co = conv[s][4], k = conv[s][5];
                twin x = twin_new((size_t)B * Ci * H * W, -1, 1);
                twin w = twin_new((size_t)Co * Ci * k * k, -0.2, 0.2), b = twin_new(Co, -1, 1);
                twin y = twin_new((size_t)B * Co * H * W, -1, 1);

                ref->conv2d(ref, y.r, x.r, w.r, wb ? b.r : NULL, B, Ci, H, W, Co, k);
                gpu->conv2d(gpu, y.g, x.g, w.g, wb ? b.g : NULL, B, Ci, H, W, Co, k);
                snprintf(shape, sizeof shape, "B=%d %d->%d %dx%d k=%d%s", B, Ci, Co, H, W, k,
                         wb ? " +bias" : "");
                check("conv2d", shape, &y);
                twin_free(&x);
                twin_free(&w);
                twin_free(&b);
                twin_free(&y);
            }
        for (s = 0; s < sizeof gn / sizeof gn[0]; s++)
            for (wb = 0; wb < 2; wb++) {
                const int B = gn[s][0], C = gn[s][1], HW = gn[s][2], G = gn[s][3];
                /* a large mean against the spread, as for ln_modulate */
                twin x = twin_new((size_t)B * C * HW, 40, 60), y = twin_new((size_t)B * C * HW, 0, 1);
                twin gam = twin_new(C, 0.5, 1.5), bet = twin_new(C, -1, 1);

                ref->group_norm(ref, y.r, x.r, gam.r, bet.r, B, C, HW, G, 1e-6f, wb);
                gpu->group_norm(gpu, y.g, x.g, gam.g, bet.g, B, C, HW, G, 1e-6f, wb);
                snprintf(shape, sizeof shape, "B=%d C=%d HW=%d G=%d%s", B, C, HW, G,
                         wb ? " +silu" : "");
                check("group_norm", shape, &y);
                ref->group_norm(ref, x.r, x.r, gam.r, bet.r, B, C, HW, G, 1e-5f, wb);
                gpu->group_norm(gpu, x.g, x.g, gam.g, bet.g, B, C, HW, G, 1e-5f, wb);
                check("group_norm", "(in place, eps 1e-5)", &x);
                twin_free(&x);
                twin_free(&y);
                twin_free(&gam);
                twin_free(&bet);
            }
        {
            twin x = twin_new((size_t)2 * 3 * 5 * 7, -1, 1), y = twin_new((size_t)2 * 3 * 10 * 14, 0, 1);

            ref->upsample_nearest2x(ref, y.r, x.r, 2, 3, 5, 7);
            gpu->upsample_nearest2x(gpu, y.g, x.g, 2, 3, 5, 7);
            check("upsample_near2x", "B=2 C=3 5x7", &y);
            twin_free(&x);
            twin_free(&y);
        }
        {
            const int B = 2, T = 64, D = 96;
            twin x = twin_new((size_t)B * T * D, 90, 110), m = twin_new((size_t)B * 6 * D, -1, 1);
            twin y = twin_new((size_t)B * T * D, 0, 1);

            ref->ln_modulate_eps(ref, y.r, x.r, m.r, m.r + D, 6 * D, B, T, D, 1e-5f);
            gpu->ln_modulate_eps(gpu, y.g, x.g, m.g, m.g + D, 6 * D, B, T, D, 1e-5f);
            check("ln_modulate_eps", "B=2 T=64 D=96 eps=1e-5", &y);
            twin_free(&x);
            twin_free(&m);
            twin_free(&y);
        }
    }
}

/* ---- a DiT-S-sized denoising step --------------------------------------- */

enum { C_IN = 4, IMG = 32, PATCH = 2, WIDTH = 384, DEPTH = 12, HEADS = 6, MLP = 4, CLASSES = 1000 };

typedef struct lin {
    float *w, *b;
    int out, in;
} lin;

/* The weights of a DiT (doc/model-format.md) on one backend, and the
 * activations of a batch of 2. */
typedef struct dit {
    dxk_backend *be;
    lin x_emb, t0, t2, ada[DEPTH], qkv[DEPTH], proj[DEPTH], fc1[DEPTH], fc2[DEPTH], f_ada,
        f_lin;
    float *y_table;
    float *x, *xn, *qkvb, *att, *hid, *io, *scratch, *tf, *th, *c, *sc, *mod;
    float *img, *xin, *v;
} dit;

/* Host weights, generated once and uploaded to both backends: the scale of
 * PyTorch's default Linear init, with non-zero adaLN so every block acts. */
typedef struct host_lin {
    float *w, *b;
    int out, in;
} host_lin;

static host_lin host_linear(int out, int in)
{
    host_lin l;
    const double a = 1.0 / sqrt((double)in);
    size_t i;

    l.out = out;
    l.in = in;
    l.w = xmalloc((size_t)out * in * sizeof *l.w);
    l.b = xmalloc((size_t)out * sizeof *l.b);
    for (i = 0; i < (size_t)out * in; i++)
        l.w[i] = (float)uniform(-a, a);
    for (i = 0; i < (size_t)out; i++)
        l.b[i] = (float)uniform(-a, a);
    return l;
}

static float *put(dxk_backend *be, const float *h, size_t n)
{
    float *p = be->alloc(be, n);

    if (p == NULL) {
        char err[512];

        be->sync(be, err, sizeof err);
        printf("FAIL  %s: allocating the DiT-S weights: %s\n", be->name, err);
        exit(1);
    }
    be->upload(be, p, h, n);
    return p;
}

static lin put_linear(dxk_backend *be, const host_lin *h)
{
    lin l;

    l.out = h->out;
    l.in = h->in;
    l.w = put(be, h->w, (size_t)h->out * h->in);
    l.b = put(be, h->b, (size_t)h->out);
    return l;
}

typedef struct host_dit {
    host_lin x_emb, t0, t2, ada[DEPTH], qkv[DEPTH], proj[DEPTH], fc1[DEPTH], fc2[DEPTH], f_ada,
        f_lin;
    float *y_table, *noise;
} host_dit;

static void host_dit_make(host_dit *h)
{
    const int D = WIDTH, F = C_IN * PATCH * PATCH;
    size_t i;
    int l;

    h->x_emb = host_linear(D, F);
    h->t0 = host_linear(D, DXK_TFREQ_DIM);
    h->t2 = host_linear(D, D);
    for (l = 0; l < DEPTH; l++) {
        h->ada[l] = host_linear(6 * D, D);
        h->qkv[l] = host_linear(3 * D, D);
        h->proj[l] = host_linear(D, D);
        h->fc1[l] = host_linear(MLP * D, D);
        h->fc2[l] = host_linear(D, MLP * D);
    }
    h->f_ada = host_linear(2 * D, D);
    h->f_lin = host_linear(F, D);
    h->y_table = xmalloc((size_t)(CLASSES + 1) * D * sizeof *h->y_table);
    for (i = 0; i < (size_t)(CLASSES + 1) * D; i++)
        h->y_table[i] = (float)uniform(-1, 1);
    h->noise = xmalloc((size_t)C_IN * IMG * IMG * sizeof *h->noise);
    for (i = 0; i < (size_t)C_IN * IMG * IMG; i++)
        h->noise[i] = (float)uniform(-1.7, 1.7);
}

static void host_dit_free(host_dit *h)
{
    host_lin *all[] = {&h->x_emb, &h->t0, &h->t2, &h->f_ada, &h->f_lin};
    size_t i;
    int l;

    for (i = 0; i < sizeof all / sizeof all[0]; i++) {
        free(all[i]->w);
        free(all[i]->b);
    }
    for (l = 0; l < DEPTH; l++) {
        host_lin *blk[] = {&h->ada[l], &h->qkv[l], &h->proj[l], &h->fc1[l], &h->fc2[l]};

        for (i = 0; i < sizeof blk / sizeof blk[0]; i++) {
            free(blk[i]->w);
            free(blk[i]->b);
        }
    }
    free(h->y_table);
    free(h->noise);
}

static void dit_load(dit *m, dxk_backend *be, const host_dit *h)
{
    const int B = 2, D = WIDTH, T = (IMG / PATCH) * (IMG / PATCH), F = C_IN * PATCH * PATCH;
    const size_t BT = (size_t)B * T, n = (size_t)C_IN * IMG * IMG;
    int l;

    memset(m, 0, sizeof *m);
    m->be = be;
    m->x_emb = put_linear(be, &h->x_emb);
    m->t0 = put_linear(be, &h->t0);
    m->t2 = put_linear(be, &h->t2);
    for (l = 0; l < DEPTH; l++) {
        m->ada[l] = put_linear(be, &h->ada[l]);
        m->qkv[l] = put_linear(be, &h->qkv[l]);
        m->proj[l] = put_linear(be, &h->proj[l]);
        m->fc1[l] = put_linear(be, &h->fc1[l]);
        m->fc2[l] = put_linear(be, &h->fc2[l]);
    }
    m->f_ada = put_linear(be, &h->f_ada);
    m->f_lin = put_linear(be, &h->f_lin);
    m->y_table = put(be, h->y_table, (size_t)(CLASSES + 1) * D);
    m->x = be->alloc(be, BT * D);
    m->xn = be->alloc(be, BT * D);
    m->qkvb = be->alloc(be, BT * 3 * D);
    m->att = be->alloc(be, BT * D);
    m->hid = be->alloc(be, BT * MLP * D);
    m->io = be->alloc(be, BT * F);
    m->scratch = be->alloc(be, be->attention_scratch(be, B, T, HEADS));
    m->tf = be->alloc(be, (size_t)B * DXK_TFREQ_DIM);
    m->th = be->alloc(be, (size_t)B * D);
    m->c = be->alloc(be, (size_t)B * D);
    m->sc = be->alloc(be, (size_t)B * D);
    m->mod = be->alloc(be, (size_t)B * 6 * D);
    m->xin = be->alloc(be, 2 * n);
    m->v = be->alloc(be, 2 * n);
    m->img = put(be, h->noise, n);
}

static void dit_free(dit *m)
{
    dxk_backend *be = m->be;
    lin *all[] = {&m->x_emb, &m->t0, &m->t2, &m->f_ada, &m->f_lin};
    float *acts[] = {m->y_table, m->x,  m->xn, m->qkvb, m->att, m->hid, m->io,  m->scratch,
                     m->tf,      m->th, m->c,  m->sc,   m->mod, m->xin, m->v,   m->img};
    size_t i;
    int l;

    for (i = 0; i < sizeof all / sizeof all[0]; i++) {
        be->release(be, all[i]->w);
        be->release(be, all[i]->b);
    }
    for (l = 0; l < DEPTH; l++) {
        lin *blk[] = {&m->ada[l], &m->qkv[l], &m->proj[l], &m->fc1[l], &m->fc2[l]};

        for (i = 0; i < sizeof blk / sizeof blk[0]; i++) {
            be->release(be, blk[i]->w);
            be->release(be, blk[i]->b);
        }
    }
    for (i = 0; i < sizeof acts / sizeof acts[0]; i++)
        be->release(be, acts[i]);
}

/* v = F(x, t, y) for 2 images: the op sequence of dxk_dit_forward() in
 * kernels/dit.c (kept in step with it by hand: this program cannot link
 * dit.c, which needs libdexec). */
static void dit_forward(dit *m, float *v, const float *x, const double *t, const int *y)
{
    dxk_backend *be = m->be;
    const int B = 2, D = WIDTH, C = C_IN, p = PATCH, H = IMG, W = IMG;
    const int h = H / p, w = W / p, T = h * w, F = C * p * p, M = D * MLP, BT = B * T;
    int i;

    be->patchify(be, m->io, x, B, C, H, W, p);
    be->linear(be, m->x, m->io, m->x_emb.w, m->x_emb.b, BT, D, F);
    be->pos_embed_add(be, m->x, B, h, w, D);
    be->timestep_embed(be, m->tf, t, B);
    be->linear(be, m->th, m->tf, m->t0.w, m->t0.b, B, D, DXK_TFREQ_DIM);
    be->silu(be, m->th, m->th, (size_t)B * D);
    be->linear(be, m->c, m->th, m->t2.w, m->t2.b, B, D, D);
    be->add_embedding(be, m->c, m->y_table, y, B, D);
    be->silu(be, m->sc, m->c, (size_t)B * D);
    for (i = 0; i < DEPTH; i++) {
        const float *mod = m->mod;

        be->linear(be, m->mod, m->sc, m->ada[i].w, m->ada[i].b, B, 6 * D, D);
        be->ln_modulate(be, m->xn, m->x, mod, mod + D, 6 * D, B, T, D);
        be->linear(be, m->qkvb, m->xn, m->qkv[i].w, m->qkv[i].b, BT, 3 * D, D);
        be->attention(be, m->att, m->qkvb, m->scratch, B, T, HEADS, D);
        be->linear(be, m->xn, m->att, m->proj[i].w, m->proj[i].b, BT, D, D);
        be->gated_residual(be, m->x, m->xn, mod + 2 * D, 6 * D, B, T, D);
        be->ln_modulate(be, m->xn, m->x, mod + 3 * D, mod + 4 * D, 6 * D, B, T, D);
        be->linear(be, m->hid, m->xn, m->fc1[i].w, m->fc1[i].b, BT, M, D);
        be->gelu_tanh(be, m->hid, (size_t)BT * M);
        be->linear(be, m->xn, m->hid, m->fc2[i].w, m->fc2[i].b, BT, D, M);
        be->gated_residual(be, m->x, m->xn, mod + 5 * D, 6 * D, B, T, D);
    }
    be->linear(be, m->mod, m->sc, m->f_ada.w, m->f_ada.b, B, 2 * D, D);
    be->ln_modulate(be, m->xn, m->x, m->mod, m->mod + D, 2 * D, B, T, D);
    be->linear(be, m->io, m->xn, m->f_lin.w, m->f_lin.b, BT, F, D);
    be->unpatchify(be, v, m->io, B, C, H, W, p);
}

/* One step of the sampler with guidance: x += dt (vu + g (vc - vu)). */
static void dit_step(dit *m)
{
    const size_t n = (size_t)C_IN * IMG * IMG;
    const double t[2] = {750.0, 750.0};
    const int y[2] = {207, CLASSES};

    m->be->copy(m->be, m->xin, m->img, n);
    m->be->copy(m->be, m->xin + n, m->img, n);
    dit_forward(m, m->v, m->xin, t, y);
    m->be->cfg_combine(m->be, m->v, m->v, m->v + n, 4.0f, n);
    m->be->euler(m->be, m->img, m->v, -0.05f, n);
}

/* GEMM and attention FLOPs of one forward pass of 2 images (2 per
 * multiply-add), as dxk_dit_flops() counts them. */
static double dit_flops(void)
{
    const double D = WIDTH, M = D * MLP, T = (IMG / PATCH) * (IMG / PATCH), B = 2;
    const double F = C_IN * PATCH * PATCH, tok = B * T;
    const double blk = 2.0 * tok * D * (3 * D + D + M + M) + 2.0 * 2.0 * B * T * T * D +
                       2.0 * B * D * 6 * D;

    return DEPTH * blk + 2.0 * tok * D * F * 2 + 2.0 * B * (DXK_TFREQ_DIM * D + D * D + 2 * D * D);
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void check_step(const host_dit *h)
{
    const size_t n = (size_t)C_IN * IMG * IMG;
    dit r, g;
    float *xr = xmalloc(n * sizeof *xr), *xg = xmalloc(n * sizeof *xg);
    char shape[64];
    double t0, tr;

    dit_load(&r, ref, h);
    dit_load(&g, gpu, h);
    gpu_sync_or_die("loading the DiT-S weights");
    t0 = now();
    dit_step(&r);
    tr = now() - t0;
    dit_step(&g);
    ref->download(ref, xr, r.img, n);
    gpu->download(gpu, xg, g.img, n);
    gpu_sync_or_die("DiT-S step");
    snprintf(shape, sizeof shape, "B=2 T=%d D=%d depth %d, CFG", (IMG / PATCH) * (IMG / PATCH),
             WIDTH, DEPTH);
    report("DiT-S step", shape, rel_err(xg, xr, n));
    printf("      (the reference took %.1f s for the step)\n", tr);
    dit_free(&r);
    dit_free(&g);
    free(xr);
    free(xg);
}

/* ---- half-precision weights (dtype float16 / bfloat16) ------------------- */

/* x rounded to nearest even with float16's 11 significant bits (a quantum
 * of 2^-24 below 2^-14) or bfloat16's 8: what the device's half types hold.
 * Like tk_round_to of tests/test-kernels-util.h (this file includes none of
 * the Check tests' helpers). */
static float round_half(float x, int dtype)
{
    int e;

    if (x == 0 || !isfinite(x))
        return x;
    frexpf(x, &e);
    if (dtype == DEXEC_DTYPE_F16) {
        if (e < -13)
            e = -13;
        return ldexpf(nearbyintf(ldexpf(x, 11 - e)), e - 11);
    }
    return ldexpf(nearbyintf(ldexpf(x, 8 - e)), e - 8);
}

/* Tolerances (relative to the output's largest value) of the half ops:
 * against the reference on the operands rounded as the GPU rounds them,
 * accumulation order only; against the unrounded float32 reference, what
 * each type's rounding allows. tests/test-cuda.c (test_half_linear,
 * test_half_conv2d) uses the same. */
#define HALF_TOL_ROUNDED 1e-3
static const double half_tol32[3] = {0, 4e-3, 3e-2}; /* by DEXEC_DTYPE_* */

static void report_tol(const char *op, const char *shape, double e, double tol)
{
    int ok = e <= tol; /* false for NaN */

    printf("%-4s  %-16s %-34s %10.2e (tolerance %.0e)\n", ok ? "ok" : "FAIL", op, shape, e, tol);
    if (!ok)
        failures++;
}

/* n floats in [lo, hi) on the host, and rounded to dtype in r */
static float *half_operand(size_t n, double lo, double hi, int dtype, float **r)
{
    float *h = xmalloc(n * sizeof *h);
    size_t i;

    *r = xmalloc(n * sizeof **r);
    for (i = 0; i < n; i++) {
        h[i] = (float)uniform(lo, hi);
        (*r)[i] = round_half(h[i], dtype);
    }
    return h;
}

/* linear_half and conv2d_half (the 1.3 ops) against the reference, for
 * both half types. */
static void check_half_ops(void)
{
    static const int lin[][3] = {{7, 13, 5}, {33, 17, 300}, {512, 1152, 384}, {512, 384, 1536}};
    static const int conv[][6] = {{2, 3, 5, 7, 4, 3}, {2, 8, 9, 11, 16, 1}, {1, 64, 40, 40, 32, 3}};
    static const int types[2] = {DEXEC_DTYPE_F16, DEXEC_DTYPE_BF16};
    char shape[96], op[32];
    size_t s;
    int ti;

    if (gpu->struct_size < DEXEC_DEVICE_SIZE_1_3 || gpu->upload_half == NULL) {
        printf("FAIL  the module has no half-precision ops (upload_half)\n");
        failures++;
        return;
    }
    for (ti = 0; ti < 2; ti++) {
        const int t = types[ti];
        const char *tn = t == DEXEC_DTYPE_F16 ? "f16" : "bf16";

        for (s = 0; s < sizeof lin / sizeof lin[0]; s++) {
            const int M = lin[s][0], N = lin[s][1], K = lin[s][2];
            float *xr, *wr, *hx = half_operand((size_t)M * K, -1, 1, t, &xr);
            float *hw = half_operand((size_t)N * K, -0.1, 0.1, t, &wr);
            float *br, *hb = half_operand(N, -1, 1, t, &br); /* the bias stays float32 */
            float *y32 = xmalloc((size_t)M * N * sizeof *y32);
            float *yr = xmalloc((size_t)M * N * sizeof *yr);
            float *g = xmalloc((size_t)M * N * sizeof *g);
            float *xg = gpu->alloc(gpu, (size_t)M * K), *bg = gpu->alloc(gpu, N);
            float *yg = gpu->alloc(gpu, (size_t)M * N);
            void *wg;

            if (xg == NULL || bg == NULL || yg == NULL)
                gpu_sync_or_die("alloc");
            gpu->upload(gpu, xg, hx, (size_t)M * K);
            gpu->upload(gpu, bg, hb, N);
            wg = gpu->upload_half(gpu, hw, (size_t)N * K, t);
            if (wg == NULL)
                gpu_sync_or_die("upload_half");
            ref->linear(ref, y32, hx, hw, hb, M, N, K);
            ref->linear(ref, yr, xr, wr, hb, M, N, K);
            gpu->linear_half(gpu, yg, xg, wg, t, bg, M, N, K);
            gpu->download(gpu, g, yg, (size_t)M * N);
            gpu_sync_or_die("linear_half");
            snprintf(op, sizeof op, "linear_half %s", tn);
            snprintf(shape, sizeof shape, "M=%d N=%d K=%d +bias, rounded", M, N, K);
            report_tol(op, shape, rel_err(g, yr, (size_t)M * N), HALF_TOL_ROUNDED);
            snprintf(shape, sizeof shape, "M=%d N=%d K=%d +bias, vs fp32", M, N, K);
            report_tol(op, shape, rel_err(g, y32, (size_t)M * N), half_tol32[t]);
            gpu->release(gpu, xg);
            gpu->release(gpu, bg);
            gpu->release(gpu, yg);
            gpu->release(gpu, (float *)wg);
            free(hx);
            free(xr);
            free(hw);
            free(wr);
            free(hb);
            free(br);
            free(y32);
            free(yr);
            free(g);
        }
        for (s = 0; s < sizeof conv / sizeof conv[0]; s++) {
            const int B = conv[s][0], Ci = conv[s][1], H = conv[s][2], W = conv[s][3];
            const int Co = conv[s][4], k = conv[s][5];
            const size_t nx = (size_t)B * Ci * H * W, nw = (size_t)Co * Ci * k * k;
            const size_t ny = (size_t)B * Co * H * W;
            float *xr, *wr, *hx = half_operand(nx, -1, 1, t, &xr);
            float *hw = half_operand(nw, -0.2, 0.2, t, &wr);
            float *br, *hb = half_operand(Co, -1, 1, t, &br); /* the bias stays float32 */
            float *y32 = xmalloc(ny * sizeof *y32), *yr = xmalloc(ny * sizeof *yr);
            float *g = xmalloc(ny * sizeof *g);
            float *xg = gpu->alloc(gpu, nx), *bg = gpu->alloc(gpu, Co), *yg = gpu->alloc(gpu, ny);
            void *wg;

            if (xg == NULL || bg == NULL || yg == NULL)
                gpu_sync_or_die("alloc");
            gpu->upload(gpu, xg, hx, nx);
            gpu->upload(gpu, bg, hb, Co);
            wg = gpu->upload_half(gpu, hw, nw, t);
            if (wg == NULL)
                gpu_sync_or_die("upload_half");
            ref->conv2d(ref, y32, hx, hw, hb, B, Ci, H, W, Co, k);
            ref->conv2d(ref, yr, xr, wr, hb, B, Ci, H, W, Co, k);
            gpu->conv2d_half(gpu, yg, xg, wg, t, bg, B, Ci, H, W, Co, k);
            gpu->download(gpu, g, yg, ny);
            gpu_sync_or_die("conv2d_half");
            snprintf(op, sizeof op, "conv2d_half %s", tn);
            snprintf(shape, sizeof shape, "B=%d %d->%d %dx%d k=%d, rounded", B, Ci, Co, H, W, k);
            report_tol(op, shape, rel_err(g, yr, ny), HALF_TOL_ROUNDED);
            snprintf(shape, sizeof shape, "B=%d %d->%d %dx%d k=%d, vs fp32", B, Ci, Co, H, W, k);
            report_tol(op, shape, rel_err(g, y32, ny), half_tol32[t]);
            gpu->release(gpu, xg);
            gpu->release(gpu, bg);
            gpu->release(gpu, yg);
            gpu->release(gpu, (float *)wg);
            free(hx);
            free(xr);
            free(hw);
            free(wr);
            free(hb);
            free(br);
            free(y32);
            free(yr);
            free(g);
        }
    }
}

/* ---- timings ------------------------------------------------------------ */

/* Seconds per call of what fn issues, after warm-up calls. */
static double time_gpu(void (*fn)(void *), void *arg, int iters)
{
    double t0;
    int i;

    for (i = 0; i < 3; i++)
        fn(arg);
    gpu_sync_or_die("warm-up");
    t0 = now();
    for (i = 0; i < iters; i++)
        fn(arg);
    gpu_sync_or_die("timing");
    return (now() - t0) / iters;
}

typedef struct gemm_args {
    float *y, *x, *w, *b;
    int M, N, K;
} gemm_args;

static void run_gemm(void *p)
{
    gemm_args *a = p;

    gpu->linear(gpu, a->y, a->x, a->w, a->b, a->M, a->N, a->K);
}

static double time_gemm(int M, int N, int K, int bias, int iters)
{
    gemm_args a;
    double s;

    a.M = M;
    a.N = N;
    a.K = K;
    a.x = gpu->alloc(gpu, (size_t)M * K);
    a.w = gpu->alloc(gpu, (size_t)N * K);
    a.y = gpu->alloc(gpu, (size_t)M * N);
    a.b = bias ? gpu->alloc(gpu, (size_t)N) : NULL;
    gpu_sync_or_die("allocating GEMM operands");
    /* left as cudaMalloc gave them: FP32 FMA runs at one speed whatever
     * the values, and an upload of 4096^2 floats would only slow the run */
    s = time_gpu(run_gemm, &a, iters);
    gpu->release(gpu, a.x);
    gpu->release(gpu, a.w);
    gpu->release(gpu, a.y);
    gpu->release(gpu, a.b);
    return s;
}

typedef struct op_args {
    dit *m;
    int which;
} op_args;

/* The non-GEMM ops of a DiT-S block at their shapes in the step. */
static void run_op(void *p)
{
    op_args *a = p;
    dit *m = a->m;
    const int B = 2, D = WIDTH, T = (IMG / PATCH) * (IMG / PATCH);

    switch (a->which) {
    case 0:
        gpu->attention(gpu, m->att, m->qkvb, m->scratch, B, T, HEADS, D);
        break;
    case 1:
        gpu->ln_modulate(gpu, m->xn, m->x, m->mod, m->mod + D, 6 * D, B, T, D);
        break;
    case 2:
        gpu->gelu_tanh(gpu, m->hid, (size_t)B * T * MLP * D);
        break;
    default:
        gpu->gated_residual(gpu, m->x, m->xn, m->mod + 2 * D, 6 * D, B, T, D);
        break;
    }
}

static void run_step(void *p)
{
    dit_step(p);
}

typedef struct vae_args {
    float *x, *y, *w, *b, *gam, *bet;
    int which;
} vae_args;

/* The autoencoder's widest layers at 256 px: a 3x3 convolution of 512
 * channels at 32x32 (the mid block) and of 128 channels at 256x256 (the
 * last up block), and GroupNorm+SiLU over 128 x 256^2. */
static void run_vae_op(void *p)
{
    vae_args *a = p;

    if (a->which == 0)
        gpu->conv2d(gpu, a->y, a->x, a->w, a->b, 1, 512, 32, 32, 512, 3);
    else if (a->which == 1)
        gpu->conv2d(gpu, a->y, a->x, a->w, a->b, 1, 128, 256, 256, 128, 3);
    else
        gpu->group_norm(gpu, a->y, a->x, a->gam, a->bet, 1, 128, 256 * 256, 32, 1e-6f, 1);
}

static void vae_timings(int iters, double peak_sgemm)
{
    static const char *names[] = {"conv2d 512->512 3x3 at 32x32", "conv2d 128->128 3x3 at 256^2",
                                  "group_norm+silu 128 x 256^2"};
    const double flops[] = {2.0 * 512 * 512 * 9 * 32 * 32, 2.0 * 128 * 128 * 9 * 256 * 256, 0};
    const size_t n = (size_t)128 * 256 * 256;
    vae_args a;
    double s;
    int i;

    a.x = gpu->alloc(gpu, n);
    a.y = gpu->alloc(gpu, n);
    a.w = gpu->alloc(gpu, (size_t)512 * 512 * 9);
    a.b = gpu->alloc(gpu, 512);
    a.gam = gpu->alloc(gpu, 128);
    a.bet = gpu->alloc(gpu, 128);
    if (a.x == NULL || a.y == NULL || a.w == NULL || a.b == NULL || a.gam == NULL ||
        a.bet == NULL)
        gpu_sync_or_die("allocating the autoencoder's buffers");
    /* contents do not matter for the time, but NaN might: zeros */
    {
        float *z = xmalloc((size_t)512 * 512 * 9 * sizeof *z);

        memset(z, 0, (size_t)512 * 512 * 9 * sizeof *z);
        gpu->upload(gpu, a.w, z, (size_t)512 * 512 * 9);
        gpu->upload(gpu, a.b, z, 512);
        gpu->upload(gpu, a.gam, z, 128);
        gpu->upload(gpu, a.bet, z, 128);
        free(z);
    }
    printf("  %-40s %10s %12s\n", "autoencoder ops (256 px)", "us/call", "GFLOP/s");
    for (i = 0; i < 3; i++) {
        a.which = i;
        s = time_gpu(run_vae_op, &a, iters);
        if (flops[i] > 0)
            printf("  %-40s %10.1f %12.0f (%.0f%% of SGEMM 4096^3)\n", names[i], s * 1e6,
                   flops[i] / s * 1e-9, 100.0 * flops[i] / s * 1e-9 / peak_sgemm);
        else
            printf("  %-40s %10.1f %12s\n", names[i], s * 1e6, "-");
    }
    gpu->release(gpu, a.x);
    gpu->release(gpu, a.y);
    gpu->release(gpu, a.w);
    gpu->release(gpu, a.b);
    gpu->release(gpu, a.gam);
    gpu->release(gpu, a.bet);
}

static void timings(const host_dit *h, int iters)
{
    static const char *names[] = {"attention (B=2 T=256 H=6 D=384)", "ln_modulate (512 x 384)",
                                  "gelu_tanh (512 x 1536)", "gated_residual (512 x 384)"};
    /* bytes each op must move at least: its inputs and outputs once */
    const double bytes[] = {0, 2.0 * 512 * 384 * 4, 2.0 * 512 * 1536 * 4, 3.0 * 512 * 384 * 4};
    static const int gemm[][3] = {{512, 1152, 384}, {512, 384, 384}, {512, 1536, 384},
                                  {512, 384, 1536}, {4096, 4096, 4096}};
    const double flops = dit_flops();
    double s, step, peak_sgemm = 0;
    dit g;
    op_args oa;
    size_t used, peak;
    int i;

    printf("\nTimings on %s (FP32 throughout; %d iterations after 3 warm-up)\n",
           gpu->device_name, iters);
    printf("  %-40s %10s %12s\n", "cuBLAS SGEMM (M x N x K)", "us/call", "GFLOP/s");
    for (i = 0; i < (int)(sizeof gemm / sizeof gemm[0]); i++) {
        const int M = gemm[i][0], N = gemm[i][1], K = gemm[i][2];
        char what[64];

        s = time_gemm(M, N, K, i < 4, i < 4 ? iters * 10 : iters);
        snprintf(what, sizeof what, "%d x %d x %d%s", M, N, K, i < 4 ? " +bias" : "");
        printf("  %-40s %10.1f %12.0f\n", what, s * 1e6, 2.0 * M * N * K / s * 1e-9);
        if (i == 4)
            peak_sgemm = 2.0 * M * N * K / s * 1e-9;
    }

    dit_load(&g, gpu, h);
    gpu_sync_or_die("loading the DiT-S weights");
    /* the step first: it leaves real activations for the single ops */
    step = time_gpu(run_step, &g, iters);
    oa.m = &g;
    printf("  %-40s %10s %12s\n", "other ops at DiT-S shapes", "us/call", "GB/s");
    for (i = 0; i < 4; i++) {
        oa.which = i;
        s = time_gpu(run_op, &oa, iters * 10);
        if (bytes[i] > 0)
            printf("  %-40s %10.1f %12.0f\n", names[i], s * 1e6, bytes[i] / s * 1e-9);
        else
            printf("  %-40s %10.1f %12s\n", names[i], s * 1e6, "-");
    }
    vae_timings(iters, peak_sgemm);

    gpu->memory(gpu, &used, &peak);
    printf("\nDiT-S denoising step (B=2 for CFG, T=%d, D=%d, depth %d, %d heads):\n",
           (IMG / PATCH) * (IMG / PATCH), WIDTH, DEPTH, HEADS);
    printf("  %.3f ms/step, %.1f GFLOP/step, %.0f GFLOP/s = %.0f%% of SGEMM 4096^3 in this run\n",
           step * 1e3, flops * 1e-9, flops / step * 1e-9,
           100.0 * flops / step * 1e-9 / peak_sgemm);
    printf("  device memory held by the backend: %.1f MiB (peak %.1f MiB)\n", used / 1048576.0,
           peak / 1048576.0);
    dit_free(&g);
}

int main(int argc, char **argv)
{
    char reason[256], err[512];
    int iters = 20, gpu_index = 0, i;
    const dexec_device_ops *cuda;
    host_dit h;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc)
            iters = atoi(argv[++i]);
        else if (strcmp(argv[i], "--gpu") == 0 && i + 1 < argc)
            gpu_index = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--iters N] [--gpu N]\n", argv[0]);
            return 2;
        }
    }
    if (iters < 1) {
        fprintf(stderr, "gpu_check: --iters must be at least 1\n");
        return 2;
    }
    cuda = (const dexec_device_ops *)dexec_plugin.ops;
    if (cuda->probe(reason, sizeof reason) == 0) {
        printf("SKIP: no CUDA device: %s\n", reason);
        return 77;
    }
    if (cuda->open(gpu_index, &gpu, err, sizeof err) != DEXEC_OK) {
        printf("FAIL  %s\n", err);
        return 1;
    }
    ref = ref_backend();
    printf("CUDA backend on %s; reference: %s; tolerance %.0e relative\n\n", gpu->device_name,
           ref->device_name, TOL);
    printf("%-4s  %-16s %-34s %10s\n", "", "op", "shape", "rel. err");
    check_ops();
    check_half_ops();
    host_dit_make(&h);
    check_step(&h);
    timings(&h, iters);
    host_dit_free(&h);
    gpu_sync_or_die("the end");
    gpu->destroy(gpu);
    ref->destroy(ref);
    if (failures > 0) {
        printf("\n%d check(s) FAILED\n", failures);
        return 1;
    }
    printf("\nall checks passed\n");
    return 0;
}
