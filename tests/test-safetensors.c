/*
 * test-safetensors.c - the "safetensors" suite: the strict reader accepts
 * well-formed files (F32 in place, F16/BF16 converted) and rejects each
 * kind of malformed model file with its own message; the DiT loader names
 * missing, mis-shaped and unexpected tensors and bad metadata. Every file is
 * generated here, in a temporary directory.
 */
#include <config.h>

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dit.h"
#include "kernels.h"
#include "safetensors.h"

static char tmpdir[256];
static char fpath[512];

static void setup(void)
{
    const char *base = getenv("TMPDIR");

    snprintf(tmpdir, sizeof tmpdir, "%s/dexec-st-XXXXXX", base && *base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(fpath, sizeof fpath, "%s/m.safetensors", tmpdir);
}

static void teardown(void)
{
    unlink(fpath);
    rmdir(tmpdir);
}

/* 8-byte length (hlen, or the header's length when hlen is 0), header,
 * data_len bytes of data (a byte pattern, or `data` when given). */
static void write_file(uint64_t hlen, const char *header, const void *data, size_t data_len)
{
    FILE *f = fopen(fpath, "wb");
    unsigned char len[8];
    size_t i;

    ck_assert_ptr_nonnull(f);
    if (hlen == 0)
        hlen = strlen(header);
    for (i = 0; i < 8; i++)
        len[i] = (unsigned char)(hlen >> (8 * i));
    ck_assert_uint_eq(fwrite(len, 1, 8, f), 8);
    ck_assert_uint_eq(fwrite(header, 1, strlen(header), f), strlen(header));
    for (i = 0; i < data_len; i++) {
        unsigned char b = data ? ((const unsigned char *)data)[i] : (unsigned char)i;

        ck_assert_int_ne(fputc(b, f), EOF);
    }
    ck_assert_int_eq(fclose(f), 0);
}

/* Expects dxk_st_open to fail with status s and "<path>: <msg>". */
static void expect_fail(dexec_status s, const char *msg)
{
    dxk_safetensors *st = NULL;
    char err[1024], want[1024];

    ck_assert_int_eq(dxk_st_open(fpath, &st, err, sizeof err), s);
    ck_assert_ptr_null(st);
    snprintf(want, sizeof want, "%s: %s", fpath, msg);
    ck_assert_str_eq(err, want);
}

static dxk_safetensors *expect_ok(void)
{
    dxk_safetensors *st = NULL;
    char err[1024];

    ck_assert_msg(dxk_st_open(fpath, &st, err, sizeof err) == DEXEC_OK, "%s", err);
    return st;
}

#define T2 "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

START_TEST(test_valid_and_in_place)
{
    /* header padded so that the data is 8-aligned */
    const char *h = "{\"__metadata__\":{\"k\":\"v\"},\"b\":{\"dtype\":\"F32\",\"shape\":[1,2],"
                    "\"data_offsets\":[8,16]}," T2 "}";
    char hdr[256];
    float vals[4] = {1.5f, -2, 3, 4.25f};
    dxk_safetensors *st;
    const dxk_tensor *a, *b;

    snprintf(hdr, sizeof hdr, "%-*s", (int)((strlen(h) + 8 + 7) / 8 * 8 - 8), h);
    write_file(0, hdr, vals, sizeof vals);
    st = expect_ok();
    ck_assert_uint_eq(st->ntensors, 2);
    ck_assert_str_eq(dxk_st_meta(st, "k"), "v");
    ck_assert_ptr_null(dxk_st_meta(st, "nope"));
    a = dxk_st_find(st, "a");
    b = dxk_st_find(st, "b");
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(b->ndim, 2);
    ck_assert_int_eq(b->shape[1], 2);
    ck_assert(a->data[0] == 1.5f && a->data[1] == -2 && b->data[0] == 3 && b->data[1] == 4.25f);
    /* aligned F32 is used where it lies in the mapping, not copied */
    ck_assert(!a->converted && !b->converted);
    ck_assert((const char *)a->data >= (const char *)st->map &&
              (const char *)a->data < (const char *)st->map + st->map_len);
    ck_assert_uint_eq(st->copied_bytes, 0);
    dxk_st_close(st);
}
END_TEST

START_TEST(test_f16_bf16_unaligned)
{
    /* F16 1.0, -2.0, 65504, smallest subnormal; BF16 1.0, -0.5; header of
     * odd length so the F32 tensor is unaligned and must be copied */
    const unsigned char data[] = {0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00,
                                  0x80, 0x3f, 0x00, 0xbf, 0x00, 0x00, 0xc0, 0x3f};
    const char *h = "{\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]},"
                    "\"f\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[12,16]}} ";
    dxk_safetensors *st;
    const dxk_tensor *t;

    write_file(0, h, data, sizeof data);
    st = expect_ok();
    t = dxk_st_find(st, "h");
    ck_assert(t->converted);
    ck_assert(t->data[0] == 1.0f && t->data[1] == -2.0f && t->data[2] == 65504.0f);
    ck_assert(t->data[3] == 5.9604644775390625e-8f);
    t = dxk_st_find(st, "b");
    ck_assert(t->data[0] == 1.0f && t->data[1] == -0.5f);
    t = dxk_st_find(st, "f");
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_uint_eq(t->numel, 1);
    ck_assert(t->data[0] == 1.5f);
    dxk_st_close(st);
}
END_TEST

/* Every F16 and BF16 bit pattern converts as dxk_f16_to_f32 /
 * dxk_bf16_to_f32 say, bit for bit (NaN payloads too), through the
 * reader's vectorised conversion split over threads: the F16 tensor holds
 * the 65536 patterns 130 times (8.5 M values, more than one thread's
 * share), so slices start and end inside tensors. */
START_TEST(test_half_all_values)
{
    const size_t reps = 130, nh = 65536 * reps, nb = 65536;
    unsigned char *data = malloc(2 * (nh + nb));
    char h[256];
    dxk_safetensors *st;
    const dxk_tensor *t;
    size_t k;

    ck_assert_ptr_nonnull(data);
    for (k = 0; k < nh + nb; k++) {
        data[2 * k] = (unsigned char)(k & 0xff);
        data[2 * k + 1] = (unsigned char)((k >> 8) & 0xff);
    }
    snprintf(h, sizeof h,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[%zu],\"data_offsets\":[0,%zu]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}}",
             nh, 2 * nh, nb, 2 * nh, 2 * (nh + nb));
    write_file(0, h, data, 2 * (nh + nb));
    free(data);
    st = expect_ok();
    t = dxk_st_find(st, "h");
    for (k = 0; k < nh; k++) {
        float want = dxk_f16_to_f32((uint16_t)(k & 0xffff));

        if (memcmp(&t->data[k], &want, sizeof want) != 0)
            ck_abort_msg("F16 0x%04zx (value %zu): %a, want %a", k & 0xffff, k, t->data[k], want);
    }
    t = dxk_st_find(st, "b");
    for (k = 0; k < nb; k++) {
        float want = dxk_bf16_to_f32((uint16_t)k);

        if (memcmp(&t->data[k], &want, sizeof want) != 0)
            ck_abort_msg("BF16 0x%04zx: %a, want %a", k, t->data[k], want);
    }
    dxk_st_close(st);
}
END_TEST

START_TEST(test_malformed_table)
{
    static const struct {
        const char *what;
        uint64_t hlen; /* 0: the header's length */
        const char *header;
        size_t data_len;
        dexec_status s;
        const char *msg;
    } cases[] = {
        {"huge header length", UINT64_C(1) << 40, "{}", 0, DEXEC_EINVAL,
         "not a safetensors file: its first 8 bytes do not hold a header length in 2..104857600"},
        {"header length 1", 1, "{}", 0, DEXEC_EINVAL,
         "not a safetensors file: its first 8 bytes do not hold a header length in 2..104857600"},
        {"header past the end", 64, "{" T2 "}", 0, DEXEC_EINVAL,
         "header length 64 runs past the end of the file (62 bytes): truncated?"},
        {"truncated data", 0, "{" T2 "}", 5, DEXEC_EINVAL,
         "tensor 'a': the last tensor ends at byte 8 but the data buffer holds 5 bytes (file size 67)"},
        {"trailing data", 0, "{" T2 "}", 9, DEXEC_EINVAL,
         "tensor 'a': the last tensor ends at byte 8 but the data buffer holds 9 bytes (file size 71)"},
        {"bad JSON", 0, "{\"a\":{\"dtype\":\"F32\",}}", 0, DEXEC_EINVAL, NULL},
        {"not an object", 0, "[1,2]", 0, DEXEC_EINVAL, "header is not a JSON object"},
        {"non-string metadata", 0, "{\"__metadata__\":{\"x\":\"1\",\"y\":2}}", 0, DEXEC_EINVAL,
         "\"__metadata__\" value of 'y' is not a string"},
        {"metadata not a map", 0, "{\"__metadata__\":[\"x\"]}", 0, DEXEC_EINVAL,
         "\"__metadata__\" is not a JSON object"},
        {"unknown dtype", 0, "{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
         DEXEC_EINVAL, "tensor 'a': dtype I64 is not supported (F32, F16, BF16)"},
        {"missing dtype", 0, "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, DEXEC_EINVAL,
         "tensor 'a': missing or non-string \"dtype\""},
        {"negative dim", 0, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
         DEXEC_EINVAL, "tensor 'a': shape[0] is not a non-negative integer"},
        {"float dim", 0, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
         DEXEC_EINVAL, "tensor 'a': shape[0] is not a non-negative integer"},
        {"offsets of 3", 0, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
         DEXEC_EINVAL, "tensor 'a': \"data_offsets\" must be [begin, end] of non-negative integers"},
        {"begin > end", 0, "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
         DEXEC_EINVAL, "tensor 'a': data_offsets begin 8 > end 4"},
        {"dtype x shape mismatch", 0,
         "{\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, DEXEC_EINVAL,
         "tensor 'a': data_offsets span 8 bytes but F16 x 3 elements need 6"},
        {"overlap", 0,
         "{" T2 ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, DEXEC_EINVAL,
         "tensor 'b': begins at byte 4, inside the previous tensor (which ends at 8): overlapping data"},
        {"gap", 0,
         "{" T2 ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20, DEXEC_EINVAL,
         "tensor 'b': begins at byte 12 but the previous tensor ends at 8 (gap in the data buffer)"},
        {"first not at 0", 0, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
         DEXEC_EINVAL, "tensor 'a': begins at byte 4 but the previous tensor ends at 0 (gap in the data buffer)"},
        {"too many dims", 0,
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         DEXEC_EINVAL, "tensor 'a': 9 dimensions (at most 8 are supported)"},
        {"no tensors, data", 0, "{}", 4, DEXEC_EINVAL, "no tensors but the data buffer holds 4 bytes"},
        {"repeated tensor", 0, "{" T2 "," T2 "}", 8, DEXEC_EINVAL,
         "header is not valid JSON: duplicate object key near '\"a\"' (line 1, column 57)"},
        {"repeated metadata key", 0, "{\"__metadata__\":{\"x\":\"1\",\"x\":\"2\"}}", 0,
         DEXEC_EINVAL,
         "header is not valid JSON: duplicate object key near '\"x\"' (line 1, column 28)"},
        {"metadata not UTF-8", 0, "{\"__metadata__\":{\"x\":\"caf\xe9\"}}", 0, DEXEC_EINVAL,
         "header is not valid JSON: unable to decode byte 0xe9 (line 1, column 25)"},
        {"NUL in a name", 0, "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}",
         0, DEXEC_EINVAL,
         "header is not valid JSON: NUL byte in object key not supported (line 1, column 11)"},
    };
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dxk_safetensors *st = NULL;
        char err[1024], want[1024];
        dexec_status s;

        write_file(cases[i].hlen, cases[i].header, NULL, cases[i].data_len);
        s = dxk_st_open(fpath, &st, err, sizeof err);
        ck_assert_msg(s == cases[i].s, "%s: status %d (%s)", cases[i].what, s, err);
        ck_assert_ptr_null(st);
        if (cases[i].msg != NULL) {
            snprintf(want, sizeof want, "%s: %s", fpath, cases[i].msg);
            ck_assert_msg(strcmp(err, want) == 0, "%s:\n got  %s\n want %s", cases[i].what, err,
                          want);
        } else {
            snprintf(want, sizeof want, "%s: header is not valid JSON: ", fpath);
            ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s: %s", cases[i].what, err);
        }
    }
}
END_TEST

