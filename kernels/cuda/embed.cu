/*
 * embed.cu - what turns the inputs of a DiT into tokens and back on the
 * CUDA backend: the sinusoidal timestep features, the class embedding,
 * patchify/unpatchify, and the 2-D sin-cos position embedding.
 *
 * The sinusoids are computed in double, as on the CPU: arguments reach
 * 1000 (timesteps) or the grid size, where float would lose the last
 * digits the golden tensors check.
 */
#include <config.h>

#include <math.h>

#include "ops_cuda.h"

/* Host scalars passed by value in the kernel's arguments (a few hundred
 * bytes, far below the 4 KiB limit). */
typedef struct dxc_times {
    double t[DXC_HOST_ARGS];
} dxc_times;

typedef struct dxc_classes {
    int y[DXC_HOST_ARGS];
} dxc_classes;

/* Block b, thread k < 128: out[b] = concat(cos(t f), sin(t f)). */
static __global__ void timestep_embed_kernel(float *out, dxc_times t)
{
    const int half = DXK_TFREQ_DIM / 2, k = threadIdx.x, b = blockIdx.x;
    /* the CPU backend's expression, so both round the same doubles */
    double a = t.t[b] * exp(-log(10000.0) * k / half);

    out[(size_t)b * DXK_TFREQ_DIM + k] = (float)cos(a);
    out[(size_t)b * DXK_TFREQ_DIM + half + k] = (float)sin(a);
}

void dxc_timestep_embed(dxk_backend *be, float *out, const double *t, int B)
{
    dxc *c = dxc_of(be);
    int b0, i, nb;

    if (B <= 0 || !dxc_enter(be))
        return;
    for (b0 = 0; b0 < B; b0 += nb) {
        dxc_times args;

        nb = B - b0 < DXC_HOST_ARGS ? B - b0 : DXC_HOST_ARGS;
        for (i = 0; i < nb; i++)
            args.t[i] = t[b0 + i];
        timestep_embed_kernel<<<nb, DXK_TFREQ_DIM / 2, 0, c->stream>>>(
            out + (size_t)b0 * DXK_TFREQ_DIM, args);
        if (!dxc_launched(c, "timestep_embed"))
            return;
    }
}

/* Block b: c[b, :] += table[y[b], :] */
static __global__ void add_embedding_kernel(float *c, const float *table, dxc_classes y, int D)
{
    const int b = blockIdx.x;
    const float *row = table + (size_t)y.y[b] * D;
    float *cr = c + (size_t)b * D;

    for (int d = threadIdx.x; d < D; d += blockDim.x)
        cr[d] += row[d];
}

void dxc_add_embedding(dxk_backend *be, float *c, const float *table, const int *y, int B, int D)
{
    dxc *dc = dxc_of(be);
    int b0, i, nb;

    if (B <= 0 || D <= 0 || !dxc_enter(be))
        return;
    for (b0 = 0; b0 < B; b0 += nb) {
        dxc_classes args;

        nb = B - b0 < DXC_HOST_ARGS ? B - b0 : DXC_HOST_ARGS;
        for (i = 0; i < nb; i++)
            args.y[i] = y[b0 + i];
        add_embedding_kernel<<<nb, DXC_THREADS, 0, dc->stream>>>(c + (size_t)b0 * D, table, args,
                                                                D);
        if (!dxc_launched(dc, "add_embedding"))
            return;
    }
}

/* One thread per token feature: tok[b, gy*w+gx, (c,py,px)] */
static __global__ void patchify_kernel(float *__restrict__ tok, const float *__restrict__ img,
                                       int C, int H, int W, int p, int w, int T, size_t n)
{
    const int F = C * p * p;

    DXC_FOR_EACH(i, n)
    {
        const int f = (int)(i % F), tn = (int)(i / F % T);
        const size_t b = i / ((size_t)F * T);
        const int gy = tn / w, gx = tn % w;
        const int ch = f / (p * p), py = f / p % p, px = f % p;

        tok[i] = img[((b * C + ch) * H + (size_t)gy * p + py) * W + (size_t)gx * p + px];
    }
}

