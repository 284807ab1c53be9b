/*
 * vae.c - the AutoencoderKL decoder of diffusers (vae.h): conv_in, a mid
 * block (ResNet, attention, ResNet), up blocks of ResNet blocks with
 * nearest upsampling between them, GroupNorm + SiLU and conv_out, after
 * post_quant_conv. Every ResNet and norm uses GroupNorm eps 1e-6, as
 * diffusers' Decoder builds them.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <dexec/rpc.h>

#include "vae.h"

#define DX_GN_EPS 1e-6f

dexec_status dxk_vae_config_json(const char *path, const char *json, dxk_vae_config *cfg,
                                 char *err, size_t errlen)
{
    json_error_t je;
    json_t *o = json_loads(json, 0, &je), *v;
    size_t i;
    int rc = -1;

    memset(cfg, 0, sizeof *cfg);
    if (o == NULL || !json_is_object(o)) {
        dexec_errorf(err, errlen, "%s: not a JSON object (line %d: %s)", path, je.line,
                     o == NULL ? je.text : "top level");
        json_decref(o);
        return DEXEC_EINVAL;
    }
    if (dxk_json_int(o, path, "latent_channels", 4, 1, 64, &cfg->latent_channels, err,
                     errlen) ||
        dxk_json_int(o, path, "out_channels", 3, 1, 4, &cfg->out_channels, err, errlen) ||
        dxk_json_int(o, path, "norm_num_groups", 32, 1, 1024, &cfg->groups, err, errlen) ||
        dxk_json_int(o, path, "layers_per_block", 1, 1, 16, &cfg->layers_per_block, err, errlen))
        goto out;
    v = json_object_get(o, "block_out_channels");
    if (!json_is_array(v) || json_array_size(v) < 1 || json_array_size(v) > DXK_VAE_MAX_BLOCKS) {
        dexec_errorf(err, errlen, "%s: field 'block_out_channels' must be a list of 1..%d integers",
                     path, DXK_VAE_MAX_BLOCKS);
        goto out;
    }
    cfg->nblocks = (int)json_array_size(v);
    for (i = 0; i < json_array_size(v); i++) {
        json_t *e = json_array_get(v, i);

        if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > 4096 ||
            json_integer_value(e) % cfg->groups != 0) {
            dexec_errorf(err, errlen,
                         "%s: block_out_channels[%zu] must be an integer in 1..4096 and a "
                         "multiple of norm_num_groups %d",
                         path, i, cfg->groups);
            goto out;
        }
        cfg->block_out_channels[i] = (int)json_integer_value(e);
    }
    v = json_object_get(o, "up_block_types");
    for (i = 0; json_is_array(v) && i < json_array_size(v); i++) {
        json_t *e = json_array_get(v, i);

        if (!json_is_string(e) || strcmp(json_string_value(e), "UpDecoderBlock2D") != 0) {
            dexec_errorf(err, errlen,
                         "%s: up_block_types[%zu] is not \"UpDecoderBlock2D\": not the decoder "
                         "dexec runs",
                         path, i);
            goto out;
        }
    }
    if (json_is_array(v) && json_array_size(v) != (size_t)cfg->nblocks) {
        dexec_errorf(err, errlen, "%s: up_block_types has %zu entries, block_out_channels %d",
                     path, json_array_size(v), cfg->nblocks);
        goto out;
    }
    v = json_object_get(o, "act_fn");
    if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), "silu") != 0)) {
        dexec_errorf(err, errlen, "%s: field 'act_fn' must be \"silu\"", path);
        goto out;
    }
    v = json_object_get(o, "shift_factor");
    if (v != NULL && !json_is_null(v)) {
        dexec_errorf(err, errlen,
                     "%s: field 'shift_factor' is set: latents with a shift (SD3, Flux) are not "
                     "supported",
                     path);
        goto out;
    }
    v = json_object_get(o, "mid_block_add_attention");
    cfg->mid_attention = v == NULL || !json_is_false(v);
    v = json_object_get(o, "use_post_quant_conv");
    cfg->post_quant_conv = v == NULL || !json_is_false(v);
    cfg->scaling_factor = 0.18215;
    v = json_object_get(o, "scaling_factor");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_number(v) || !(json_number_value(v) > 0)) {
            dexec_errorf(err, errlen, "%s: field 'scaling_factor' must be a positive number",
                         path);
            goto out;
        }
        cfg->scaling_factor = json_number_value(v);
    }
    rc = 0;
out:
    json_decref(o);
    return rc == 0 ? DEXEC_OK : DEXEC_EINVAL;
}

typedef struct dx_vload {
    const dxk_safetensors *st;
    dxk_vae *v;
    char *used;
    char *err;
    size_t errlen;
    dexec_status s;
    int host_only;
} dx_vload;

static const float *dx_vtake(dx_vload *ld, const char *name, int ndim, const int64_t *shape)
{
    const dxk_tensor *t;
    dxk_backend *be = ld->v->be;
    float *buf, **grown;
    int i, same;

    if (ld->s != DEXEC_OK)
        return NULL;
    t = dxk_st_find(ld->st, name);
    if (t == NULL) {
        dexec_errorf(ld->err, ld->errlen, "%s: tensor '%s' is missing", ld->st->path, name);
        ld->s = DEXEC_EINVAL;
        return NULL;
    }
    same = t->ndim == ndim;
    for (i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char want[96];
        size_t o = 0;

        for (i = 0; i < ndim && o < sizeof want; i++)
            o += (size_t)snprintf(want + o, sizeof want - o, "%s%lld", i ? ", " : "",
                                  (long long)shape[i]);
        dexec_errorf(ld->err, ld->errlen,
                     "%s: tensor '%s' does not have the shape [%s] that config.json implies",
                     ld->st->path, name, want);
        ld->s = DEXEC_EINVAL;
        return NULL;
    }
    ld->used[t - ld->st->tensors] = 1;
    ld->v->params += t->numel;
    if (be->host_memory || ld->host_only)
        return t->data;
    grown = realloc(ld->v->uploads, (ld->v->nuploads + 1) * sizeof *grown);
    if (grown == NULL || (buf = be->alloc(be, t->numel)) == NULL) {
        if (grown != NULL)
            ld->v->uploads = grown;
        dexec_errorf(ld->err, ld->errlen, "%s: tensor '%s': out of memory", ld->st->path, name);
        ld->s = DEXEC_ENOMEM;
        return NULL;
    }
    ld->v->uploads = grown;
    ld->v->uploads[ld->v->nuploads++] = buf;
    be->upload(be, buf, t->data, t->numel);
    return buf;
}

/* n host floats (NULL after a failure) kept in half precision (cfg.dtype) */
static const void *dx_vhalf(dx_vload *ld, const float *host, size_t n, const char *name)
{
    const void *buf = NULL;
    char why[320];

    if (ld->s != DEXEC_OK || host == NULL)
        return NULL;
    ld->s = dxk_upload_half(ld->v->be, host, n, ld->v->cfg.dtype, &ld->v->uploads,
                            &ld->v->nuploads, &buf, why, sizeof why);
    if (ld->s != DEXEC_OK)
        dexec_errorf(ld->err, ld->errlen, "%s: tensor '%s': %s", ld->st->path, name, why);
    else
        ld->v->half_params += n;
    return buf;
}

