/*
 * test-cuda.c - the "cuda" suite: every op of the CUDA backend against the
 * CPU backend on the same random inputs, the golden DiT (one forward pass
 * and a whole 8-step sample) on both, and the errors a user of the backend
 * sees. Tolerance: 1e-4 relative to the tensor's scale; NaN never passes.
 * The latent models' ops (conv2d, group_norm, upsample_nearest2x,
 * ln_modulate_eps) are compared the same way, and the published pipeline
 * of tests/golden/published runs on CUDA against the PyTorch twin's
 * golden tensors (forward, VAE decode) and the CPU backend (guided
 * forward). Half-precision weights (the 1.3 ops linear_half, conv2d_half,
 * upload_half) are compared with float32 within the tolerances stated at
 * test_half_linear, and the golden pipeline with float16 and bfloat16
 * weights against float32 (test_half_pipeline).
 * The CUDA backend is the device plugin dexec_cuda.so, loaded the way the
 * worker loads it (kernels/backend.c, through $DEXEC_PLUGIN_PATH).
 *
 * Without a usable device (no module, as in a build without CUDA; no
 * driver; no GPU) the program prints why and exits 77, which automake
 * reports as SKIP.
 */
#include <config.h>

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dit.h"
#include "kernels.h"
#include "latent.h"
#include "ops.h"
#include "pipeline.h"
#include "safetensors.h"
#include "sampler.h"
#include "test-kernels-util.h"
#include "vae.h"

#define TOL 1e-4

/* ---- a CPU and a CUDA backend, and buffers mirrored on both ------------ */

typedef struct pair {
    dxk_backend *cpu, *gpu;
} pair;

typedef struct twin {
    float *c, *g; /* the same n floats on the CPU and on the GPU */
    size_t n;
} twin;

