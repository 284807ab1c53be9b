/*
 * model.c - the entry points of kernels.h: find a model file, open it on a
 * device, turn a request into images, describe the model.
 */
#include <config.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <dexec/rpc.h>

#include "comm.h"
#include "dit.h"
#include "kernels.h"
#include "latent.h"
#include "ops.h"
#include "pipeline.h"
#include "prompt.h"
#include "safetensors.h"
#include "paths.h"
#include "sampler.h"

/* Request limits: a request outside them is refused, not attempted. */
#define DX_MAX_SIDE DEXEC_MAX_IMAGE_SIZE
#define DX_MAX_TOKENS 16384
#define DX_MAX_OUTPUTS 64
#define DX_MAX_GUIDANCE DEXEC_MAX_GUIDANCE

struct dxk_model {
    char *path;
    dxk_safetensors *st;
    dxk_backend *be;
    dxk_dit *dit;
    dxk_vocab *vocab;
    dxk_pipeline *pipe; /* a published latent model: then st, dit, vocab are NULL */
    int nsizes;         /* dexec.sizes: the only sizes served; 0 = any multiple of the patch */
    int (*sizes)[2];    /* nsizes {width, height} */
    dxk_parallel par;   /* the group this rank computes with; zeroed = alone */
    int dtype;          /* DEXEC_DTYPE_*: how the weight matrices are kept on be */
};

/* The denoiser: the bundled model's, or a published pipeline's. */
static dxk_dit *dx_model_dit(dxk_model *m)
{
    return m->pipe != NULL ? m->pipe->dit : m->dit;
}

dexec_status dxk_model_set_parallel(dxk_model *m, const dxk_parallel *par, char *err,
                                    size_t errlen)
{
    if (par == NULL) {
        memset(&m->par, 0, sizeof m->par);
        dx_model_dit(m)->seq = NULL;
        return DEXEC_OK;
    }
    if (par->cfg != NULL && (par->cfg->size < 1 || par->cfg->size > 2)) {
        dexec_errorf(err, errlen,
                     "cfg parallelism (cfg = %d): a cfg group pairs the conditional and the "
                     "unconditional branch, so its size is 1 or 2",
                     par->cfg->size);
        return DEXEC_EINVAL;
    }
    if (par->seq != NULL && par->seq->size > 1) {
        const dxk_dit_config *c = &dx_model_dit(m)->cfg;
        const dxk_comm *q = par->seq;

        if (q->rank < 0 || q->rank >= q->size || q->alltoall == NULL || q->allgather == NULL) {
            dexec_errorf(err, errlen,
                         "sequence communicator: rank %d of %d, or a collective missing", q->rank,
                         q->size);
            return DEXEC_EINVAL;
        }
        if (dxk_dit_check_heads(q->size, c->num_heads, err, errlen) != DEXEC_OK)
            return DEXEC_EINVAL;
    }
    m->par = *par;
    dx_model_dit(m)->seq = par->seq != NULL && par->seq->size > 1 ? par->seq : NULL;
    return DEXEC_OK;
}

/* Nonzero when this rank computes one branch of a cfg pair. */
static int dx_cfg_pair(const dxk_model *m)
{
    return m->par.cfg != NULL && m->par.cfg->size == 2;
}

dxk_pipeline *dxk_model_pipeline(dxk_model *m)
{
    return m->pipe;
}

static int dx_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);

    return a >= b && strcmp(s + a - b, suffix) == 0;
}

dexec_status dxk_resolve_model(const char *name, char *path, size_t pathlen, char *err,
                               size_t errlen)
{
    char searched[2048];
    const char *env;
    size_t so = 0;
    int pass;

    if (name == NULL || name[0] == '\0') {
        dexec_errorf(err, errlen, "no model given: set model to a name or a .safetensors path");
        return DEXEC_EINVAL;
    }
    if (strchr(name, '/') != NULL || dx_ends_with(name, ".safetensors")) {
        if ((size_t)snprintf(path, pathlen, "%s", name) >= pathlen) {
            dexec_errorf(err, errlen, "model path '%s' is too long", name);
            return DEXEC_EINVAL;
        }
        return DEXEC_OK;
    }
    searched[0] = '\0';
    env = getenv("DEXEC_MODEL_PATH");
    /* pass 0: $DEXEC_MODEL_PATH entries, pass 1: the installed models */
    for (pass = 0; pass < 2; pass++) {
        const char *p = pass == 0 ? (env ? env : "") : DEXEC_PKGDATADIR "/models";

        while (*p != '\0') {
            size_t len = pass == 0 ? strcspn(p, ":") : strlen(p);

            if (len > 0) {
                int w = snprintf(path, pathlen, "%.*s/%s.safetensors", (int)len, p, name);

                if (w > 0 && (size_t)w < pathlen) {
                    if (access(path, R_OK) == 0)
                        return DEXEC_OK;
                    if (so + 1 < sizeof searched) {
                        w = snprintf(searched + so, sizeof searched - so, "%s%s",
                                     so ? ", " : "", path);
                        if (w > 0)
                            so += (size_t)w;
                    }
                }
            }
            p += len;
            if (*p == ':')
                p++;
        }
    }
    dexec_errorf(err, errlen,
           "model '%s' not found (searched %s): give a path to a .safetensors file or add its "
           "directory to DEXEC_MODEL_PATH",
           name, searched);
    return DEXEC_ENOTFOUND;
}

