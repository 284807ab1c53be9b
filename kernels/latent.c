/*
 * latent.c - the published models' samplers (latent.h). The sources they
 * follow, and the details that matter for reproducing the papers'
 * samples, are written down in doc/model.md "Published models".
 */
#include <config.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/rpc.h>

#include "comm.h"
#include "latent.h"
#include "sampler.h"

static const char *const dx_names[] = {"ddpm", "ddim", "euler", "heun"};

dexec_status dxk_sampler_parse(const char *name, dxk_sampler *out, char *err, size_t errlen)
{
    size_t i;

    for (i = 0; i < sizeof dx_names / sizeof dx_names[0]; i++)
        if (name != NULL && strcmp(name, dx_names[i]) == 0) {
            *out = (dxk_sampler)i;
            return DEXEC_OK;
        }
    dexec_errorf(err, errlen, "sampler '%s' is not one of ddpm, ddim, euler, heun",
                 name != NULL ? name : "");
    return DEXEC_EINVAL;
}

const char *dxk_sampler_name(dxk_sampler s)
{
    return (unsigned)s < sizeof dx_names / sizeof dx_names[0] ? dx_names[s] : "?";
}

int dxk_sampler_is_flow(dxk_sampler s)
{
    return s == DXK_SAMPLER_EULER || s == DXK_SAMPLER_HEUN;
}

void dxk_ddpm_respace(int n, int *ts, double *acp)
{
    double cur = 0.0, stride = n > 1 ? 999.0 / (n - 1) : 1.0, prod = 1.0;
    int i, k = 0, t;

    for (i = 0; i < n; i++) {
        ts[i] = (int)nearbyint(cur); /* Python's round(): half to even */
        cur += stride;
    }
    for (t = 0; t < 1000 && k < n; t++) {
        /* np.linspace(1e-4, 0.02, 1000): start + t * step, the last exact */
        double beta = t == 999 ? 0.02 : 1e-4 + t * ((0.02 - 1e-4) / 999.0);

        prod *= 1.0 - beta;
        while (k < n && ts[k] == t)
            acp[k++] = prod;
    }
}

/* The device buffers of a sampling run. */
typedef struct dx_lbuf {
    float *xin, *v;  /* [2, C, h, w], [2, Co, h, w] */
    float *vh;       /* host copy of v */
    float *vm;       /* cfg pair: this rank's branch, before the exchange */
    float *xf;       /* host float copy of x */
} dx_lbuf;

static dexec_status dx_lbuf_alloc(dxk_dit *m, size_t n, size_t no, dx_lbuf *b, char *err,
                                  size_t errlen)
{
    dxk_backend *be = m->be;

    memset(b, 0, sizeof *b);
    b->xin = be->alloc(be, 2 * n);
    b->v = be->alloc(be, 2 * no);
    b->vh = malloc(2 * no * sizeof *b->vh);
    b->xf = malloc(n * sizeof *b->xf);
    b->vm = malloc(no * sizeof *b->vm);
    if (b->xin == NULL || b->v == NULL || b->vh == NULL || b->xf == NULL || b->vm == NULL) {
        dexec_errorf(err, errlen, "sampler: out of memory (%s)", be->name);
        return DEXEC_ENOMEM;
    }
    return DEXEC_OK;
}

static void dx_lbuf_free(dxk_dit *m, dx_lbuf *b)
{
    m->be->release(m->be, b->xin);
    m->be->release(m->be, b->v);
    free(b->vh);
    free(b->xf);
    free(b->vm);
}

/* out[Co, h, w] = the guided model output at (x, t): the cond branch, with
 * channels below gc replaced by u + g (c - u). On a cfg pair (pc) each rank
 * computes its branch and the two are exchanged: the same values, combined
 * the same way, as one rank's batch of two. */