static void pair_open(pair *p)
{
    char err[512];

    ck_assert_msg(dxk_backend_cpu(&p->cpu, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_msg(dxk_backend_cuda(0, &p->gpu, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_str_eq(p->gpu->name, "cuda");
    ck_assert_int_eq(p->gpu->host_memory, 0);
}

/* Both backends must have run everything without a failure. */
static void pair_close(pair *p)
{
    char err[512];

    ck_assert_msg(p->gpu->sync(p->gpu, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_msg(p->cpu->sync(p->cpu, err, sizeof err) == DEXEC_OK, "%s", err);
    dxk_backend_free(p->gpu);
    dxk_backend_free(p->cpu);
}

static float *hbuf(size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof *h);

    ck_assert_ptr_nonnull(h);
    return h;
}

/* n floats uniform in [lo, hi) from rs, on both backends */
static twin twin_new(pair *p, uint64_t *rs, size_t n, float lo, float hi)
{
    twin t;
    float *h = hbuf(n);

    tk_fill(rs, h, n, lo, hi);
    t.n = n;
    t.c = p->cpu->alloc(p->cpu, n);
    t.g = p->gpu->alloc(p->gpu, n);
    ck_assert_ptr_nonnull(t.c);
    ck_assert_ptr_nonnull(t.g);
    p->cpu->upload(p->cpu, t.c, h, n);
    p->gpu->upload(p->gpu, t.g, h, n);
    free(h);
    return t;
}

static void twin_free(pair *p, twin *t)
{
    p->cpu->release(p->cpu, t->c);
    p->gpu->release(p->gpu, t->g);
}

/* The GPU's copy against the CPU's, after both have finished. */
static double twin_err(pair *p, const twin *t)
{
    float *c = hbuf(t->n), *g = hbuf(t->n);
    char err[512];
    double e;

    ck_assert_msg(p->gpu->sync(p->gpu, err, sizeof err) == DEXEC_OK, "%s", err);
    p->cpu->download(p->cpu, c, t->c, t->n);
    p->gpu->download(p->gpu, g, t->g, t->n);
    ck_assert_msg(p->gpu->sync(p->gpu, err, sizeof err) == DEXEC_OK, "%s", err);
    e = tk_rel_err_f(g, c, t->n);
    free(c);
    free(g);
    return e;
}

#define ck_twin(p, t, what)                                                                   \
    do {                                                                                      \
        double e_ = twin_err((p), (t));                                                       \
        ck_assert_msg(e_ <= TOL, "%s: cuda vs cpu relative error %g > %g", (what), e_, TOL); \
    } while (0)

/* ---- ops ---------------------------------------------------------------- */

START_TEST(test_linear)
{
    /* odd sizes catch a transposed or mis-strided GEMM; the last ones are
     * a DiT-S qkv and fc2 */
    static const int sizes[][3] = {{1, 1, 1},     {7, 13, 5},     {33, 17, 300},
                                   {2, 384, 256}, {512, 1152, 384}, {512, 384, 1536}};
    pair p;
    uint64_t rs = 11;
    size_t s;
    int withb;

    pair_open(&p);
    for (s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const int M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];

        for (withb = 0; withb < 2; withb++) {
            twin x = twin_new(&p, &rs, (size_t)M * K, -1, 1);
            twin w = twin_new(&p, &rs, (size_t)N * K, -0.1f, 0.1f);
            twin b = twin_new(&p, &rs, N, -1, 1);
            twin y = twin_new(&p, &rs, (size_t)M * N, -1, 1);
            char what[64];

            p.cpu->linear(p.cpu, y.c, x.c, w.c, withb ? b.c : NULL, M, N, K);
            p.gpu->linear(p.gpu, y.g, x.g, w.g, withb ? b.g : NULL, M, N, K);
            snprintf(what, sizeof what, "linear %dx%dx%d bias %d", M, N, K, withb);
            ck_twin(&p, &y, what);
            twin_free(&p, &x);
            twin_free(&p, &w);
            twin_free(&p, &b);
            twin_free(&p, &y);
        }
    }
    pair_close(&p);
}
END_TEST

START_TEST(test_ln_modulate)
{
    static const int shapes[][3] = {{1, 1, 4}, {2, 5, 64}, {2, 256, 384}, {1, 3, 1152}};
    pair p;
    uint64_t rs = 12;
    size_t s;

    pair_open(&p);
    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int B = shapes[s][0], T = shapes[s][1], D = shapes[s][2];
        const size_t n = (size_t)B * T * D;
        /* a large mean against the spread: a one-pass variance fails this */
        twin x = twin_new(&p, &rs, n, 90, 110);
        twin mod = twin_new(&p, &rs, (size_t)B * 6 * D, -1, 1);
        twin y = twin_new(&p, &rs, n, 0, 1);
        char what[64];

        p.cpu->ln_modulate(p.cpu, y.c, x.c, mod.c, mod.c + D, 6 * D, B, T, D);
        p.gpu->ln_modulate(p.gpu, y.g, x.g, mod.g, mod.g + D, 6 * D, B, T, D);
        snprintf(what, sizeof what, "ln_modulate B=%d T=%d D=%d", B, T, D);
        ck_twin(&p, &y, what);
        /* in place, as the final layer's caller may do */
        p.cpu->ln_modulate(p.cpu, x.c, x.c, mod.c + 3 * D, mod.c + 4 * D, 6 * D, B, T, D);
        p.gpu->ln_modulate(p.gpu, x.g, x.g, mod.g + 3 * D, mod.g + 4 * D, 6 * D, B, T, D);
        ck_twin(&p, &x, "ln_modulate in place");
        twin_free(&p, &x);
        twin_free(&p, &mod);
        twin_free(&p, &y);
    }
    pair_close(&p);
}
END_TEST

START_TEST(test_attention)
{
    /* {B, T, H, head_dim}: the last is a DiT-S block; T = 2500 with 6
     * heads needs more scores than one pass holds, so the query rows go
     * in two bands */
    static const int shapes[][4] = {{1, 1, 1, 8},   {2, 7, 3, 16},  {1, 64, 4, 16},
                                    {2, 16, 4, 16}, {2, 256, 6, 64}, {1, 2500, 6, 16}};
    pair p;
    uint64_t rs = 13;
    size_t s;

    pair_open(&p);
    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int B = shapes[s][0], T = shapes[s][1], H = shapes[s][2], D = H * shapes[s][3];
        twin qkv = twin_new(&p, &rs, (size_t)B * T * 3 * D, -2, 2);
        twin out = twin_new(&p, &rs, (size_t)B * T * D, 0, 1);
        size_t cn = p.cpu->attention_scratch(p.cpu, B, T, H);
        size_t gn = p.gpu->attention_scratch(p.gpu, B, T, H);
        float *cs = p.cpu->alloc(p.cpu, cn), *gs = p.gpu->alloc(p.gpu, gn);
        char what[80];

        ck_assert_ptr_nonnull(cs);
        ck_assert_ptr_nonnull(gs);
        p.cpu->attention(p.cpu, out.c, qkv.c, cs, B, T, H, D);
        p.gpu->attention(p.gpu, out.g, qkv.g, gs, B, T, H, D);
        snprintf(what, sizeof what, "attention B=%d T=%d H=%d D=%d", B, T, H, D);
        ck_twin(&p, &out, what);
        p.cpu->release(p.cpu, cs);
        p.gpu->release(p.gpu, gs);
        twin_free(&p, &qkv);
        twin_free(&p, &out);
    }
    pair_close(&p);
}
END_TEST

START_TEST(test_elementwise)
{
    const size_t n = 100003; /* not a multiple of any block size */
    const int B = 2, T = 37, D = 96;
    pair p;
    uint64_t rs = 14;
    twin x, y, v, g;

    pair_open(&p);
    x = twin_new(&p, &rs, n, -6, 6);
    p.cpu->gelu_tanh(p.cpu, x.c, n);
    p.gpu->gelu_tanh(p.gpu, x.g, n);
    ck_twin(&p, &x, "gelu_tanh");
    twin_free(&p, &x);

    x = twin_new(&p, &rs, n, -30, 30);
    y = twin_new(&p, &rs, n, 0, 1);
    p.cpu->silu(p.cpu, y.c, x.c, n);
    p.gpu->silu(p.gpu, y.g, x.g, n);
    ck_twin(&p, &y, "silu");
    p.cpu->silu(p.cpu, x.c, x.c, n);
    p.gpu->silu(p.gpu, x.g, x.g, n);
    ck_twin(&p, &x, "silu in place");
    twin_free(&p, &x);
    twin_free(&p, &y);

    x = twin_new(&p, &rs, (size_t)B * T * D, -1, 1);
    y = twin_new(&p, &rs, (size_t)B * T * D, -1, 1);
    g = twin_new(&p, &rs, (size_t)B * 6 * D, -1, 1);
    p.cpu->gated_residual(p.cpu, x.c, y.c, g.c + 2 * D, 6 * D, B, T, D);
    p.gpu->gated_residual(p.gpu, x.g, y.g, g.g + 2 * D, 6 * D, B, T, D);
    ck_twin(&p, &x, "gated_residual");
    twin_free(&p, &x);
    twin_free(&p, &y);
    twin_free(&p, &g);

    x = twin_new(&p, &rs, n, -1, 1);
    v = twin_new(&p, &rs, 2 * n, -1, 1);
    p.cpu->euler(p.cpu, x.c, v.c, -0.125f, n);
    p.gpu->euler(p.gpu, x.g, v.g, -0.125f, n);
    ck_twin(&p, &x, "euler");
    /* out aliasing vc, as the sampler calls it */
    p.cpu->cfg_combine(p.cpu, v.c, v.c, v.c + n, 4.0f, n);
    p.gpu->cfg_combine(p.gpu, v.g, v.g, v.g + n, 4.0f, n);
    ck_twin(&p, &v, "cfg_combine");
    p.cpu->cfg_combine(p.cpu, x.c, v.c, v.c + n, 1.5f, n);
    p.gpu->cfg_combine(p.gpu, x.g, v.g, v.g + n, 1.5f, n);
    ck_twin(&p, &x, "cfg_combine to a third buffer");
    twin_free(&p, &x);
    twin_free(&p, &v);
    pair_close(&p);
}
END_TEST

START_TEST(test_embeddings)
{
    /* 70 images: more than one kernel's worth of host arguments */
    enum { NB = 70, D = 96, K = 11 };
    double t[NB];
    int y[NB], i;
    pair p;
    uint64_t rs = 15;
    twin tf, c, table;

    pair_open(&p);
    for (i = 0; i < NB; i++)
        t[i] = i == 0 ? 0.0 : i == 1 ? 1000.0 : 1000.0 * tk_uniform(&rs, 0, 1);
    tf = twin_new(&p, &rs, (size_t)NB * DXK_TFREQ_DIM, 0, 1);
    p.cpu->timestep_embed(p.cpu, tf.c, t, NB);
    p.gpu->timestep_embed(p.gpu, tf.g, t, NB);
    /* t is a host array: the backend must not read it after returning */
    memset(t, 0, sizeof t);
    ck_twin(&p, &tf, "timestep_embed");
    twin_free(&p, &tf);

    for (i = 0; i < NB; i++)
        y[i] = i % K;
    c = twin_new(&p, &rs, (size_t)NB * D, -1, 1);
    table = twin_new(&p, &rs, (size_t)K * D, -1, 1);
    p.cpu->add_embedding(p.cpu, c.c, table.c, y, NB, D);
    p.gpu->add_embedding(p.gpu, c.g, table.g, y, NB, D);
    memset(y, 0, sizeof y);
    ck_twin(&p, &c, "add_embedding");
    twin_free(&p, &c);
    twin_free(&p, &table);
    pair_close(&p);
}
END_TEST

START_TEST(test_patchify)
{
    /* {B, C, H, W, p}: non-square, a latent-like 4-channel case, p = 1 */
    static const int shapes[][5] = {{2, 3, 16, 12, 4}, {2, 4, 32, 32, 2}, {1, 1, 5, 3, 1}};
    pair p;
    uint64_t rs = 16;
    size_t s;

    pair_open(&p);
    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int B = shapes[s][0], C = shapes[s][1], H = shapes[s][2], W = shapes[s][3],
                  ps = shapes[s][4];
        const size_t n = (size_t)B * C * H * W;
        twin img = twin_new(&p, &rs, n, -1, 1);
        twin tok = twin_new(&p, &rs, n, -1, 1);
        twin back = twin_new(&p, &rs, n, -1, 1);

        p.cpu->patchify(p.cpu, tok.c, img.c, B, C, H, W, ps);
        p.gpu->patchify(p.gpu, tok.g, img.g, B, C, H, W, ps);
        ck_twin(&p, &tok, "patchify");
        p.cpu->unpatchify(p.cpu, back.c, tok.c, B, C, H, W, ps);
        p.gpu->unpatchify(p.gpu, back.g, tok.g, B, C, H, W, ps);
        ck_twin(&p, &back, "unpatchify");
        twin_free(&p, &img);
        twin_free(&p, &tok);
        twin_free(&p, &back);
    }
    pair_close(&p);
}
END_TEST

START_TEST(test_pos_embed)
{
    /* {B, h, w, D}; the grid changes between calls, which must not reuse
     * the table of the previous grid */
    static const int shapes[][4] = {{1, 4, 4, 64}, {2, 16, 16, 384}, {2, 3, 7, 64}, {1, 4, 4, 64}};
    pair p;
    uint64_t rs = 17;
    size_t s;

    pair_open(&p);
    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int B = shapes[s][0], h = shapes[s][1], w = shapes[s][2], D = shapes[s][3];
        twin tok = twin_new(&p, &rs, (size_t)B * h * w * D, -1, 1);
        char what[64];

        p.cpu->pos_embed_add(p.cpu, tok.c, B, h, w, D);
        p.gpu->pos_embed_add(p.gpu, tok.g, B, h, w, D);
        snprintf(what, sizeof what, "pos_embed_add B=%d %dx%d D=%d", B, h, w, D);
        ck_twin(&p, &tok, what);
        twin_free(&p, &tok);
    }
    pair_close(&p);
}
END_TEST

