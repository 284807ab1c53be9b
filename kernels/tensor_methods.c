/*
 * tensor_methods.c - the raw tensor methods of a published latent model
 * (doc/protocol.md "Tensor methods"): one transformer forward pass, one
 * guided pass, a whole sampler run from given noise, one VAE decode, each
 * on tensors passed in the call as bin values of little-endian float32
 * and answered the same way. They exist so that people porting or
 * validating a model can feed dexec and a reference the same inputs.
 *
 * Nothing here touches the file system: tensors arrive in the request
 * (dexec rpc reads @FILE arguments on the client side).
 */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/rpc.h>

#include "kernels.h"
#include "latent.h"
#include "pipeline.h"
#include "sampler.h"
#include "vae.h"

/* Largest latent side accepted (the 512-px models have 64) and batch of
 * latent_forward / vae_decode. */
#define DX_TM_MAX_SIDE 256
#define DX_TM_MAX_BATCH 64

static const char *const dx_tm_names[] = {"latent_forward", "latent_guided", "latent_sample",
                                          "vae_decode", "latent_noise"};

int dxk_tensor_method_known(const char *method)
{
    for (size_t i = 0; i < sizeof dx_tm_names / sizeof dx_tm_names[0]; i++)
        if (strcmp(method, dx_tm_names[i]) == 0)
            return 1;
    return 0;
}

/* opts[key] as an integer in lo..hi; def when absent (def < lo: required). */
static dexec_status dx_opt_int(const char *method, const dexec_value *opts, const char *key,
                               int lo, int hi, int def, int *out, char *err, size_t errlen)
{
    const dexec_value *v = dexec_value_map_get(opts, key);

    if (v == NULL || v->type == DEXEC_VAL_NIL) {
        if (def < lo) {
            dexec_errorf(err, errlen, "%s: the options map needs '%s' (an integer %d..%d)",
                         method, key, lo, hi);
            return DEXEC_EINVAL;
        }
        *out = def;
        return DEXEC_OK;
    }
    if (v->type != DEXEC_VAL_INT || v->u.i < lo || v->u.i > hi) {
        dexec_errorf(err, errlen, "%s: option '%s' must be an integer %d..%d", method, key, lo,
                     hi);
        return DEXEC_EINVAL;
    }
    *out = (int)v->u.i;
    return DEXEC_OK;
}

static dexec_status dx_opt_num(const char *method, const dexec_value *opts, const char *key,
                               double lo, double hi, int required, double def, double *out,
                               char *err, size_t errlen)
{
    const dexec_value *v = dexec_value_map_get(opts, key);

    if (v == NULL || v->type == DEXEC_VAL_NIL) {
        if (required) {
            dexec_errorf(err, errlen, "%s: the options map needs '%s' (a number %g..%g)",
                         method, key, lo, hi);
            return DEXEC_EINVAL;
        }
        *out = def;
        return DEXEC_OK;
    }
    if ((v->type != DEXEC_VAL_INT && v->type != DEXEC_VAL_FLOAT) ||
        !(dexec_value_as_float(v, NAN) >= lo && dexec_value_as_float(v, NAN) <= hi)) {
        dexec_errorf(err, errlen, "%s: option '%s' must be a number %g..%g", method, key, lo, hi);
        return DEXEC_EINVAL;
    }
    *out = dexec_value_as_float(v, def);
    return DEXEC_OK;
}

/* args[index] as n floats (a bin value of exactly 4n bytes), copied into
 * aligned memory the caller frees. */