static void dx_take_conv(dx_vload *ld, dxk_conv *c, const char *prefix, int cout, int cin, int k)
{
    char name[160];
    int64_t ws[4] = {cout, cin, k, k}, bs[1] = {cout};

    c->cin = cin;
    c->cout = cout;
    c->k = k;
    snprintf(name, sizeof name, "%s.weight", prefix);
    if (ld->v->cfg.dtype == DEXEC_DTYPE_F32) {
        c->w = dx_vtake(ld, name, 4, ws);
    } else {
        ld->host_only = 1;
        c->w = NULL;
        c->h = dx_vhalf(ld, dx_vtake(ld, name, 4, ws), (size_t)cout * cin * k * k, name);
        ld->host_only = 0;
    }
    snprintf(name, sizeof name, "%s.bias", prefix);
    c->b = dx_vtake(ld, name, 1, bs);
}

static void dx_take_norm(dx_vload *ld, dxk_norm *n, const char *prefix, int C)
{
    char name[160];
    int64_t s[1] = {C};

    snprintf(name, sizeof name, "%s.weight", prefix);
    n->g = dx_vtake(ld, name, 1, s);
    snprintf(name, sizeof name, "%s.bias", prefix);
    n->b = dx_vtake(ld, name, 1, s);
}

static void dx_take_resnet(dx_vload *ld, dxk_resnet *r, const char *prefix, int cin, int cout)
{
    char name[160];

    snprintf(name, sizeof name, "%s.norm1", prefix);
    dx_take_norm(ld, &r->norm1, name, cin);
    snprintf(name, sizeof name, "%s.conv1", prefix);
    dx_take_conv(ld, &r->conv1, name, cout, cin, 3);
    snprintf(name, sizeof name, "%s.norm2", prefix);
    dx_take_norm(ld, &r->norm2, name, cout);
    snprintf(name, sizeof name, "%s.conv2", prefix);
    dx_take_conv(ld, &r->conv2, name, cout, cout, 3);
    if (cin != cout) {
        snprintf(name, sizeof name, "%s.conv_shortcut", prefix);
        dx_take_conv(ld, &r->shortcut, name, cout, cin, 1);
    }
}