static dexec_status dx_eval(dxk_dit *m, dxk_dit_ws *ws, dx_lbuf *b, const dxk_comm *pc,
                            const float *x, double t, int y, int y_neg, double g, int gc,
                            float *out, char *err, size_t errlen)
{
    dxk_backend *be = m->be;
    const size_t hw = (size_t)ws->H * ws->W, n = (size_t)m->cfg.in_channels * hw;
    const size_t no = (size_t)m->cfg.out_channels * hw;
    const int cfg = g != 1.0;
    double tt[2] = {t, t};
    int yy[2] = {y, y_neg};
    size_t i, lim = (size_t)gc * hw;

    be->upload(be, b->xin, x, n);
    if (pc != NULL) {
        dexec_status s;

        dxk_dit_forward(m, ws, b->v, b->xin, &t, pc->rank == 0 ? &yy[0] : &yy[1], 1);
        be->download(be, b->vm, b->v, no);
        s = be->sync(be, err, errlen);
        if (s == DEXEC_OK)
            s = pc->allgather(pc->ctx, b->vm, b->vh, no * sizeof *b->vm, err, errlen);
        if (s != DEXEC_OK)
            return s;
        goto combine;
    }
    if (cfg)
        be->upload(be, b->xin + n, x, n);
    dxk_dit_forward(m, ws, b->v, b->xin, tt, yy, cfg ? 2 : 1);
    be->download(be, b->vh, b->v, (cfg ? 2 : 1) * no);
    {
        dexec_status s = dxk_dit_ws_check(ws, err, errlen);

        if (s == DEXEC_OK)
            s = be->sync(be, err, errlen);

        if (s != DEXEC_OK)
            return s;
    }
combine:
    for (i = 0; i < no; i++) {
        double c = b->vh[i];

        if (cfg && i < lim)
            c = b->vh[no + i] + g * (c - (double)b->vh[no + i]);
        out[i] = (float)c;
    }
    return DEXEC_OK;
}

dexec_status dxk_latent_guided(dxk_dit *m, dxk_dit_ws *ws, const float *x, double t, int y,
                               int y_neg, double guidance, int guide_channels, float *out,
                               char *err, size_t errlen)
{
    const size_t hw = (size_t)ws->H * ws->W;
    dx_lbuf b;
    dexec_status s;

    if (ws->B < (guidance != 1.0 ? 2 : 1)) {
        dexec_errorf(err, errlen, "guided forward: the workspace holds %d image(s)", ws->B);
        return DEXEC_EINVAL;
    }
    s = dx_lbuf_alloc(m, (size_t)m->cfg.in_channels * hw, (size_t)m->cfg.out_channels * hw, &b,
                      err, errlen);
    if (s == DEXEC_OK)
        s = dx_eval(m, ws, &b, NULL, x, t, y, y_neg, guidance, guide_channels, out, err, errlen);
    dx_lbuf_free(m, &b);
    return s;
}