/* ---- the latent models' ops -------------------------------------------- */

START_TEST(test_conv2d)
{
    /* {B, Cin, H, W, Cout, k}: borders in both directions, a 1x1, and
     * the autoencoder's 512-channel mid block at 16x16 */
    static const int shapes[][6] = {{1, 1, 1, 1, 1, 1}, {2, 3, 5, 7, 4, 3},  {1, 4, 1, 9, 2, 3},
                                    {2, 5, 6, 1, 3, 3}, {2, 8, 9, 11, 16, 1}, {1, 512, 16, 16, 512, 3}};
    pair p;
    uint64_t rs = 31;
    size_t s;
    int withb;

    pair_open(&p);
    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (withb = 0; withb < 2; withb++) {
            const int B = shapes[s][0], Ci = shapes[s][1], H = shapes[s][2], W = shapes[s][3];
            const int Co = shapes[s][4], k = shapes[s][5];
            twin x = twin_new(&p, &rs, (size_t)B * Ci * H * W, -1, 1);
            twin w = twin_new(&p, &rs, (size_t)Co * Ci * k * k, -0.1f, 0.1f);
            twin b = twin_new(&p, &rs, Co, -1, 1);
            twin y = twin_new(&p, &rs, (size_t)B * Co * H * W, -1, 1);
            char what[96];

            p.cpu->conv2d(p.cpu, y.c, x.c, w.c, withb ? b.c : NULL, B, Ci, H, W, Co, k);
            p.gpu->conv2d(p.gpu, y.g, x.g, w.g, withb ? b.g : NULL, B, Ci, H, W, Co, k);
            snprintf(what, sizeof what, "conv2d B=%d %d->%d %dx%d k=%d bias %d", B, Ci, Co, H, W,
                     k, withb);
            ck_twin(&p, &y, what);
            twin_free(&p, &x);
            twin_free(&p, &w);
            twin_free(&p, &b);
            twin_free(&p, &y);
        }
    pair_close(&p);
}
END_TEST

START_TEST(test_group_norm)
{
    /* {B, C, HW, G}: the last is the autoencoder's last up block at 64 px */
    static const int shapes[][4] = {{1, 4, 1, 2}, {2, 64, 49, 32}, {1, 128, 4096, 32}};
    pair p;
    uint64_t rs = 32;
    size_t s;
    int silu;

    pair_open(&p);
    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (silu = 0; silu < 2; silu++) {
            const int B = shapes[s][0], C = shapes[s][1], HW = shapes[s][2], G = shapes[s][3];
            const size_t n = (size_t)B * C * HW;
            twin x = twin_new(&p, &rs, n, 40, 60);
            twin y = twin_new(&p, &rs, n, 0, 1);
            twin gam = twin_new(&p, &rs, C, 0.5f, 1.5f), bet = twin_new(&p, &rs, C, -1, 1);
            char what[96];

            p.cpu->group_norm(p.cpu, y.c, x.c, gam.c, bet.c, B, C, HW, G, 1e-6f, silu);
            p.gpu->group_norm(p.gpu, y.g, x.g, gam.g, bet.g, B, C, HW, G, 1e-6f, silu);
            snprintf(what, sizeof what, "group_norm B=%d C=%d HW=%d G=%d silu %d", B, C, HW, G,
                     silu);
            ck_twin(&p, &y, what);
            p.cpu->group_norm(p.cpu, x.c, x.c, gam.c, bet.c, B, C, HW, G, 1e-5f, silu);
            p.gpu->group_norm(p.gpu, x.g, x.g, gam.g, bet.g, B, C, HW, G, 1e-5f, silu);
            ck_twin(&p, &x, "group_norm in place");
            twin_free(&p, &x);
            twin_free(&p, &y);
            twin_free(&p, &gam);
            twin_free(&p, &bet);
        }
    pair_close(&p);
}
END_TEST

