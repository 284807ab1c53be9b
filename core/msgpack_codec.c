/*
 * msgpack_codec.c - dexec_value to and from MessagePack.
 *
 * Encoding uses msgpack-c's packer. Decoding is done here, straight into a
 * dexec_value tree, because input comes from the network: every length and
 * element count is checked against the bytes actually left before anything
 * is allocated (an array header claiming 2^32 elements in a 10-byte frame
 * is refused, not allocated), and nesting is bounded.
 */
#include "config.h"

#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int pack_value(msgpack_packer *pk, const dexec_value *v)
{
    int rc = 0;

    switch (v->type) {
    case DEXEC_VAL_NIL: return msgpack_pack_nil(pk);
    case DEXEC_VAL_BOOL: return v->u.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    case DEXEC_VAL_INT: return msgpack_pack_int64(pk, v->u.i);
    case DEXEC_VAL_FLOAT: return msgpack_pack_double(pk, v->u.f);
    case DEXEC_VAL_STR:
        rc = msgpack_pack_str(pk, v->u.str.len);
        return rc != 0 ? rc : msgpack_pack_str_body(pk, v->u.str.ptr, v->u.str.len);
    case DEXEC_VAL_BIN:
        rc = msgpack_pack_bin(pk, v->u.str.len);
        return rc != 0 ? rc : msgpack_pack_bin_body(pk, v->u.str.ptr, v->u.str.len);
    case DEXEC_VAL_ARRAY:
        rc = msgpack_pack_array(pk, v->u.arr.len);
        for (size_t i = 0; rc == 0 && i < v->u.arr.len; i++)
            rc = pack_value(pk, v->u.arr.items[i]);
        return rc;
    case DEXEC_VAL_MAP:
        rc = msgpack_pack_map(pk, v->u.map.len);
        for (size_t i = 0; rc == 0 && i < v->u.map.len; i++) {
            size_t klen = strlen(v->u.map.items[i].key);

            rc = msgpack_pack_str(pk, klen);
            if (rc == 0)
                rc = msgpack_pack_str_body(pk, v->u.map.items[i].key, klen);
            if (rc == 0)
                rc = pack_value(pk, v->u.map.items[i].val);
        }
        return rc;
    }
    return -1;
}

/* ---- the growable buffer (dx_mbuf) ---------------------------------------- */

void dx_mbuf_init(dx_mbuf *b, char *storage, size_t cap)
{
    b->p = storage;
    b->len = 0;
    b->cap = storage != NULL ? cap : 0;
    b->heap = 0;
}