/* The mid block's attention: q, k and v fused into one [3C, C] weight. */
static void dx_take_attention(dx_vload *ld, int C)
{
    static const char *const names[2][4] = {{"to_q", "to_k", "to_v", "to_out.0"},
                                            {"query", "key", "value", "proj_attn"}};
    const char *pre = "decoder.mid_block.attentions.0";
    dxk_backend *be = ld->v->be;
    int64_t ws[2] = {C, C}, bs[1] = {C};
    const float *w[3], *b[3];
    char name[160];
    float *fw, *fb, **grown;
    const int half = ld->v->cfg.dtype;
    int old, i;

    snprintf(name, sizeof name, "%s.to_q.weight", pre);
    old = dxk_st_find(ld->st, name) == NULL;
    snprintf(name, sizeof name, "%s.group_norm", pre);
    dx_take_norm(ld, &ld->v->attn_norm, name, C);
    ld->host_only = 1;
    for (i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s.%s.weight", pre, names[old][i]);
        w[i] = dx_vtake(ld, name, 2, ws);
        snprintf(name, sizeof name, "%s.%s.bias", pre, names[old][i]);
        b[i] = dx_vtake(ld, name, 1, bs);
    }
    ld->host_only = 0;
    snprintf(name, sizeof name, "%s.%s.weight", pre, names[old][3]);
    ld->v->attn_out.dtype = ld->v->attn_qkv.dtype = half;
    if (!half) {
        ld->v->attn_out.w = dx_vtake(ld, name, 2, ws);
    } else {
        ld->host_only = 1;
        ld->v->attn_out.h = dx_vhalf(ld, dx_vtake(ld, name, 2, ws), (size_t)C * C, name);
        ld->host_only = 0;
    }
    snprintf(name, sizeof name, "%s.%s.bias", pre, names[old][3]);
    ld->v->attn_out.b = dx_vtake(ld, name, 1, bs);
    if (ld->s != DEXEC_OK)
        return;
    grown = realloc(ld->v->uploads, (ld->v->nuploads + 2) * sizeof *grown);
    if (grown == NULL) {
        dexec_errorf(ld->err, ld->errlen, "%s: out of memory", ld->st->path);
        ld->s = DEXEC_ENOMEM;
        return;
    }
    ld->v->uploads = grown;
    fw = half ? malloc((size_t)3 * C * C * sizeof *fw) : be->alloc(be, (size_t)3 * C * C);
    fb = be->alloc(be, (size_t)3 * C);
    if (fw == NULL || fb == NULL) {
        if (half)
            free(fw);
        else
            be->release(be, fw);
        be->release(be, fb);
        dexec_errorf(ld->err, ld->errlen, "%s: the attention weights: %s: out of memory",
                     ld->st->path, half ? "host" : be->name);
        ld->s = DEXEC_ENOMEM;
        return;
    }
    if (!half)
        ld->v->uploads[ld->v->nuploads++] = fw;
    ld->v->uploads[ld->v->nuploads++] = fb;
    for (i = 0; i < 3; i++) {
        if (half)
            memcpy(fw + (size_t)i * C * C, w[i], (size_t)C * C * sizeof *fw);
        else
            be->upload(be, fw + (size_t)i * C * C, w[i], (size_t)C * C);
        be->upload(be, fb + (size_t)i * C, b[i], (size_t)C);
    }
    ld->v->attn_qkv.b = fb;
    if (!half) {
        ld->v->attn_qkv.w = fw;
        return;
    }
    /* the fused host copy, converted and uploaded once */
    snprintf(name, sizeof name, "%s.%s/%s/%s.weight", pre, names[old][0], names[old][1],
             names[old][2]);
    ld->v->attn_qkv.h = dx_vhalf(ld, fw, (size_t)3 * C * C, name);
    free(fw);
}