static dexec_status dx_open_backend(const char *device, int gpu, dxk_backend **be, char *err,
                                    size_t errlen)
{
    char why[1024];

    if (device == NULL || device[0] == '\0' || strcmp(device, "auto") == 0) {
        if (dxk_cuda_driver_present(why, sizeof why) && dxk_cuda_device_count(why, sizeof why) > 0) {
            if (dxk_backend_cuda(gpu, be, why, sizeof why) == DEXEC_OK)
                return DEXEC_OK;
            dexec_log(DEXEC_LOG_WARN, "kernels", "device auto: CUDA unusable, using the CPU: %s",
                      why);
        } else {
            dexec_log(DEXEC_LOG_INFO, "kernels", "device auto: no CUDA (%s), using the CPU", why);
        }
        return dxk_backend_cpu(be, err, errlen);
    }
    if (strcmp(device, "cpu") == 0)
        return dxk_backend_cpu(be, err, errlen);
    if (strcmp(device, "cuda") == 0)
        return dxk_backend_cuda(gpu, be, err, errlen);
    dexec_errorf(err, errlen, "device '%s' is not one of auto, cpu, cuda", device);
    return DEXEC_EINVAL;
}

/* Reads the optional metadata key dexec.sizes: "WxH[,WxH...]", each a
 * multiple of the patch size within the token limit (doc/model-format.md). */