/* A header of 40,000 zero-size tensors (2.3 MB): reading it is linear in
 * its size. The quadratic reader of 0.1.0 took 21 s here; it takes about
 * 0.1 s now, and the bound of 10 s leaves a loaded CI machine (2.2 s was
 * seen under a load average of 10) room while still catching quadratic
 * cost. */
START_TEST(test_many_tensors_linear)
{
    enum { N = 40000 };
    size_t cap = (size_t)N * 64 + 16, len = 0;
    char *h = malloc(cap);
    dxk_safetensors *st;
    double t0, t1;
    struct timespec ts;

    ck_assert_ptr_nonnull(h);
    h[len++] = '{';
    for (int i = 0; i < N; i++)
        len += (size_t)snprintf(h + len, cap - len,
                                "%s\"t%05d\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}",
                                i ? "," : "", i);
    h[len++] = '}';
    h[len] = '\0';
    write_file(0, h, NULL, 0);
    free(h);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t0 = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    st = expect_ok();
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t1 = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    ck_assert_uint_eq(st->ntensors, N);
    ck_assert_ptr_nonnull(dxk_st_find(st, "t39999"));
    ck_assert_ptr_null(dxk_st_find(st, "t40000"));
    dxk_st_close(st);
    ck_assert_msg(t1 - t0 < 10.0, "40,000 tensors took %.2f s to read", t1 - t0);
}
END_TEST