static dexec_status dx_tensor_arg(const char *method, const dexec_value *args, size_t index,
                                  const char *name, const char *shape, size_t n, float **out,
                                  char *err, size_t errlen)
{
    const dexec_value *v = dexec_value_array_get(args, index);

    *out = NULL;
    if (v == NULL || v->type != DEXEC_VAL_BIN) {
        dexec_errorf(err, errlen,
                     "%s: argument %zu must be %s as bin (raw little-endian float32 %s; dexec "
                     "rpc: @FILE)",
                     method, index + 1, name, shape);
        return DEXEC_EINVAL;
    }
    if (v->u.str.len != n * sizeof(float)) {
        dexec_errorf(err, errlen, "%s: %s is %zu bytes; %s float32 is %zu bytes", method, name,
                     v->u.str.len, shape, n * sizeof(float));
        return DEXEC_EINVAL;
    }
    *out = malloc(n * sizeof(float) + 1);
    if (*out == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory for %s", method, name);
        return DEXEC_ENOMEM;
    }
    /* the host is little-endian (configure checks it for safetensors) */
    memcpy(*out, v->u.str.ptr, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        if (!isfinite((*out)[i])) {
            dexec_errorf(err, errlen, "%s: %s holds a NaN or infinity at float %zu", method,
                         name, i);
            free(*out);
            *out = NULL;
            return DEXEC_EINVAL;
        }
    return DEXEC_OK;
}

/* {"shape": [dims], "data": bin}; takes data. */
static dexec_value *dx_tensor_value(float *data, const int *dims, int nd)
{
    dexec_value *m = dexec_value_map(), *shape = dexec_value_array();
    size_t n = 1;

    for (int i = 0; i < nd; i++) {
        dexec_value_array_push(shape, dexec_value_int(dims[i]));
        n *= (size_t)dims[i];
    }
    dexec_value_map_set(m, "shape", shape);
    dexec_value_map_set(m, "data", dexec_value_bin_take(data, n * sizeof(float)));
    return m;
}

static dexec_status dx_class(const char *method, const dxk_pipeline *p, const dexec_value *v,
                             const char *key, int *out, char *err, size_t errlen)
{
    const int K = p->vocab->num_classes;

    if (v == NULL || v->type != DEXEC_VAL_INT || v->u.i < 0 || v->u.i > K) {
        dexec_errorf(err, errlen, "%s: '%s' must be a class index 0..%d (%d: the null class)",
                     method, key, K, K);
        return DEXEC_EINVAL;
    }
    *out = (int)v->u.i;
    return DEXEC_OK;
}

static dexec_status dx_latent_forward(dxk_pipeline *p, const dexec_value *opts,
                                      const dexec_value *args, dexec_value **out, char *err,
                                      size_t errlen)
{
    const char *me = "latent_forward";
    const dexec_value *tv = dexec_value_map_get(opts, "t"), *yv = dexec_value_map_get(opts, "y");
    const int C = p->dit->cfg.in_channels, OC = p->dit->cfg.out_channels;
    int h, w, B, dims[4];
    double *t = NULL;
    int *y = NULL;
    float *x = NULL, *v = NULL;
    dxk_dit_ws *ws = NULL;
    char shape[96];
    dexec_status s;

    s = dx_opt_int(me, opts, "h", 1, DX_TM_MAX_SIDE, 0, &h, err, errlen);
    if (s == DEXEC_OK)
        s = dx_opt_int(me, opts, "w", 1, DX_TM_MAX_SIDE, 0, &w, err, errlen);
    if (s != DEXEC_OK)
        return s;
    if (tv == NULL || tv->type != DEXEC_VAL_ARRAY || yv == NULL || yv->type != DEXEC_VAL_ARRAY ||
        tv->u.arr.len != yv->u.arr.len || tv->u.arr.len < 1 || tv->u.arr.len > DX_TM_MAX_BATCH) {
        dexec_errorf(err, errlen,
                     "%s: options 't' (timesteps) and 'y' (class indices) must be arrays of the "
                     "same length 1..%d (the batch)",
                     me, DX_TM_MAX_BATCH);
        return DEXEC_EINVAL;
    }
    if (h % p->dit->cfg.patch_size != 0 || w % p->dit->cfg.patch_size != 0) {
        dexec_errorf(err, errlen, "%s: latent %dx%d is not a multiple of the patch size %d", me,
                     w, h, p->dit->cfg.patch_size);
        return DEXEC_EINVAL;
    }
    B = (int)tv->u.arr.len;
    t = calloc((size_t)B, sizeof *t);
    y = calloc((size_t)B, sizeof *y);
    if (t == NULL || y == NULL) {
        s = DEXEC_ENOMEM;
        dexec_errorf(err, errlen, "%s: out of memory", me);
        goto done;
    }
    for (int i = 0; i < B && s == DEXEC_OK; i++) {
        const dexec_value *ti = tv->u.arr.items[i];

        t[i] = dexec_value_as_float(ti, NAN);
        if ((ti->type != DEXEC_VAL_INT && ti->type != DEXEC_VAL_FLOAT) || !(t[i] >= 0) ||
            t[i] > 1000) {
            dexec_errorf(err, errlen, "%s: t[%d] must be a number 0..1000", me, i);
            s = DEXEC_EINVAL;
        } else {
            s = dx_class(me, p, yv->u.arr.items[i], "y[i]", &y[i], err, errlen);
        }
    }
    snprintf(shape, sizeof shape, "[%d, %d, %d, %d]", B, C, h, w);
    if (s == DEXEC_OK)
        s = dx_tensor_arg(me, args, 1, "x", shape, (size_t)B * C * h * w, &x, err, errlen);
    if (s == DEXEC_OK)
        s = dxk_dit_ws_alloc(p->dit, B, h, w, &ws, err, errlen);
    if (s == DEXEC_OK && (v = malloc((size_t)B * OC * h * w * sizeof *v)) == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory", me);
        s = DEXEC_ENOMEM;
    }
    if (s == DEXEC_OK) {
        dxk_dit_forward(p->dit, ws, v, x, t, y, B);
        s = dxk_dit_ws_check(ws, err, errlen);
        if (s == DEXEC_OK)
            s = p->dit->be->sync(p->dit->be, err, errlen);
    }
    if (s == DEXEC_OK) {
        dims[0] = B;
        dims[1] = OC;
        dims[2] = h;
        dims[3] = w;
        *out = dx_tensor_value(v, dims, 4);
        v = NULL;
    }
done:
    if (ws != NULL)
        dxk_dit_ws_free(p->dit, ws);
    free(t);
    free(y);
    free(x);
    free(v);
    return s;
}

/* The options latent_guided and latent_sample share. */
static dexec_status dx_guide_opts(const char *me, const dxk_pipeline *p, const dexec_value *opts,
                                  int *h, int *w, int *y, int *y_neg, double *g, int *gc,
                                  char *err, size_t errlen)
{
    const dexec_value *yn = dexec_value_map_get(opts, "y_neg");
    dexec_status s;

    s = dx_opt_int(me, opts, "h", 1, DX_TM_MAX_SIDE, 0, h, err, errlen);
    if (s == DEXEC_OK)
        s = dx_opt_int(me, opts, "w", 1, DX_TM_MAX_SIDE, 0, w, err, errlen);
    if (s == DEXEC_OK)
        s = dx_class(me, p, dexec_value_map_get(opts, "y"), "y", y, err, errlen);
    *y_neg = p->vocab->num_classes;
    if (s == DEXEC_OK && yn != NULL && yn->type != DEXEC_VAL_NIL)
        s = dx_class(me, p, yn, "y_neg", y_neg, err, errlen);
    if (s == DEXEC_OK)
        s = dx_opt_num(me, opts, "guidance", 0, DEXEC_MAX_GUIDANCE, 0, p->default_guidance, g,
                       err, errlen);
    if (s == DEXEC_OK)
        s = dx_opt_int(me, opts, "guide_channels", 1, p->dit->cfg.out_channels,
                       p->guide_channels, gc, err, errlen);
    if (s == DEXEC_OK &&
        (*h % p->dit->cfg.patch_size != 0 || *w % p->dit->cfg.patch_size != 0)) {
        dexec_errorf(err, errlen, "%s: latent %dx%d is not a multiple of the patch size %d", me,
                     *w, *h, p->dit->cfg.patch_size);
        s = DEXEC_EINVAL;
    }
    return s;
}

static dexec_status dx_latent_guided(dxk_pipeline *p, const dexec_value *opts,
                                     const dexec_value *args, dexec_value **out, char *err,
                                     size_t errlen)
{
    const char *me = "latent_guided";
    const int C = p->dit->cfg.in_channels, OC = p->dit->cfg.out_channels;
    int h = 0, w = 0, y, y_neg, gc, dims[4];
    double g, t;
    float *x = NULL, *v = NULL;
    dxk_dit_ws *ws = NULL;
    char shape[96];
    dexec_status s;

    s = dx_guide_opts(me, p, opts, &h, &w, &y, &y_neg, &g, &gc, err, errlen);
    if (s == DEXEC_OK)
        s = dx_opt_num(me, opts, "t", 0, 1000, 1, 0, &t, err, errlen);
    snprintf(shape, sizeof shape, "[%d, %d, %d]", C, h, w);
    if (s == DEXEC_OK)
        s = dx_tensor_arg(me, args, 1, "x", shape, (size_t)C * h * w, &x, err, errlen);
    if (s == DEXEC_OK)
        s = dxk_dit_ws_alloc(p->dit, g != 1.0 ? 2 : 1, h, w, &ws, err, errlen);
    if (s == DEXEC_OK && (v = malloc((size_t)OC * h * w * sizeof *v)) == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory", me);
        s = DEXEC_ENOMEM;
    }
    if (s == DEXEC_OK)
        s = dxk_latent_guided(p->dit, ws, x, t, y, y_neg, g, gc, v, err, errlen);
    if (s == DEXEC_OK) {
        dims[0] = 1;
        dims[1] = OC;
        dims[2] = h;
        dims[3] = w;
        *out = dx_tensor_value(v, dims, 4);
        v = NULL;
    }
    if (ws != NULL)
        dxk_dit_ws_free(p->dit, ws);
    free(x);
    free(v);
    return s;
}

static dexec_status dx_latent_sample(dxk_pipeline *p, const dexec_value *opts,
                                     const dexec_value *args, dexec_value **out, char *err,
                                     size_t errlen)
{
    const char *me = "latent_sample";
    const int C = p->dit->cfg.in_channels;
    const char *sname = dexec_value_as_str(dexec_value_map_get(opts, "sampler"), NULL);
    int h = 0, w = 0, y, y_neg, gc, steps = 1, dims[4];
    double g;
    float *noise = NULL, *step_noise = NULL, *z = NULL;
    dxk_dit_ws *ws = NULL;
    dxk_latent_args a;
    dxk_sampler sampler = p->sampler;
    char shape[96];
    dexec_status s;

    s = dx_guide_opts(me, p, opts, &h, &w, &y, &y_neg, &g, &gc, err, errlen);
    if (s == DEXEC_OK)
        s = dx_opt_int(me, opts, "steps", 1, 1000, p->default_steps, &steps, err, errlen);
    if (s == DEXEC_OK && sname != NULL) {
        char e2[256];

        s = dxk_sampler_parse(sname, &sampler, e2, sizeof e2);
        if (s != DEXEC_OK)
            dexec_errorf(err, errlen, "%s: %s", me, e2);
    }
    snprintf(shape, sizeof shape, "[%d, %d, %d]", C, h, w);
    if (s == DEXEC_OK)
        s = dx_tensor_arg(me, args, 1, "noise", shape, (size_t)C * h * w, &noise, err, errlen);
    if (s == DEXEC_OK && dexec_value_array_get(args, 2) != NULL) {
        if (sampler != DXK_SAMPLER_DDPM) {
            dexec_errorf(err, errlen,
                         "%s: per-step noise is for the ddpm sampler; %s adds none", me,
                         dxk_sampler_name(sampler));
            s = DEXEC_EINVAL;
        } else {
            snprintf(shape, sizeof shape, "[%d, %d, %d, %d]", steps, C, h, w);
            s = dx_tensor_arg(me, args, 2, "step_noise", shape, (size_t)steps * C * h * w,
                              &step_noise, err, errlen);
        }
    }
    if (s == DEXEC_OK)
        s = dxk_dit_ws_alloc(p->dit, g != 1.0 ? 2 : 1, h, w, &ws, err, errlen);
    if (s == DEXEC_OK && (z = malloc((size_t)C * h * w * sizeof *z)) == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory", me);
        s = DEXEC_ENOMEM;
    }
    if (s == DEXEC_OK) {
        memset(&a, 0, sizeof a);
        a.noise = noise;
        a.step_noise = step_noise;
        a.h = h;
        a.w = w;
        a.y = y;
        a.y_neg = y_neg;
        a.steps = steps;
        a.guidance = g;
        a.guide_channels = gc;
        a.sampler = sampler;
        s = dxk_latent_sample(p->dit, ws, &a, z, err, errlen);
    }
    if (s == DEXEC_OK) {
        dims[0] = 1;
        dims[1] = C;
        dims[2] = h;
        dims[3] = w;
        *out = dx_tensor_value(z, dims, 4);
        z = NULL;
    }
    if (ws != NULL)
        dxk_dit_ws_free(p->dit, ws);
    free(noise);
    free(step_noise);
    free(z);
    return s;
}

static dexec_status dx_vae_decode(dxk_pipeline *p, const dexec_value *opts,
                                  const dexec_value *args, dexec_value **out, char *err,
                                  size_t errlen)
{
    const char *me = "vae_decode";
    const int C = p->vae->cfg.latent_channels, OC = p->vae->cfg.out_channels;
    const int sc = dxk_vae_scale(&p->vae->cfg);
    int h = 0, w = 0, B = 1, dims[4];
    float *z = NULL, *img = NULL;
    char shape[96];
    dexec_status s;

    s = dx_opt_int(me, opts, "h", 1, DX_TM_MAX_SIDE, 0, &h, err, errlen);
    if (s == DEXEC_OK)
        s = dx_opt_int(me, opts, "w", 1, DX_TM_MAX_SIDE, 0, &w, err, errlen);
    if (s == DEXEC_OK)
        s = dx_opt_int(me, opts, "batch", 1, DX_TM_MAX_BATCH, 1, &B, err, errlen);
    snprintf(shape, sizeof shape, "[%d, %d, %d, %d]", B, C, h, w);
    if (s == DEXEC_OK)
        s = dx_tensor_arg(me, args, 1, "z", shape, (size_t)B * C * h * w, &z, err, errlen);
    if (s == DEXEC_OK &&
        (img = malloc((size_t)B * OC * h * sc * w * sc * sizeof *img)) == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory", me);
        s = DEXEC_ENOMEM;
    }
    if (s == DEXEC_OK)
        s = dxk_vae_decode(p->vae, z, B, h, w, img, err, errlen);
    if (s == DEXEC_OK) {
        dims[0] = B;
        dims[1] = OC;
        dims[2] = h * sc;
        dims[3] = w * sc;
        *out = dx_tensor_value(img, dims, 4);
        img = NULL;
    }
    free(z);
    free(img);
    return s;
}

/* The noise dexec generate draws from a seed, for the caller to save and
 * feed back (dexec generate --noise, latent_sample) or to a reference:
 * image `image`'s starting noise [1, C, h, w], or with `steps` the ddpm
 * sampler's per-step noise [steps, C, h, w] of that image. */
static dexec_status dx_latent_noise(dxk_pipeline *p, const dexec_value *opts,
                                    dexec_value **out, char *err, size_t errlen)
{
    const char *me = "latent_noise";
    const int C = p->dit->cfg.in_channels;
    const dexec_value *sv = dexec_value_map_get(opts, "seed");
    int h = 0, w = 0, image = 0, steps = 0, dims[4];
    size_t nz;
    float *x = NULL;
    dexec_status s;

    if (sv == NULL || sv->type != DEXEC_VAL_INT || sv->u.i < 0 || sv->u.i > DEXEC_MAX_SEED) {
        dexec_errorf(err, errlen, "%s: the options map needs 'seed' (an integer 0..%lld)", me,
                     (long long)DEXEC_MAX_SEED);
        return DEXEC_EINVAL;
    }
    s = dx_opt_int(me, opts, "h", 1, DX_TM_MAX_SIDE, 0, &h, err, errlen);
    if (s == DEXEC_OK)
        s = dx_opt_int(me, opts, "w", 1, DX_TM_MAX_SIDE, 0, &w, err, errlen);
    if (s == DEXEC_OK)
        s = dx_opt_int(me, opts, "image", 0, DEXEC_MAX_OUTPUTS_PER_PROMPT - 1, 0, &image, err,
                       errlen);
    if (s == DEXEC_OK && dexec_value_map_get(opts, "steps") != NULL) /* optional */
        s = dx_opt_int(me, opts, "steps", 1, 1000, 1, &steps, err, errlen);
    if (s != DEXEC_OK)
        return s;
    nz = (size_t)C * h * w;
    if ((x = malloc((steps > 0 ? (size_t)steps : 1) * nz * sizeof *x)) == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory", me);
        return DEXEC_ENOMEM;
    }
    if (steps == 0)
        dxk_noise((uint64_t)sv->u.i, (uint64_t)image, x, nz);
    for (int k = 0; k < steps; k++) /* as dxk_latent_sample draws it */
        dxk_noise((uint64_t)sv->u.i, (uint64_t)image | (uint64_t)(k + 1) << 32, x + k * nz, nz);
    dims[0] = steps > 0 ? steps : 1;
    dims[1] = C;
    dims[2] = h;
    dims[3] = w;
    *out = dx_tensor_value(x, dims, 4);
    return DEXEC_OK;
}

dexec_status dxk_tensor_method(dxk_model *m, const char *method, const dexec_value *args,
                               dexec_value **out, char *err, size_t errlen)
{
    dxk_pipeline *p = dxk_model_pipeline(m);
    const dexec_value *opts = dexec_value_array_get(args, 0);

    *out = NULL;
    if (p == NULL) {
        dexec_errorf(err, errlen,
                     "%s: the loaded model is not a published latent model (a diffusers "
                     "pipeline directory, doc/model.md \"Published models\"): load one with "
                     "load_model",
                     method);
        return DEXEC_ENOTSUP;
    }
    if (opts == NULL || opts->type != DEXEC_VAL_MAP) {
        dexec_errorf(err, errlen,
                     "%s: the first argument must be a map of options (doc/protocol.md "
                     "\"Tensor methods\")",
                     method);
        return DEXEC_EINVAL;
    }
    if (strcmp(method, "latent_forward") == 0)
        return dx_latent_forward(p, opts, args, out, err, errlen);
    if (strcmp(method, "latent_guided") == 0)
        return dx_latent_guided(p, opts, args, out, err, errlen);
    if (strcmp(method, "latent_sample") == 0)
        return dx_latent_sample(p, opts, args, out, err, errlen);
    if (strcmp(method, "vae_decode") == 0)
        return dx_vae_decode(p, opts, args, out, err, errlen);
    if (strcmp(method, "latent_noise") == 0)
        return dx_latent_noise(p, opts, out, err, errlen);
    dexec_errorf(err, errlen, "unknown tensor method '%s'", method);
    return DEXEC_ENOTFOUND;
}