dexec_status dxk_vae_load(const dxk_safetensors *st, const dxk_vae_config *cfg, dxk_backend *be,
                          dxk_vae **out, char *err, size_t errlen)
{
    const int n = cfg->nblocks, L = cfg->layers_per_block + 1;
    const int top = cfg->block_out_channels[n - 1];
    dx_vload ld;
    dxk_vae *v;
    char name[128];
    int i, j, prev;
    size_t k;

    *out = NULL;
    v = calloc(1, sizeof *v);
    memset(&ld, 0, sizeof ld);
    ld.used = calloc(st->ntensors + 1, 1);
    if (v != NULL) {
        v->res = calloc((size_t)n * L, sizeof *v->res);
        v->up = calloc((size_t)n, sizeof *v->up);
    }
    if (v == NULL || v->res == NULL || v->up == NULL || ld.used == NULL) {
        if (v != NULL) {
            free(v->res);
            free(v->up);
        }
        free(v);
        free(ld.used);
        dexec_errorf(err, errlen, "%s: out of memory", st->path);
        return DEXEC_ENOMEM;
    }
    v->cfg = *cfg;
    v->be = be;
    ld.st = st;
    ld.v = v;
    ld.err = err;
    ld.errlen = errlen;
    if (cfg->post_quant_conv)
        dx_take_conv(&ld, &v->post_quant, "post_quant_conv", cfg->latent_channels,
                     cfg->latent_channels, 1);
    dx_take_conv(&ld, &v->conv_in, "decoder.conv_in", top, cfg->latent_channels, 3);
    dx_take_resnet(&ld, &v->mid[0], "decoder.mid_block.resnets.0", top, top);
    if (cfg->mid_attention)
        dx_take_attention(&ld, top);
    dx_take_resnet(&ld, &v->mid[1], "decoder.mid_block.resnets.1", top, top);
    prev = top;
    for (i = 0; i < n; i++) {
        int oc = cfg->block_out_channels[n - 1 - i];

        for (j = 0; j < L; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            dx_take_resnet(&ld, &v->res[i * L + j], name, j == 0 ? prev : oc, oc);
        }
        if (i < n - 1) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            dx_take_conv(&ld, &v->up[i], name, oc, oc, 3);
        }
        prev = oc;
    }
    dx_take_norm(&ld, &v->norm_out, "decoder.conv_norm_out", cfg->block_out_channels[0]);
    dx_take_conv(&ld, &v->conv_out, "decoder.conv_out", cfg->out_channels,
                 cfg->block_out_channels[0], 3);
    for (k = 0; ld.s == DEXEC_OK && k < st->ntensors; k++) {
        const char *tn = st->tensors[k].name;

        if (!ld.used[k] && strncmp(tn, "encoder.", 8) != 0 && strncmp(tn, "quant_conv.", 11) != 0) {
            dexec_errorf(err, errlen,
                         "%s: tensor '%s' is not part of the decoder that config.json describes",
                         st->path, tn);
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
        dxk_vae_free(v);
        return ld.s;
    }
    *out = v;
    return DEXEC_OK;
}

