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

#include <jansson.h>

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
    cfg->layout = DXK_DIT_DEXEC;
    cfg->out_channels = cfg->in_channels;
    cfg->norm_eps = 1e-6;
    return DEXEC_OK;
}

int dxk_json_int(json_t *o, const char *path, const char *key, int dflt, int lo, int hi,
                       int *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);

    if (v == NULL || json_is_null(v)) {
        if (dflt >= lo) {
            *out = dflt;
            return 0;
        }
        dexec_errorf(err, errlen, "%s: field '%s' is missing", path, key);
        return -1;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        dexec_errorf(err, errlen, "%s: field '%s' must be an integer in %d..%d", path, key, lo,
                     hi);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

/* A string field that, when present, must be one of the values the
 * published architecture has. */
static int dx_json_expect(json_t *o, const char *path, const char *key, const char *want,
                          char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);

    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v) || strcmp(json_string_value(v), want) != 0) {
        dexec_errorf(err, errlen,
                     "%s: field '%s' must be \"%s\" (the DiT architecture dexec runs)", path,
                     key, want);
        return -1;
    }
    return 0;
}

dexec_status dxk_dit_config_json(const char *path, const char *json, dxk_dit_config *cfg,
                                 char *err, size_t errlen)
{
    json_error_t je;
    json_t *o = json_loads(json, 0, &je), *v;
    int head_dim = 0, sample = 0, rc = -1;

    memset(cfg, 0, sizeof *cfg);
    if (o == NULL || !json_is_object(o)) {
        dexec_errorf(err, errlen, "%s: not a JSON object (line %d: %s)", path, je.line,
                     o == NULL ? je.text : "top level");
        json_decref(o);
        return DEXEC_EINVAL;
    }
    cfg->mlp_ratio = 4;
    cfg->norm_eps = 1e-5; /* diffusers' default */
    if (dxk_json_int(o, path, "sample_size", -1, 1, 1024, &sample, err, errlen) ||
        dxk_json_int(o, path, "in_channels", -1, 1, 64, &cfg->in_channels, err, errlen) ||
        dxk_json_int(o, path, "out_channels", cfg->in_channels, 1, 128, &cfg->out_channels, err,
                    errlen) ||
        dxk_json_int(o, path, "patch_size", -1, 1, 64, &cfg->patch_size, err, errlen) ||
        dxk_json_int(o, path, "num_layers", -1, 1, 256, &cfg->depth, err, errlen) ||
        dxk_json_int(o, path, "num_attention_heads", -1, 1, 256, &cfg->num_heads, err,
                    errlen) ||
        dxk_json_int(o, path, "attention_head_dim", -1, 1, 1024, &head_dim, err, errlen) ||
        dxk_json_int(o, path, "num_embeds_ada_norm", -1, 1, 1000000, &cfg->num_classes, err,
                    errlen) ||
        dx_json_expect(o, path, "norm_type", "ada_norm_zero", err, errlen) ||
        dx_json_expect(o, path, "activation_fn", "gelu-approximate", err, errlen))
        goto out;
    v = json_object_get(o, "norm_eps");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) < 1)) {
            dexec_errorf(err, errlen, "%s: field 'norm_eps' must be a number in (0, 1)", path);
            goto out;
        }
        cfg->norm_eps = json_number_value(v);
    }
    v = json_object_get(o, "norm_elementwise_affine");
    if (v != NULL && json_is_true(v)) {
        dexec_errorf(err, errlen,
                     "%s: field 'norm_elementwise_affine' is true: DiT's LayerNorms have no "
                     "affine parameters",
                     path);
        goto out;
    }
    if (cfg->out_channels != cfg->in_channels && cfg->out_channels != 2 * cfg->in_channels) {
        dexec_errorf(err, errlen,
                     "%s: out_channels %d must be in_channels %d, or twice it (learned sigma)",
                     path, cfg->out_channels, cfg->in_channels);
        goto out;
    }
    cfg->hidden_size = cfg->num_heads * head_dim;
    if (cfg->hidden_size % 4 != 0 || cfg->hidden_size > 16384) {
        dexec_errorf(err, errlen,
                     "%s: num_attention_heads x attention_head_dim = %d must be a multiple of 4 "
                     "and at most 16384",
                     path, cfg->hidden_size);
        goto out;
    }
    /* sample_size counts latent pixels: the image is 8x larger */
    cfg->image_size = sample;
    if (cfg->image_size % cfg->patch_size != 0) {
        dexec_errorf(err, errlen, "%s: sample_size %d is not a multiple of patch_size %d", path,
                     sample, cfg->patch_size);
        goto out;
    }
    cfg->sigma_shift = 1.0;
    rc = 0;
out:
    json_decref(o);
    return rc == 0 ? DEXEC_OK : DEXEC_EINVAL;
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
    int host_only; /* hand out the file's own floats even on a device backend */
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
    if (be->host_memory || ld->host_only)
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

/* n host floats kept on the device in half precision (cfg.dtype), as a
 * buffer of the model's uploads; NULL (and ld->s set) when that fails. */
