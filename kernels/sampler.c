/*
 * sampler.c - flow-matching Euler sampling with classifier-free guidance,
 * and the starting noise. The noise is made on the host by a counter-based
 * generator so that an image depends on (seed, image index) only: not on
 * the rank, the executor, the device or how many images share a request.
 */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "sampler.h"

void dxk_sigmas(int n, double shift, double *out)
{
    int i;

    for (i = 0; i <= n; i++) {
        double s = 1.0 - (double)i / n;

        out[i] = shift * s / (1.0 + (shift - 1.0) * s);
    }
}

uint64_t dxk_splitmix64(uint64_t x)
{
    uint64_t z = x + UINT64_C(0x9E3779B97F4A7C15);

    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

void dxk_noise(uint64_t seed, uint64_t image, float *out, size_t n)
{
    const double two_pi = 6.283185307179586476925286766559;
    const double inv53 = 1.0 / 9007199254740992.0; /* 2^-53 */
    uint64_t key = dxk_splitmix64(dxk_splitmix64(seed) ^ image);
    size_t j;

    for (j = 0; 2 * j < n; j++) {
        uint64_t r1 = dxk_splitmix64(key + 2 * (uint64_t)j);
        uint64_t r2 = dxk_splitmix64(key + 2 * (uint64_t)j + 1);
        double u1 = (double)((r1 >> 11) + 1) * inv53; /* (0, 1]: log never sees 0 */
        double u2 = (double)(r2 >> 11) * inv53;
        double rad = sqrt(-2.0 * log(u1));

        out[2 * j] = (float)(rad * cos(two_pi * u2));
        if (2 * j + 1 < n)
            out[2 * j + 1] = (float)(rad * sin(two_pi * u2));
    }
}

uint8_t dxk_to_pixel(float x)
{
    double v = nearbyint(((double)x + 1.0) * 127.5);

    if (!(v > 0.0))
        return 0;
    if (v > 255.0)
        return 255;
    return (uint8_t)v;
}

const char *dxk_cfg_needs_guidance =
    "cfg parallelism (parallel.cfg = 2) needs classifier-free guidance, and guidance_scale 1 "
    "has no unconditional branch: ask for a guidance_scale other than 1 or set parallel.cfg = 1";

/* One guided prediction on a cfg pair: this rank's branch (batch of one),
 * the two exchanged through host memory, both copied back to v [2, n] in
 * branch order, so that both ranks combine the same values the same way
 * as one rank computing the batch of two. */
static dexec_status dx_cfg_pair_forward(dxk_dit *m, dxk_dit_ws *ws, const dxk_comm *pc, float *v,
                                        const float *x, double t, int y, int y_neg, float *host,
                                        size_t n, char *err, size_t errlen)
{
    dxk_backend *be = m->be;
    int yy = pc->rank == 0 ? y : y_neg;
    dexec_status s;

    dxk_dit_forward(m, ws, v, x, &t, &yy, 1);
    be->download(be, host + 2 * n, v, n);
    s = be->sync(be, err, errlen);
    if (s == DEXEC_OK)
        s = pc->allgather(pc->ctx, host + 2 * n, host, n * sizeof *host, err, errlen);
    if (s == DEXEC_OK)
        be->upload(be, v, host, 2 * n);
    return s;
}

dexec_status dxk_sample(dxk_dit *m, dxk_dit_ws *ws, const dxk_sample_args *a, float *out,
                        char *err, size_t errlen)
{
    dxk_backend *be = m->be;
    const size_t n = (size_t)m->cfg.in_channels * a->H * a->W;
    const int cfg = a->guidance != 1.0;
    const dxk_comm *pc = a->cfg != NULL && a->cfg->size == 2 ? a->cfg : NULL;
    double sig[1001];
    float *x, *xin, *v, *host = NULL;
    dexec_status s = DEXEC_OK;
    int i;

    if (a->steps < 1 || a->steps > DEXEC_MAX_STEPS) {
        snprintf(err, errlen, "num_inference_steps %d is outside 1..%d", a->steps, DEXEC_MAX_STEPS);
        return DEXEC_EINVAL;
    }
    if (pc != NULL && !cfg) {
        snprintf(err, errlen, "%s", dxk_cfg_needs_guidance);
        return DEXEC_EINVAL;
    }
    if (ws->B < (cfg && pc == NULL ? 2 : 1) || ws->H != a->H || ws->W != a->W) {
        snprintf(err, errlen, "sampler: workspace does not fit %d image(s) of %dx%d",
                 cfg && pc == NULL ? 2 : 1, a->H, a->W);
        return DEXEC_EINVAL;
    }
    dxk_sigmas(a->steps, a->shift, sig);
    x = be->alloc(be, n);
    xin = be->alloc(be, 2 * n); /* [x; x]: cond and uncond in one batch */
    v = be->alloc(be, 2 * n);
    if (pc != NULL && (host = malloc(3 * n * sizeof *host)) == NULL) {
        snprintf(err, errlen, "sampler: out of memory");
        s = DEXEC_ENOMEM;
    }
    if (s == DEXEC_OK && x != NULL && xin != NULL && v != NULL) {
        be->upload(be, x, a->noise, n);
        for (i = 0; i < a->steps; i++) {
            double t[2];
            int y[2];

            t[0] = t[1] = 1000.0 * sig[i];
            y[0] = a->y;
            y[1] = a->y_neg;
            if (pc != NULL) {
                s = dx_cfg_pair_forward(m, ws, pc, v, x, t[0], a->y, a->y_neg, host, n, err,
                                        errlen);
                if (s != DEXEC_OK)
                    break;
                be->cfg_combine(be, v, v, v + n, (float)a->guidance, n);
            } else if (cfg) {
                be->copy(be, xin, x, n);
                be->copy(be, xin + n, x, n);
                dxk_dit_forward(m, ws, v, xin, t, y, 2);
                be->cfg_combine(be, v, v, v + n, (float)a->guidance, n);
            } else {
                dxk_dit_forward(m, ws, v, x, t, y, 1);
            }
            /* a sequence group's collective failed: the request fails now */
            s = dxk_dit_ws_check(ws, err, errlen);
            if (s != DEXEC_OK)
                break;
            be->euler(be, x, v, (float)(sig[i + 1] - sig[i]), n);
            if (a->step != NULL) {
                /* a progress report means the step is done: wait for it */
                s = be->sync(be, err, errlen);
                if (s != DEXEC_OK)
                    break;
                if (a->step(a->user, i + 1, a->steps) != 0) {
                    /* a step boundary: the cancelled request frees the rank here */
                    snprintf(err, errlen, "cancelled after step %d of %d", i + 1, a->steps);
                    s = DEXEC_ECANCELED;
                    break;
                }
            }
        }
        if (s == DEXEC_OK)
            be->download(be, out, x, n);
    }
    if (s == DEXEC_OK)
        s = be->sync(be, err, errlen);
    be->release(be, x);
    be->release(be, xin);
    be->release(be, v);
    free(host);
    return s;
}