void dxk_vae_free(dxk_vae *v)
{
    size_t i;

    if (v == NULL)
        return;
    for (i = 0; i < v->nuploads; i++)
        v->be->release(v->be, v->uploads[i]);
    free(v->uploads);
    free(v->res);
    free(v->up);
    free(v);
}

int dxk_vae_scale(const dxk_vae_config *cfg)
{
    return 1 << (cfg->nblocks - 1);
}

/* The decode's buffers: x (the running tensor), h and t (temporaries),
 * each the size of the largest stage; qkv and scratch for the attention. */
typedef struct dx_vws {
    float *x, *h, *t, *qkv, *scratch;
} dx_vws;

static void dx_conv(dxk_vae *v, float *y, const float *x, const dxk_conv *c, int B, int H, int W)
{
    if (c->h != NULL)
        v->be->conv2d_half(v->be, y, x, c->h, v->cfg.dtype, c->b, B, c->cin, H, W, c->cout,
                           c->k);
    else
        v->be->conv2d(v->be, y, x, c->w, c->b, B, c->cin, H, W, c->cout, c->k);
}

/* y (=, or += with pre->acc) conv(pre(x)) in one pass where the CPU
 * backend can (dxk_cpu_conv3, F32 weights); 0 when the caller must run
 * the ops one by one */
static int dx_conv_fused(dxk_vae *v, float *y, const float *x, const dxk_conv *c, int B, int H,
                         int W, const dxk_conv_pre *pre)
{
    return c->w != NULL &&
           dxk_cpu_conv3(v->be, y, x, c->w, c->b, B, c->cin, H, W, c->cout, pre);
}

/* x = x + conv2(SiLU(GN(conv1(SiLU(GN(x)))))), the shortcut convolved when
 * the channel count changes; the result is left in *x (buffers rotate).
 * On the CPU backend each 3x3 convolution takes its GroupNorm + SiLU, and
 * conv2 the residual sum, inside its own pass (dxk_cpu_conv3); elsewhere,
 * op by op. */
static void dx_resnet(dxk_vae *v, dx_vws *w, const dxk_resnet *r, int B, int H, int W)
{
    dxk_backend *be = v->be;
    const int G = v->cfg.groups, HW = H * W, ci = r->conv1.cin, co = r->conv1.cout;
    const dxk_conv_pre p1 = {r->norm1.g, r->norm1.b, G, 1, DX_GN_EPS, 0, 0};
    const dxk_conv_pre p2 = {r->norm2.g, r->norm2.b, G, 1, DX_GN_EPS, 0, 1};
    float *tmp;

    if (!dx_conv_fused(v, w->t, w->x, &r->conv1, B, H, W, &p1)) {
        be->group_norm(be, w->h, w->x, r->norm1.g, r->norm1.b, B, ci, HW, G, DX_GN_EPS, 1);
        dx_conv(v, w->t, w->h, &r->conv1, B, H, W);
    }
    if (r->shortcut.k != 0) {
        dx_conv(v, w->h, w->x, &r->shortcut, B, H, W);
        tmp = w->x;
        w->x = w->h;
        w->h = tmp;
    }
    /* x += conv2(SiLU(GN(t))) */
    if (!dx_conv_fused(v, w->x, w->t, &r->conv2, B, H, W, &p2)) {
        be->group_norm(be, w->t, w->t, r->norm2.g, r->norm2.b, B, co, HW, G, DX_GN_EPS, 1);
        dx_conv(v, w->h, w->t, &r->conv2, B, H, W);
        be->euler(be, w->x, w->h, 1.0f, (size_t)B * co * HW);
    }
}