dexec_status dxk_latent_sample(dxk_dit *m, dxk_dit_ws *ws, const dxk_latent_args *a, float *out,
                               char *err, size_t errlen)
{
    const int C = m->cfg.in_channels, learned = m->cfg.out_channels == 2 * C;
    const size_t hw = (size_t)a->h * a->w, n = (size_t)C * hw;
    const size_t no = (size_t)m->cfg.out_channels * hw;
    const int N = a->steps, gc = a->guide_channels < C ? a->guide_channels : C;
    const dxk_comm *pc = a->cfg != NULL && a->cfg->size == 2 ? a->cfg : NULL;
    double *x = NULL, *acp = NULL;
    float *e = NULL, *e2 = NULL, *z = NULL;
    int *ts = NULL, i;
    size_t k;
    dx_lbuf b;
    dexec_status s;

    if (N < 1 || N > 1000) {
        dexec_errorf(err, errlen, "num_inference_steps %d is outside 1..1000", N);
        return DEXEC_EINVAL;
    }
    if (a->sampler == DXK_SAMPLER_DDPM && N < 2) {
        dexec_errorf(err, errlen,
                     "the ddpm sampler needs at least 2 steps (its last step's variance is "
                     "the second one's): ask for more steps or use ddim");
        return DEXEC_EINVAL;
    }
    if (pc != NULL && a->guidance == 1.0) {
        dexec_errorf(err, errlen, "%s", dxk_cfg_needs_guidance);
        return DEXEC_EINVAL;
    }
    if (ws->B < (a->guidance != 1.0 && pc == NULL ? 2 : 1) || ws->H != a->h || ws->W != a->w) {
        dexec_errorf(err, errlen, "sampler: workspace does not fit %d latent(s) of %dx%d",
                     a->guidance != 1.0 && pc == NULL ? 2 : 1, a->h, a->w);
        return DEXEC_EINVAL;
    }
    s = dx_lbuf_alloc(m, n, no, &b, err, errlen);
    x = malloc(n * sizeof *x);
    acp = malloc((size_t)N * sizeof *acp);
    ts = malloc((size_t)N * sizeof *ts);
    e = malloc(no * sizeof *e);
    e2 = malloc(no * sizeof *e2);
    z = malloc(n * sizeof *z);
    if (s == DEXEC_OK && (x == NULL || acp == NULL || ts == NULL || e == NULL || e2 == NULL ||
                          z == NULL)) {
        dexec_errorf(err, errlen, "sampler: out of memory");
        s = DEXEC_ENOMEM;
    }
    if (s != DEXEC_OK)
        goto done;
    for (k = 0; k < n; k++)
        x[k] = a->noise[k];

    if (dxk_sampler_is_flow(a->sampler)) {
        /* SiT: x(0) noise, x(1) data, dx/dt = v(x, t) on linspace(0, 1, N+1) */
        for (i = 0; i < N && s == DEXEC_OK; i++) {
            double t0 = (double)i / N, t1 = (double)(i + 1) / N, dt = t1 - t0;

            for (k = 0; k < n; k++)
                b.xf[k] = (float)x[k];
            s = dx_eval(m, ws, &b, pc, b.xf, t0, a->y, a->y_neg, a->guidance, gc, e, err, errlen);
            if (s != DEXEC_OK)
                break;
            if (a->sampler == DXK_SAMPLER_EULER) {
                for (k = 0; k < n; k++)
                    x[k] += dt * e[k];
            } else {
                for (k = 0; k < n; k++)
                    b.xf[k] = (float)(x[k] + dt * e[k]);
                s = dx_eval(m, ws, &b, pc, b.xf, t1, a->y, a->y_neg, a->guidance, gc, e2, err,
                            errlen);
                for (k = 0; s == DEXEC_OK && k < n; k++)
                    x[k] += 0.5 * dt * ((double)e[k] + e2[k]);
            }
            if (s == DEXEC_OK && a->step != NULL && a->step(a->user, i + 1, N) != 0) {
                snprintf(err, errlen, "cancelled after step %d of %d", i + 1, N);
                s = DEXEC_ECANCELED;
            }
        }
    } else {
        dxk_ddpm_respace(N, ts, acp);
        for (i = N - 1; i >= 0 && s == DEXEC_OK; i--) {
            const double ac = acp[i], ap = i > 0 ? acp[i - 1] : 1.0;
            const double beta = 1.0 - ac / ap;
            const double r = sqrt(1.0 / ac), rm1 = sqrt(1.0 / ac - 1.0);
            const int step = N - 1 - i;

            for (k = 0; k < n; k++)
                b.xf[k] = (float)x[k];
            s = dx_eval(m, ws, &b, pc, b.xf, (double)ts[i], a->y, a->y_neg, a->guidance, gc, e, err,
                        errlen);
            if (s != DEXEC_OK)
                break;
            if (a->sampler == DXK_SAMPLER_DDIM) {
                for (k = 0; k < n; k++) {
                    double x0 = r * x[k] - rm1 * e[k];
                    double eps = (r * x[k] - x0) / rm1;

                    x[k] = x0 * sqrt(ap) + sqrt(1.0 - ap) * eps;
                }
            } else {
                /* posterior q(x_{t-1} | x_t, x_0) of the respaced schedule;
                 * the clipped log variance takes step 1's at step 0 */
                const double c1 = beta * sqrt(ap) / (1.0 - ac);
                const double c2 = (1.0 - ap) * sqrt(1.0 - beta) / (1.0 - ac);
                const int iv = i > 0 ? i : 1;
                const double acv = acp[iv], apv = iv > 0 ? acp[iv - 1] : 1.0;
                const double min_log = log((1.0 - acv / apv) * (1.0 - apv) / (1.0 - acv));
                const double max_log = log(beta);

                if (i > 0) {
                    if (a->step_noise != NULL)
                        memcpy(z, a->step_noise + (size_t)step * n, n * sizeof *z);
                    else
                        dxk_noise(a->seed, a->image | ((uint64_t)(step + 1) << 32), z, n);
                }
                for (k = 0; k < n; k++) {
                    double x0 = r * x[k] - rm1 * e[k];
                    /* without learned sigma: guided-diffusion's FIXED_LARGE */
                    double mean = c1 * x0 + c2 * x[k], logv = max_log;

                    if (learned) {
                        double frac = ((double)e[n + k] + 1.0) / 2.0;

                        logv = frac * max_log + (1.0 - frac) * min_log;
                    }
                    x[k] = mean + (i > 0 ? exp(0.5 * logv) * z[k] : 0.0);
                }
            }
            if (a->step != NULL && a->step(a->user, step + 1, N) != 0) {
                snprintf(err, errlen, "cancelled after step %d of %d", step + 1, N);
                s = DEXEC_ECANCELED;
            }
        }
    }
    if (s == DEXEC_OK)
        for (k = 0; k < n; k++)
            out[k] = (float)x[k];
done:
    dx_lbuf_free(m, &b);
    free(x);
    free(acp);
    free(ts);
    free(e);
    free(e2);
    free(z);
    return s;
}
