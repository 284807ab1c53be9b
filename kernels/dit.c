/*
 * dit.c - the DiT denoiser: configuration from metadata, weights checked
 * tensor by tensor, and the forward pass of doc/model-format.md written as
 * a sequence of backend ops.
 */
#include <config.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/rpc.h>

#include "dit.h"

/* Whole-string integer in [lo, hi]. */
static int dx_meta_int(const dxk_safetensors *st, const char *key, int required, int dflt, int lo,
                       int hi, int *out, char *err, size_t errlen)
{
    const char *s = dxk_st_meta(st, key);
    char *end;
    long v;

    if (s == NULL) {
        if (required) {
            dexec_errorf(err, errlen, "%s: metadata key '%s' is missing", st->path, key);
            return -1;
        }
        *out = dflt;
        return 0;
    }
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        dexec_errorf(err, errlen, "%s: metadata '%s' = '%s': expected an integer in %d..%d",
                   st->path, key, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int dx_meta_double(const dxk_safetensors *st, const char *key, double dflt, double lo,
                          double hi, double *out, char *err, size_t errlen)
{
    const char *s = dxk_st_meta(st, key);
    char *end;
    double v;

    if (s == NULL) {
        *out = dflt;
        return 0;
    }
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi)) {
        dexec_errorf(err, errlen, "%s: metadata '%s' = '%s': expected a number in %g..%g",
                   st->path, key, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

dexec_status dxk_dit_config_read(const dxk_safetensors *st, dxk_dit_config *cfg, char *err,
                                 size_t errlen)
{
    const char *fmt = dxk_st_meta(st, "dexec.format");

    memset(cfg, 0, sizeof *cfg);
    if (fmt == NULL || strcmp(fmt, "dit") != 0) {
        dexec_errorf(err, errlen, "%s: metadata 'dexec.format' is %s%s%s, expected 'dit'",
                   st->path, fmt ? "'" : "", fmt ? fmt : "missing", fmt ? "'" : "");
        return DEXEC_EINVAL;
    }
    /* Bounds keep every size computed from them inside int and size_t. */
    if (dx_meta_int(st, "dexec.image_size", 1, 0, 1, 4096, &cfg->image_size, err, errlen) ||
        dx_meta_int(st, "dexec.in_channels", 1, 0, 1, 4, &cfg->in_channels, err, errlen) ||
        dx_meta_int(st, "dexec.patch_size", 1, 0, 1, 64, &cfg->patch_size, err, errlen) ||
        dx_meta_int(st, "dexec.hidden_size", 1, 0, 4, 16384, &cfg->hidden_size, err, errlen) ||
        dx_meta_int(st, "dexec.depth", 1, 0, 1, 256, &cfg->depth, err, errlen) ||
        dx_meta_int(st, "dexec.num_heads", 1, 0, 1, 256, &cfg->num_heads, err, errlen) ||
        dx_meta_int(st, "dexec.mlp_ratio", 1, 0, 1, 16, &cfg->mlp_ratio, err, errlen) ||
        dx_meta_int(st, "dexec.num_classes", 1, 0, 1, 1000000, &cfg->num_classes, err,
                    errlen) ||
        dx_meta_int(st, "dexec.default_steps", 0, 20, 1, 1000, &cfg->default_steps, err,
                    errlen) ||
        dx_meta_double(st, "dexec.sigma_shift", 1.0, 1e-3, 1e3, &cfg->sigma_shift, err,
                       errlen) ||
        dx_meta_double(st, "dexec.default_guidance", 4.0, 0.0, 100.0, &cfg->default_guidance,
                       err, errlen))
        return DEXEC_EINVAL;
    if (cfg->image_size % cfg->patch_size != 0) {
        dexec_errorf(err, errlen,
                   "%s: metadata: dexec.image_size %d is not a multiple of dexec.patch_size %d",
                   st->path, cfg->image_size, cfg->patch_size);
        return DEXEC_EINVAL;
    }
    if (cfg->hidden_size % 4 != 0 || cfg->hidden_size % cfg->num_heads != 0) {
        dexec_errorf(err, errlen,
                   "%s: metadata: dexec.hidden_size %d must be a multiple of 4 and of "
                   "dexec.num_heads %d",
                   st->path, cfg->hidden_size, cfg->num_heads);
        return DEXEC_EINVAL;
    }
    return DEXEC_OK;
}

static const char *dx_shape_str(const int64_t *shape, int ndim, char *buf, size_t len)
{
    size_t o = 0;
    int i;

    o += (size_t)snprintf(buf + o, len - o, "[");
    for (i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
    return buf;
}

typedef struct dx_loader {
    const dxk_safetensors *st;
    dxk_dit *m;
    char *used; /* one flag per tensor of st */
    char *err;
    size_t errlen;
    dexec_status s;
} dx_loader;

/* The weight called name, which must have the given shape; on a device
 * backend, uploaded. NULL (and ld->s set) otherwise. */
static const float *dx_take(dx_loader *ld, const char *name, int ndim, const int64_t *shape)
{
    const dxk_tensor *t;
    dxk_backend *be = ld->m->be;
    char want[96], got[96];
    float *buf, **grown;
    int i, same;

    if (ld->s != DEXEC_OK)
        return NULL;
    t = dxk_st_find(ld->st, name);
    if (t == NULL) {
        dexec_errorf(ld->err, ld->errlen, "%s: tensor '%s' is missing (expected shape %s)",
                   ld->st->path, name, dx_shape_str(shape, ndim, want, sizeof want));
        ld->s = DEXEC_EINVAL;
        return NULL;
    }
    same = t->ndim == ndim;
    for (i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        dexec_errorf(ld->err, ld->errlen,
                   "%s: tensor '%s' has shape %s, the metadata's configuration needs %s",
                   ld->st->path, name, dx_shape_str(t->shape, t->ndim, got, sizeof got),
                   dx_shape_str(shape, ndim, want, sizeof want));
        ld->s = DEXEC_EINVAL;
        return NULL;
    }
    ld->used[t - ld->st->tensors] = 1;
    ld->m->params += t->numel;
    if (be->host_memory)
        return t->data;
    grown = realloc(ld->m->uploads, (ld->m->nuploads + 1) * sizeof *grown);
    if (grown == NULL) {
        dexec_errorf(ld->err, ld->errlen, "%s: out of memory", ld->st->path);
        ld->s = DEXEC_ENOMEM;
        return NULL;
    }
    ld->m->uploads = grown;
    buf = be->alloc(be, t->numel);
    if (buf == NULL) {
        dexec_errorf(ld->err, ld->errlen, "%s: tensor '%s': %s: out of device memory for %zu floats",
                   ld->st->path, name, be->name, t->numel);
        ld->s = DEXEC_ENOMEM;
        return NULL;
    }
    ld->m->uploads[ld->m->nuploads++] = buf;
    be->upload(be, buf, t->data, t->numel);
    return buf;
}

static void dx_take_linear(dx_loader *ld, dxk_linear *l, const char *prefix, int64_t out,
                           int64_t in)
{
    char name[128];
    int64_t ws[2] = {out, in}, bs[1] = {out};

    snprintf(name, sizeof name, "%s.weight", prefix);
    l->w = dx_take(ld, name, 2, ws);
    snprintf(name, sizeof name, "%s.bias", prefix);
    l->b = dx_take(ld, name, 1, bs);
}

dexec_status dxk_dit_load(const dxk_safetensors *st, const dxk_dit_config *cfg, dxk_backend *be,
                          dxk_dit **out, char *err, size_t errlen)
{
    const int64_t D = cfg->hidden_size, C = cfg->in_channels, p = cfg->patch_size;
    const int64_t M = D * cfg->mlp_ratio, K = cfg->num_classes;
    dx_loader ld;
    dxk_dit *m;
    char prefix[64];
    int i;

    *out = NULL;
    m = calloc(1, sizeof *m);
    if (m != NULL)
        m->blocks = calloc((size_t)cfg->depth, sizeof *m->blocks);
    memset(&ld, 0, sizeof ld);
    ld.used = calloc(st->ntensors + 1, 1);
    if (m == NULL || m->blocks == NULL || ld.used == NULL) {
        if (m != NULL)
            free(m->blocks);
        free(m);
        free(ld.used);
        dexec_errorf(err, errlen, "%s: out of memory", st->path);
        return DEXEC_ENOMEM;
    }
    m->cfg = *cfg;
    m->be = be;
    ld.st = st;
    ld.m = m;
    ld.err = err;
    ld.errlen = errlen;
    {
        int64_t xs[4] = {D, C, p, p}, xb[1] = {D}, ys[2] = {K + 1, D};

        m->x_emb.w = dx_take(&ld, "x_embedder.proj.weight", 4, xs);
        m->x_emb.b = dx_take(&ld, "x_embedder.proj.bias", 1, xb);
        dx_take_linear(&ld, &m->t_mlp0, "t_embedder.mlp.0", D, DXK_TFREQ_DIM);
        dx_take_linear(&ld, &m->t_mlp2, "t_embedder.mlp.2", D, D);
        m->y_table = dx_take(&ld, "y_embedder.embedding_table.weight", 2, ys);
    }
    for (i = 0; i < cfg->depth; i++) {
        dxk_dit_block *b = &m->blocks[i];

        snprintf(prefix, sizeof prefix, "blocks.%d.adaLN_modulation.1", i);
        dx_take_linear(&ld, &b->ada, prefix, 6 * D, D);
        snprintf(prefix, sizeof prefix, "blocks.%d.attn.qkv", i);
        dx_take_linear(&ld, &b->qkv, prefix, 3 * D, D);
        snprintf(prefix, sizeof prefix, "blocks.%d.attn.proj", i);
        dx_take_linear(&ld, &b->proj, prefix, D, D);
        snprintf(prefix, sizeof prefix, "blocks.%d.mlp.fc1", i);
        dx_take_linear(&ld, &b->fc1, prefix, M, D);
        snprintf(prefix, sizeof prefix, "blocks.%d.mlp.fc2", i);
        dx_take_linear(&ld, &b->fc2, prefix, D, M);
    }
    dx_take_linear(&ld, &m->final_ada, "final_layer.adaLN_modulation.1", 2 * D, D);
    dx_take_linear(&ld, &m->final_lin, "final_layer.linear", p * p * C, D);
    for (i = 0; ld.s == DEXEC_OK && (size_t)i < st->ntensors; i++) {
        if (!ld.used[i]) {
            dexec_errorf(err, errlen,
                       "%s: tensor '%s' is not part of a DiT of depth %d: the file and its "
                       "metadata disagree",
                       st->path, st->tensors[i].name, cfg->depth);
            ld.s = DEXEC_EINVAL;
        }
    }
    if (ld.s == DEXEC_OK) {
        char berr[256];

        ld.s = be->sync(be, berr, sizeof berr);
        if (ld.s != DEXEC_OK)
            dexec_errorf(err, errlen, "%s: uploading the weights: %s", st->path, berr);
    }
    free(ld.used);
    if (ld.s != DEXEC_OK) {
        dxk_dit_free(m);
        return ld.s;
    }
    *out = m;
    return DEXEC_OK;
}

void dxk_dit_free(dxk_dit *m)
{
    size_t i;

    if (m == NULL)
        return;
    for (i = 0; i < m->nuploads; i++)
        m->be->release(m->be, m->uploads[i]);
    free(m->uploads);
    free(m->blocks);
    free(m);
}

dexec_status dxk_dit_ws_alloc(dxk_dit *m, int B, int H, int W, dxk_dit_ws **out, char *err,
                              size_t errlen)
{
    const dxk_dit_config *c = &m->cfg;
    dxk_backend *be = m->be;
    size_t D = (size_t)c->hidden_size, T, F, BT;
    dxk_dit_ws *ws;
    char berr[256];
    dexec_status s;

    *out = NULL;
    if (B <= 0 || H <= 0 || W <= 0 || H % c->patch_size != 0 || W % c->patch_size != 0) {
        dexec_errorf(err, errlen, "%dx%d is not a positive multiple of the patch size %d", H, W,
                   c->patch_size);
        return DEXEC_EINVAL;
    }
    T = (size_t)(H / c->patch_size) * (size_t)(W / c->patch_size);
    F = (size_t)c->in_channels * c->patch_size * c->patch_size;
    BT = (size_t)B * T;
    ws = calloc(1, sizeof *ws);
    if (ws == NULL) {
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    ws->B = B;
    ws->H = H;
    ws->W = W;
    ws->x = be->alloc(be, BT * D);
    ws->xn = be->alloc(be, BT * D);
    ws->qkv = be->alloc(be, BT * 3 * D);
    ws->att = be->alloc(be, BT * D);
    ws->hid = be->alloc(be, BT * D * c->mlp_ratio);
    ws->io = be->alloc(be, BT * F);
    ws->scratch = be->alloc(be, be->attention_scratch(be, B, (int)T, c->num_heads));
    ws->tf = be->alloc(be, (size_t)B * DXK_TFREQ_DIM);
    ws->th = be->alloc(be, (size_t)B * D);
    ws->c = be->alloc(be, (size_t)B * D);
    ws->sc = be->alloc(be, (size_t)B * D);
    ws->mod = be->alloc(be, (size_t)B * 6 * D);
    s = be->sync(be, berr, sizeof berr);
    if (s == DEXEC_OK &&
        (!ws->x || !ws->xn || !ws->qkv || !ws->att || !ws->hid || !ws->io || !ws->scratch ||
         !ws->tf || !ws->th || !ws->c || !ws->sc || !ws->mod)) {
        s = DEXEC_ENOMEM;
        snprintf(berr, sizeof berr, "%s: out of memory", be->name);
    }
    if (s != DEXEC_OK) {
        dexec_errorf(err, errlen, "activations for %d image(s) of %dx%d: %s", B, H, W, berr);
        dxk_dit_ws_free(m, ws);
        return s;
    }
    *out = ws;
    return DEXEC_OK;
}

void dxk_dit_ws_free(dxk_dit *m, dxk_dit_ws *ws)
{
    dxk_backend *be = m->be;

    if (ws == NULL)
        return;
    be->release(be, ws->x);
    be->release(be, ws->xn);
    be->release(be, ws->qkv);
    be->release(be, ws->att);
    be->release(be, ws->hid);
    be->release(be, ws->io);
    be->release(be, ws->scratch);
    be->release(be, ws->tf);
    be->release(be, ws->th);
    be->release(be, ws->c);
    be->release(be, ws->sc);
    be->release(be, ws->mod);
    free(ws);
}

void dxk_dit_forward(dxk_dit *m, dxk_dit_ws *ws, float *v, const float *x, const double *t,
                     const int *y, int B)
{
    const dxk_dit_config *c = &m->cfg;
    dxk_backend *be = m->be;
    const int D = c->hidden_size, C = c->in_channels, p = c->patch_size;
    const int H = ws->H, W = ws->W, h = H / p, w = W / p, T = h * w, F = C * p * p;
    const int M = D * c->mlp_ratio, BT = B * T;
    int i;

    /* patch embedding + positions */
    be->patchify(be, ws->io, x, B, C, H, W, p);
    be->linear(be, ws->x, ws->io, m->x_emb.w, m->x_emb.b, BT, D, F);
    be->pos_embed_add(be, ws->x, B, h, w, D);

    /* condition c = t_emb + y_emb; every adaLN reads SiLU(c) */
    be->timestep_embed(be, ws->tf, t, B);
    be->linear(be, ws->th, ws->tf, m->t_mlp0.w, m->t_mlp0.b, B, D, DXK_TFREQ_DIM);
    be->silu(be, ws->th, ws->th, (size_t)B * D);
    be->linear(be, ws->c, ws->th, m->t_mlp2.w, m->t_mlp2.b, B, D, D);
    be->add_embedding(be, ws->c, m->y_table, y, B, D);
    be->silu(be, ws->sc, ws->c, (size_t)B * D);

    for (i = 0; i < c->depth; i++) {
        const dxk_dit_block *b = &m->blocks[i];
        const float *mod = ws->mod; /* shift1 scale1 gate1 shift2 scale2 gate2 */

        be->linear(be, ws->mod, ws->sc, b->ada.w, b->ada.b, B, 6 * D, D);
        be->ln_modulate(be, ws->xn, ws->x, mod, mod + D, 6 * D, B, T, D);
        be->linear(be, ws->qkv, ws->xn, b->qkv.w, b->qkv.b, BT, 3 * D, D);
        be->attention(be, ws->att, ws->qkv, ws->scratch, B, T, c->num_heads, D);
        be->linear(be, ws->xn, ws->att, b->proj.w, b->proj.b, BT, D, D);
        be->gated_residual(be, ws->x, ws->xn, mod + 2 * D, 6 * D, B, T, D);

        be->ln_modulate(be, ws->xn, ws->x, mod + 3 * D, mod + 4 * D, 6 * D, B, T, D);
        be->linear(be, ws->hid, ws->xn, b->fc1.w, b->fc1.b, BT, M, D);
        be->gelu_tanh(be, ws->hid, (size_t)BT * M);
        be->linear(be, ws->xn, ws->hid, b->fc2.w, b->fc2.b, BT, D, M);
        be->gated_residual(be, ws->x, ws->xn, mod + 5 * D, 6 * D, B, T, D);
    }

    be->linear(be, ws->mod, ws->sc, m->final_ada.w, m->final_ada.b, B, 2 * D, D);
    be->ln_modulate(be, ws->xn, ws->x, ws->mod, ws->mod + D, 2 * D, B, T, D);
    be->linear(be, ws->io, ws->xn, m->final_lin.w, m->final_lin.b, BT, F, D);
    be->unpatchify(be, v, ws->io, B, C, H, W, p);
}

double dxk_dit_flops(const dxk_dit_config *c, int B, int H, int W)
{
    double D = c->hidden_size, M = D * c->mlp_ratio;
    double T = (double)(H / c->patch_size) * (W / c->patch_size);
    double F = (double)c->in_channels * c->patch_size * c->patch_size;
    double tok = (double)B * T;
    double per_block = 2.0 * tok * D * (3 * D + D + M + M) /* qkv, proj, fc1, fc2 */
                       + 2.0 * 2.0 * B * T * T * D       /* q k^T and att v */
                       + 2.0 * B * D * 6 * D;            /* adaLN */

    return c->depth * per_block + 2.0 * tok * D * F * 2 /* patch embed, final linear */
           + 2.0 * B * (DXK_TFREQ_DIM * D + D * D + 2 * D * D);
}