static const void *dx_half(dx_loader *ld, const float *host, size_t n, const char *name)
{
    const void *buf = NULL;
    char why[320];

    if (ld->s != DEXEC_OK)
        return NULL;
    ld->s = dxk_upload_half(ld->m->be, host, n, ld->m->cfg.dtype, &ld->m->uploads,
                            &ld->m->nuploads, &buf, why, sizeof why);
    if (ld->s != DEXEC_OK)
        dexec_errorf(ld->err, ld->errlen, "%s: tensor '%s': %s", ld->st->path, name, why);
    else
        ld->m->half_params += n;
    return buf;
}

/* A weight matrix (of a linear layer, or the patch embedding's [D,C,p,p]
 * used as one): float32 like every tensor, or half precision when the
 * configuration asks (converted from the file's floats on the host). */
static void dx_take_weight(dx_loader *ld, dxk_linear *l, const char *name, int ndim,
                           const int64_t *shape)
{
    const float *host;

    l->dtype = ld->m->cfg.dtype;
    if (l->dtype == DEXEC_DTYPE_F32) {
        l->w = dx_take(ld, name, ndim, shape);
        return;
    }
    ld->host_only = 1;
    host = dx_take(ld, name, ndim, shape);
    ld->host_only = 0;
    l->w = NULL;
    if (host != NULL)
        l->h = dx_half(ld, host, dxk_st_find(ld->st, name)->numel, name);
}

void dxk_linear_run(dxk_backend *be, float *y, const float *x, const dxk_linear *l, int M, int N,
                    int K)
{
    if (l->h != NULL)
        be->linear_half(be, y, x, l->h, l->dtype, l->b, M, N, K);
    else
        be->linear(be, y, x, l->w, l->b, M, N, K);
}

/* A linear of one row per image (the conditioning and the adaLN
 * modulation): the CPU backend's few-rows path when it can take it
 * (dxk_cpu_linear_few: streams the weights once instead of packing them
 * for an SGEMM of 2 rows), else dxk_linear_run. */
static void dx_linear_few(dxk_backend *be, float *y, const float *x, const dxk_linear *l, int M,
                          int N, int K)
{
    if (l->h == NULL && dxk_cpu_linear_few(be, y, x, l->w, l->b, M, N, K))
        return;
    dxk_linear_run(be, y, x, l, M, N, K);
}