START_TEST(test_upsample_and_ln_eps)
{
    const int B = 2, T = 64, D = 96;
    pair p;
    uint64_t rs = 33;
    twin x, y, mod;

    pair_open(&p);
    x = twin_new(&p, &rs, (size_t)2 * 3 * 5 * 7, -1, 1);
    y = twin_new(&p, &rs, (size_t)2 * 3 * 10 * 14, 0, 1);
    p.cpu->upsample_nearest2x(p.cpu, y.c, x.c, 2, 3, 5, 7);
    p.gpu->upsample_nearest2x(p.gpu, y.g, x.g, 2, 3, 5, 7);
    ck_twin(&p, &y, "upsample_nearest2x");
    twin_free(&p, &x);
    twin_free(&p, &y);

    x = twin_new(&p, &rs, (size_t)B * T * D, 90, 110);
    y = twin_new(&p, &rs, (size_t)B * T * D, 0, 1);
    mod = twin_new(&p, &rs, (size_t)B * 6 * D, -1, 1);
    p.cpu->ln_modulate_eps(p.cpu, y.c, x.c, mod.c, mod.c + D, 6 * D, B, T, D, 1e-5f);
    p.gpu->ln_modulate_eps(p.gpu, y.g, x.g, mod.g, mod.g + D, 6 * D, B, T, D, 1e-5f);
    ck_twin(&p, &y, "ln_modulate_eps");
    twin_free(&p, &x);
    twin_free(&p, &y);
    twin_free(&p, &mod);
    pair_close(&p);
}
END_TEST

/* ---- the published pipeline on CUDA ---------------------------------- */

static const float *pub_get(const dxk_safetensors *st, const char *name, size_t numel)
{
    const dxk_tensor *t = dxk_st_find(st, name);

    ck_assert_msg(t != NULL, "golden tensor %s missing", name);
    ck_assert_uint_eq(t->numel, numel);
    return t->data;
}

/* tests/golden/published (diffusers layout) on the GPU: one transformer
 * forward and one VAE decode against the PyTorch twin's tensors (the CPU
 * backend meets the same ones in test-published), one guided forward
 * against the CPU backend. */
START_TEST(test_published_pipeline)
{
    const size_t nx = 2 * 4 * 8 * 8, nv = 2 * 8 * 8 * 8;
    char dir[1024], path[1024], err[1024];
    dxk_backend *gpu = NULL;
    dxk_safetensors *io = NULL;
    dxk_pipeline *pl = NULL;
    dxk_dit_ws *ws = NULL;
    const float *x, *t, *y;
    double tt[2], e;
    int yy[2];
    float *v = hbuf(nv), *g = hbuf(8 * 64), *img = hbuf(768);

    ck_assert_msg(dxk_backend_cuda(0, &gpu, err, sizeof err) == DEXEC_OK, "%s", err);
    tk_golden_path(path, sizeof path, "published-io.safetensors");
    ck_assert_msg(dxk_st_open(path, &io, err, sizeof err) == DEXEC_OK, "%s", err);
    tk_golden_path(dir, sizeof dir, "published");
    ck_assert_msg(dxk_pipeline_open(dir, gpu, DEXEC_DTYPE_F32, &pl, err, sizeof err) == DEXEC_OK,
                  "%s", err);
    x = pub_get(io, "fwd.x", nx);
    t = pub_get(io, "fwd.t", 2);
    y = pub_get(io, "fwd.y", 2);
    tt[0] = t[0];
    tt[1] = t[1];
    yy[0] = (int)y[0];
    yy[1] = (int)y[1];

    ck_assert_msg(dxk_dit_ws_alloc(pl->dit, 2, 8, 8, &ws, err, sizeof err) == DEXEC_OK, "%s",
                  err);
    dxk_dit_forward(pl->dit, ws, v, x, tt, yy, 2);
    ck_assert_msg(gpu->sync(gpu, err, sizeof err) == DEXEC_OK, "%s", err);
    e = tk_rel_err_f(v, pub_get(io, "fwd.diffusers", nv), nv);
    printf("cuda published forward: vs the twin %.3g\n", e);
    ck_assert_msg(e <= TOL, "published forward: cuda vs the twin relative error %g", e);

    /* the guided golden belongs to the original-layout twin: here the
     * guided pass of this pipeline is checked against the CPU backend's */
    {
        dxk_backend *cb = NULL;
        dxk_pipeline *cp = NULL;
        dxk_dit_ws *cws = NULL;
        float *gc = hbuf(8 * 64);

        ck_assert_msg(dxk_backend_cpu(&cb, err, sizeof err) == DEXEC_OK, "%s", err);
        ck_assert_msg(dxk_pipeline_open(dir, cb, DEXEC_DTYPE_F32, &cp, err, sizeof err) ==
                          DEXEC_OK,
                      "%s", err);
        ck_assert_msg(dxk_dit_ws_alloc(cp->dit, 2, 8, 8, &cws, err, sizeof err) == DEXEC_OK, "%s",
                      err);
        ck_assert_msg(dxk_latent_guided(pl->dit, ws, x, 500.0, 3, 10, 4.0, 3, g, err,
                                        sizeof err) == DEXEC_OK,
                      "%s", err);
        ck_assert_msg(dxk_latent_guided(cp->dit, cws, x, 500.0, 3, 10, 4.0, 3, gc, err,
                                        sizeof err) == DEXEC_OK,
                      "%s", err);
        e = tk_rel_err_f(g, gc, 8 * 64);
        ck_assert_msg(e <= TOL, "published guided forward: cuda vs cpu relative error %g", e);
        dxk_dit_ws_free(cp->dit, cws);
        dxk_pipeline_free(cp);
        dxk_backend_free(cb);
        free(gc);
    }
    dxk_dit_ws_free(pl->dit, ws);

    ck_assert_msg(dxk_vae_decode(pl->vae, pub_get(io, "vae.z", 256), 1, 8, 8, img, err,
                                 sizeof err) == DEXEC_OK,
                  "%s", err);
    e = tk_rel_err_f(img, pub_get(io, "vae.out", 768), 768);
    printf("cuda published vae decode: vs the twin %.3g\n", e);
    ck_assert_msg(e <= TOL, "published vae decode: cuda vs the twin relative error %g", e);
    dxk_pipeline_free(pl);
    dxk_st_close(io);
    dxk_backend_free(gpu);
    free(v);
    free(g);
    free(img);
}
END_TEST

/* ---- half-precision weights (dtype float16 / bfloat16, the 1.3 ops) ---- */

/* Tolerances, relative to the output's largest value: against float32 on
 * the unrounded operands, what the types' rounding allows (float16 keeps
 * 11 significant bits, bfloat16 8: ~5e-4 and ~4e-3 per operand) with
 * room; against the CPU on the operands rounded the same way (the GPU
 * rounds x itself), accumulation order only. */
