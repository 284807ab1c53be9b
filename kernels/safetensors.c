/*
 * safetensors.c - strict safetensors reader. The whole file is validated
 * against the rules of doc/model-format.md before any tensor is used, so
 * the model code can trust shapes and offsets. The file is mapped, not
 * read: F32 tensors are used where they lie, which keeps a worker's memory
 * at the size of its activations.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dexec/rpc.h>

#include "safetensors.h"

/* ---- files that change under a mapping ------------------------------------- *
 *
 * Tensors are used in place in the mapping. If the file is truncated (or
 * replaced by rewriting it in place) while mapped, touching a page past the
 * new end raises SIGBUS, which would kill the worker with no word. The
 * handler below, once installed (dxk_st_catch_sigbus), looks the faulting
 * address up in the table of live mappings; when it belongs to one, it maps
 * a page of zeros over it, so the computation runs to its end, and marks
 * the file damaged: the model then fails the request, and every later one,
 * with a message naming the file. A fault anywhere else keeps its default
 * action. The handler reads the table without a lock: slots are filled
 * before the mapping is used and cleared before it is unmapped. */

#define DX_MAX_MAPS 64

static struct {
    char *volatile start;
    volatile size_t len;
    volatile sig_atomic_t damaged;
    volatile size_t offset; /* first damaged byte seen */
} dx_maps[DX_MAX_MAPS];
static pthread_mutex_t dx_maps_lock = PTHREAD_MUTEX_INITIALIZER;

static void dx_sigbus(int sig, siginfo_t *si, void *ctx)
{
    char *a = si->si_addr;
    long page = sysconf(_SC_PAGESIZE);
    int i;

    (void)ctx;
    for (i = 0; i < DX_MAX_MAPS; i++) {
        char *start = dx_maps[i].start;

        if (start != NULL && a >= start && a < start + dx_maps[i].len) {
            char *p = (char *)((uintptr_t)a & ~(uintptr_t)(page - 1));

            if (mmap(p, (size_t)page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
                MAP_FAILED)
                break;
            if (!dx_maps[i].damaged)
                dx_maps[i].offset = (size_t)(a - start);
            dx_maps[i].damaged = 1;
            return;
        }
    }
    /* not a model mapping: die of it as if no handler were installed */
    signal(sig, SIG_DFL);
    raise(sig);
}

void dxk_st_catch_sigbus(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = dx_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}

static void dx_track(dxk_safetensors *st)
{
    int i;

    st->slot = -1;
    pthread_mutex_lock(&dx_maps_lock);
    for (i = 0; i < DX_MAX_MAPS; i++) {
        if (dx_maps[i].start == NULL) {
            dx_maps[i].len = st->map_len;
            dx_maps[i].damaged = 0;
            dx_maps[i].offset = 0;
            dx_maps[i].start = st->map;
            st->slot = i;
            break;
        }
    }
    pthread_mutex_unlock(&dx_maps_lock);
}

static void dx_untrack(dxk_safetensors *st)
{
    if (st->slot < 0)
        return;
    pthread_mutex_lock(&dx_maps_lock);
    dx_maps[st->slot].start = NULL;
    pthread_mutex_unlock(&dx_maps_lock);
    st->slot = -1;
}

int dxk_st_damaged(const dxk_safetensors *st, size_t *offset)
{
    if (st->slot < 0 || !dx_maps[st->slot].damaged)
        return 0;
    if (offset != NULL)
        *offset = dx_maps[st->slot].offset;
    return 1;
}

const char *dxk_dtype_name(dxk_dtype d)
{
    switch (d) {
    case DXK_F32:
        return "F32";
    case DXK_F16:
        return "F16";
    case DXK_BF16:
        return "BF16";
    }
    return "?";
}

size_t dxk_dtype_size(dxk_dtype d)
{
    return d == DXK_F32 ? 4 : 2;
}

float dxk_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    float f;

    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            /* subnormal half: renormalise into a normal float */
            exp = 127 - 15 + 1;
            while ((man & 0x400u) == 0) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ffu;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

float dxk_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;

    memcpy(&f, &bits, sizeof f);
    return f;
}

