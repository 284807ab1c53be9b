/*
 * pipeline.c - opening a diffusers pipeline directory (pipeline.h): the
 * JSON files through jansson, the weights through the strict safetensors
 * reader, the class names from model_index.json's id2label.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include <dexec/rpc.h>

#include "pipeline.h"

#define DX_MAX_JSON (64u * 1024u * 1024u)

int dxk_pipeline_is_dir(const char *path)
{
    char p[4096];
    struct stat sb;

    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return 0;
    snprintf(p, sizeof p, "%s/model_index.json", path);
    return access(p, F_OK) == 0;
}

/* The whole of a text file, NUL-terminated; *out is the caller's. */
static dexec_status dx_slurp(const char *path, char **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char *buf;
    long len;

    *out = NULL;
    if (f == NULL) {
        dexec_errorf(err, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT ? DEXEC_ENOTFOUND : DEXEC_EIO;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || (size_t)len > DX_MAX_JSON ||
        fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        dexec_errorf(err, errlen, "%s: unreadable or larger than %u bytes", path, DX_MAX_JSON);
        return DEXEC_EIO;
    }
    buf = malloc((size_t)len + 1);
    if (buf == NULL || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        fclose(f);
        dexec_errorf(err, errlen, "%s: cannot read it", path);
        return DEXEC_EIO;
    }
    buf[len] = '\0';
    fclose(f);
    *out = buf;
    return DEXEC_OK;
}

/* dir/sub/diffusion_pytorch_model.safetensors, refusing a sharded one. */
static dexec_status dx_open_weights(const char *dir, const char *sub, dxk_safetensors **st,
                                    char *err, size_t errlen)
{
    char p[4096];

    snprintf(p, sizeof p, "%s/%s/diffusion_pytorch_model.safetensors.index.json", dir, sub);
    if (access(p, F_OK) == 0) {
        snprintf(p, sizeof p, "%s/%s/diffusion_pytorch_model.safetensors", dir, sub);
        if (access(p, F_OK) != 0) {
            dexec_errorf(err, errlen,
                         "%s/%s: the weights are sharded (an .index.json and several files), "
                         "which dexec does not read: save them as one "
                         "diffusion_pytorch_model.safetensors",
                         dir, sub);
            return DEXEC_ENOTSUP;
        }
    }
    snprintf(p, sizeof p, "%s/%s/diffusion_pytorch_model.safetensors", dir, sub);
    return dxk_st_open(p, st, err, errlen);
}

/* id2label of model_index.json -> the vocabulary of K classes. */
static dexec_status dx_labels(const char *path, json_t *idx, int K, dxk_vocab **out, char *err,
                              size_t errlen)
{
    json_t *map = json_object_get(idx, "id2label");
    const char **labels;
    dexec_status s;
    int i;

    if (!json_is_object(map)) {
        dexec_errorf(err, errlen,
                     "%s: no 'id2label' object: the class names are needed to turn prompts into "
                     "classes (DiTPipeline.save_pretrained writes them; contrib/published adds "
                     "them from torchvision's ImageNet categories)",
                     path);
        return DEXEC_EINVAL;
    }
    labels = calloc((size_t)K, sizeof *labels);
    if (labels == NULL) {
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    for (i = 0; i < K; i++) {
        char key[16];
        json_t *e;

        snprintf(key, sizeof key, "%d", i);
        e = json_object_get(map, key);
        if (!json_is_string(e)) {
            dexec_errorf(err, errlen,
                         "%s: id2label has no string for class %d (the transformer has %d "
                         "classes)",
                         path, i, K);
            free(labels);
            return DEXEC_EINVAL;
        }
        labels[i] = json_string_value(e);
    }
    s = dxk_vocab_from_labels(labels, K, out, err, errlen);
    free(labels);
    return s;
}

/* The sampler from scheduler/scheduler_config.json (optional). */
static dexec_status dx_scheduler(dxk_pipeline *p, char *err, size_t errlen)
{
    char path[4096], *text = NULL;
    json_t *o, *v;
    json_error_t je;
    const char *cls = NULL, *name = NULL;
    dexec_status s;

    p->sampler = DXK_SAMPLER_DDPM;
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", p->dir);
    s = dx_slurp(path, &text, err, errlen);
    if (s == DEXEC_ENOTFOUND)
        return DEXEC_OK;
    if (s != DEXEC_OK)
        return s;
    o = json_loads(text, 0, &je);
    free(text);
    if (!json_is_object(o)) {
        dexec_errorf(err, errlen, "%s: not a JSON object (line %d: %s)", path, je.line, je.text);
        json_decref(o);
        return DEXEC_EINVAL;
    }
    v = json_object_get(o, "_class_name");
    cls = json_is_string(v) ? json_string_value(v) : "";
    if (strcmp(cls, "SiTTransport") == 0) {
        p->sampler = DXK_SAMPLER_EULER;
        v = json_object_get(o, "sampling_method");
        if (json_is_string(v))
            name = json_string_value(v);
    } else {
        json_t *n = json_object_get(o, "num_train_timesteps"), *bs = json_object_get(o, "beta_schedule");
        json_t *b0 = json_object_get(o, "beta_start"), *b1 = json_object_get(o, "beta_end");

        if ((n != NULL && json_integer_value(n) != 1000) ||
            (bs != NULL && (!json_is_string(bs) || strcmp(json_string_value(bs), "linear") != 0)) ||
            (b0 != NULL && json_number_value(b0) != 0.0001) ||
            (b1 != NULL && json_number_value(b1) != 0.02)) {
            dexec_errorf(err, errlen,
                         "%s: dexec samples DiT over the linear beta schedule 1e-4..0.02 of 1000 "
                         "steps it was trained with; this file describes another one",
                         path);
            json_decref(o);
            return DEXEC_ENOTSUP;
        }
        if (strcmp(cls, "DDIMScheduler") == 0)
            p->sampler = DXK_SAMPLER_DDIM;
    }
    v = json_object_get(o, "dexec_sampler");
    if (json_is_string(v))
        name = json_string_value(v);
    s = DEXEC_OK;
    if (name != NULL) {
        char e2[128];

        s = dxk_sampler_parse(name, &p->sampler, e2, sizeof e2);
        if (s != DEXEC_OK)
            dexec_errorf(err, errlen, "%s: %s", path, e2);
    }
    json_decref(o);
    return s;
}

dexec_status dxk_pipeline_open(const char *dir, dxk_backend *be, int dtype, dxk_pipeline **out,
                               char *err, size_t errlen)
{
    char path[4096], *text = NULL;
    dxk_dit_config dc;
    dxk_vae_config vc;
    dxk_pipeline *p;
    json_t *idx = NULL;
    json_error_t je;
    dexec_status s;

    *out = NULL;
    s = dxk_backend_latent_ops(be, err, errlen);
    if (s == DEXEC_OK)
        s = dxk_backend_half(be, dtype, err, errlen);
    if (s != DEXEC_OK)
        return s;
    p = calloc(1, sizeof *p);
    if (p == NULL || (p->dir = strdup(dir)) == NULL) {
        free(p);
        dexec_errorf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    s = dx_slurp(path, &text, err, errlen);
    if (s == DEXEC_OK) {
        idx = json_loads(text, 0, &je);
        free(text);
        text = NULL;
        if (!json_is_object(idx)) {
            dexec_errorf(err, errlen, "%s: not a JSON object (line %d: %s)", path, je.line,
                         je.text);
            s = DEXEC_EINVAL;
        } else if (!json_is_array(json_object_get(idx, "transformer")) ||
                   !json_is_array(json_object_get(idx, "vae"))) {
            dexec_errorf(err, errlen,
                         "%s: no 'transformer' and 'vae' components: dexec runs DiT-style "
                         "pipelines (a class-conditional transformer and an AutoencoderKL)",
                         path);
            s = DEXEC_EINVAL;
        }
    }
    if (s == DEXEC_OK) {
        snprintf(path, sizeof path, "%s/transformer/config.json", dir);
        s = dx_slurp(path, &text, err, errlen);
        if (s == DEXEC_OK)
            s = dxk_dit_config_json(path, text, &dc, err, errlen);
        free(text);
        text = NULL;
    }
    if (s == DEXEC_OK) {
        snprintf(path, sizeof path, "%s/vae/config.json", dir);
        s = dx_slurp(path, &text, err, errlen);
        if (s == DEXEC_OK)
            s = dxk_vae_config_json(path, text, &vc, err, errlen);
        free(text);
        text = NULL;
    }
    if (s == DEXEC_OK && vc.latent_channels != dc.in_channels) {
        dexec_errorf(err, errlen,
                     "%s: the transformer takes %d channels, the vae's latents have %d", dir,
                     dc.in_channels, vc.latent_channels);
        s = DEXEC_EINVAL;
    }
    if (s == DEXEC_OK) {
        snprintf(path, sizeof path, "%s/model_index.json", dir);
        s = dx_labels(path, idx, dc.num_classes, &p->vocab, err, errlen);
    }
    if (s == DEXEC_OK)
        s = dx_scheduler(p, err, errlen);
    dc.dtype = vc.dtype = dtype;
    if (s == DEXEC_OK)
        s = dx_open_weights(dir, "transformer", &p->tst, err, errlen);
    if (s == DEXEC_OK)
        s = dxk_dit_load_published(p->tst, &dc, be, &p->dit, err, errlen);
    if (s == DEXEC_OK)
        s = dx_open_weights(dir, "vae", &p->vst, err, errlen);
    if (s == DEXEC_OK)
        s = dxk_vae_load(p->vst, &vc, be, &p->vae, err, errlen);
    json_decref(idx);
    if (s != DEXEC_OK) {
        dxk_pipeline_free(p);
        return s;
    }
    /* DiT's and SiT's sample.py guide 3 of the 4 channels; DiTPipeline all */
    p->guide_channels = dc.layout == DXK_DIT_ORIGINAL ? 3 : dc.in_channels;
    p->default_steps = p->sampler == DXK_SAMPLER_DDIM ? 50 : 250;
    p->default_guidance = 4.0;
    p->image_size = dc.image_size * dxk_vae_scale(&vc);
    *out = p;
    return DEXEC_OK;
}

void dxk_pipeline_free(dxk_pipeline *p)
{
    if (p == NULL)
        return;
    dxk_vae_free(p->vae);
    dxk_dit_free(p->dit);
    dxk_st_close(p->vst);
    dxk_st_close(p->tst);
    dxk_vocab_free(p->vocab);
    free(p->dir);
    free(p);
}
