/*
 * test-value.c - the "value" suite: the dynamically typed value read from
 * and written to JSON and MessagePack, at the boundary where text from
 * files and the network enters. Malformed text is refused with its own
 * message (duplicate keys, bytes that are not UTF-8, NUL characters), and
 * decoding costs time linear in the input, so a hostile frame or header
 * cannot pin a thread for minutes.
 */
#include <config.h>

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <dexec/rpc.h>
#include <dexec/value.h>

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void json_fails(const char *text, const char *want)
{
    char err[256] = "";
    dexec_value *v = dexec_value_from_json(text, strlen(text), err, sizeof err);

    ck_assert_msg(v == NULL, "%s: accepted", text);
    ck_assert_str_eq(err, want);
}

START_TEST(json_refuses_bad_text)
{
    json_fails("{\"a\":1,\"a\":2}", "duplicate object key near '\"a\"' (line 1, column 10)");
    json_fails("{\"m\":\"caf\xe9\"}", "unable to decode byte 0xe9 (line 1, column 9)");
    json_fails("{\"a\":\"x\\u0000\"}",
               "\\u0000 is not allowed without JSON_ALLOW_NUL (line 1, column 14)");
    json_fails("{\"a\":1,}", "string or '}' expected (line 1, column 8)");
    json_fails("[1] x", "end of file expected (line 1, column 5)");
}
END_TEST

START_TEST(json_depth_limit)
{
    char deep[2 * (DEXEC_VALUE_MAX_DEPTH + 2) + 1];
    int n = DEXEC_VALUE_MAX_DEPTH + 2;

    memset(deep, '[', (size_t)n);
    memset(deep + n, ']', (size_t)n);
    deep[2 * n] = '\0';
    json_fails(deep, "nesting deeper than 64 levels");
}
END_TEST

START_TEST(json_round_trip_keeps_order)
{
    const char *text = "{\"z\": 1, \"a\": [true, null, 0.1, -3, \"\xc3\xa9t\xc3\xa9\"], \"m\": {}}";
    char err[256] = "";
    dexec_value *v = dexec_value_from_json(text, strlen(text), err, sizeof err);
    char *out;

    ck_assert_msg(v != NULL, "%s", err);
    out = dexec_value_to_json(v, 0);
    ck_assert_str_eq(out, text);
    free(out);
    dexec_value_free(v);
}
END_TEST

/* A string that came from elsewhere and is not UTF-8 is still printed, and
 * the output stays valid UTF-8: each bad byte becomes U+FFFD. */
START_TEST(json_writer_output_is_utf8)
{
    dexec_value *m = dexec_value_map();
    char *out;

    ck_assert_int_eq(dexec_value_map_set(m, "k", dexec_value_strn("a\xff\xc3(b", 5)), 0);
    out = dexec_value_to_json(m, 0);
    ck_assert_str_eq(out, "{\"k\": \"a\xef\xbf\xbd\xef\xbf\xbd(b\"}");
    free(out);
    dexec_value_free(m);
}
END_TEST

/* MessagePack bytes: a fixmap header with a str8 key of one byte. */
static dexec_value *mp_decode(const unsigned char *buf, size_t len, char *err, size_t errlen)
{
    dexec_value *v = NULL;

    if (dexec_value_from_msgpack((const char *)buf, len, &v, err, errlen) != DEXEC_OK)
        return NULL;
    return v;
}