static int dx_parse_dtype(const char *s, dxk_dtype *d)
{
    if (strcmp(s, "F32") == 0)
        *d = DXK_F32;
    else if (strcmp(s, "F16") == 0)
        *d = DXK_F16;
    else if (strcmp(s, "BF16") == 0)
        *d = DXK_BF16;
    else
        return -1;
    return 0;
}

/* A JSON number that is a non-negative integer. The JSON parser gives
 * integers as INT; a FLOAT (1e3, 2.0) is not an offset or a dimension. */
static int dx_nonneg_int(const dexec_value *v, uint64_t *out)
{
    if (v == NULL || v->type != DEXEC_VAL_INT || v->u.i < 0)
        return -1;
    *out = (uint64_t)v->u.i;
    return 0;
}

static dexec_status dx_parse_tensor(dxk_safetensors *st, const char *name, const dexec_value *v,
                                    dxk_tensor *t, char *err, size_t errlen)
{
    const dexec_value *dt, *shape, *offs;
    uint64_t b, e, n = 1, want;
    size_t i;

    if (v->type != DEXEC_VAL_MAP) {
        dexec_errorf(err, errlen, "%s: tensor '%s': entry is not a JSON object", st->path, name);
        return DEXEC_EINVAL;
    }
    dt = dexec_value_map_get(v, "dtype");
    shape = dexec_value_map_get(v, "shape");
    offs = dexec_value_map_get(v, "data_offsets");
    if (dt == NULL || dt->type != DEXEC_VAL_STR) {
        dexec_errorf(err, errlen, "%s: tensor '%s': missing or non-string \"dtype\"", st->path, name);
        return DEXEC_EINVAL;
    }
    if (dx_parse_dtype(dt->u.str.ptr, &t->dtype) != 0) {
        dexec_errorf(err, errlen, "%s: tensor '%s': dtype %s is not supported (F32, F16, BF16)",
                  st->path, name, dt->u.str.ptr);
        return DEXEC_EINVAL;
    }
    if (shape == NULL || shape->type != DEXEC_VAL_ARRAY) {
        dexec_errorf(err, errlen, "%s: tensor '%s': missing or non-array \"shape\"", st->path, name);
        return DEXEC_EINVAL;
    }
    if (shape->u.arr.len > DXK_ST_MAX_DIMS) {
        dexec_errorf(err, errlen, "%s: tensor '%s': %zu dimensions (at most %d are supported)",
                  st->path, name, shape->u.arr.len, DXK_ST_MAX_DIMS);
        return DEXEC_EINVAL;
    }
    t->ndim = (int)shape->u.arr.len;
    for (i = 0; i < shape->u.arr.len; i++) {
        uint64_t d;

        if (dx_nonneg_int(shape->u.arr.items[i], &d) != 0) {
            dexec_errorf(err, errlen, "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                      st->path, name, i);
            return DEXEC_EINVAL;
        }
        /* bound each factor so the product cannot wrap */
        if (d != 0 && n > (UINT64_C(1) << 62) / d) {
            dexec_errorf(err, errlen, "%s: tensor '%s': shape is too large", st->path, name);
            return DEXEC_EINVAL;
        }
        n *= d;
        t->shape[i] = (int64_t)d;
    }
    if (offs == NULL || offs->type != DEXEC_VAL_ARRAY || offs->u.arr.len != 2 ||
        dx_nonneg_int(offs->u.arr.items[0], &b) != 0 ||
        dx_nonneg_int(offs->u.arr.items[1], &e) != 0) {
        dexec_errorf(err, errlen,
                  "%s: tensor '%s': \"data_offsets\" must be [begin, end] of non-negative integers",
                  st->path, name);
        return DEXEC_EINVAL;
    }
    if (b > e) {
        dexec_errorf(err, errlen, "%s: tensor '%s': data_offsets begin %llu > end %llu", st->path,
                  name, (unsigned long long)b, (unsigned long long)e);
        return DEXEC_EINVAL;
    }
    want = n * dxk_dtype_size(t->dtype);
    if (e - b != want) {
        dexec_errorf(err, errlen,
                  "%s: tensor '%s': data_offsets span %llu bytes but %s x %llu elements need %llu",
                  st->path, name, (unsigned long long)(e - b), dxk_dtype_name(t->dtype),
                  (unsigned long long)n, (unsigned long long)want);
        return DEXEC_EINVAL;
    }
    t->name = strdup(name);
    if (t->name == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory", st->path);
        return DEXEC_ENOMEM;
    }
    t->numel = (size_t)n;
    t->begin = (size_t)b;
    t->end = (size_t)e;
    return DEXEC_OK;
}

static int dx_cmp_offsets(const void *a, const void *b)
{
    const dxk_tensor *x = a, *y = b;

    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int dx_cmp_names(const void *a, const void *b)
{
    const dxk_tensor *x = *(const dxk_tensor *const *)a, *y = *(const dxk_tensor *const *)b;

    return strcmp(x->name, y->name);
}

static dexec_status dx_parse_metadata(dxk_safetensors *st, const dexec_value *md, char *err,
                                      size_t errlen)
{
    size_t i;

    if (md->type != DEXEC_VAL_MAP) {
        dexec_errorf(err, errlen, "%s: \"__metadata__\" is not a JSON object", st->path);
        return DEXEC_EINVAL;
    }
    for (i = 0; i < md->u.map.len; i++) {
        if (md->u.map.items[i].val->type != DEXEC_VAL_STR) {
            dexec_errorf(err, errlen, "%s: \"__metadata__\" value of '%s' is not a string", st->path,
                      md->u.map.items[i].key);
            return DEXEC_EINVAL;
        }
    }
    st->metadata = dexec_value_clone(md);
    if (st->metadata == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory", st->path);
        return DEXEC_ENOMEM;
    }
    return DEXEC_OK;
}

static dexec_status dx_parse_header(dxk_safetensors *st, const char *json, size_t len,
                                    size_t data_len, char *err, size_t errlen)
{
    char jerr[256];
    dexec_value *root;
    dexec_status s = DEXEC_OK;
    size_t i, n = 0, expect = 0;

    root = dexec_value_from_json(json, len, jerr, sizeof jerr);
    if (root == NULL) {
        dexec_errorf(err, errlen, "%s: header is not valid JSON: %s", st->path, jerr);
        return DEXEC_EINVAL;
    }
    if (root->type != DEXEC_VAL_MAP) {
        dexec_errorf(err, errlen, "%s: header is not a JSON object", st->path);
        dexec_value_free(root);
        return DEXEC_EINVAL;
    }
    st->tensors = calloc(root->u.map.len ? root->u.map.len : 1, sizeof *st->tensors);
    if (st->tensors == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory", st->path);
        dexec_value_free(root);
        return DEXEC_ENOMEM;
    }
    for (i = 0; i < root->u.map.len && s == DEXEC_OK; i++) {
        const dexec_kv *kv = &root->u.map.items[i];

        if (strcmp(kv->key, "__metadata__") == 0) {
            if (st->metadata != NULL) {
                dexec_errorf(err, errlen, "%s: \"__metadata__\" appears twice", st->path);
                s = DEXEC_EINVAL;
            } else {
                s = dx_parse_metadata(st, kv->val, err, errlen);
            }
            continue;
        }
        /* no duplicate check here: the JSON reader refuses a repeated key */
        s = dx_parse_tensor(st, kv->key, kv->val, &st->tensors[n], err, errlen);
        if (s == DEXEC_OK)
            n++;
    }
    st->ntensors = n;
    dexec_value_free(root);
    if (s != DEXEC_OK)
        return s;
    if (st->metadata == NULL && (st->metadata = dexec_value_map()) == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory", st->path);
        return DEXEC_ENOMEM;
    }
    qsort(st->tensors, n, sizeof *st->tensors, dx_cmp_offsets);
    st->byname = malloc((n ? n : 1) * sizeof *st->byname);
    if (st->byname == NULL) {
        dexec_errorf(err, errlen, "%s: out of memory", st->path);
        return DEXEC_ENOMEM;
    }
    for (i = 0; i < n; i++)
        st->byname[i] = &st->tensors[i];
    qsort(st->byname, n, sizeof *st->byname, dx_cmp_names);
    for (i = 0; i < n; i++) {
        const dxk_tensor *t = &st->tensors[i];

        if (t->begin > expect) {
            dexec_errorf(err, errlen,
                      "%s: tensor '%s': begins at byte %zu but the previous tensor ends at %zu "
                      "(gap in the data buffer)",
                      st->path, t->name, t->begin, expect);
            return DEXEC_EINVAL;
        }
        if (t->begin < expect) {
            dexec_errorf(err, errlen,
                      "%s: tensor '%s': begins at byte %zu, inside the previous tensor "
                      "(which ends at %zu): overlapping data",
                      st->path, t->name, t->begin, expect);
            return DEXEC_EINVAL;
        }
        expect = t->end;
    }
    if (expect != data_len) {
        if (n == 0)
            dexec_errorf(err, errlen, "%s: no tensors but the data buffer holds %zu bytes", st->path,
                      data_len);
        else
            dexec_errorf(err, errlen,
                      "%s: tensor '%s': the last tensor ends at byte %zu but the data buffer "
                      "holds %zu bytes (file size %zu)",
                      st->path, st->tensors[n - 1].name, expect, data_len, st->map_len);
        return DEXEC_EINVAL;
    }
    return DEXEC_OK;
}

/* The x86-64 baseline is SSE2; the conversion loop also gets AVX2 and
 * AVX-512 versions, chosen at load (GCC's target_clones, glibc ifunc). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define DX_ST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DX_ST_CLONES
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define DX_ST_VECTORIZE __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#else
#define DX_ST_VECTORIZE
#endif

/* n little-endian F16 (bf16 = 0) or BF16 values at src as floats: the
 * same values as dxk_f16_to_f32 / dxk_bf16_to_f32, without branches so
 * that the loop vectorises (a subnormal half is its 10-bit mantissa times
 * 2^-24, exact in float; an exponent of 31 becomes 255 with the mantissa
 * kept: infinities and NaNs). */
DX_ST_CLONES DX_ST_VECTORIZE static void dx_half_to_f32(float *dst, const unsigned char *src,
                                                        size_t n, int bf16)
{
    size_t k;

    if (bf16) {
        for (k = 0; k < n; k++) {
            uint32_t bits = (uint32_t)(src[2 * k] | (src[2 * k + 1] << 8)) << 16;

            memcpy(dst + k, &bits, sizeof bits);
        }
        return;
    }
    for (k = 0; k < n; k++) {
        uint32_t h = (uint32_t)(src[2 * k] | (src[2 * k + 1] << 8));
        uint32_t em = h & 0x7fffu, exp = em >> 10;
        uint32_t normal = (em << 13) + (112u << 23), sub, bits;
        float fs = (float)(int32_t)em * 0x1p-24f;

        memcpy(&sub, &fs, sizeof sub);
        bits = exp == 0 ? sub : exp == 31 ? normal + (112u << 23) : normal;
        bits |= (h & 0x8000u) << 16;
        memcpy(dst + k, &bits, sizeof bits);
    }
}

/* The converted copies of a file: tensor i's elements run from first[i]
 * of the whole; threads take equal slices of the whole. */
typedef struct dx_conv_job {
    dxk_safetensors *st;
    const unsigned char *base;
    size_t *idx, *first, ncopy, total, lo, hi;
} dx_conv_job;

static void *dx_conv_slice(void *arg)
{
    const dx_conv_job *j = arg;
    size_t c;

    for (c = 0; c < j->ncopy; c++) {
        const dxk_tensor *t = &j->st->tensors[j->idx[c]];
        size_t a = j->first[c], b = a + t->numel;
        const unsigned char *src = j->base + t->begin;
        float *dst = (float *)t->data;

        if (b <= j->lo || a >= j->hi)
            continue;
        a = a < j->lo ? j->lo : a;
        b = b > j->hi ? j->hi : b;
        if (t->dtype == DXK_F32)
            memcpy(dst + (a - j->first[c]), src + (a - j->first[c]) * sizeof *dst,
                   (b - a) * sizeof *dst);
        else
            dx_half_to_f32(dst + (a - j->first[c]), src + (a - j->first[c]) * 2, b - a,
                           t->dtype == DXK_BF16);
    }
    return NULL;
}

/* Threads for the conversion: the CPUs this process may run on, at most 8,
 * one per 4 Mi elements. */
#define DX_CONV_THREADS    8
#define DX_CONV_PER_THREAD ((size_t)4 << 20)

/* Gives every tensor a float32 view: in place for aligned little-endian F32
 * (the writer pads the header for this), a converted copy otherwise (F16 or
 * BF16 files: the conversion split over threads, a float16 DiT-XL/2 is
 * 675 M values). */
static dexec_status dx_views(dxk_safetensors *st, char *err, size_t errlen)
{
    static const float empty[1];
    const unsigned char *base = (const unsigned char *)st->map + st->data_off;
    dx_conv_job jobs[DX_CONV_THREADS];
    pthread_t tids[DX_CONV_THREADS];
    int started[DX_CONV_THREADS] = {0};
    size_t *idx, *first, ncopy = 0, total = 0, i;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nt, k;
    cpu_set_t set;

    idx = malloc((st->ntensors + 1) * sizeof *idx);
    first = malloc((st->ntensors + 1) * sizeof *first);
    if (idx == NULL || first == NULL) {
        free(idx);
        free(first);
        dexec_errorf(err, errlen, "%s: out of memory listing %zu tensors", st->path, st->ntensors);
        return DEXEC_ENOMEM;
    }
    for (i = 0; i < st->ntensors; i++) {
        dxk_tensor *t = &st->tensors[i];
        const unsigned char *src = base + t->begin;
        float *dst;

        if (t->numel == 0) {
            t->data = empty;
            continue;
        }
        if (t->dtype == DXK_F32 && ((uintptr_t)src % sizeof(float)) == 0) {
            t->data = (const float *)(const void *)src;
            continue;
        }
        dst = malloc(t->numel * sizeof *dst);
        if (dst == NULL) {
            dexec_errorf(err, errlen, "%s: tensor '%s': out of memory converting %zu elements",
                         st->path, t->name, t->numel);
            free(idx);
            free(first);
            return DEXEC_ENOMEM;
        }
        t->data = dst;
        t->converted = 1;
        st->copied_bytes += t->numel * sizeof *dst;
        idx[ncopy] = i;
        first[ncopy++] = total;
        total += t->numel;
    }
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        ncpu = CPU_COUNT(&set);
    nt = ncpu < 1 ? 1 : ncpu > DX_CONV_THREADS ? DX_CONV_THREADS : (int)ncpu;
    if ((size_t)nt > total / DX_CONV_PER_THREAD)
        nt = total / DX_CONV_PER_THREAD < 1 ? 1 : (int)(total / DX_CONV_PER_THREAD);
    for (k = 0; k < nt; k++) {
        jobs[k] = (dx_conv_job){st,
                                base,
                                idx,
                                first,
                                ncopy,
                                total,
                                total * (size_t)k / nt,
                                total * (size_t)(k + 1) / nt};
        /* slice 0 is the caller's; a thread that cannot start, too */
        if (k > 0)
            started[k] = pthread_create(&tids[k], NULL, dx_conv_slice, &jobs[k]) == 0;
    }
    dx_conv_slice(&jobs[0]);
    for (k = 1; k < nt; k++) {
        if (started[k])
            pthread_join(tids[k], NULL);
        else
            dx_conv_slice(&jobs[k]);
    }
    free(idx);
    free(first);
    return DEXEC_OK;
}

dexec_status dxk_st_open(const char *path, dxk_safetensors **out, char *err, size_t errlen)
{
    dxk_safetensors *st;
    struct stat sb;
    uint64_t hlen = 0;
    dexec_status s;
    int fd, i;

    *out = NULL;
    st = calloc(1, sizeof *st);
    if (st == NULL || (st->path = strdup(path)) == NULL) {
        free(st);
        dexec_errorf(err, errlen, "%s: out of memory", path);
        return DEXEC_ENOMEM;
    }
    st->slot = -1;
    /* O_NONBLOCK: a FIFO named like a model must not block the open */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;

        dexec_errorf(err, errlen, "%s: cannot open: %s", path, strerror(e));
        dxk_st_close(st);
        return e == ENOENT ? DEXEC_ENOTFOUND : DEXEC_EIO;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        dexec_errorf(err, errlen, "%s: not a regular file", path);
        close(fd);
        dxk_st_close(st);
        return DEXEC_EIO;
    }
    if (sb.st_size < 8) {
        dexec_errorf(err, errlen, "%s: file is %lld bytes, too short for the 8-byte header length",
                  path, (long long)sb.st_size);
        close(fd);
        dxk_st_close(st);
        return DEXEC_EINVAL;
    }
    st->map_len = (size_t)sb.st_size;
    st->map = mmap(NULL, st->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (st->map == MAP_FAILED) {
        st->map = NULL;
        dexec_errorf(err, errlen, "%s: cannot map: %s", path, strerror(errno));
        dxk_st_close(st);
        return DEXEC_EIO;
    }
    dx_track(st);
    for (i = 7; i >= 0; i--)
        hlen = (hlen << 8) | ((const unsigned char *)st->map)[i];
    if (hlen < 2 || hlen > DXK_ST_MAX_HEADER) {
        /* the value is not printed: it is the file's first 8 bytes, and
         * the file may be anything a client named (a secret, say) */
        dexec_errorf(err, errlen,
                     "%s: not a safetensors file: its first 8 bytes do not hold a header "
                     "length in 2..%u",
                     path, DXK_ST_MAX_HEADER);
        dxk_st_close(st);
        return DEXEC_EINVAL;
    }
    if (8 + hlen > st->map_len) {
        dexec_errorf(err, errlen,
                  "%s: header length %llu runs past the end of the file (%zu bytes): truncated?",
                  path, (unsigned long long)hlen, st->map_len);
        dxk_st_close(st);
        return DEXEC_EINVAL;
    }
    st->data_off = 8 + (size_t)hlen;
    s = dx_parse_header(st, (const char *)st->map + 8, (size_t)hlen, st->map_len - st->data_off,
                        err, errlen);
    if (s == DEXEC_OK)
        s = dx_views(st, err, errlen);
    if (s != DEXEC_OK) {
        dxk_st_close(st);
        return s;
    }
    *out = st;
    return DEXEC_OK;
}

void dxk_st_close(dxk_safetensors *st)
{
    size_t i;

    if (st == NULL)
        return;
    if (st->tensors != NULL) {
        for (i = 0; i < st->ntensors; i++) {
            free(st->tensors[i].name);
            if (st->tensors[i].converted)
                free((void *)st->tensors[i].data);
        }
        free(st->tensors);
    }
    free(st->byname);
    dx_untrack(st);
    if (st->map != NULL)
        munmap(st->map, st->map_len);
    dexec_value_free(st->metadata);
    free(st->path);
    free(st);
}

const dxk_tensor *dxk_st_find(const dxk_safetensors *st, const char *name)
{
    size_t lo = 0, hi = st->ntensors;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->byname[mid]->name);

        if (c == 0)
            return st->byname[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *dxk_st_meta(const dxk_safetensors *st, const char *key)
{
    const dexec_value *v = dexec_value_map_get(st->metadata, key);

    return v != NULL && v->type == DEXEC_VAL_STR ? v->u.str.ptr : NULL;
}
