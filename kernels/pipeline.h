/*
 * pipeline.h - a published latent model read from a diffusers pipeline
 * directory (doc/model.md "Published models"): model_index.json (with
 * id2label), transformer/ and vae/ (config.json and
 * diffusion_pytorch_model.safetensors each), scheduler/ optional.
 */
#ifndef DEXEC_KERNELS_PIPELINE_H
#define DEXEC_KERNELS_PIPELINE_H

#include <stddef.h>

#include <dexec/dexec.h>
#include <dexec/value.h>

#include "dit.h"
#include "latent.h"
#include "prompt.h"
#include "safetensors.h"
#include "vae.h"

typedef struct dxk_pipeline {
    char *dir;
    dxk_safetensors *tst, *vst; /* transformer and vae weights */
    dxk_dit *dit;
    dxk_vae *vae;
    dxk_vocab *vocab;
    dxk_sampler sampler;
    int guide_channels;
    int default_steps;
    double default_guidance;
    int image_size; /* pixels: sample_size x the VAE's scale */
} dxk_pipeline;

/* The pipeline of a model opened from a pipeline directory; NULL for a
 * single-file (bundled-format) model. Owned by the model. */
struct dxk_model;
dxk_pipeline *dxk_model_pipeline(struct dxk_model *m);

/* 1 when path is a directory holding model_index.json. */
int dxk_pipeline_is_dir(const char *path);

/* Reads and checks the pipeline in dir and loads it on be (which must
 * have the latent ops: dxk_backend_latent_ops). The sampler is
 * scheduler/scheduler_config.json's "dexec_sampler" when set (ddpm, ddim,
 * euler, heun), else from its _class_name (DDIMScheduler: ddim; any other
 * with the linear beta schedule: ddpm; "SiTTransport": its
 * "sampling_method", euler by default), else ddpm. Errors name the file:
 * DEXEC_ENOTFOUND (a file missing), DEXEC_EINVAL (malformed, or tensors
 * that disagree with config.json), DEXEC_ENOTSUP (a sharded checkpoint, a
 * beta schedule other than linear 1e-4..0.02 over 1000 steps, a device
 * without the ops or, for a dtype other than DEXEC_DTYPE_F32, without
 * half-precision weights: dxk_backend_half). dtype is how the transformer's
 * and the decoder's weight matrices are kept on be (dxk_dit_config.dtype).
 * *out is the caller's (dxk_pipeline_free). */
dexec_status dxk_pipeline_open(const char *dir, dxk_backend *be, int dtype, dxk_pipeline **out,
                               char *err, size_t errlen);
void dxk_pipeline_free(dxk_pipeline *p);

#endif