int dx_mbuf_put(dx_mbuf *b, const void *d, size_t n)
{
    if (n > b->cap - b->len) {
        size_t cap = b->cap > 0 ? b->cap : 256;
        char *p;

        if (n > SIZE_MAX / 2 - b->len)
            return -1;
        while (cap < b->len + n)
            cap *= 2;
        if (b->heap) {
            p = realloc(b->p, cap);
        } else {
            p = malloc(cap);
            if (p != NULL && b->len > 0)
                memcpy(p, b->p, b->len);
        }
        if (p == NULL)
            return -1;
        b->p = p;
        b->cap = cap;
        b->heap = 1;
    }
    if (n > 0)
        memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

void dx_mbuf_free(dx_mbuf *b)
{
    if (b->heap)
        free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->heap = 0;
}

static int mbuf_write(void *data, const char *buf, size_t len)
{
    return dx_mbuf_put(data, buf, len);
}

int dx_msgpack_pack(dx_mbuf *b, const dexec_value *v)
{
    msgpack_packer pk;

    msgpack_packer_init(&pk, b, mbuf_write);
    return pack_value(&pk, v) != 0 ? -1 : 0;
}

int dx_msgpack_pack_call(dx_mbuf *b, const char *method, const dexec_value *args,
                         const dexec_value *kwargs)
{
    msgpack_packer pk;
    size_t mlen = strlen(method);

    msgpack_packer_init(&pk, b, mbuf_write);
    if (msgpack_pack_array(&pk, 3) != 0 || msgpack_pack_str(&pk, mlen) != 0 ||
        msgpack_pack_str_body(&pk, method, mlen) != 0)
        return -1;
    if ((args != NULL ? pack_value(&pk, args) : msgpack_pack_array(&pk, 0)) != 0)
        return -1;
    return (kwargs != NULL ? pack_value(&pk, kwargs) : msgpack_pack_map(&pk, 0)) != 0 ? -1 : 0;
}

/* Encodes v after `reserve` zero bytes (room for a frame header), into a
 * heap buffer that starts small (msgpack-c's sbuffer starts at 8 KiB, an
 * allocation outside malloc's fast bins on every message). */
int dx_msgpack_encode(const dexec_value *v, size_t reserve, char **buf, size_t *len)
{
    static const char zeros[16];
    dx_mbuf b;

    dx_mbuf_init(&b, NULL, 0);
    if ((reserve > 0 && dx_mbuf_put(&b, zeros, reserve) != 0) || dx_msgpack_pack(&b, v) != 0) {
        dx_mbuf_free(&b);
        return -1;
    }
    /* every value encodes to at least one byte, so b.p is on the heap */
    *len = b.len;
    *buf = b.p;
    return 0;
}

dexec_status dexec_value_to_msgpack(const dexec_value *v, char **buf, size_t *len)
{
    if (v == NULL || buf == NULL || len == NULL)
        return DEXEC_EINVAL;
    return dx_msgpack_encode(v, 0, buf, len) == 0 ? DEXEC_OK : DEXEC_ENOMEM;
}

/* ---- decoder ------------------------------------------------------------ */

typedef struct mp_in {
    const unsigned char *p;
    size_t len, pos;
    char *err;
    size_t errlen;
    int failed;
} mp_in;

static void mp_err(mp_in *in, const char *what)
{
    if (!in->failed)
        dexec_errorf(in->err, in->errlen, "malformed MessagePack at byte %zu: %s", in->pos,
                     what);
    in->failed = 1;
}

static int need(mp_in *in, size_t n)
{
    if (in->len - in->pos < n) {
        mp_err(in, "truncated");
        return -1;
    }
    return 0;
}

static uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;

    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static int read_uint(mp_in *in, int n, uint64_t *out)
{
    if (need(in, (size_t)n) != 0)
        return -1;
    *out = be(in->p + in->pos, n);
    in->pos += (size_t)n;
    return 0;
}

static dexec_value *decode(mp_in *in, int depth);

static dexec_value *decode_bytes(mp_in *in, uint64_t n, int is_str)
{
    dexec_value *v;

    if (need(in, n) != 0)
        return NULL;
    if (is_str) {
        size_t bad = dx_utf8_invalid_at((const char *)in->p + in->pos, (size_t)n);

        if (bad != (size_t)-1) {
            char what[96];

            snprintf(what, sizeof(what), "string is not valid UTF-8 (byte %zu of %llu)", bad,
                     (unsigned long long)n);
            mp_err(in, what);
            return NULL;
        }
    }
    v = is_str ? dexec_value_strn((const char *)in->p + in->pos, (size_t)n)
               : dexec_value_bin(in->p + in->pos, (size_t)n);
    if (v == NULL)
        mp_err(in, "out of memory");
    in->pos += (size_t)n;
    return v;
}

static dexec_value *decode_array(mp_in *in, uint64_t n, int depth)
{
    dexec_value *v;

    /* each element takes at least one byte */
    if (n > in->len - in->pos) {
        mp_err(in, "array length exceeds the bytes left");
        return NULL;
    }
    v = dexec_value_array();
    if (v == NULL)
        return NULL;
    if (n > 0) {
        v->u.arr.items = malloc((size_t)n * sizeof(*v->u.arr.items));
        if (v->u.arr.items == NULL) {
            free(v);
            mp_err(in, "out of memory");
            return NULL;
        }
        v->u.arr.cap = (size_t)n;
    }
    for (uint64_t i = 0; i < n; i++) {
        dexec_value *item = decode(in, depth + 1);

        if (item == NULL) {
            dexec_value_free(v);
            return NULL;
        }
        v->u.arr.items[v->u.arr.len++] = item;
    }
    return v;
}

static dexec_value *decode_map(mp_in *in, uint64_t n, int depth)
{
    dexec_value *v;
    const char *dupkey;
    int dup;

    if (n > (in->len - in->pos) / 2) {
        mp_err(in, "map length exceeds the bytes left");
        return NULL;
    }
    v = dexec_value_map();
    if (v == NULL)
        return NULL;
    for (uint64_t i = 0; i < n; i++) {
        dexec_value *key = decode(in, depth + 1), *val;

        if (key == NULL) {
            dexec_value_free(v);
            return NULL;
        }
        if (key->type != DEXEC_VAL_STR || memchr(key->u.str.ptr, 0, key->u.str.len) != NULL) {
            dexec_value_free(key);
            dexec_value_free(v);
            mp_err(in, "map key is not a string");
            return NULL;
        }
        val = decode(in, depth + 1);
        if (val == NULL || dx_value_map_append(v, key->u.str.ptr, val) != 0) {
            dexec_value_free(key);
            dexec_value_free(v);
            mp_err(in, "bad map value");
            return NULL;
        }
        dexec_value_free(key);
    }
    /* duplicates checked once per map: a lookup per key would make a
     * 160,000-key map cost minutes */
    dup = dx_value_map_duplicate(v, &dupkey);
    if (dup != 0) {
        char what[160];

        if (dup < 0)
            snprintf(what, sizeof(what), "out of memory");
        else
            snprintf(what, sizeof(what), "map key '%.100s' appears twice", dupkey);
        dexec_value_free(v);
        mp_err(in, what);
        return NULL;
    }
    return v;
}

static dexec_value *decode(mp_in *in, int depth)
{
    unsigned char c;
    uint64_t n;

    if (depth > DEXEC_VALUE_MAX_DEPTH) {
        mp_err(in, "nesting too deep");
        return NULL;
    }
    if (need(in, 1) != 0)
        return NULL;
    c = in->p[in->pos++];
    if (c <= 0x7f)
        return dexec_value_int(c);
    if (c >= 0xe0)
        return dexec_value_int((int8_t)c);
    if ((c & 0xf0) == 0x80)
        return decode_map(in, c & 0x0f, depth);
    if ((c & 0xf0) == 0x90)
        return decode_array(in, c & 0x0f, depth);
    if ((c & 0xe0) == 0xa0)
        return decode_bytes(in, c & 0x1f, 1);
    switch (c) {
    case 0xc0: return dexec_value_nil();
    case 0xc2: return dexec_value_bool(0);
    case 0xc3: return dexec_value_bool(1);
    case 0xc4: case 0xc5: case 0xc6:
        if (read_uint(in, 1 << (c - 0xc4), &n) != 0)
            return NULL;
        return decode_bytes(in, n, 0);
    case 0xd9: case 0xda: case 0xdb:
        if (read_uint(in, 1 << (c - 0xd9), &n) != 0)
            return NULL;
        return decode_bytes(in, n, 1);
    case 0xca: {
        uint32_t u;
        float f;

        if (read_uint(in, 4, &n) != 0)
            return NULL;
        u = (uint32_t)n;
        memcpy(&f, &u, 4);
        return dexec_value_float(f);
    }
    case 0xcb: {
        double d;

        if (read_uint(in, 8, &n) != 0)
            return NULL;
        memcpy(&d, &n, 8);
        return dexec_value_float(d);
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        if (read_uint(in, 1 << (c - 0xcc), &n) != 0)
            return NULL;
        if (n > INT64_MAX)
            return dexec_value_float((double)n);
        return dexec_value_int((int64_t)n);
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        int w = 1 << (c - 0xd0);

        if (read_uint(in, w, &n) != 0)
            return NULL;
        if (w < 8 && (n & (1ULL << (w * 8 - 1))))
            n |= ~0ULL << (w * 8); /* sign-extend */
        return dexec_value_int((int64_t)n);
    }
    case 0xdc: case 0xdd:
        if (read_uint(in, c == 0xdc ? 2 : 4, &n) != 0)
            return NULL;
        return decode_array(in, n, depth);
    case 0xde: case 0xdf:
        if (read_uint(in, c == 0xde ? 2 : 4, &n) != 0)
            return NULL;
        return decode_map(in, n, depth);
    default:
        /* 0xc1 (never used) and the ext family: not part of the protocol */
        in->pos--;
        mp_err(in, "unsupported type byte");
        return NULL;
    }
}

dexec_status dexec_value_from_msgpack(const char *buf, size_t len, dexec_value **out, char *err,
                                      size_t errlen)
{
    mp_in in = {.p = (const unsigned char *)buf, .len = len, .err = err, .errlen = errlen};
    dexec_value *v;

    if (out == NULL || (buf == NULL && len > 0))
        return dx_fail(err, errlen, DEXEC_EINVAL, "no buffer");
    *out = NULL;
    if (len == 0)
        return dx_fail(err, errlen, DEXEC_EPROTO, "empty MessagePack message");
    v = decode(&in, 0);
    if (v == NULL)
        return DEXEC_EPROTO;
    if (in.pos != len) {
        dexec_value_free(v);
        return dx_fail(err, errlen, DEXEC_EPROTO,
                       "malformed MessagePack: %zu bytes left after the message", len - in.pos);
    }
    *out = v;
    return DEXEC_OK;
}