START_TEST(test_too_short_and_missing)
{
    FILE *f = fopen(fpath, "wb");

    ck_assert_int_eq(fputs("abc", f) >= 0, 1);
    fclose(f);
    expect_fail(DEXEC_EINVAL, "file is 3 bytes, too short for the 8-byte header length");
    unlink(fpath);
    expect_fail(DEXEC_ENOTFOUND, "cannot open: No such file or directory");
    /* a FIFO is refused at once, not waited on */
    ck_assert_int_eq(mkfifo(fpath, 0600), 0);
    expect_fail(DEXEC_EIO, "not a regular file");
}
END_TEST

/* ---- DiT tensors against the metadata ----------------------------------- */

/* A tiny DiT: image 4, C 1, p 2, D 8, depth 1, heads 2, ratio 2, K 2. */
typedef struct ent {
    const char *name;
    int ndim;
    int shape[4];
} ent;

static const ent tiny[] = {
    {"x_embedder.proj.weight", 4, {8, 1, 2, 2}},
    {"x_embedder.proj.bias", 1, {8}},
    {"t_embedder.mlp.0.weight", 2, {8, 256}},
    {"t_embedder.mlp.0.bias", 1, {8}},
    {"t_embedder.mlp.2.weight", 2, {8, 8}},
    {"t_embedder.mlp.2.bias", 1, {8}},
    {"y_embedder.embedding_table.weight", 2, {3, 8}},
    {"blocks.0.adaLN_modulation.1.weight", 2, {48, 8}},
    {"blocks.0.adaLN_modulation.1.bias", 1, {48}},
    {"blocks.0.attn.qkv.weight", 2, {24, 8}},
    {"blocks.0.attn.qkv.bias", 1, {24}},
    {"blocks.0.attn.proj.weight", 2, {8, 8}},
    {"blocks.0.attn.proj.bias", 1, {8}},
    {"blocks.0.mlp.fc1.weight", 2, {16, 8}},
    {"blocks.0.mlp.fc1.bias", 1, {16}},
    {"blocks.0.mlp.fc2.weight", 2, {8, 16}},
    {"blocks.0.mlp.fc2.bias", 1, {8}},
    {"final_layer.adaLN_modulation.1.weight", 2, {16, 8}},
    {"final_layer.adaLN_modulation.1.bias", 1, {16}},
    {"final_layer.linear.weight", 2, {4, 8}},
    {"final_layer.linear.bias", 1, {4}},
};