/* x = x + out(attention(GN(x))), one head over the H*W positions */
static void dx_attention(dxk_vae *v, dx_vws *w, int B, int H, int W)
{
    dxk_backend *be = v->be;
    const int C = v->cfg.block_out_channels[v->cfg.nblocks - 1], T = H * W;

    be->group_norm(be, w->h, w->x, v->attn_norm.g, v->attn_norm.b, B, C, T, v->cfg.groups,
                   DX_GN_EPS, 0);
    be->patchify(be, w->t, w->h, B, C, H, W, 1); /* [B,C,T] -> [B,T,C] */
    dxk_linear_run(be, w->qkv, w->t, &v->attn_qkv, B * T, 3 * C, C);
    be->attention(be, w->h, w->qkv, w->scratch, B, T, 1, C);
    dxk_linear_run(be, w->t, w->h, &v->attn_out, B * T, C, C);
    be->unpatchify(be, w->h, w->t, B, C, H, W, 1);
    be->euler(be, w->x, w->h, 1.0f, (size_t)B * C * T);
}

/* Floats of the largest activation: channels x positions over the stages. */
static size_t dx_vae_max(const dxk_vae_config *c, int h, int w)
{
    size_t best = (size_t)c->latent_channels * h * w, s;
    int i, n = c->nblocks, prev = c->block_out_channels[n - 1];

    for (i = 0; i < n; i++) {
        int oc = c->block_out_channels[n - 1 - i];

        s = (size_t)(prev > oc ? prev : oc) * h * w;
        if (s > best)
            best = s;
        if (i < n - 1) {
            h *= 2;
            w *= 2;
            s = (size_t)oc * h * w;
            if (s > best)
                best = s;
        }
        prev = oc;
    }
    return best;
}