static const int half_types[2] = {DEXEC_DTYPE_F16, DEXEC_DTYPE_BF16};
static const double half_tol[2] = {4e-3, 3e-2};
#define HALF_TOL_ROUNDED 1e-3

static float *rounded(const float *x, size_t n, int dtype)
{
    float *r = hbuf(n);

    for (size_t i = 0; i < n; i++)
        r[i] = tk_round_to(x[i], dtype);
    return r;
}

/* The GPU buffer y (n floats) against the host references: asserts both
 * tolerances, names what. */
static void half_check(pair *p, const float *yg, size_t n, const float *ref32,
                       const float *ref_rounded, int ti, const char *what)
{
    float *g = hbuf(n);
    char err[512];
    double e32, er;

    p->gpu->download(p->gpu, g, yg, n);
    ck_assert_msg(p->gpu->sync(p->gpu, err, sizeof err) == DEXEC_OK, "%s: %s", what, err);
    e32 = tk_rel_err_f(g, ref32, n);
    er = tk_rel_err_f(g, ref_rounded, n);
    ck_assert_msg(e32 <= half_tol[ti], "%s %s: vs float32 relative error %g > %g", what,
                  ti ? "bfloat16" : "float16", e32, half_tol[ti]);
    ck_assert_msg(er <= HALF_TOL_ROUNDED,
                  "%s %s: vs the CPU on rounded operands relative error %g > %g", what,
                  ti ? "bfloat16" : "float16", er, HALF_TOL_ROUNDED);
    free(g);
}

