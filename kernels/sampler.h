/*
 * sampler.h - the flow-matching Euler sampler with classifier-free guidance
 * (doc/model-format.md "Sampler") and the counter-based starting noise.
 */
#ifndef DEXEC_KERNELS_SAMPLER_H
#define DEXEC_KERNELS_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/dexec.h>

#include "dit.h"

struct dxk_comm;

/* s_i' for i = 0..n: out holds n + 1 values. */
void dxk_sigmas(int n, double shift, double *out);

uint64_t dxk_splitmix64(uint64_t x);

/* n standard-normal floats: the starting noise of image `image` of a request
 * with this seed. Element e depends only on (seed, image, e):
 *   key  = splitmix64(splitmix64(seed) ^ image)
 *   pair j = e / 2: r1 = splitmix64(key + 2j), r2 = splitmix64(key + 2j + 1)
 *   u1 = ((r1 >> 11) + 1) / 2^53 in (0, 1], u2 = (r2 >> 11) / 2^53
 *   element 2j = sqrt(-2 ln u1) cos(2 pi u2), element 2j+1 = ... sin(...)
 * computed in double and rounded to float (splitmix64 as in Vigna's
 * reference: add 0x9E3779B97F4A7C15 first, then the two multiply-xorshift
 * rounds). */
void dxk_noise(uint64_t seed, uint64_t image, float *out, size_t n);

/* Returns nonzero to stop sampling there (DEXEC_ECANCELED). */
typedef int (*dxk_sample_step_fn)(void *user, int step, int total_steps);

typedef struct dxk_sample_args {
    const float *noise; /* host, [C, H, W] */
    int H, W;
    int y, y_neg;       /* class indices 0..K (K = null) */
    int steps;
    double guidance;    /* 1: the conditional branch only */
    double shift;
    dxk_sample_step_fn step;
    void *user;
    /* CFG parallelism: a communicator of size 2 (comm.h) whose rank 0
     * computes the conditional branch and rank 1 the unconditional one,
     * exchanging predictions every step; NULL or size 1: both here. */
    const struct dxk_comm *cfg;
} dxk_sample_args;

/* Runs the sampler for one image and writes the final x (host, [C, H, W])
 * to out. ws must hold 2 images of H x W (1 when guidance == 1 or with a cfg
 * communicator). Errors are the backend's (DEXEC_ENOMEM, DEXEC_EIO), the
 * communicator's (DEXEC_EIO, DEXEC_ETIMEDOUT), and DEXEC_EINVAL for a cfg
 * communicator with guidance 1, with the message in err. */
dexec_status dxk_sample(dxk_dit *m, dxk_dit_ws *ws, const dxk_sample_args *a, float *out,
                        char *err, size_t errlen);

/* The message of a cfg communicator used with guidance 1 (EINVAL). */
extern const char *dxk_cfg_needs_guidance;

/* clamp(round((x + 1) * 127.5), 0, 255), computed in double, rounding
 * half to even as torch.round does. NaN gives 0. */
uint8_t dxk_to_pixel(float x);

#endif