static dexec_status dx_read_sizes(dxk_model *m, const dxk_dit_config *c, char *err,
                                  size_t errlen)
{
    const char *v = dxk_st_meta(m->st, "dexec.sizes"), *p;
    int n = 1;

    if (v == NULL)
        return DEXEC_OK;
    for (p = v; *p != '\0'; p++)
        n += *p == ',';
    m->sizes = calloc((size_t)n, sizeof *m->sizes);
    if (m->sizes == NULL) {
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    for (p = v; m->nsizes < n; m->nsizes++) {
        int w, h, used = 0;

        if (sscanf(p, " %4dx%4d %n", &w, &h, &used) != 2 || used == 0 ||
            (p[used] != ',' && p[used] != '\0') || w < 1 || h < 1 ||
            w % c->patch_size != 0 || h % c->patch_size != 0 ||
            (long)(w / c->patch_size) * (h / c->patch_size) > DX_MAX_TOKENS) {
            dexec_errorf(err, errlen,
                         "%s: metadata 'dexec.sizes' is '%s': expected WIDTHxHEIGHT[,...], each "
                         "side a multiple of dexec.patch_size %d, at most %d tokens",
                         m->path, v, c->patch_size, DX_MAX_TOKENS);
            return DEXEC_EINVAL;
        }
        m->sizes[m->nsizes][0] = w;
        m->sizes[m->nsizes][1] = h;
        p += used + (p[used] == ',');
    }
    return DEXEC_OK;
}

/* "28x28, 56x56" into buf. */
static void dx_sizes_text(const dxk_model *m, char *buf, size_t len)
{
    size_t o = 0;

    buf[0] = '\0';
    for (int i = 0; i < m->nsizes && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%dx%d", i ? ", " : "", m->sizes[i][0],
                              m->sizes[i][1]);
}

dexec_status dxk_model_open(const char *name, const char *device, int gpu, dxk_model **out,
                            char *err, size_t errlen)
{
    return dxk_model_open_dtype(name, device, "float32", gpu, out, err, errlen);
}

dexec_status dxk_model_open_dtype(const char *name, const char *device, const char *dtype,
                                  int gpu, dxk_model **out, char *err, size_t errlen)
{
    char path[4096];
    dxk_dit_config cfg;
    dxk_model *m;
    dexec_status s;
    int dt;

    *out = NULL;
    s = dxk_wdtype_parse(dtype, &dt, err, errlen);
    if (s == DEXEC_OK)
        s = dxk_resolve_model(name, path, sizeof path, err, errlen);
    if (s != DEXEC_OK)
        return s;
    m = calloc(1, sizeof *m);
    if (m == NULL || (m->path = strdup(path)) == NULL) {
        free(m);
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    m->dtype = dt;
    s = dx_open_backend(device, gpu, &m->be, err, errlen);
    if (s == DEXEC_OK)
        s = dxk_backend_half(m->be, dt, err, errlen);
    if (s == DEXEC_OK && dxk_pipeline_is_dir(path)) {
        s = dxk_pipeline_open(path, m->be, dt, &m->pipe, err, errlen);
        if (s != DEXEC_OK) {
            dxk_model_free(m);
            return s;
        }
        dexec_log(DEXEC_LOG_INFO, "kernels",
                  "model %s: %zu + %zu parameters (transformer + vae decoder), sampler %s, on "
                  "%s (%s), weights %s",
                  path, m->pipe->dit->params, m->pipe->vae->params,
                  dxk_sampler_name(m->pipe->sampler), m->be->name, m->be->device_name,
                  dxk_wdtype_name(dt));
        *out = m;
        return DEXEC_OK;
    }
    if (s == DEXEC_OK)
        s = dxk_st_open(path, &m->st, err, errlen);
    if (s == DEXEC_OK)
        s = dxk_dit_config_read(m->st, &cfg, err, errlen);
    if (s == DEXEC_OK)
        s = dxk_vocab_load(m->st, cfg.num_classes, &m->vocab, err, errlen);
    if (s == DEXEC_OK)
        s = dx_read_sizes(m, &cfg, err, errlen);
    cfg.dtype = dt;
    if (s == DEXEC_OK)
        s = dxk_dit_load(m->st, &cfg, m->be, &m->dit, err, errlen);
    if (s != DEXEC_OK) {
        dxk_model_free(m);
        return s;
    }
    dexec_log(DEXEC_LOG_INFO, "kernels", "model %s: %zu parameters on %s (%s), weights %s",
              path, m->dit->params, m->be->name, m->be->device_name, dxk_wdtype_name(dt));
    *out = m;
    return DEXEC_OK;
}

void dxk_model_free(dxk_model *m)
{
    if (m == NULL)
        return;
    dxk_pipeline_free(m->pipe);
    dxk_dit_free(m->dit);
    dxk_vocab_free(m->vocab);
    dxk_st_close(m->st);
    dxk_backend_free(m->be);
    free(m->sizes);
    free(m->path);
    free(m);
}

const char *dxk_model_device(const dxk_model *m)
{
    return m->be->name;
}

const char *dxk_model_dtype(const dxk_model *m)
{
    return dxk_wdtype_name(m->dtype);
}

static double dx_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct dx_progress {
    dxk_step_fn fn;
    void *user;
    int image;
} dx_progress;

static int dx_on_step(void *user, int step, int total)
{
    dx_progress *p = user;

    return p->fn(p->user, p->image, step, total);
}

/* Checks the request and fills in the model's defaults: kernels.h makes
 * zero and negative sizes, steps and output counts mean "the default". */
static dexec_status dx_check_request(const dxk_model *m, const dexec_request *req, int *H, int *W,
                                     int *steps, double *g, int *n, char *err, size_t errlen)
{
    const dxk_dit_config *c = &m->dit->cfg;
    long tokens;

    *H = req->height > 0 ? req->height : c->image_size;
    *W = req->width > 0 ? req->width : c->image_size;
    *steps = req->num_inference_steps > 0 ? req->num_inference_steps : c->default_steps;
    *g = req->guidance_scale < 0 ? c->default_guidance : req->guidance_scale;
    *n = req->num_outputs_per_prompt > 0 ? req->num_outputs_per_prompt : 1;
    if (*H > DX_MAX_SIDE || *W > DX_MAX_SIDE) {
        dexec_errorf(err, errlen, "image size %dx%d (width x height): each must be in 1..%d (0: %d)",
               req->width, req->height, DX_MAX_SIDE, c->image_size);
        return DEXEC_EINVAL;
    }
    if (m->nsizes > 0) {
        char list[512];
        int i;

        for (i = 0; i < m->nsizes; i++)
            if (m->sizes[i][0] == *W && m->sizes[i][1] == *H)
                break;
        if (i == m->nsizes) {
            dx_sizes_text(m, list, sizeof list);
            dexec_errorf(err, errlen,
                         "image size %dx%d (width x height) is not one this model serves: %s "
                         "(its metadata dexec.sizes)",
                         *W, *H, list);
            return DEXEC_EINVAL;
        }
    }
    if (*H % c->patch_size != 0 || *W % c->patch_size != 0) {
        dexec_errorf(err, errlen, "image size %dx%d is not a multiple of the model's patch size %d", *W,
               *H, c->patch_size);
        return DEXEC_EINVAL;
    }
    tokens = (long)(*H / c->patch_size) * (*W / c->patch_size);
    if (tokens > DX_MAX_TOKENS) {
        dexec_errorf(err, errlen, "image size %dx%d makes %ld tokens, more than %d", *W, *H, tokens,
               DX_MAX_TOKENS);
        return DEXEC_EINVAL;
    }
    if (*steps > DEXEC_MAX_STEPS) {
        dexec_errorf(err, errlen, "num_inference_steps %d is outside 1..%d (0: the model's %d)",
               req->num_inference_steps, DEXEC_MAX_STEPS, c->default_steps);
        return DEXEC_EINVAL;
    }
    if (!isfinite(*g) || *g > DX_MAX_GUIDANCE) {
        dexec_errorf(err, errlen, "guidance_scale %g is outside 0..%g (negative: the model's %g)",
               req->guidance_scale, DX_MAX_GUIDANCE, c->default_guidance);
        return DEXEC_EINVAL;
    }
    if (*n > DX_MAX_OUTPUTS) {
        dexec_errorf(err, errlen, "num_outputs_per_prompt %d is outside 1..%d",
               req->num_outputs_per_prompt, DX_MAX_OUTPUTS);
        return DEXEC_EINVAL;
    }
    if (req->seed < 0) {
        dexec_errorf(err, errlen, "seed %lld is negative: the engine resolves random seeds first",
               (long long)req->seed);
        return DEXEC_EINVAL;
    }
    return DEXEC_OK;
}

/* The class names prompt and negative prompt resolved to, into out
 * (dexec_output.class_name, negative_class_name). */
static dexec_status dx_set_classes(const dxk_vocab *v, int y, int y_neg, int has_neg,
                                   dexec_output *out, char *err, size_t errlen)
{
    const char *a = y < v->num_classes ? v->class_names[y] : "(unconditional)";
    const char *b = y_neg < v->num_classes ? v->class_names[y_neg] : "(unconditional)";

    if (!DEXEC_HAS_FIELD(out, dexec_output, negative_class_name))
        return DEXEC_OK;
    out->class_name = strdup(a);
    out->negative_class_name = has_neg ? strdup(b) : NULL;
    if (out->class_name == NULL || (has_neg && out->negative_class_name == NULL)) {
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    return DEXEC_OK;
}

static void dx_free_images(dexec_output *out)
{
    size_t i;

    for (i = 0; i < out->num_images; i++)
        free(out->images[i].pixels);
    free(out->images);
    out->images = NULL;
    out->num_images = 0;
}

/* A model whose file was truncated or rewritten while mapped computes with
 * zeros where the data vanished (dxk_st_catch_sigbus): refuse its results. */
static dexec_status dx_check_file(const dxk_model *m, char *err, size_t errlen)
{
    size_t off;

    if (!dxk_st_damaged(m->st, &off))
        return DEXEC_OK;
    dexec_errorf(err, errlen,
                 "%s: the model file changed on disk while in use (its data at byte %zu is "
                 "gone: truncated or rewritten in place); no image is made from it: reload "
                 "the model (load_model) or restart the worker, and replace model files by "
                 "renaming a new file over the old one",
                 m->st->path, off);
    return DEXEC_EIO;
}

/* ---- the caller's sampler and noise (dexec_request.sampler, .noise,
 * .step_noise; doc/model.md "Samplers") ---------------------------------- */

/* The request's sampler: the model's (def) without one; else it must be a
 * sampler of the model's kind (flow: euler, heun; epsilon: ddpm, ddim). */
static dexec_status dx_request_sampler(const dexec_request *req, dxk_sampler def,
                                       dxk_sampler *out, char *err, size_t errlen)
{
    const int flow = dxk_sampler_is_flow(def);
    const char *kind = flow ? "a SiT-style flow-matching model, whose samplers are euler and heun"
                            : "a DiT-style epsilon-prediction model, whose samplers are ddpm "
                              "and ddim";
    char e2[128];

    *out = def;
    if (req->sampler == NULL)
        return DEXEC_OK;
    if (dxk_sampler_parse(req->sampler, out, e2, sizeof e2) != DEXEC_OK) {
        dexec_errorf(err, errlen, "%s; this model is %s", e2, kind);
        return DEXEC_EINVAL;
    }
    if (dxk_sampler_is_flow(*out) != flow) {
        dexec_errorf(err, errlen, "sampler '%s' does not fit this model: it is %s",
                     req->sampler, kind);
        return DEXEC_EINVAL;
    }
    return DEXEC_OK;
}

/* Checks that the caller's noise (what, bytes) holds count float32
 * values of the shape named. */
static dexec_status dx_noise_size(const char *what, uint64_t bytes, size_t count,
                                  const char *shape, const char *dims, char *err, size_t errlen)
{
    if (bytes == (uint64_t)count * sizeof(float))
        return DEXEC_OK;
    dexec_errorf(err, errlen,
                 "%s: %llu bytes given; this request needs %zu bytes: float32 %s (%s), "
                 "little-endian",
                 what, (unsigned long long)bytes, count * sizeof(float), shape, dims);
    return DEXEC_EINVAL;
}

/* n little-endian float32 values at src -> dst (host floats). */
static void dx_le_floats(const void *src, float *dst, size_t n)
{
    const unsigned char *b = src;

    for (size_t i = 0; i < n; i++, b += 4) {
        uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                     (uint32_t)b[3] << 24;

        memcpy(&dst[i], &u, sizeof u);
    }
}

/* dxk_generate for a published latent model: sample each image's latent,
 * decode it with the VAE, convert to RGB pixels. */
static dexec_status dx_generate_latent(dxk_model *m, const dexec_request *req,
                                       dexec_output *out, dxk_step_fn step, void *user,
                                       char *err, size_t errlen)
{
    dxk_pipeline *p = m->pipe;
    const int C = p->dit->cfg.in_channels, scale = dxk_vae_scale(&p->vae->cfg);
    const int unit = scale * p->dit->cfg.patch_size, oc = p->vae->cfg.out_channels;
    int H, W, h, w, steps, n, y, y_neg, i;
    double g, t0, t1;
    dxk_dit_ws *ws = NULL;
    float *noise = NULL, *z = NULL, *img = NULL, *step_noise = NULL;
    size_t nz, k;
    dexec_status s;
    dx_progress prog;
    dxk_sampler sampler;
    char e2[768];

    t0 = dx_now();
    H = req->height > 0 ? req->height : p->image_size;
    W = req->width > 0 ? req->width : p->image_size;
    steps = req->num_inference_steps > 0 ? req->num_inference_steps : p->default_steps;
    g = req->guidance_scale < 0 ? p->default_guidance : req->guidance_scale;
    n = req->num_outputs_per_prompt > 0 ? req->num_outputs_per_prompt : 1;
    if (H > DX_MAX_SIDE || W > DX_MAX_SIDE || H % unit != 0 || W % unit != 0) {
        dexec_errorf(err, errlen,
                     "image size %dx%d: each side must be a multiple of %d (the VAE's %d x the "
                     "patch size %d) up to %d (0: %d)",
                     W, H, unit, scale, p->dit->cfg.patch_size, DX_MAX_SIDE, p->image_size);
        return DEXEC_EINVAL;
    }
    if ((long)(H / unit) * (W / unit) > DX_MAX_TOKENS || steps > 1000 ||
        !isfinite(g) || g > DX_MAX_GUIDANCE || n > DX_MAX_OUTPUTS || req->seed < 0) {
        dexec_errorf(err, errlen,
                     "request outside the limits: at most %d tokens, 1..1000 steps, guidance "
                     "0..%g, 1..%d outputs, a resolved seed",
                     DX_MAX_TOKENS, DX_MAX_GUIDANCE, DX_MAX_OUTPUTS);
        return DEXEC_EINVAL;
    }
    s = dx_request_sampler(req, p->sampler, &sampler, err, errlen);
    if (s != DEXEC_OK)
        return s;
    {
        char shape[96], dims[96];

        snprintf(shape, sizeof shape, "[%d, %d, %d, %d]", n, C, H / scale, W / scale);
        snprintf(dims, sizeof dims, "outputs, channels, height / %d, width / %d", scale, scale);
        if (req->noise != NULL)
            s = dx_noise_size("noise", req->noise_bytes, (size_t)n * C * (H / scale) * (W / scale),
                              shape, dims, err, errlen);
        if (s == DEXEC_OK && req->step_noise != NULL) {
            if (sampler != DXK_SAMPLER_DDPM) {
                dexec_errorf(err, errlen,
                             "step_noise: only the ddpm sampler adds noise between steps; %s "
                             "adds none",
                             dxk_sampler_name(sampler));
                return DEXEC_EINVAL;
            }
            snprintf(shape, sizeof shape, "[%d, %d, %d, %d, %d]", n, steps, C, H / scale,
                     W / scale);
            snprintf(dims, sizeof dims, "outputs, steps, channels, height / %d, width / %d",
                     scale, scale);
            s = dx_noise_size("step_noise", req->step_noise_bytes,
                              (size_t)n * steps * C * (H / scale) * (W / scale), shape, dims,
                              err, errlen);
        }
        if (s != DEXEC_OK)
            return s;
    }
    s = dxk_prompt_class(p->vocab, req->prompt, &y, err, errlen);
    if (s == DEXEC_OK && req->negative_prompt != NULL) {
        s = dxk_prompt_class(p->vocab, req->negative_prompt, &y_neg, e2, sizeof e2);
        if (s != DEXEC_OK)
            dexec_errorf(err, errlen, "negative_prompt: %s", e2);
    } else {
        y_neg = p->vocab->num_classes;
    }
    if (s == DEXEC_OK)
        s = dx_set_classes(p->vocab, y, y_neg, req->negative_prompt != NULL, out, err, errlen);
    if (s != DEXEC_OK)
        return s;
    out->timings.encode_s = dx_now() - t0;
    out->seed = req->seed;
    out->steps = steps;
    out->guidance_scale = g;
    out->timings.denoise_s = 0;
    out->timings.decode_s = 0;
    h = H / scale;
    w = W / scale;
    nz = (size_t)C * h * w;
    s = dxk_dit_ws_alloc(p->dit, g != 1.0 && !dx_cfg_pair(m) ? 2 : 1, h, w, &ws, err, errlen);
    if (s != DEXEC_OK)
        return s;
    noise = malloc(nz * sizeof *noise);
    z = malloc(nz * sizeof *z);
    img = malloc((size_t)oc * H * W * sizeof *img);
    out->images = calloc((size_t)n, sizeof *out->images);
    if (req->step_noise != NULL)
        step_noise = malloc((size_t)steps * nz * sizeof *step_noise);
    if (noise == NULL || z == NULL || img == NULL || out->images == NULL ||
        (req->step_noise != NULL && step_noise == NULL)) {
        dexec_errorf(err, errlen, "out of memory for %d image(s) of %dx%d", n, W, H);
        s = DEXEC_ENOMEM;
        goto done;
    }
    for (i = 0; i < n; i++)
        dexec_image_init(&out->images[i]);
    for (i = 0; i < n && s == DEXEC_OK; i++) {
        dxk_latent_args a;
        dexec_image *im = &out->images[i];
        int py, px, c;

        if (req->noise != NULL)
            dx_le_floats((const unsigned char *)req->noise + (size_t)i * nz * 4, noise, nz);
        else
            dxk_noise((uint64_t)req->seed, (uint64_t)i, noise, nz);
        memset(&a, 0, sizeof a);
        a.noise = noise;
        if (step_noise != NULL) {
            dx_le_floats((const unsigned char *)req->step_noise + (size_t)i * steps * nz * 4,
                         step_noise, (size_t)steps * nz);
            a.step_noise = step_noise;
        }
        a.seed = (uint64_t)req->seed;
        a.image = (uint64_t)i;
        a.h = h;
        a.w = w;
        a.y = y;
        a.y_neg = y_neg;
        a.steps = steps;
        a.guidance = g;
        a.guide_channels = p->guide_channels;
        a.cfg = m->par.cfg;
        a.sampler = sampler;
        if (step != NULL) {
            prog.fn = step;
            prog.user = user;
            prog.image = i;
            a.step = dx_on_step;
            a.user = &prog;
        }
        t1 = dx_now();
        s = dxk_latent_sample(p->dit, ws, &a, z, err, errlen);
        out->timings.denoise_s += dx_now() - t1;
        if (s != DEXEC_OK)
            break;
        if (m->par.drop_images)
            continue; /* another member decodes the group's images */
        t1 = dx_now();
        s = dxk_vae_decode(p->vae, z, 1, h, w, img, err, errlen);
        if (s == DEXEC_OK && (im->pixels = malloc((size_t)oc * H * W)) == NULL) {
            dexec_errorf(err, errlen, "out of memory for the pixels of image %d", i);
            s = DEXEC_ENOMEM;
        }
        if (s != DEXEC_OK)
            break;
        im->width = W;
        im->height = H;
        im->channels = oc;
        out->num_images = (size_t)i + 1;
        k = 0;
        for (py = 0; py < H; py++)
            for (px = 0; px < W; px++)
                for (c = 0; c < oc; c++)
                    im->pixels[k++] = dxk_to_pixel(img[((size_t)c * H + py) * W + px]);
        out->timings.decode_s += dx_now() - t1;
    }
done:
    if (s == DEXEC_OK) {
        size_t off;
        const dxk_safetensors *bad = dxk_st_damaged(p->tst, &off)   ? p->tst
                                     : dxk_st_damaged(p->vst, &off) ? p->vst
                                                                    : NULL;

        if (bad != NULL) {
            dexec_errorf(err, errlen,
                         "%s: the model file changed on disk while in use (its data at byte "
                         "%zu is gone); no image is made from it: reload the model or restart "
                         "the worker",
                         bad->path, off);
            s = DEXEC_EIO;
        }
    }
    if (s != DEXEC_OK)
        dx_free_images(out);
    free(noise);
    free(step_noise);
    free(z);
    free(img);
    dxk_dit_ws_free(p->dit, ws);
    return s;
}

dexec_status dxk_generate(dxk_model *m, const dexec_request *req, dexec_output *out,
                          dxk_step_fn step, void *user, char *err, size_t errlen)
{
    const int C = m->pipe != NULL ? 0 : m->dit->cfg.in_channels;
    int H, W, steps, n, y, y_neg, i;
    double g, t0, t1;
    dxk_dit_ws *ws = NULL;
    float *noise = NULL, *x = NULL;
    size_t npix, k;
    dexec_status s;
    dx_progress prog;
    char e2[768];

    if (m->pipe != NULL)
        return dx_generate_latent(m, req, out, step, user, err, errlen);
    t0 = dx_now();
    s = dx_check_file(m, err, errlen);
    if (s == DEXEC_OK)
        s = dx_check_request(m, req, &H, &W, &steps, &g, &n, err, errlen);
    if (s != DEXEC_OK)
        return s;
    /* the bundled model: flow matching, sampled with Euler (sampler.c) */
    if (req->sampler != NULL && strcmp(req->sampler, "euler") != 0) {
        dxk_sampler known;
        char why[128];

        /* a name that is no sampler at all is said as such (as for the
         * published models), one of another kind as not fitting */
        if (dxk_sampler_parse(req->sampler, &known, why, sizeof why) != DEXEC_OK)
            dexec_errorf(err, errlen,
                         "%s; this model is dexec's own flow-matching model, whose sampler is "
                         "euler",
                         why);
        else
            dexec_errorf(err, errlen,
                         "sampler '%s' does not fit this model: it is dexec's own flow-matching "
                         "model, whose sampler is euler",
                         req->sampler);
        return DEXEC_EINVAL;
    }
    if (req->step_noise != NULL) {
        dexec_errorf(err, errlen,
                     "step_noise: only the ddpm sampler adds noise between steps; this model's "
                     "euler adds none");
        return DEXEC_EINVAL;
    }
    if (req->noise != NULL) {
        char shape[96];

        snprintf(shape, sizeof shape, "[%d, %d, %d, %d]", n, C, H, W);
        s = dx_noise_size("noise", req->noise_bytes, (size_t)n * C * H * W, shape,
                          "outputs, channels, height, width", err, errlen);
        if (s != DEXEC_OK)
            return s;
    }
    s = dxk_prompt_class(m->vocab, req->prompt, &y, err, errlen);
    if (s == DEXEC_OK && req->negative_prompt != NULL) {
        s = dxk_prompt_class(m->vocab, req->negative_prompt, &y_neg, e2, sizeof e2);
        if (s != DEXEC_OK)
            dexec_errorf(err, errlen, "negative_prompt: %s", e2);
    } else {
        y_neg = m->vocab->num_classes;
    }
    if (s == DEXEC_OK)
        s = dx_set_classes(m->vocab, y, y_neg, req->negative_prompt != NULL, out, err, errlen);
    if (s != DEXEC_OK)
        return s;
    out->timings.encode_s = dx_now() - t0;
    out->seed = req->seed;
    out->steps = steps;
    out->guidance_scale = g;
    out->timings.denoise_s = 0;
    out->timings.decode_s = 0;

    npix = (size_t)C * H * W;
    s = dxk_dit_ws_alloc(m->dit, g != 1.0 && !dx_cfg_pair(m) ? 2 : 1, H, W, &ws, err, errlen);
    if (s != DEXEC_OK)
        return s;
    noise = malloc(npix * sizeof *noise);
    x = malloc(npix * sizeof *x);
    out->images = calloc((size_t)n, sizeof *out->images);
    if (noise == NULL || x == NULL || out->images == NULL) {
        dexec_errorf(err, errlen, "out of memory for %d image(s) of %dx%d", n, H, W);
        s = DEXEC_ENOMEM;
        goto done;
    }
    for (i = 0; i < n; i++)
        dexec_image_init(&out->images[i]);
    for (i = 0; i < n && s == DEXEC_OK; i++) {
        dxk_sample_args a;
        dexec_image *im = &out->images[i];
        int py, px, c;

        /* images are independent (own noise, batch of one): an image is
         * the same whether it is asked for alone or as the i-th of many */
        if (req->noise != NULL)
            dx_le_floats((const unsigned char *)req->noise + (size_t)i * npix * 4, noise, npix);
        else
            dxk_noise((uint64_t)req->seed, (uint64_t)i, noise, npix);
        memset(&a, 0, sizeof a);
        a.noise = noise;
        a.H = H;
        a.W = W;
        a.y = y;
        a.y_neg = y_neg;
        a.steps = steps;
        a.guidance = g;
        a.shift = m->dit->cfg.sigma_shift;
        a.cfg = m->par.cfg;
        if (step != NULL) {
            prog.fn = step;
            prog.user = user;
            prog.image = i;
            a.step = dx_on_step;
            a.user = &prog;
        }
        t1 = dx_now();
        s = dxk_sample(m->dit, ws, &a, x, err, errlen);
        out->timings.denoise_s += dx_now() - t1;
        if (s != DEXEC_OK)
            break;
        if (m->par.drop_images)
            continue; /* another member makes the group's images */
        t1 = dx_now();
        im->pixels = malloc(npix);
        if (im->pixels == NULL) {
            dexec_errorf(err, errlen, "out of memory for the pixels of image %d", i);
            s = DEXEC_ENOMEM;
            break;
        }
        im->width = W;
        im->height = H;
        im->channels = C;
        out->num_images = (size_t)i + 1;
        /* planar CHW -> interleaved HWC */
        k = 0;
        for (py = 0; py < H; py++)
            for (px = 0; px < W; px++)
                for (c = 0; c < C; c++)
                    im->pixels[k++] = dxk_to_pixel(x[((size_t)c * H + py) * W + px]);
        out->timings.decode_s += dx_now() - t1;
    }
done:
    if (s == DEXEC_OK)
        s = dx_check_file(m, err, errlen);
    if (s != DEXEC_OK)
        dx_free_images(out);
    free(noise);
    free(x);
    dxk_dit_ws_free(m->dit, ws);
    return s;
}

/* VmRSS and VmHWM of this process, in bytes (0 when unknown). */
static void dx_rss(int64_t *rss, int64_t *peak)
{
    char line[256];
    FILE *f = fopen("/proc/self/status", "re");
    long long kb;

    *rss = *peak = 0;
    if (f == NULL)
        return;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "VmRSS: %lld kB", &kb) == 1)
            *rss = kb * 1024;
        else if (sscanf(line, "VmHWM: %lld kB", &kb) == 1)
            *peak = kb * 1024;
    }
    fclose(f);
}