START_TEST(test_half_linear)
{
    static const int sizes[][3] = {{1, 1, 1},        {7, 13, 5},      {33, 17, 300},
                                   {512, 1152, 384}, {512, 384, 1536}};
    pair p;
    uint64_t rs = 71;

    pair_open(&p);
    for (int ti = 0; ti < 2; ti++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            for (int withb = 0; withb < 2; withb++) {
                const int M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
                const int t = half_types[ti];
                float *hx = hbuf((size_t)M * K), *hw = hbuf((size_t)N * K), *hb = hbuf(N);
                float *y32 = hbuf((size_t)M * N), *yr = hbuf((size_t)M * N), *xr, *wr;
                float *xg = p.gpu->alloc(p.gpu, (size_t)M * K), *bg = p.gpu->alloc(p.gpu, N);
                float *yg = p.gpu->alloc(p.gpu, (size_t)M * N);
                void *wg;
                char what[64];

                tk_fill(&rs, hx, (size_t)M * K, -1, 1);
                tk_fill(&rs, hw, (size_t)N * K, -0.1f, 0.1f);
                tk_fill(&rs, hb, N, -1, 1);
                xr = rounded(hx, (size_t)M * K, t);
                wr = rounded(hw, (size_t)N * K, t);
                ck_assert_ptr_nonnull(xg);
                ck_assert_ptr_nonnull(yg);
                p.gpu->upload(p.gpu, xg, hx, (size_t)M * K);
                p.gpu->upload(p.gpu, bg, hb, N);
                wg = p.gpu->upload_half(p.gpu, hw, (size_t)N * K, t);
                ck_assert_ptr_nonnull(wg);
                /* the CPU backend's buffers are host memory */
                p.cpu->linear(p.cpu, y32, hx, hw, withb ? hb : NULL, M, N, K);
                p.cpu->linear(p.cpu, yr, xr, wr, withb ? hb : NULL, M, N, K);
                p.gpu->linear_half(p.gpu, yg, xg, wg, t, withb ? bg : NULL, M, N, K);
                snprintf(what, sizeof what, "linear_half %dx%dx%d bias %d", M, N, K, withb);
                half_check(&p, yg, (size_t)M * N, y32, yr, ti, what);
                p.gpu->release(p.gpu, xg);
                p.gpu->release(p.gpu, bg);
                p.gpu->release(p.gpu, yg);
                p.gpu->release(p.gpu, (float *)wg);
                free(hx);
                free(hw);
                free(hb);
                free(xr);
                free(wr);
                free(y32);
                free(yr);
            }
    pair_close(&p);
}
END_TEST

START_TEST(test_half_conv2d)
{
    /* {B, Cin, H, W, Cout, k}: borders, a 1x1 (rounded through the panel
     * too), the autoencoder's 512-channel mid block */
    static const int shapes[][6] = {{1, 1, 1, 1, 1, 1}, {2, 3, 5, 7, 4, 3}, {2, 5, 6, 1, 3, 3},
                                    {2, 8, 9, 11, 16, 1}, {1, 512, 16, 16, 512, 3}};
    pair p;
    uint64_t rs = 73;

    pair_open(&p);
    for (int ti = 0; ti < 2; ti++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int withb = 0; withb < 2; withb++) {
                const int B = shapes[s][0], Ci = shapes[s][1], H = shapes[s][2];
                const int W = shapes[s][3], Co = shapes[s][4], k = shapes[s][5];
                const int t = half_types[ti];
                const size_t nx = (size_t)B * Ci * H * W, nw = (size_t)Co * Ci * k * k;
                const size_t ny = (size_t)B * Co * H * W;
                float *hx = hbuf(nx), *hw = hbuf(nw), *hb = hbuf(Co), *y32 = hbuf(ny);
                float *yr = hbuf(ny), *xr, *wr;
                float *xg = p.gpu->alloc(p.gpu, nx), *bg = p.gpu->alloc(p.gpu, Co);
                float *yg = p.gpu->alloc(p.gpu, ny);
                void *wg;
                char what[96];

                tk_fill(&rs, hx, nx, -1, 1);
                tk_fill(&rs, hw, nw, -0.1f, 0.1f);
                tk_fill(&rs, hb, Co, -1, 1);
                xr = rounded(hx, nx, t);
                wr = rounded(hw, nw, t);
                ck_assert_ptr_nonnull(yg);
                p.gpu->upload(p.gpu, xg, hx, nx);
                p.gpu->upload(p.gpu, bg, hb, Co);
                wg = p.gpu->upload_half(p.gpu, hw, nw, t);
                ck_assert_ptr_nonnull(wg);
                p.cpu->conv2d(p.cpu, y32, hx, hw, withb ? hb : NULL, B, Ci, H, W, Co, k);
                p.cpu->conv2d(p.cpu, yr, xr, wr, withb ? hb : NULL, B, Ci, H, W, Co, k);
                p.gpu->conv2d_half(p.gpu, yg, xg, wg, t, withb ? bg : NULL, B, Ci, H, W, Co, k);
                snprintf(what, sizeof what, "conv2d_half B=%d %d->%d %dx%d k=%d bias %d", B, Ci,
                         Co, H, W, k, withb);
                half_check(&p, yg, ny, y32, yr, ti, what);
                p.gpu->release(p.gpu, xg);
                p.gpu->release(p.gpu, bg);
                p.gpu->release(p.gpu, yg);
                p.gpu->release(p.gpu, (float *)wg);
                free(hx);
                free(hw);
                free(hb);
                free(xr);
                free(wr);
                free(y32);
                free(yr);
            }
    pair_close(&p);
}
END_TEST

/* upload_half's refusals: a type it does not know, and weights float16
 * cannot hold (they would be inf), each the device's sticky error. */
START_TEST(test_half_errors)
{
    const float big[3] = {1.0f, -70000.0f, 2.0f};
    dxk_backend *be;
    char err[512];

    ck_assert_msg(dxk_backend_cuda(0, &be, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_ptr_null(be->upload_half(be, big, 3, DEXEC_DTYPE_F16));
    ck_assert_int_eq(be->sync(be, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "cuda gpu 0: 1 of 3 weights are beyond float16's range (+-65504; the "
                          "largest is 70000): use dtype = \"bfloat16\" or \"float32\" for this "
                          "model");
    dxk_backend_free(be);
    ck_assert_msg(dxk_backend_cuda(0, &be, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_ptr_nonnull(be->upload_half(be, big, 3, DEXEC_DTYPE_BF16)); /* bfloat16: fine */
    ck_assert_ptr_null(be->upload_half(be, big, 3, 7));
    ck_assert_int_eq(be->sync(be, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "cuda gpu 0: upload_half: dtype 7 is neither float16 (1) nor bfloat16 "
                          "(2)");
    dxk_backend_free(be);
}
END_TEST

/* The golden pipeline with half-precision weights on the GPU against
 * float32 on the CPU: one forward of the transformer and one decode, the
 * tolerances of the emulated run in test-published (float16 1e-2,
 * bfloat16 5e-2 relative to the output's largest value; that run measured
 * 1.0e-3 and 9.1e-3), and more than 1e-6 (the half path ran). Also the
 * whole model API: dxk_model_open_dtype on "cuda" reports its dtype. */
START_TEST(test_half_pipeline)
{
    static const double tol[2] = {1e-2, 5e-2};
    const size_t nx = 2 * 4 * 8 * 8, nv = 2 * 8 * 8 * 8;
    char dir[1024], path[1024], err[1024];
    dxk_backend *gpu = NULL, *cb = NULL;
    dxk_safetensors *io = NULL;
    dxk_pipeline *cp = NULL;
    dxk_dit_ws *cws = NULL;
    const float *x, *t, *y, *z;
    float *vc = hbuf(nv), *imc = hbuf(768);
    double tt[2];
    int yy[2];

    tk_golden_path(path, sizeof path, "published-io.safetensors");
    ck_assert_msg(dxk_st_open(path, &io, err, sizeof err) == DEXEC_OK, "%s", err);
    tk_golden_path(dir, sizeof dir, "published");
    x = pub_get(io, "fwd.x", nx);
    t = pub_get(io, "fwd.t", 2);
    y = pub_get(io, "fwd.y", 2);
    z = pub_get(io, "vae.z", 256);
    tt[0] = t[0];
    tt[1] = t[1];
    yy[0] = (int)y[0];
    yy[1] = (int)y[1];
    ck_assert_msg(dxk_backend_cpu(&cb, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_msg(dxk_pipeline_open(dir, cb, DEXEC_DTYPE_F32, &cp, err, sizeof err) == DEXEC_OK,
                  "%s", err);
    ck_assert_msg(dxk_dit_ws_alloc(cp->dit, 2, 8, 8, &cws, err, sizeof err) == DEXEC_OK, "%s",
                  err);
    dxk_dit_forward(cp->dit, cws, vc, x, tt, yy, 2);
    ck_assert_msg(dxk_vae_decode(cp->vae, z, 1, 8, 8, imc, err, sizeof err) == DEXEC_OK, "%s",
                  err);

    for (int ti = 0; ti < 2; ti++) {
        dxk_pipeline *pl = NULL;
        dxk_dit_ws *ws = NULL;
        float *v = hbuf(nv), *img = hbuf(768);
        double ef, ed;

        ck_assert_msg(dxk_backend_cuda(0, &gpu, err, sizeof err) == DEXEC_OK, "%s", err);
        ck_assert_msg(dxk_pipeline_open(dir, gpu, half_types[ti], &pl, err, sizeof err) ==
                          DEXEC_OK,
                      "%s", err);
        ck_assert_ptr_nonnull(pl->dit->blocks[0].fc1.h);
        ck_assert_ptr_nonnull(pl->vae->conv_out.h);
        ck_assert_msg(dxk_dit_ws_alloc(pl->dit, 2, 8, 8, &ws, err, sizeof err) == DEXEC_OK, "%s",
                      err);
        dxk_dit_forward(pl->dit, ws, v, x, tt, yy, 2);
        ck_assert_msg(gpu->sync(gpu, err, sizeof err) == DEXEC_OK, "%s", err);
        ck_assert_msg(dxk_vae_decode(pl->vae, z, 1, 8, 8, img, err, sizeof err) == DEXEC_OK, "%s",
                      err);
        ef = tk_rel_err_f(v, vc, nv);
        ed = tk_rel_err_f(img, imc, 768);
        printf("cuda %s weights: forward %.3g, decode %.3g relative to float32 on the cpu\n",
               ti ? "bfloat16" : "float16", ef, ed);
        ck_assert_msg(ef <= tol[ti] && ef > 1e-6, "half forward: relative error %g", ef);
        ck_assert_msg(ed <= tol[ti] && ed > 1e-6, "half decode: relative error %g", ed);
        dxk_dit_ws_free(pl->dit, ws);
        dxk_pipeline_free(pl);
        dxk_backend_free(gpu);
        free(v);
        free(img);
    }
    {
        dxk_model *m = NULL;

        ck_assert_msg(dxk_model_open_dtype(dir, "cuda", "bfloat16", 0, &m, err, sizeof err) ==
                          DEXEC_OK,
                      "%s", err);
        ck_assert_str_eq(dxk_model_dtype(m), "bfloat16");
        ck_assert_str_eq(dxk_model_device(m), "cuda");
        dxk_model_free(m);
    }
    dxk_dit_ws_free(cp->dit, cws);
    dxk_pipeline_free(cp);
    dxk_backend_free(cb);
    dxk_st_close(io);
    free(vc);
    free(imc);
}
END_TEST

START_TEST(test_buffers)
{
    const size_t n = 1000;
    pair p;
    float *h = hbuf(2 * n), *back = hbuf(2 * n), *a, *b;
    size_t used0, used, peak;
    uint64_t rs = 18;
    char err[512];

    pair_open(&p);
    tk_fill(&rs, h, 2 * n, -1, 1);
    p.gpu->memory(p.gpu, &used0, &peak);
    a = p.gpu->alloc(p.gpu, 2 * n);
    b = p.gpu->alloc(p.gpu, n);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    p.gpu->memory(p.gpu, &used, &peak);
    ck_assert_uint_eq(used - used0, 3 * n * sizeof(float));
    ck_assert_uint_ge(peak, used);
    p.gpu->upload(p.gpu, a, h, 2 * n);
    p.gpu->copy(p.gpu, b, a + n, n);
    p.gpu->copy(p.gpu, a + n, a, n); /* adjacent, not overlapping */
    p.gpu->download(p.gpu, back, b, n);
    ck_assert_int_eq(memcmp(back, h + n, n * sizeof *h), 0);
    p.gpu->download(p.gpu, back, a, 2 * n);
    ck_assert_int_eq(memcmp(back, h, n * sizeof *h), 0);
    ck_assert_int_eq(memcmp(back + n, h, n * sizeof *h), 0);
    p.gpu->release(p.gpu, a);
    p.gpu->release(p.gpu, b);
    p.gpu->release(p.gpu, NULL);
    p.gpu->memory(p.gpu, &used, &peak);
    ck_assert_uint_eq(used, used0);
    ck_assert_uint_ge(peak, used0 + 3 * n * sizeof(float));
    ck_assert_msg(p.gpu->sync(p.gpu, err, sizeof err) == DEXEC_OK, "%s", err);
    free(h);
    free(back);
    pair_close(&p);
}
END_TEST

/* ---- errors ------------------------------------------------------------ */

START_TEST(test_error_sticky)
{
    dxk_backend *be;
    float *x, *y;
    char err[512];

    ck_assert_msg(dxk_backend_cuda(0, &be, err, sizeof err) == DEXEC_OK, "%s", err);
    x = be->alloc(be, 16);
    y = be->alloc(be, 16);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(y);
    /* a negative inner dimension: cuBLAS refuses it */
    be->linear(be, y, x, x, NULL, 4, 4, -1);
    /* a second, different failure must not replace the first */
    be->copy(be, x, x + 1, 8);
    ck_assert_int_eq(be->sync(be, err, sizeof err), DEXEC_EIO);
    ck_assert_msg(strstr(err, "cuda gpu 0: linear M=4 N=4 K=-1 (cublasSgemm)") == err, "%s", err);
    ck_assert_msg(strstr(err, "CUBLAS_STATUS_INVALID_VALUE") != NULL, "%s", err);
    ck_assert_int_eq(be->sync(be, err, sizeof err), DEXEC_EIO);
    ck_assert_ptr_nonnull(strstr(err, "cublasSgemm"));
    be->release(be, x);
    be->release(be, y);
    dxk_backend_free(be);

    ck_assert_msg(dxk_backend_cuda(0, &be, err, sizeof err) == DEXEC_OK, "%s", err);
    x = be->alloc(be, 16);
    be->copy(be, x, x + 1, 8);
    ck_assert_int_eq(be->sync(be, err, sizeof err), DEXEC_EINVAL);
    ck_assert_str_eq(err, "cuda gpu 0: copy of 8 floats between overlapping buffers");
    be->release(be, x);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_error_memory)
{
    dxk_backend *be;
    char err[512];

    ck_assert_msg(dxk_backend_cuda(0, &be, err, sizeof err) == DEXEC_OK, "%s", err);
    /* 4 PiB: more than any GPU has */
    ck_assert_ptr_null(be->alloc(be, (size_t)1 << 50));
    ck_assert_int_eq(be->sync(be, err, sizeof err), DEXEC_ENOMEM);
    ck_assert_msg(strstr(err, "alloc of 1125899906842624 floats: cannot allocate 4294967296 MiB "
                              "of device memory") != NULL,
                  "%s", err);
    dxk_backend_free(be);
}
END_TEST

START_TEST(test_error_no_such_gpu)
{
    dxk_backend *be = (dxk_backend *)&be;
    char err[512], want[128];
    int n = dxk_cuda_device_count(NULL, 0);

    ck_assert_int_eq(dxk_backend_cuda(n, &be, err, sizeof err), DEXEC_ENOTSUP);
    ck_assert_ptr_null(be);
    snprintf(want, sizeof want,
             "device cuda requested on gpu %d, but this process sees %d CUDA device(s)", n, n);
    ck_assert_msg(strstr(err, want) == err, "%s", err);
    ck_assert_int_eq(dxk_backend_cuda(-1, &be, err, sizeof err), DEXEC_ENOTSUP);
}
END_TEST

/* ---- the golden DiT on both devices ------------------------------------ */

typedef struct golden {
    dxk_safetensors *model, *io;
    dxk_dit_config cfg;
    pair p;
    dxk_dit *cpu, *gpu;
    dxk_dit_ws *cws, *gws;
} golden;

static void golden_open(golden *g)
{
    char path[4096], err[512];

    memset(g, 0, sizeof *g);
    tk_golden_path(path, sizeof path, "golden-model.safetensors");
    ck_assert_msg(dxk_st_open(path, &g->model, err, sizeof err) == DEXEC_OK, "%s", err);
    tk_golden_path(path, sizeof path, "golden-io.safetensors");
    ck_assert_msg(dxk_st_open(path, &g->io, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_msg(dxk_dit_config_read(g->model, &g->cfg, err, sizeof err) == DEXEC_OK, "%s", err);
    pair_open(&g->p);
    ck_assert_msg(dxk_dit_load(g->model, &g->cfg, g->p.cpu, &g->cpu, err, sizeof err) == DEXEC_OK,
                  "%s", err);
    ck_assert_msg(dxk_dit_load(g->model, &g->cfg, g->p.gpu, &g->gpu, err, sizeof err) == DEXEC_OK,
                  "%s", err);
    ck_assert_msg(dxk_dit_ws_alloc(g->cpu, 2, g->cfg.image_size, g->cfg.image_size, &g->cws, err,
                                   sizeof err) == DEXEC_OK,
                  "%s", err);
    ck_assert_msg(dxk_dit_ws_alloc(g->gpu, 2, g->cfg.image_size, g->cfg.image_size, &g->gws, err,
                                   sizeof err) == DEXEC_OK,
                  "%s", err);
}

static void golden_close(golden *g)
{
    dxk_dit_ws_free(g->cpu, g->cws);
    dxk_dit_ws_free(g->gpu, g->gws);
    dxk_dit_free(g->cpu);
    dxk_dit_free(g->gpu);
    pair_close(&g->p);
    dxk_st_close(g->model);
    dxk_st_close(g->io);
}

static const float *gt(const golden *g, const char *name, size_t numel)
{
    const dxk_tensor *t = dxk_st_find(g->io, name);

    ck_assert_msg(t != NULL, "golden tensor %s missing", name);
    ck_assert_uint_eq(t->numel, numel);
    return t->data;
}

START_TEST(test_golden_forward)
{
    golden g;
    const float *x, *t, *y, *ref;
    double td[2];
    int yi[2];
    float *xg, *vg, *vc, *v;
    size_t n;
    char err[512];
    double e;

    golden_open(&g);
    n = 2 * (size_t)g.cfg.in_channels * g.cfg.image_size * g.cfg.image_size;
    x = gt(&g, "fwd.x", n);
    t = gt(&g, "fwd.t", 2);
    y = gt(&g, "fwd.y", 2);
    ref = gt(&g, "fwd.out", n);
    td[0] = t[0];
    td[1] = t[1];
    yi[0] = (int)y[0];
    yi[1] = (int)y[1];
    vc = hbuf(n);
    v = hbuf(n);
    xg = g.p.gpu->alloc(g.p.gpu, n);
    vg = g.p.gpu->alloc(g.p.gpu, n);
    ck_assert_ptr_nonnull(xg);
    ck_assert_ptr_nonnull(vg);
    g.p.gpu->upload(g.p.gpu, xg, x, n);
    dxk_dit_forward(g.gpu, g.gws, vg, xg, td, yi, 2);
    g.p.gpu->download(g.p.gpu, v, vg, n);
    ck_assert_msg(g.p.gpu->sync(g.p.gpu, err, sizeof err) == DEXEC_OK, "%s", err);
    dxk_dit_forward(g.cpu, g.cws, vc, x, td, yi, 2);
    ck_assert_msg(g.p.cpu->sync(g.p.cpu, err, sizeof err) == DEXEC_OK, "%s", err);
    e = tk_rel_err_f(v, vc, n);
    printf("cuda golden forward: vs cpu %.3g, vs PyTorch %.3g\n", e, tk_rel_err_f(v, ref, n));
    ck_assert_msg(e <= TOL, "forward: cuda vs cpu relative error %g", e);
    e = tk_rel_err_f(v, ref, n);
    ck_assert_msg(e <= TOL, "forward: cuda vs the golden output relative error %g", e);
    g.p.gpu->release(g.p.gpu, xg);
    g.p.gpu->release(g.p.gpu, vg);
    free(vc);
    free(v);
    golden_close(&g);
}
END_TEST

/* The whole sampler (8 denoising steps with classifier-free guidance) on
 * both devices, and against the PyTorch sample. */
START_TEST(test_golden_sample)
{
    golden g;
    dxk_sample_args a;
    size_t n;
    float *xc, *xg;
    char err[512];
    double e;

    golden_open(&g);
    n = (size_t)g.cfg.in_channels * g.cfg.image_size * g.cfg.image_size;
    memset(&a, 0, sizeof a);
    a.noise = gt(&g, "sample.noise", n);
    a.H = a.W = g.cfg.image_size;
    a.y = (int)gt(&g, "sample.y", 1)[0];
    a.y_neg = (int)gt(&g, "sample.y_neg", 1)[0];
    a.steps = (int)gt(&g, "sample.steps", 1)[0];
    a.guidance = 3.0;
    a.shift = gt(&g, "sample.shift", 1)[0];
    xc = hbuf(n);
    xg = hbuf(n);
    ck_assert_msg(dxk_sample(g.cpu, g.cws, &a, xc, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_msg(dxk_sample(g.gpu, g.gws, &a, xg, err, sizeof err) == DEXEC_OK, "%s", err);
    e = tk_rel_err_f(xg, xc, n);
    printf("cuda golden sample: vs cpu %.3g\n", e);
    ck_assert_msg(e <= TOL, "sample: cuda vs cpu relative error %g", e);
    e = tk_rel_err_f(xg, gt(&g, "sample.out", n), n);
    ck_assert_msg(e <= TOL, "sample: cuda vs the golden sample relative error %g", e);
    free(xc);
    free(xg);
    golden_close(&g);
}
END_TEST

START_TEST(test_model_open)
{
    char path[4096], err[512];
    dxk_model *m = NULL;

    tk_golden_path(path, sizeof path, "golden-model.safetensors");
    ck_assert_msg(dxk_model_open(path, "cuda", 0, &m, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_str_eq(dxk_model_device(m), "cuda");
    dxk_model_free(m);
    /* "auto" prefers the GPU when there is one */
    ck_assert_msg(dxk_model_open(path, "auto", 0, &m, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_str_eq(dxk_model_device(m), "cuda");
    dxk_model_free(m);
}
END_TEST

static Suite *cuda_suite(void)
{
    Suite *s = suite_create("cuda");
    TCase *ops = tcase_create("ops");
    TCase *errors = tcase_create("errors");
    TCase *model = tcase_create("golden");

    tcase_add_test(ops, test_linear);
    tcase_add_test(ops, test_ln_modulate);
    tcase_add_test(ops, test_attention);
    tcase_add_test(ops, test_elementwise);
    tcase_add_test(ops, test_embeddings);
    tcase_add_test(ops, test_patchify);
    tcase_add_test(ops, test_pos_embed);
    tcase_add_test(ops, test_buffers);
    tcase_add_test(ops, test_conv2d);
    tcase_add_test(ops, test_group_norm);
    tcase_add_test(ops, test_upsample_and_ln_eps);
    tcase_add_test(errors, test_error_sticky);
    tcase_add_test(errors, test_error_memory);
    tcase_add_test(errors, test_error_no_such_gpu);
    tcase_add_test(model, test_golden_forward);
    tcase_add_test(model, test_golden_sample);
    tcase_add_test(model, test_model_open);
    tcase_add_test(model, test_published_pipeline);
    tcase_add_test(ops, test_half_linear);
    tcase_add_test(ops, test_half_conv2d);
    tcase_add_test(errors, test_half_errors);
    tcase_add_test(model, test_half_pipeline);
    suite_add_tcase(s, ops);
    suite_add_tcase(s, errors);
    suite_add_tcase(s, model);
    return s;
}

int main(void)
{
    char reason[256];
    SRunner *sr;
    int failed;

    if (dxk_cuda_device_count(reason, sizeof reason) == 0) {
        printf("SKIP: no CUDA device: %s\n", reason);
        return 77;
    }
    sr = srunner_create(cuda_suite());
    /* CUDA does not survive fork(): the device count above initialised it
     * in this process, so the tests run here rather than in children */
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