dexec_status dxk_vae_decode(dxk_vae *v, const float *z, int B, int h, int w, float *img,
                            char *err, size_t errlen)
{
    const dxk_vae_config *c = &v->cfg;
    dxk_backend *be = v->be;
    const int n = c->nblocks, L = c->layers_per_block + 1, top = c->block_out_channels[n - 1];
    const size_t nz = (size_t)B * c->latent_channels * h * w, big = (size_t)B * dx_vae_max(c, h, w);
    dx_vws ws = {0};
    float *zs = NULL, *tmp;
    dexec_status s;
    int H = h, W = w, i, j;
    size_t k;

    zs = malloc(nz * sizeof *zs);
    ws.x = be->alloc(be, big);
    ws.h = be->alloc(be, big);
    ws.t = be->alloc(be, big);
    if (c->mid_attention) {
        ws.qkv = be->alloc(be, (size_t)B * h * w * 3 * top);
        ws.scratch = be->alloc(be, be->attention_scratch(be, B, h * w, 1));
    }
    if (zs == NULL || ws.x == NULL || ws.h == NULL || ws.t == NULL ||
        (c->mid_attention && (ws.qkv == NULL || ws.scratch == NULL))) {
        dexec_errorf(err, errlen, "decoding %d latent(s) of %dx%d: %s: out of memory for %zu floats",
                     B, h, w, be->name, 3 * big);
        s = DEXEC_ENOMEM;
        goto done;
    }
    /* diffusers divides the latents by scaling_factor before decode() */
    for (k = 0; k < nz; k++)
        zs[k] = (float)(z[k] / c->scaling_factor);
    be->upload(be, ws.t, zs, nz);
    if (c->post_quant_conv) {
        dx_conv(v, ws.h, ws.t, &v->post_quant, B, H, W);
        tmp = ws.t;
        ws.t = ws.h;
        ws.h = tmp;
    }
    dx_conv(v, ws.x, ws.t, &v->conv_in, B, H, W);
    dx_resnet(v, &ws, &v->mid[0], B, H, W);
    if (c->mid_attention)
        dx_attention(v, &ws, B, H, W);
    dx_resnet(v, &ws, &v->mid[1], B, H, W);
    for (i = 0; i < n; i++) {
        for (j = 0; j < L; j++)
            dx_resnet(v, &ws, &v->res[i * L + j], B, H, W);
        if (i < n - 1) {
            const dxk_conv_pre up = {NULL, NULL, 0, 0, 0.0f, 1, 0};

            H *= 2;
            W *= 2;
            /* on the CPU backend the upsampling is done as the
             * convolution reads its input (dxk_cpu_conv3) */
            if (dx_conv_fused(v, ws.t, ws.x, &v->up[i], B, H, W, &up)) {
                tmp = ws.x;
                ws.x = ws.t;
                ws.t = tmp;
            } else {
                be->upsample_nearest2x(be, ws.t, ws.x, B, v->up[i].cin, H / 2, W / 2);
                dx_conv(v, ws.x, ws.t, &v->up[i], B, H, W);
            }
        }
    }
    {
        /* conv_out(SiLU(GN(x))): fused on the CPU backend (a direct
         * convolution there: 3 channels out) */
        const dxk_conv_pre po = {v->norm_out.g, v->norm_out.b, c->groups, 1, DX_GN_EPS, 0, 0};

        if (!dx_conv_fused(v, ws.h, ws.x, &v->conv_out, B, H, W, &po)) {
            be->group_norm(be, ws.h, ws.x, v->norm_out.g, v->norm_out.b, B,
                           c->block_out_channels[0], H * W, c->groups, DX_GN_EPS, 1);
            dx_conv(v, ws.x, ws.h, &v->conv_out, B, H, W);
            tmp = ws.x;
            ws.x = ws.h;
            ws.h = tmp;
        }
    }
    be->download(be, img, ws.h, (size_t)B * c->out_channels * H * W);
    s = be->sync(be, err, errlen);
done:
    free(zs);
    be->release(be, ws.x);
    be->release(be, ws.h);
    be->release(be, ws.t);
    be->release(be, ws.qkv);
    be->release(be, ws.scratch);
    return s;
}

double dxk_vae_flops(const dxk_vae_config *c, int B, int h, int w)
{
    const int n = c->nblocks, L = c->layers_per_block + 1, top = c->block_out_channels[n - 1];
    double f = 0, hw = (double)h * w, T = hw;
    int i, j, prev = top;

#define DX_CONV_F(co, ci, k, px) (2.0 * (co) * (ci) * (k) * (k) * (px))
#define DX_RES_F(ci, co, px)                                                                    \
    (DX_CONV_F(co, ci, 3, px) + DX_CONV_F(co, co, 3, px) + ((ci) != (co) ? DX_CONV_F(co, ci, 1, px) : 0))
    f += DX_CONV_F(c->latent_channels, c->latent_channels, 1, hw);
    f += DX_CONV_F(top, c->latent_channels, 3, hw);
    f += 2 * DX_RES_F(top, top, hw);
    if (c->mid_attention)
        f += 2.0 * T * top * 4 * top + 2.0 * 2.0 * T * T * top;
    for (i = 0; i < n; i++) {
        int oc = c->block_out_channels[n - 1 - i];

        for (j = 0; j < L; j++)
            f += DX_RES_F(j == 0 ? prev : oc, oc, hw);
        if (i < n - 1) {
            hw *= 4;
            f += DX_CONV_F(oc, oc, 3, hw);
        }
        prev = oc;
    }
    f += DX_CONV_F(c->out_channels, c->block_out_channels[0], 3, hw);
#undef DX_RES_F
#undef DX_CONV_F
    return B * f;
}
