/*
 * ops_cpu.c - the CPU backend of ops.h. Every linear layer and both
 * attention products are OpenBLAS SGEMM calls (OpenBLAS runs its own
 * threads); the element-wise ops are plain loops: on a DiT they are a few
 * percent of the FLOPs, and memory-bound, so threading them buys little on
 * the few cores a worker gets.
 */
#include <config.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "ops.h"

typedef struct dx_cpu {
    dexec_status fail; /* sticky first failure */
    char msg[256];
    size_t used, peak;
    /* position embedding of the last grid asked for: recomputing T*D
     * sines in double at every step would cost as much as a small GEMM */
    float *pos;
    int pos_h, pos_w, pos_d;
} dx_cpu;

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
#define DX_VECTORIZE __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic", "no-trapping-math")))
#else
#define DX_VECTORIZE
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

    if (n > (SIZE_MAX - sizeof *h) / sizeof(float) ||
        (h = malloc(sizeof *h + (n ? n : 1) * sizeof(float))) == NULL) {
        if (c->fail == DEXEC_OK) {
            c->fail = DEXEC_ENOMEM;
            snprintf(c->msg, sizeof c->msg, "cpu: out of memory allocating %zu floats", n);
        }
        return NULL;
    }
    h->n = n;
    c->used += n * sizeof(float);
    if (c->used > c->peak)
        c->peak = c->used;
    return (float *)(h + 1);
}

static void cpu_release(dxk_backend *be, float *p)
{
    dx_cpu_hdr *h;

    if (p == NULL)
        return;
    h = (dx_cpu_hdr *)(void *)p - 1;
    dx_priv(be)->used -= h->n * sizeof(float);
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
    *used = dx_priv(be)->used;
    *peak = dx_priv(be)->peak;
}

static void cpu_linear(dxk_backend *be, float *y, const float *x, const float *w, const float *b,
                       int M, int N, int K)
{
    int i;

    (void)be;
    if (M <= 0 || N <= 0)
        return;
    if (b != NULL) {
        for (i = 0; i < M; i++)
            memcpy(y + (size_t)i * N, b, (size_t)N * sizeof *y);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K,
                b != NULL ? 1.0f : 0.0f, y, N);
}

DX_VECTORIZE static void cpu_ln_modulate(dxk_backend *be, float *y, const float *x, const float *shift,
                            const float *scale, int mod_stride, int B, int T, int D)
{
    int b, t, d;

    (void)be;
    for (b = 0; b < B; b++) {
        const float *sh = shift + (size_t)b * mod_stride;
        const float *sc = scale + (size_t)b * mod_stride;

        for (t = 0; t < T; t++) {
            const float *xr = x + ((size_t)b * T + t) * D;
            float *yr = y + ((size_t)b * T + t) * D;
            double mean = 0.0, var = 0.0;
            float m, rs;

            /* double accumulation: the golden model is checked to 1e-5 */
            for (d = 0; d < D; d++)
                mean += xr[d];
            mean /= D;
            for (d = 0; d < D; d++) {
                double e = xr[d] - mean;

                var += e * e;
            }
            var /= D;
            m = (float)mean;
            rs = (float)(1.0 / sqrt(var + 1e-6));
            for (d = 0; d < D; d++)
                yr[d] = (xr[d] - m) * rs * (1.0f + sc[d]) + sh[d];
        }
    }
}

static size_t cpu_attention_scratch(dxk_backend *be, int B, int T, int H)
{
    (void)be;
    (void)B;
    (void)H;
    return (size_t)T * T;
}

DX_VECTORIZE static void cpu_softmax_rows(float *s, int rows, int cols)
{
    int i, j;

    for (i = 0; i < rows; i++) {
        float *r = s + (size_t)i * cols;
        float mx = r[0];
        double sum = 0.0;
        float inv;

        for (j = 1; j < cols; j++)
            if (r[j] > mx)
                mx = r[j];
        for (j = 0; j < cols; j++)
            r[j] = dx_expf(r[j] - mx);
        for (j = 0; j < cols; j++)
            sum += r[j];
        inv = (float)(1.0 / sum);
        for (j = 0; j < cols; j++)
            r[j] *= inv;
    }
}

static void cpu_attention(dxk_backend *be, float *out, const float *qkv, float *scratch, int B,
                          int T, int H, int D)
{
    int hd = D / H, ld = 3 * D, b, h;
    float scale = (float)(1.0 / sqrt((double)hd));

    (void)be;
    /* q, k and v are read in place with a leading dimension of 3D: no
     * gather into per-head copies */
    for (b = 0; b < B; b++) {
        const float *base = qkv + (size_t)b * T * ld;

        for (h = 0; h < H; h++) {
            const float *q = base + (size_t)h * hd;
            const float *k = base + D + (size_t)h * hd;
            const float *v = base + 2 * (size_t)D + (size_t)h * hd;
            float *o = out + (size_t)b * T * D + (size_t)h * hd;

            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, ld, k, ld,
                        0.0f, scratch, T);
            cpu_softmax_rows(scratch, T, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, scratch, T, v,
                        ld, 0.0f, o, D);
        }
    }
}

DX_VECTORIZE static void cpu_gelu_tanh(dxk_backend *be, float *x, size_t n)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    size_t i;

    (void)be;
    /* 0.5 (1 + tanh(u)) = 1 / (1 + e^(-2u)): one exponential, no tanhf */
    for (i = 0; i < n; i++) {
        float v = x[i];

        x[i] = v / (1.0f + dx_expf(-2.0f * k * (v + 0.044715f * v * v * v)));
    }
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

DX_VECTORIZE static void cpu_gated_residual(dxk_backend *be, float *x, const float *y, const float *gate,
                               int gate_stride, int B, int T, int D)
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

DX_VECTORIZE static void cpu_cfg_combine(dxk_backend *be, float *out, const float *vc, const float *vu,
                            float g, size_t n)
{
    size_t i;

    (void)be;
    for (i = 0; i < n; i++)
        out[i] = vu[i] + g * (vc[i] - vu[i]);
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

    free(c->pos);
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
    *out = be;
    return DEXEC_OK;
}
