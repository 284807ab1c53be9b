/*
 * latent.h - the samplers of the published latent models (doc/model.md
 * "Published models"): DDPM and DDIM over DiT's linear beta schedule
 * respaced to the step count, and Euler and Heun over SiT's linear
 * flow-matching path; classifier-free guidance as the reference samplers
 * apply it.
 */
#ifndef DEXEC_KERNELS_LATENT_H
#define DEXEC_KERNELS_LATENT_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/dexec.h>

#include "dit.h"

struct dxk_comm;

typedef enum dxk_sampler {
    DXK_SAMPLER_DDPM = 0, /* ancestral, learned variance (DiT's sample.py) */
    DXK_SAMPLER_DDIM,     /* eta 0 */
    DXK_SAMPLER_EULER,    /* flow ODE, SiT's --sampling-method euler */
    DXK_SAMPLER_HEUN      /* flow ODE, torchdiffeq's heun2 */
} dxk_sampler;

/* "ddpm", "ddim", "euler", "heun" -> *out; DEXEC_EINVAL names the known
 * ones. */
dexec_status dxk_sampler_parse(const char *name, dxk_sampler *out, char *err, size_t errlen);
const char *dxk_sampler_name(dxk_sampler s);
/* 1 for the flow-matching samplers (the model takes t in 0..1) */
int dxk_sampler_is_flow(dxk_sampler s);

/* The linear beta schedule of DiT (guided-diffusion's "linear" at 1000
 * steps: betas = linspace(1e-4, 0.02, 1000) in double), respaced to n steps
 * as space_timesteps(1000, [n]) does: ts[i] = round(i * 999 / (n - 1)),
 * rounding half to even (ts[0] = 0 when n == 1). acp[i] is the original
 * alphas_cumprod at ts[i]. ts and acp hold n values; n in 1..1000. */
void dxk_ddpm_respace(int n, int *ts, double *acp);

/* Called after each sampler step; a nonzero return stops the sampler there
 * (a cancelled request: DEXEC_ECANCELED). */
typedef int (*dxk_latent_step_fn)(void *user, int step, int total_steps);

typedef struct dxk_latent_args {
    const float *noise;      /* host [C, h, w]: the starting latent */
    const float *step_noise; /* DDPM only: host [steps, C, h, w], the noise added
                                after model call s (s = 0 first; the last is not
                                used); NULL: dxk_noise(seed, image | (s+1) << 32) */
    uint64_t seed, image;
    int h, w;             /* latent size */
    int y, y_neg;         /* class indices 0..K (K: the null class) */
    int steps;
    double guidance;      /* 1: conditional branch only */
    int guide_channels;   /* latent channels guidance applies to (3 in DiT's and
                             SiT's sample.py, all in diffusers' DiTPipeline) */
    dxk_sampler sampler;
    dxk_latent_step_fn step;
    void *user;
    /* CFG parallelism (comm.h): size 2, rank 0 the conditional branch, rank
     * 1 the unconditional one; NULL or size 1: both here. Guidance must
     * not be 1 with it (DEXEC_EINVAL). */
    const struct dxk_comm *cfg;
} dxk_latent_args;

/* Runs the sampler for one image and writes the final latent (host,
 * [C, h, w]) to out. ws must hold 2 images of (h, w) (1 when guidance is
 * 1). The model output is downloaded after each call and the sampler's
 * arithmetic done on the host in double (the latent is small: 4 x 32 x 32
 * at 256 px), so every device takes the same steps. Errors: DEXEC_EINVAL
 * (steps outside 1..1000, DDPM with 1 step), the backend's. */
dexec_status dxk_latent_sample(dxk_dit *m, dxk_dit_ws *ws, const dxk_latent_args *a, float *out,
                               char *err, size_t errlen);

/* One guided model evaluation, as the samplers make it: x (host [C,h,w])
 * at timestep t, the output (host [out_channels, h, w]) the cond branch
 * with guidance applied to the first guide_channels channels (when
 * guidance != 1). For the worker's raw methods and the golden tests. */
dexec_status dxk_latent_guided(dxk_dit *m, dxk_dit_ws *ws, const float *x, double t, int y,
                               int y_neg, double guidance, int guide_channels, float *out,
                               char *err, size_t errlen);

#endif