static void dx_take_linear(dx_loader *ld, dxk_linear *l, const char *prefix, int64_t out,
                           int64_t in)
{
    char name[128];
    int64_t ws[2] = {out, in}, bs[1] = {out};

    snprintf(name, sizeof name, "%s.weight", prefix);
    dx_take_weight(ld, l, name, 2, ws);
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

        dx_take_weight(&ld, &m->x_emb, "x_embedder.proj.weight", 4, xs);
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

/* The diffusers layout's to_q, to_k and to_v of one block, fused into
 * one [3D, D] weight and [3D] bias, in the order the attention op reads a
 * token's qkv. */
static void dx_take_qkv(dx_loader *ld, dxk_linear *l, const char *prefix, int64_t D)
{
    static const char *part[3] = {"to_q", "to_k", "to_v"};
    dxk_backend *be = ld->m->be;
    int64_t ws[2] = {D, D}, bs[1] = {D};
    const float *w[3], *b[3];
    float *fw, *fb, **grown;
    char name[160];
    int i, half;

    /* the parts are read on the host and the fused copy uploaded */
    ld->host_only = 1;
    for (i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s.%s.weight", prefix, part[i]);
        w[i] = dx_take(ld, name, 2, ws);
        snprintf(name, sizeof name, "%s.%s.bias", prefix, part[i]);
        b[i] = dx_take(ld, name, 1, bs);
    }
    ld->host_only = 0;
    if (ld->s != DEXEC_OK)
        return;
    grown = realloc(ld->m->uploads, (ld->m->nuploads + 2) * sizeof *grown);
    if (grown == NULL) {
        dexec_errorf(ld->err, ld->errlen, "%s: out of memory", ld->st->path);
        ld->s = DEXEC_ENOMEM;
        return;
    }
    ld->m->uploads = grown;
    half = ld->m->cfg.dtype != DEXEC_DTYPE_F32;
    fw = half ? malloc((size_t)(3 * D * D) * sizeof *fw) : be->alloc(be, (size_t)(3 * D * D));
    fb = be->alloc(be, (size_t)(3 * D));
    if (fw == NULL || fb == NULL) {
        if (half)
            free(fw);
        else
            be->release(be, fw);
        be->release(be, fb);
        dexec_errorf(ld->err, ld->errlen, "%s: %s.to_q/k/v: %s: out of memory for %lld floats",
                     ld->st->path, prefix, half ? "host" : be->name, (long long)(3 * D * D));
        ld->s = DEXEC_ENOMEM;
        return;
    }
    if (!half)
        ld->m->uploads[ld->m->nuploads++] = fw;
    ld->m->uploads[ld->m->nuploads++] = fb;
    for (i = 0; i < 3; i++) {
        if (half)
            memcpy(fw + (size_t)i * D * D, w[i], (size_t)(D * D) * sizeof *fw);
        else
            be->upload(be, fw + (size_t)i * D * D, w[i], (size_t)(D * D));
        be->upload(be, fb + (size_t)i * D, b[i], (size_t)D);
    }
    l->b = fb;
    l->dtype = ld->m->cfg.dtype;
    if (!half) {
        l->w = fw;
        return;
    }
    /* the fused host copy, converted and uploaded once */
    snprintf(name, sizeof name, "%s.to_q/k/v.weight", prefix);
    l->w = NULL;
    l->h = dx_half(ld, fw, (size_t)(3 * D * D), name);
    free(fw);
}

dexec_status dxk_dit_load_published(const dxk_safetensors *st, dxk_dit_config *cfg,
                                    dxk_backend *be, dxk_dit **out, char *err, size_t errlen)
{
    const int64_t D = cfg->hidden_size, C = cfg->in_channels, p = cfg->patch_size;
    const int64_t M = D * cfg->mlp_ratio, K = cfg->num_classes, Co = cfg->out_channels;
    const int64_t T0 = (int64_t)(cfg->image_size / p) * (cfg->image_size / p);
    int64_t xs[4] = {D, C, p, p}, xb[1] = {D}, ys[2] = {K + 1, D};
    dx_loader ld;
    dxk_dit *m;
    char prefix[96];
    int i, diffusers;

    *out = NULL;
    if (dxk_st_find(st, "x_embedder.proj.weight") != NULL)
        diffusers = 0;
    else if (dxk_st_find(st, "pos_embed.proj.weight") != NULL)
        diffusers = 1;
    else {
        dexec_errorf(err, errlen,
                     "%s: neither 'x_embedder.proj.weight' (DiT/SiT's own names) nor "
                     "'pos_embed.proj.weight' (diffusers' names): not a DiT transformer",
                     st->path);
        return DEXEC_EINVAL;
    }
    cfg->layout = diffusers ? DXK_DIT_DIFFUSERS : DXK_DIT_ORIGINAL;
    if (!diffusers)
        cfg->norm_eps = 1e-6;
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
    if (!diffusers) {
        int64_t ps[3] = {1, T0, D};

        dx_take_weight(&ld, &m->x_emb, "x_embedder.proj.weight", 4, xs);
        m->x_emb.b = dx_take(&ld, "x_embedder.proj.bias", 1, xb);
        if (dxk_st_find(st, "pos_embed") != NULL) {
            ld.host_only = 1; /* checked, not used */
            dx_take(&ld, "pos_embed", 3, ps);
            ld.host_only = 0;
        }
        dx_take_linear(&ld, &m->t_mlp0, "t_embedder.mlp.0", D, DXK_TFREQ_DIM);
        dx_take_linear(&ld, &m->t_mlp2, "t_embedder.mlp.2", D, D);
        m->y_table = dx_take(&ld, "y_embedder.embedding_table.weight", 2, ys);
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
        dx_take_linear(&ld, &m->final_lin, "final_layer.linear", p * p * Co, D);
    } else {
        dx_take_weight(&ld, &m->x_emb, "pos_embed.proj.weight", 4, xs);
        m->x_emb.b = dx_take(&ld, "pos_embed.proj.bias", 1, xb);
        for (i = 0; i < cfg->depth; i++) {
            dxk_dit_block *b = &m->blocks[i];

            snprintf(prefix, sizeof prefix,
                     "transformer_blocks.%d.norm1.emb.timestep_embedder.linear_1", i);
            dx_take_linear(&ld, &b->t_mlp0, prefix, D, DXK_TFREQ_DIM);
            snprintf(prefix, sizeof prefix,
                     "transformer_blocks.%d.norm1.emb.timestep_embedder.linear_2", i);
            dx_take_linear(&ld, &b->t_mlp2, prefix, D, D);
            snprintf(prefix, sizeof prefix,
                     "transformer_blocks.%d.norm1.emb.class_embedder.embedding_table.weight", i);
            b->y_table = dx_take(&ld, prefix, 2, ys);
            snprintf(prefix, sizeof prefix, "transformer_blocks.%d.norm1.linear", i);
            dx_take_linear(&ld, &b->ada, prefix, 6 * D, D);
            snprintf(prefix, sizeof prefix, "transformer_blocks.%d.attn1", i);
            dx_take_qkv(&ld, &b->qkv, prefix, D);
            snprintf(prefix, sizeof prefix, "transformer_blocks.%d.attn1.to_out.0", i);
            dx_take_linear(&ld, &b->proj, prefix, D, D);
            snprintf(prefix, sizeof prefix, "transformer_blocks.%d.ff.net.0.proj", i);
            dx_take_linear(&ld, &b->fc1, prefix, M, D);
            snprintf(prefix, sizeof prefix, "transformer_blocks.%d.ff.net.2", i);
            dx_take_linear(&ld, &b->fc2, prefix, D, M);
        }
        dx_take_linear(&ld, &m->final_ada, "proj_out_1", 2 * D, D);
        dx_take_linear(&ld, &m->final_lin, "proj_out_2", p * p * Co, D);
    }
    for (i = 0; ld.s == DEXEC_OK && (size_t)i < st->ntensors; i++) {
        if (!ld.used[i]) {
            dexec_errorf(err, errlen,
                         "%s: tensor '%s' is not part of a DiT of depth %d: the file and its "
                         "config.json disagree",
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

dexec_status dxk_dit_check_heads(int S, int heads, char *err, size_t errlen)
{
    char divs[256] = "";
    size_t off = 0;

    if (S > 0 && heads % S == 0)
        return DEXEC_OK;
    for (int d = 1; d <= heads && d <= 64; d++)
        if (heads % d == 0 && off < sizeof(divs)) {
            int w = snprintf(divs + off, sizeof(divs) - off, "%s%d", off ? ", " : "", d);

            off += w > 0 ? (size_t)w : 0;
        }
    dexec_errorf(err, errlen,
                 "parallel.sequence = %d does not divide the %d attention heads of this model: "
                 "use one of %s",
                 S, heads, divs);
    return DEXEC_EINVAL;
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

/* E(d, q) of the 1-D sin-cos embedding: sin(q w_k) then cos(q w_k),
 * w_k = 10000^(-k/(d/2)), in double. */
static void dx_sincos_1d(float *out, int d, double q)
{
    int half = d / 2, k;

    for (k = 0; k < half; k++) {
        double a = q / pow(10000.0, (double)k / half);

        out[k] = (float)sin(a);
        out[half + k] = (float)cos(a);
    }
}

/* The position embedding as a buffer of its own, pos [T, D], with D ones
 * (the gate that adds it with gated_residual): the published models' (DiT's
 * get_2d_sincos_pos_embed: the first half of each row encodes the column
 * gx, the second the row gy), or, for the bundled layout under sequence
 * parallelism, the backend's own pos_embed_add applied to zeros, so that a
 * shard adds exactly the rows the whole image would. Also the host side of
 * the published models' timestep features. */
static int dx_pos_ws(dxk_dit *m, dxk_dit_ws *ws, size_t T, size_t D)
{
    dxk_backend *be = m->be;
    const int w = ws->W / m->cfg.patch_size, h = ws->H / m->cfg.patch_size;
    const int published = m->cfg.layout != DXK_DIT_DEXEC;
    float *host = calloc(T * D, sizeof *host);
    size_t i;

    if (published)
        ws->tf_host = malloc((size_t)ws->B * DXK_TFREQ_DIM * sizeof *ws->tf_host);
    ws->pos = be->alloc(be, T * D);
    ws->ones = be->alloc(be, D);
    if (host == NULL || (published && ws->tf_host == NULL) || ws->pos == NULL ||
        ws->ones == NULL) {
        free(host);
        return 0;
    }
    for (i = 0; published && i < T; i++) {
        dx_sincos_1d(host + i * D, (int)D / 2, (double)(i % (size_t)w));
        dx_sincos_1d(host + i * D + D / 2, (int)D / 2, (double)(i / (size_t)w));
    }
    be->upload(be, ws->pos, host, T * D);
    if (!published)
        be->pos_embed_add(be, ws->pos, 1, h, w, (int)D);
    for (i = 0; i < D; i++)
        host[i] = 1.0f;
    be->upload(be, ws->ones, host, D);
    /* upload() may return before the copy is made: wait before freeing */
    be->sync(be, NULL, 0);
    free(host);
    return 1;
}

dexec_status dxk_dit_ws_alloc(dxk_dit *m, int B, int H, int W, dxk_dit_ws **out, char *err,
                              size_t errlen)
{
    const dxk_dit_config *c = &m->cfg;
    dxk_backend *be = m->be;
    size_t D = (size_t)c->hidden_size, T, F, BT, BTl;
    dxk_dit_ws *ws;
    char berr[256];
    dexec_status s;
    int S = 1;

    *out = NULL;
    if (B <= 0 || H <= 0 || W <= 0 || H % c->patch_size != 0 || W % c->patch_size != 0) {
        dexec_errorf(err, errlen, "%dx%d is not a positive multiple of the patch size %d", H, W,
                   c->patch_size);
        return DEXEC_EINVAL;
    }
    T = (size_t)(H / c->patch_size) * (size_t)(W / c->patch_size);
    if (m->seq != NULL && m->seq->size > 1) {
        S = m->seq->size;
        if (dxk_dit_check_heads(S, c->num_heads, err, errlen) != DEXEC_OK)
            return DEXEC_EINVAL;
        if ((size_t)S > T) {
            dexec_errorf(err, errlen,
                         "sequence = %d is more than the %zu tokens of a %dx%d image (patch %d): "
                         "use a smaller sequence group or a larger image",
                         S, T, W, H, c->patch_size);
            return DEXEC_EINVAL;
        }
    }
    F = (size_t)(c->out_channels > c->in_channels ? c->out_channels : c->in_channels) *
        c->patch_size * c->patch_size;
    BT = (size_t)B * T;
    ws = calloc(1, sizeof *ws);
    if (ws == NULL) {
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    ws->B = B;
    ws->H = H;
    ws->W = W;
    ws->S = S;
    ws->seq = S > 1 ? m->seq : NULL;
    ws->rank = S > 1 ? m->seq->rank : 0;
    ws->t0 = (int)((size_t)ws->rank * T / S);
    ws->tn = (int)((size_t)(ws->rank + 1) * T / S) - ws->t0;
    ws->tmax = (int)((T + S - 1) / S);
    BTl = (size_t)B * ws->tn;
    ws->x = be->alloc(be, BTl * D);
    ws->xn = be->alloc(be, BTl * D);
    ws->qkv = be->alloc(be, BTl * 3 * D);
    ws->att = be->alloc(be, BTl * D);
    ws->hid = be->alloc(be, BTl * D * c->mlp_ratio);
    ws->io = be->alloc(be, BT * F);
    ws->scratch = be->alloc(be, be->attention_scratch(be, B, (int)T, c->num_heads / S));
    ws->tf = be->alloc(be, (size_t)B * DXK_TFREQ_DIM);
    ws->th = be->alloc(be, (size_t)B * D);
    ws->c = be->alloc(be, (size_t)B * D);
    ws->sc = be->alloc(be, (size_t)B * D);
    ws->mod = be->alloc(be, (size_t)B * 6 * D);
    s = DEXEC_OK;
    if (S > 1) {
        size_t a = (size_t)B * ws->tmax * 3 * D, g = (size_t)S * B * ws->tmax * F;

        ws->nh = a > g ? a : g;
        ws->qkvh = be->alloc(be, BT * 3 * (D / S));
        ws->att2 = be->alloc(be, BT * (D / S));
        /* zeroed: the padding of a short shard's blocks goes out as zeros */
        ws->ha = calloc(ws->nh, sizeof *ws->ha);
        ws->hb = calloc(ws->nh, sizeof *ws->hb);
        ws->hc = calloc(ws->nh, sizeof *ws->hc);
        if (ws->ha == NULL || ws->hb == NULL || ws->hc == NULL) {
            s = DEXEC_ENOMEM;
            snprintf(berr, sizeof berr, "out of memory for the sequence exchange buffers");
        }
    }
    if (s == DEXEC_OK && (c->layout != DXK_DIT_DEXEC || S > 1) && !dx_pos_ws(m, ws, T, D)) {
        s = DEXEC_ENOMEM;
        snprintf(berr, sizeof berr, "%s: out of memory", be->name);
    } else if (s == DEXEC_OK) {
        s = be->sync(be, berr, sizeof berr);
    }
    if (s == DEXEC_OK &&
        (!ws->x || !ws->xn || !ws->qkv || !ws->att || !ws->hid || !ws->io || !ws->scratch ||
         !ws->tf || !ws->th || !ws->c || !ws->sc || !ws->mod ||
         (S > 1 && (!ws->qkvh || !ws->att2)))) {
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
    be->release(be, ws->pos);
    be->release(be, ws->ones);
    be->release(be, ws->qkvh);
    be->release(be, ws->att2);
    free(ws->tf_host);
    free(ws->ha);
    free(ws->hb);
    free(ws->hc);
    free(ws);
}

dexec_status dxk_dit_ws_check(const dxk_dit_ws *ws, char *err, size_t errlen)
{
    if (ws->status != DEXEC_OK)
        dexec_errorf(err, errlen, "%s", ws->err);
    return ws->status;
}

size_t dxk_dit_seq_bytes(const dxk_dit *m, const dxk_dit_ws *ws, int B)
{
    const dxk_dit_config *c = &m->cfg;
    const size_t S = (size_t)ws->S, D = (size_t)c->hidden_size, tmax = (size_t)ws->tmax;
    const size_t F = (size_t)c->out_channels * c->patch_size * c->patch_size;

    if (S <= 1)
        return 0;
    /* per block, to each of the S - 1 others: a qkv block (3 D/S per
     * token) and an attention block back (D/S); then the final layer's
     * shard to each of them */
    return sizeof(float) * (S - 1) * ((size_t)c->depth * B * tmax * 4 * (D / S) + B * tmax * F);
}

/* Records a collective's failure in ws: the forward stops, the callers
 * see it through dxk_dit_ws_check. */
static void dx_seq_fail(dxk_dit_ws *ws, dexec_status s, const char *what, int block,
                        const char *terr)
{
    char where[64] = "";

    if (block >= 0)
        snprintf(where, sizeof where, " of block %d", block);
    ws->status = s;
    snprintf(ws->err, sizeof ws->err, "sequence parallelism, rank %d of %d: %s%s: %s",
             ws->rank, ws->S, what, where, terr);
}

/* The first and the number of tokens of rank i's shard. */
static void dx_shard(const dxk_dit_ws *ws, int T, int i, int *t0, int *tn)
{
    *t0 = (int)((long)i * T / ws->S);
    *tn = (int)((long)(i + 1) * T / ws->S) - *t0;
}

/* Ulysses attention: ws->qkv [B, tn, 3D] (this rank's tokens, every head)
 * -> all-to-all -> qkvh [B, T, 3 D/S] (every token, this rank's heads) ->
 * attention -> att2 [B, T, D/S] -> all-to-all -> ws->att [B, tn, D].
 * Blocks are padded to tmax tokens so that every rank sends the same
 * bytes. 0, or -1 with the failure recorded in ws. */
static int dx_seq_attention(dxk_dit *m, dxk_dit_ws *ws, int B, int T, int block)
{
    dxk_backend *be = m->be;
    dxk_comm *cm = ws->seq;
    const int S = ws->S, D = m->cfg.hidden_size, Dl = D / S, Hl = m->cfg.num_heads / S;
    const int tn = ws->tn, tmax = ws->tmax;
    const size_t blk = (size_t)B * tmax * 3 * Dl, blk2 = (size_t)B * tmax * Dl;
    const size_t row = (size_t)Dl * sizeof(float);
    /* host-memory buffers are packed and unpacked in place; a device's go
     * through the host buffer ha (download/upload) */
    const int direct = be->host_memory;
    const float *src;
    float *dst;
    char terr[384];
    dexec_status s;
    int i, b, t, p, i0, in;

    if (direct) {
        be->sync(be, NULL, 0); /* the ops before are done (errors: at the caller's sync) */
        src = ws->qkv;
    } else {
        be->download(be, ws->ha, ws->qkv, (size_t)B * tn * 3 * D);
        src = ws->ha;
    }
    for (i = 0; i < S; i++)
        for (b = 0; b < B; b++)
            for (t = 0; t < tn; t++)
                for (p = 0; p < 3; p++)
                    memcpy(ws->hb + i * blk + ((size_t)b * tmax + t) * 3 * Dl + (size_t)p * Dl,
                           src + ((size_t)b * tn + t) * 3 * D + (size_t)p * D + (size_t)i * Dl,
                           row);
    s = cm->alltoall(cm->ctx, ws->hb, ws->hc, blk * sizeof(float), terr, sizeof terr);
    if (s != DEXEC_OK) {
        dx_seq_fail(ws, s, "all-to-all before the attention", block, terr);
        return -1;
    }
    dst = direct ? ws->qkvh : ws->ha;
    for (i = 0; i < S; i++) {
        dx_shard(ws, T, i, &i0, &in);
        for (b = 0; b < B; b++)
            memcpy(dst + ((size_t)b * T + i0) * 3 * Dl,
                   ws->hc + i * blk + (size_t)b * tmax * 3 * Dl, (size_t)in * 3 * row);
    }
    if (!direct)
        be->upload(be, ws->qkvh, ws->ha, (size_t)B * T * 3 * Dl);
    be->attention(be, ws->att2, ws->qkvh, ws->scratch, B, T, Hl, Dl);
    if (direct) {
        be->sync(be, NULL, 0);
        src = ws->att2;
    } else {
        be->download(be, ws->ha, ws->att2, (size_t)B * T * Dl);
        src = ws->ha;
    }
    for (i = 0; i < S; i++) {
        dx_shard(ws, T, i, &i0, &in);
        for (b = 0; b < B; b++)
            memcpy(ws->hb + i * blk2 + (size_t)b * tmax * Dl, src + ((size_t)b * T + i0) * Dl,
                   (size_t)in * row);
    }
    s = cm->alltoall(cm->ctx, ws->hb, ws->hc, blk2 * sizeof(float), terr, sizeof terr);
    if (s != DEXEC_OK) {
        dx_seq_fail(ws, s, "all-to-all after the attention", block, terr);
        return -1;
    }
    dst = direct ? ws->att : ws->ha;
    for (i = 0; i < S; i++)
        for (b = 0; b < B; b++)
            for (t = 0; t < tn; t++)
                memcpy(dst + ((size_t)b * tn + t) * D + (size_t)i * Dl,
                       ws->hc + i * blk2 + ((size_t)b * tmax + t) * Dl, row);
    if (!direct)
        be->upload(be, ws->att, ws->ha, (size_t)B * tn * D);
    return 0;
}

/* The final layer's shard ws->io [B, tn, F] -> all-gather -> ws->io
 * [B, T, F] on every rank. 0, or -1 with the failure recorded in ws. */
static int dx_seq_gather(dxk_dit *m, dxk_dit_ws *ws, int B, int T, int F)
{
    dxk_backend *be = m->be;
    dxk_comm *cm = ws->seq;
    const int tn = ws->tn, tmax = ws->tmax;
    const size_t blk = (size_t)B * tmax * F;
    char terr[384];
    dexec_status s;
    int i, b, i0, in;

    for (b = 0; b < B; b++) {
        be->download(be, ws->ha + (size_t)b * tmax * F, ws->io + (size_t)b * tn * F,
                     (size_t)tn * F);
        memset(ws->ha + ((size_t)b * tmax + tn) * F, 0, (size_t)(tmax - tn) * F * sizeof(float));
    }
    s = cm->allgather(cm->ctx, ws->ha, ws->hb, blk * sizeof(float), terr, sizeof terr);
    if (s != DEXEC_OK) {
        dx_seq_fail(ws, s, "all-gather of the final layer", -1, terr);
        return -1;
    }
    for (i = 0; i < ws->S; i++) {
        dx_shard(ws, T, i, &i0, &in);
        for (b = 0; b < B; b++)
            memcpy(ws->hc + ((size_t)b * T + i0) * F, ws->hb + i * blk + (size_t)b * tmax * F,
                   (size_t)in * F * sizeof(float));
    }
    be->upload(be, ws->io, ws->hc, (size_t)B * T * F);
    return 0;
}

/* The patch embedding of this rank's tokens: io [B, T, F] (the whole
 * patchified input) -> x [B, tn, D], then the positions of those tokens. */
static void dx_embed(dxk_dit *m, dxk_dit_ws *ws, int B, int T, int F)
{
    dxk_backend *be = m->be;
    const int D = m->cfg.hidden_size, p = m->cfg.patch_size, tn = ws->tn;
    int i;

    if (ws->S == 1) {
        dxk_linear_run(be, ws->x, ws->io, &m->x_emb, B * T, D, F);
        if (m->cfg.layout == DXK_DIT_DEXEC) {
            be->pos_embed_add(be, ws->x, B, ws->H / p, ws->W / p, D);
            return;
        }
    } else {
        for (i = 0; i < B; i++)
            dxk_linear_run(be, ws->x + (size_t)i * tn * D,
                           ws->io + ((size_t)i * T + ws->t0) * F, &m->x_emb, tn, D, F);
    }
    for (i = 0; i < B; i++)
        be->gated_residual(be, ws->x + (size_t)i * tn * D, ws->pos + (size_t)ws->t0 * D,
                           ws->ones, 0, 1, tn, D);
}

/* c = t_mlp2(SiLU(t_mlp0(features))) + table[y]; sc = SiLU(c) */
static void dx_condition(dxk_dit *m, dxk_dit_ws *ws, const dxk_linear *t0, const dxk_linear *t2,
                         const float *table, const int *y, int B)
{
    dxk_backend *be = m->be;
    const int D = m->cfg.hidden_size;

    dx_linear_few(be, ws->th, ws->tf, t0, B, D, DXK_TFREQ_DIM);
    be->silu(be, ws->th, ws->th, (size_t)B * D);
    dx_linear_few(be, ws->c, ws->th, t2, B, D, D);
    be->add_embedding(be, ws->c, table, y, B, D);
    be->silu(be, ws->sc, ws->c, (size_t)B * D);
}

/* Attention of block i over ws->qkv into ws->att, alone or split over the
 * sequence group. 0, or -1 when a collective failed. */
static int dx_attention(dxk_dit *m, dxk_dit_ws *ws, int B, int T, int i)
{
    if (ws->S == 1) {
        m->be->attention(m->be, ws->att, ws->qkv, ws->scratch, B, T, m->cfg.num_heads,
                         m->cfg.hidden_size);
        return 0;
    }
    return dx_seq_attention(m, ws, B, T, i);
}

static void dx_forward_published(dxk_dit *m, dxk_dit_ws *ws, float *v, const float *x,
                                 const double *t, const int *y, int B)
{
    const dxk_dit_config *c = &m->cfg;
    dxk_backend *be = m->be;
    const int D = c->hidden_size, C = c->in_channels, Co = c->out_channels, p = c->patch_size;
    const int H = ws->H, W = ws->W, T = (H / p) * (W / p), Tl = ws->tn, BTl = B * Tl;
    const int M = D * c->mlp_ratio, half = DXK_TFREQ_DIM / 2;
    const int diffusers = c->layout == DXK_DIT_DIFFUSERS;
    /* diffusers' Timesteps(downscale_freq_shift=1) divides by half - 1 */
    const double div = diffusers ? half - 1 : half;
    int i, k;

    be->patchify(be, ws->io, x, B, C, H, W, p);
    dx_embed(m, ws, B, T, C * p * p);

    /* the timestep features, cos then sin, in double on the host */
    for (i = 0; i < B; i++)
        for (k = 0; k < half; k++) {
            double a = t[i] * exp(-log(10000.0) * k / div);

            ws->tf_host[(size_t)i * DXK_TFREQ_DIM + k] = (float)cos(a);
            ws->tf_host[(size_t)i * DXK_TFREQ_DIM + half + k] = (float)sin(a);
        }
    be->upload(be, ws->tf, ws->tf_host, (size_t)B * DXK_TFREQ_DIM);
    if (!diffusers)
        dx_condition(m, ws, &m->t_mlp0, &m->t_mlp2, m->y_table, y, B);

    for (i = 0; i < c->depth; i++) {
        const dxk_dit_block *b = &m->blocks[i];
        const float *mod = ws->mod;

        if (diffusers)
            dx_condition(m, ws, &b->t_mlp0, &b->t_mlp2, b->y_table, y, B);
        dx_linear_few(be, ws->mod, ws->sc, &b->ada, B, 6 * D, D);
        be->ln_modulate(be, ws->xn, ws->x, mod, mod + D, 6 * D, B, Tl, D);
        dxk_linear_run(be, ws->qkv, ws->xn, &b->qkv, BTl, 3 * D, D);
        if (dx_attention(m, ws, B, T, i) != 0)
            return;
        dxk_linear_run(be, ws->xn, ws->att, &b->proj, BTl, D, D);
        be->gated_residual(be, ws->x, ws->xn, mod + 2 * D, 6 * D, B, Tl, D);

        be->ln_modulate_eps(be, ws->xn, ws->x, mod + 3 * D, mod + 4 * D, 6 * D, B, Tl, D,
                            (float)c->norm_eps);
        dxk_linear_run(be, ws->hid, ws->xn, &b->fc1, BTl, M, D);
        be->gelu_tanh(be, ws->hid, (size_t)BTl * M);
        dxk_linear_run(be, ws->xn, ws->hid, &b->fc2, BTl, D, M);
        be->gated_residual(be, ws->x, ws->xn, mod + 5 * D, 6 * D, B, Tl, D);
    }

    /* diffusers conditions the final layer with block 0's embedders */
    if (diffusers)
        dx_condition(m, ws, &m->blocks[0].t_mlp0, &m->blocks[0].t_mlp2, m->blocks[0].y_table, y,
                     B);
    dx_linear_few(be, ws->mod, ws->sc, &m->final_ada, B, 2 * D, D);
    be->ln_modulate(be, ws->xn, ws->x, ws->mod, ws->mod + D, 2 * D, B, Tl, D);
    dxk_linear_run(be, ws->io, ws->xn, &m->final_lin, BTl, Co * p * p, D);
    if (ws->S > 1 && dx_seq_gather(m, ws, B, T, Co * p * p) != 0)
        return;
    be->unpatchify(be, v, ws->io, B, Co, H, W, p);
}

void dxk_dit_forward(dxk_dit *m, dxk_dit_ws *ws, float *v, const float *x, const double *t,
                     const int *y, int B)
{
    const dxk_dit_config *c = &m->cfg;
    dxk_backend *be = m->be;
    const int D = c->hidden_size, C = c->in_channels, p = c->patch_size;
    const int H = ws->H, W = ws->W, T = (H / p) * (W / p), F = C * p * p;
    const int M = D * c->mlp_ratio, Tl = ws->tn, BTl = B * Tl;
    int i;

    if (ws->status != DEXEC_OK)
        return; /* a collective failed: the group's request is lost */
    if (c->layout != DXK_DIT_DEXEC) {
        dx_forward_published(m, ws, v, x, t, y, B);
        return;
    }
    /* patch embedding + positions (of this rank's tokens) */
    be->patchify(be, ws->io, x, B, C, H, W, p);
    dx_embed(m, ws, B, T, F);

    /* condition c = t_emb + y_emb; every adaLN reads SiLU(c) */
    be->timestep_embed(be, ws->tf, t, B);
    dx_linear_few(be, ws->th, ws->tf, &m->t_mlp0, B, D, DXK_TFREQ_DIM);
    be->silu(be, ws->th, ws->th, (size_t)B * D);
    dx_linear_few(be, ws->c, ws->th, &m->t_mlp2, B, D, D);
    be->add_embedding(be, ws->c, m->y_table, y, B, D);
    be->silu(be, ws->sc, ws->c, (size_t)B * D);

    for (i = 0; i < c->depth; i++) {
        const dxk_dit_block *b = &m->blocks[i];
        const float *mod = ws->mod; /* shift1 scale1 gate1 shift2 scale2 gate2 */

        dx_linear_few(be, ws->mod, ws->sc, &b->ada, B, 6 * D, D);
        be->ln_modulate(be, ws->xn, ws->x, mod, mod + D, 6 * D, B, Tl, D);
        dxk_linear_run(be, ws->qkv, ws->xn, &b->qkv, BTl, 3 * D, D);
        if (dx_attention(m, ws, B, T, i) != 0)
            return;
        dxk_linear_run(be, ws->xn, ws->att, &b->proj, BTl, D, D);
        be->gated_residual(be, ws->x, ws->xn, mod + 2 * D, 6 * D, B, Tl, D);

        be->ln_modulate(be, ws->xn, ws->x, mod + 3 * D, mod + 4 * D, 6 * D, B, Tl, D);
        dxk_linear_run(be, ws->hid, ws->xn, &b->fc1, BTl, M, D);
        be->gelu_tanh(be, ws->hid, (size_t)BTl * M);
        dxk_linear_run(be, ws->xn, ws->hid, &b->fc2, BTl, D, M);
        be->gated_residual(be, ws->x, ws->xn, mod + 5 * D, 6 * D, B, Tl, D);
    }

    dx_linear_few(be, ws->mod, ws->sc, &m->final_ada, B, 2 * D, D);
    be->ln_modulate(be, ws->xn, ws->x, ws->mod, ws->mod + D, 2 * D, B, Tl, D);
    dxk_linear_run(be, ws->io, ws->xn, &m->final_lin, BTl, F, D);
    if (ws->S > 1 && dx_seq_gather(m, ws, B, T, F) != 0)
        return;
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
