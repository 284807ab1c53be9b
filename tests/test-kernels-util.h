/*
 * test-kernels-util.h - helpers shared by the kernels test suites: a
 * reproducible random source, tolerance checks that never let NaN pass,
 * and the paths of the golden files.
 */
#ifndef DEXEC_TEST_KERNELS_UTIL_H
#define DEXEC_TEST_KERNELS_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static inline uint64_t tk_next(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));

    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* uniform in [lo, hi) */
static inline float tk_uniform(uint64_t *s, float lo, float hi)
{
    return lo + (hi - lo) * (float)((tk_next(s) >> 40) * (1.0 / 16777216.0));
}

static inline void tk_fill(uint64_t *s, float *x, size_t n, float lo, float hi)
{
    size_t i;

    for (i = 0; i < n; i++)
        x[i] = tk_uniform(s, lo, hi);
}

/* max |got - ref| / max |ref|: the error relative to the tensor's scale.
 * NaN or infinity anywhere gives INFINITY, so `err <= tol` fails. */
static inline double tk_rel_err(const float *got, const double *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    size_t i;

    for (i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);

        if (!isfinite(got[i]) || !isfinite(ref[i]))
            return INFINITY;
        if (d > num)
            num = d;
        if (fabs(ref[i]) > den)
            den = fabs(ref[i]);
    }
    return den > 0 ? num / den : num;
}

static inline double tk_rel_err_f(const float *got, const float *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    size_t i;

    for (i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);

        if (!isfinite(got[i]) || !isfinite(ref[i]))
            return INFINITY;
        if (d > num)
            num = d;
        if (fabs(ref[i]) > den)
            den = fabs(ref[i]);
    }
    return den > 0 ? num / den : num;
}

/* $DEXEC_TEST_SRCDIR/golden/NAME (falls back to the source-relative path
 * when the suite is run by hand from tests/). */
static inline void tk_golden_path(char *out, size_t len, const char *name)
{
    const char *dir = getenv("DEXEC_TEST_SRCDIR");

    snprintf(out, len, "%s/golden/%s", dir ? dir : ".", name);
}

/* x rounded to nearest even with the significand of float16 (11 bits,
 * subnormal below 2^-14) or bfloat16 (8 bits): the values a device's
 * half types hold (the tests' weights are far from overflow). */
static inline float tk_round_to(float x, int dtype)
{
    int e;

    if (x == 0 || !isfinite(x))
        return x;
    frexpf(x, &e); /* |x| = m 2^e, m in [0.5, 1) */
    if (dtype == 1) { /* DEXEC_DTYPE_F16; else DEXEC_DTYPE_BF16 */
        if (e < -13)
            e = -13; /* float16 subnormals: a quantum of 2^-24 */
        return ldexpf(nearbyintf(ldexpf(x, 11 - e)), e - 11);
    }
    return ldexpf(nearbyintf(ldexpf(x, 8 - e)), e - 8);
}

#endif