static int dx_set_int(dexec_value *map, const char *key, int64_t v)
{
    return dexec_value_map_set(map, key, dexec_value_int(v));
}

dexec_value *dxk_model_info(const dxk_model *m)
{
    const dxk_dit_config *c = m->pipe != NULL ? &m->pipe->dit->cfg : &m->dit->cfg;
    dexec_value *v = dexec_value_map(), *mem = dexec_value_map();
    int64_t rss, peak;
    size_t used = 0, dpeak = 0;
    int bad = v == NULL || mem == NULL;

    if (bad) {
        dexec_value_free(v);
        dexec_value_free(mem);
        return NULL;
    }
    dx_rss(&rss, &peak);
    bad |= dx_set_int(mem, "rss", rss);
    bad |= dx_set_int(mem, "peak", peak);
    if (!m->be->host_memory) {
        m->be->memory(m->be, &used, &dpeak);
        bad |= dx_set_int(mem, "device_used", (int64_t)used);
        bad |= dx_set_int(mem, "device_peak", (int64_t)dpeak);
    }
    bad |= dexec_value_map_set(v, "path", dexec_value_str(m->path));
    bad |= dexec_value_map_set(v, "device", dexec_value_str(m->be->name));
    bad |= dexec_value_map_set(v, "dtype", dexec_value_str(dxk_wdtype_name(m->dtype)));
    bad |= dexec_value_map_set(v, "device_name", dexec_value_str(m->be->device_name));
    if (m->pipe != NULL) {
        const dxk_pipeline *p = m->pipe;
        const size_t params = p->dit->params + p->vae->params;
        const size_t half = p->dit->half_params + p->vae->half_params;

        bad |= dx_set_int(v, "parameters", (int64_t)params);
        /* float32, but for the weights kept in half precision */
        bad |= dx_set_int(v, "bytes", (int64_t)((params - half) * sizeof(float) + half * 2));
        bad |= dx_set_int(v, "image_size", p->image_size);
        bad |= dx_set_int(v, "channels", p->vae->cfg.out_channels);
        bad |= dx_set_int(v, "default_steps", p->default_steps);
        bad |= dexec_value_map_set(v, "default_guidance", dexec_value_float(p->default_guidance));
        bad |= dexec_value_map_set(v, "sampler", dexec_value_str(dxk_sampler_name(p->sampler)));
        bad |= dexec_value_map_set(v, "layout",
                                   dexec_value_str(c->layout == DXK_DIT_DIFFUSERS ? "diffusers"
                                                                                   : "original"));
        bad |= dexec_value_map_set(v, "metadata", dexec_value_clone(p->tst->metadata));
    } else {
        bad |= dx_set_int(v, "parameters", (int64_t)m->dit->params);
        bad |= dx_set_int(v, "bytes", (int64_t)((m->dit->params - m->dit->half_params) *
                                                     sizeof(float) +
                                                 m->dit->half_params * 2));
        bad |= dx_set_int(v, "image_size", c->image_size);
        bad |= dx_set_int(v, "channels", c->in_channels);
        bad |= dx_set_int(v, "default_steps", c->default_steps);
        bad |= dexec_value_map_set(v, "default_guidance", dexec_value_float(c->default_guidance));
        bad |= dexec_value_map_set(v, "metadata", dexec_value_clone(m->st->metadata));
        if (m->nsizes > 0) {
            dexec_value *sz = dexec_value_array();

            bad |= sz == NULL;
            for (int i = 0; i < m->nsizes && sz != NULL; i++) {
                char one[32];

                snprintf(one, sizeof one, "%dx%d", m->sizes[i][0], m->sizes[i][1]);
                bad |= dexec_value_array_push(sz, dexec_value_str(one));
            }
            bad |= dexec_value_map_set(v, "sizes", sz);
        }
        bad |= dx_set_int(v, "size_multiple", c->patch_size);
        bad |= dx_set_int(v, "max_tokens", DX_MAX_TOKENS);
    }
    bad |= dexec_value_map_set(v, "memory", mem);
    if (bad) {
        dexec_value_free(v);
        return NULL;
    }
    return v;
}