#define TINY_META                                                                              \
    "\"dexec.format\":\"dit\",\"dexec.image_size\":\"4\",\"dexec.in_channels\":\"1\","         \
    "\"dexec.patch_size\":\"2\",\"dexec.hidden_size\":\"8\",\"dexec.num_heads\":\"2\","        \
    "\"dexec.mlp_ratio\":\"2\",\"dexec.num_classes\":\"2\""

/* Writes the tiny model with `skip` left out, `reshape` given shape [7],
 * `extra` added, and metadata TINY_META + depth (+ more). */
static void write_tiny(const char *skip, const char *reshape, const char *extra, const char *depth,
                       const char *more)
{
    char *h = malloc(16384);
    size_t o = 0, off = 0, i;
    int d;

    ck_assert_ptr_nonnull(h);
    o += (size_t)sprintf(h + o, "{\"__metadata__\":{" TINY_META "%s%s%s%s%s}", depth ? "," : "",
                         depth ? "\"dexec.depth\":\"" : "", depth ? depth : "", depth ? "\"" : "",
                         more ? more : "");
    for (i = 0; i <= sizeof tiny / sizeof tiny[0]; i++) {
        const char *name = i < sizeof tiny / sizeof tiny[0] ? tiny[i].name : extra;
        size_t n = 1;

        if (name == NULL || (skip && strcmp(name, skip) == 0))
            continue;
        o += (size_t)sprintf(h + o, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[", name);
        if (i == sizeof tiny / sizeof tiny[0] || (reshape && strcmp(name, reshape) == 0)) {
            o += (size_t)sprintf(h + o, "7");
            n = 7;
        } else {
            for (d = 0; d < tiny[i].ndim; d++) {
                o += (size_t)sprintf(h + o, "%s%d", d ? "," : "", tiny[i].shape[d]);
                n *= (size_t)tiny[i].shape[d];
            }
        }
        o += (size_t)sprintf(h + o, "],\"data_offsets\":[%zu,%zu]}", off, off + 4 * n);
        off += 4 * n;
    }
    sprintf(h + o, "}");
    write_file(0, h, NULL, off);
    free(h);
}

START_TEST(test_tiny_model_ok)
{
    dxk_model *m = NULL;
    dexec_request r;
    dexec_output o;
    char err[1024];

    write_tiny(NULL, NULL, NULL, "1", NULL);
    ck_assert_msg(dxk_model_open(fpath, "cpu", 0, &m, err, sizeof err) == DEXEC_OK, "%s", err);
    /* no dexec.vocab: the class names ("class0", ...) are the words */
    dexec_request_init(&r);
    r.prompt = "class1";
    r.seed = 3;
    dexec_output_init(&o);
    ck_assert_msg(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(o.steps, 20);
    ck_assert_double_eq(o.guidance_scale, 4.0);
    ck_assert_int_eq(o.images[0].channels, 1);
    dexec_output_clear(&o);
    dxk_model_free(m);
}
END_TEST

static void expect_model_error_suffix(const char *msg)
{
    dxk_model *m = NULL;
    char err[1024], want[1024];

    ck_assert_int_eq(dxk_model_open(fpath, "cpu", 0, &m, err, sizeof err), DEXEC_EINVAL);
    ck_assert_ptr_null(m);
    snprintf(want, sizeof want, "%s: %s", fpath, msg);
    ck_assert_msg(strcmp(err, want) == 0, "\n got  %s\n want %s", err, want);
}

START_TEST(test_dit_tensor_errors)
{
    write_tiny("blocks.0.attn.proj.bias", NULL, NULL, "1", NULL);
    expect_model_error_suffix("tensor 'blocks.0.attn.proj.bias' is missing (expected shape [8])");
    write_tiny(NULL, "blocks.0.mlp.fc1.weight", NULL, "1", NULL);
    expect_model_error_suffix("tensor 'blocks.0.mlp.fc1.weight' has shape [7], the metadata's "
                              "configuration needs [16, 8]");
    write_tiny(NULL, NULL, "blocks.1.attn.proj.bias", "1", NULL);
    expect_model_error_suffix("tensor 'blocks.1.attn.proj.bias' is not part of a DiT of depth 1: "
                              "the file and its metadata disagree");
    /* metadata says 2 blocks, the file holds 1 */
    write_tiny(NULL, NULL, NULL, "2", NULL);
    expect_model_error_suffix("tensor 'blocks.1.adaLN_modulation.1.weight' is missing (expected "
                              "shape [48, 8])");
}
END_TEST

START_TEST(test_dit_metadata_errors)
{
    write_tiny(NULL, NULL, NULL, NULL, NULL);
    expect_model_error_suffix("metadata key 'dexec.depth' is missing");
    write_tiny(NULL, NULL, NULL, "one", NULL);
    expect_model_error_suffix("metadata 'dexec.depth' = 'one': expected an integer in 1..256");
    write_tiny(NULL, NULL, NULL, "1", ",\"dexec.sigma_shift\":\"-1\"");
    expect_model_error_suffix(
        "metadata 'dexec.sigma_shift' = '-1': expected a number in 0.001..1000");
    write_tiny(NULL, NULL, NULL, "1", ",\"dexec.vocab\":\"{\\\"cat\\\": 5}\"");
    expect_model_error_suffix("metadata 'dexec.vocab': 'cat' must map to a class index in 0..1");
    write_tiny(NULL, NULL, NULL, "1", ",\"dexec.class_names\":\"[\\\"a\\\"]\"");
    expect_model_error_suffix("metadata 'dexec.class_names' must be a JSON array of 2 strings");
}
END_TEST

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *rd = tcase_create("reader"), *dit = tcase_create("dit");

    tcase_add_checked_fixture(rd, setup, teardown);
    tcase_add_checked_fixture(dit, setup, teardown);
    tcase_add_test(rd, test_valid_and_in_place);
    tcase_add_test(rd, test_f16_bf16_unaligned);
    tcase_add_test(rd, test_half_all_values);
    tcase_add_test(rd, test_malformed_table);
    tcase_add_test(rd, test_many_tensors_linear);
    tcase_add_test(rd, test_too_short_and_missing);
    tcase_add_test(dit, test_tiny_model_ok);
    tcase_add_test(dit, test_dit_tensor_errors);
    tcase_add_test(dit, test_dit_metadata_errors);
    suite_add_tcase(s, rd);
    suite_add_tcase(s, dit);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(safetensors_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