void dxc_patchify(dxk_backend *be, float *tok, const float *img, int B, int C, int H, int W,
                  int p)
{
    dxc *c = dxc_of(be);
    const int h = H / p, w = W / p;
    const size_t n = (size_t)B * h * w * C * p * p;

    if (B <= 0 || n == 0 || !dxc_enter(be))
        return;
    patchify_kernel<<<dxc_blocks(n), DXC_THREADS, 0, c->stream>>>(tok, img, C, H, W, p, w, h * w,
                                                                   n);
    dxc_launched(c, "patchify");
}

/* One thread per pixel covered by the patch grid (coalesced writes):
 * pixel (c, gy*p+py, gx*p+px) takes feature (py*p+px)*C + c of token
 * gy*w+gx. */
static __global__ void unpatchify_kernel(float *__restrict__ img, const float *__restrict__ tok,
                                         int C, int H, int W, int p, int h, int w, size_t n)
{
    const int Hc = h * p, Wc = w * p, F = C * p * p;

    DXC_FOR_EACH(i, n)
    {
        const int xx = (int)(i % Wc), yy = (int)(i / Wc % Hc), ch = (int)(i / Wc / Hc % C);
        const size_t b = i / ((size_t)Wc * Hc * C);
        const size_t tn = b * h * w + (size_t)(yy / p) * w + xx / p;

        img[((b * C + ch) * H + yy) * W + xx] = tok[tn * F + (yy % p * p + xx % p) * C + ch];
    }
}

void dxc_unpatchify(dxk_backend *be, float *img, const float *tok, int B, int C, int H, int W,
                    int p)
{
    dxc *c = dxc_of(be);
    const int h = H / p, w = W / p;
    const size_t n = (size_t)B * C * h * p * w * p;

    if (B <= 0 || n == 0 || !dxc_enter(be))
        return;
    unpatchify_kernel<<<dxc_blocks(n), DXC_THREADS, 0, c->stream>>>(img, tok, C, H, W, p, h, w,
                                                                     n);
    dxc_launched(c, "unpatchify");
}

/* pos[gy*w+gx, :] = concat(E(D/2, gy), E(D/2, gx)) with
 * E(d, q) = concat(sin(q w_k), cos(q w_k)), w_k = 1/10000^(k/(d/2)),
 * written with the CPU backend's expression. */
static __global__ void pos_table_kernel(float *pos, int w, int D, size_t n)
{
    const int half = D / 2, quarter = half / 2;

    DXC_FOR_EACH(i, n)
    {
        const int tn = (int)(i / D), j = (int)(i % D);
        const double q = j < half ? tn / w : tn % w;
        const int k = j < half ? j : j - half;
        double v = 0.0; /* odd D/2 leaves a last column no formula covers */

        if (k < quarter)
            v = sin(q / pow(10000.0, (double)k / quarter));
        else if (k < 2 * quarter)
            v = cos(q / pow(10000.0, (double)(k - quarter) / quarter));
        pos[i] = (float)v;
    }
}

static __global__ void add_rows_kernel(float *__restrict__ tok, const float *__restrict__ pos,
                                       size_t per_image, size_t n)
{
    DXC_FOR_EACH(i, n)
    {
        tok[i] += pos[i % per_image];
    }
}

void dxc_pos_embed_add(dxk_backend *be, float *tok, int B, int h, int w, int D)
{
    dxc *c = dxc_of(be);
    const size_t per_image = (size_t)h * w * D, n = (size_t)B * per_image;

    if (B <= 0 || n == 0 || !dxc_enter(be))
        return;
    if (c->pos == NULL || c->pos_h != h || c->pos_w != w || c->pos_d != D) {
        dxc_free(c, c->pos);
        c->pos = (float *)dxc_malloc(c, per_image * sizeof(float), "position embedding");
        if (c->pos == NULL)
            return;
        pos_table_kernel<<<dxc_blocks(per_image), DXC_THREADS, 0, c->stream>>>(c->pos, w, D,
                                                                                per_image);
        if (!dxc_launched(c, "pos_table")) {
            dxc_free(c, c->pos);
            c->pos = NULL;
            return;
        }
        c->pos_h = h;
        c->pos_w = w;
        c->pos_d = D;
    }
    add_rows_kernel<<<dxc_blocks(n), DXC_THREADS, 0, c->stream>>>(tok, c->pos, per_image, n);
    dxc_launched(c, "pos_embed_add");
}