START_TEST(msgpack_refuses_bad_text)
{
    /* {"a": 1, "a": 2} */
    static const unsigned char dup[] = {0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02};
    /* ["caf\xe9"] */
    static const unsigned char latin1[] = {0x91, 0xa4, 'c', 'a', 'f', 0xe9};
    /* ["\xed\xa0\x80"]: a UTF-16 surrogate written as UTF-8 */
    static const unsigned char surrogate[] = {0x91, 0xa3, 0xed, 0xa0, 0x80};
    /* ["\xc0\xaf"]: an overlong '/' */
    static const unsigned char overlong[] = {0x91, 0xa2, 0xc0, 0xaf};
    char err[256] = "";

    ck_assert_ptr_null(mp_decode(dup, sizeof dup, err, sizeof err));
    ck_assert_str_eq(err, "malformed MessagePack at byte 7: map key 'a' appears twice");
    ck_assert_ptr_null(mp_decode(latin1, sizeof latin1, err, sizeof err));
    ck_assert_str_eq(err, "malformed MessagePack at byte 2: string is not valid UTF-8 (byte 3 of 4)");
    ck_assert_ptr_null(mp_decode(surrogate, sizeof surrogate, err, sizeof err));
    ck_assert_str_eq(err, "malformed MessagePack at byte 2: string is not valid UTF-8 (byte 0 of 3)");
    ck_assert_ptr_null(mp_decode(overlong, sizeof overlong, err, sizeof err));
    ck_assert_str_eq(err, "malformed MessagePack at byte 2: string is not valid UTF-8 (byte 0 of 2)");
    {
        /* past the ASCII fast path (8 bytes at a time): a bad byte after
         * 8 and after 11 ASCII bytes, and a good 2-byte sequence before
         * a bad one */
        static const unsigned char late8[] = {0x91, 0xa9, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 0xff};
        static const unsigned char late11[] = {0x91, 0xac, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h',
                                               'i', 'j', 'k', 0xe9};
        static const unsigned char mixed[] = {0x91, 0xab, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h',
                                              0xc3, 0xa9, 0x80};
        /* ["abcdefghij\u00e9"]: valid */
        static const unsigned char good[] = {0x91, 0xac, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h',
                                             'i', 'j', 0xc3, 0xa9};
        dexec_value *v;

        ck_assert_ptr_null(mp_decode(late8, sizeof late8, err, sizeof err));
        ck_assert_str_eq(err, "malformed MessagePack at byte 2: string is not valid UTF-8 (byte 8 of 9)");
        ck_assert_ptr_null(mp_decode(late11, sizeof late11, err, sizeof err));
        ck_assert_str_eq(err, "malformed MessagePack at byte 2: string is not valid UTF-8 (byte 11 of 12)");
        ck_assert_ptr_null(mp_decode(mixed, sizeof mixed, err, sizeof err));
        ck_assert_str_eq(err, "malformed MessagePack at byte 2: string is not valid UTF-8 (byte 10 of 11)");
        v = mp_decode(good, sizeof good, err, sizeof err);
        ck_assert_ptr_nonnull(v);
        ck_assert_str_eq(dexec_value_as_str(dexec_value_array_get(v, 0), ""), "abcdefghij\xc3\xa9");
        dexec_value_free(v);
    }
}
END_TEST

/* A 1.4 MB frame holding one map of 160,000 keys: 0.1.0 checked each key
 * against all before it and took 57 s. The bound (10 s) leaves a loaded CI
 * machine ample room over the ~0.1 s it takes. */
START_TEST(msgpack_large_map_is_linear)
{
    enum { N = 160000 };
    size_t cap = 5 + (size_t)N * 10, len = 0;
    unsigned char *buf = malloc(cap);
    dexec_value *v;
    char err[256] = "";
    double t0, t1;

    ck_assert_ptr_nonnull(buf);
    buf[len++] = 0xdf; /* map 32 */
    buf[len++] = (unsigned char)(N >> 24);
    buf[len++] = (unsigned char)(N >> 16);
    buf[len++] = (unsigned char)(N >> 8);
    buf[len++] = (unsigned char)N;
    for (int i = 0; i < N; i++) {
        len += (size_t)snprintf((char *)buf + len + 1, 8, "k%06d", i) + 1;
        buf[len - 8] = 0xa7; /* fixstr of 7 */
        buf[len++] = 0xc0;   /* nil */
    }
    t0 = now_s();
    v = mp_decode(buf, len, err, sizeof err);
    t1 = now_s();
    ck_assert_msg(v != NULL, "%s", err);
    ck_assert_uint_eq(v->u.map.len, N);
    ck_assert_ptr_nonnull(dexec_value_map_get(v, "k159999"));
    dexec_value_free(v);
    ck_assert_msg(t1 - t0 < 10.0, "160,000 keys took %.2f s", t1 - t0);

    /* the same map with its last key repeating the first: refused, also fast */
    memcpy(buf + len - 9, "\xa7k000000", 8);
    t0 = now_s();
    v = mp_decode(buf, len, err, sizeof err);
    t1 = now_s();
    ck_assert_ptr_null(v);
    ck_assert_str_eq(err, "malformed MessagePack at byte 1440005: map key 'k000000' appears twice");
    ck_assert_msg(t1 - t0 < 10.0, "refusing 160,000 keys took %.2f s", t1 - t0);
    free(buf);
}
END_TEST

static Suite *value_suite(void)
{
    Suite *s = suite_create("value");
    TCase *tj = tcase_create("json");
    TCase *tm = tcase_create("msgpack");

    tcase_add_test(tj, json_refuses_bad_text);
    tcase_add_test(tj, json_depth_limit);
    tcase_add_test(tj, json_round_trip_keeps_order);
    tcase_add_test(tj, json_writer_output_is_utf8);
    tcase_add_test(tm, msgpack_refuses_bad_text);
    tcase_add_test(tm, msgpack_large_map_is_linear);
    suite_add_tcase(s, tj);
    suite_add_tcase(s, tm);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(value_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
