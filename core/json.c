/* json.c - JSON text to and from dexec_value (RFC 8259; used for safetensors
 * headers, CLI arguments and printing replies). */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- writer ------------------------------------------------------------- */

typedef struct strbuf {
    char *p;
    size_t len, cap;
    int oom;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        char *p;

        while (cap < b->len + n + 1)
            cap *= 2;
        p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(strbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void json_string(strbuf *b, const char *s, size_t len)
{
    char esc[8];

    sb_put(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        switch (c) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof(esc), "\\u%04x", c);
                sb_puts(b, esc);
            } else {
                sb_put(b, (const char *)&s[i], 1);
            }
        }
    }
    sb_put(b, "\"", 1);
}

static void newline(strbuf *b, int indent, int level)
{
    if (indent <= 0)
        return;
    sb_put(b, "\n", 1);
    for (int i = 0; i < indent * level; i++)
        sb_put(b, " ", 1);
}

static void json_write(strbuf *b, const dexec_value *v, int indent, int level)
{
    char num[64];

    switch (v->type) {
    case DEXEC_VAL_NIL: sb_puts(b, "null"); break;
    case DEXEC_VAL_BOOL: sb_puts(b, v->u.b ? "true" : "false"); break;
    case DEXEC_VAL_INT:
        snprintf(num, sizeof(num), "%lld", (long long)v->u.i);
        sb_puts(b, num);
        break;
    case DEXEC_VAL_FLOAT:
        if (!isfinite(v->u.f)) {
            sb_puts(b, "null");
            break;
        }
        snprintf(num, sizeof(num), "%.17g", v->u.f);
        /* shortest form that reads back identically */
        for (int prec = 6; prec < 17; prec++) {
            char tmp[64];

            snprintf(tmp, sizeof(tmp), "%.*g", prec, v->u.f);
            if (strtod(tmp, NULL) == v->u.f) {
                memcpy(num, tmp, sizeof(tmp));
                break;
            }
        }
        if (strpbrk(num, ".eEn") == NULL)
            strcat(num, ".0");
        sb_puts(b, num);
        break;
    case DEXEC_VAL_STR: json_string(b, v->u.str.ptr, v->u.str.len); break;
    case DEXEC_VAL_BIN:
        snprintf(num, sizeof(num), "{\"bin\": %zu}", v->u.str.len);
        sb_puts(b, num);
        break;
    case DEXEC_VAL_ARRAY:
        sb_put(b, "[", 1);
        for (size_t i = 0; i < v->u.arr.len; i++) {
            if (i > 0)
                sb_puts(b, indent > 0 ? "," : ", ");
            newline(b, indent, level + 1);
            json_write(b, v->u.arr.items[i], indent, level + 1);
        }
        if (v->u.arr.len > 0)
            newline(b, indent, level);
        sb_put(b, "]", 1);
        break;
    case DEXEC_VAL_MAP:
        sb_put(b, "{", 1);
        for (size_t i = 0; i < v->u.map.len; i++) {
            if (i > 0)
                sb_puts(b, indent > 0 ? "," : ", ");
            newline(b, indent, level + 1);
            json_string(b, v->u.map.items[i].key, strlen(v->u.map.items[i].key));
            sb_puts(b, ": ");
            json_write(b, v->u.map.items[i].val, indent, level + 1);
        }
        if (v->u.map.len > 0)
            newline(b, indent, level);
        sb_put(b, "}", 1);
        break;
    }
}

char *dexec_value_to_json(const dexec_value *v, int indent)
{
    strbuf b = {0};

    if (v == NULL)
        sb_puts(&b, "null");
    else
        json_write(&b, v, indent, 0);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- parser ------------------------------------------------------------- */

typedef struct parser {
    const char *s;
    size_t len, pos;
    char *err;
    size_t errlen;
    int failed;
} parser;

static dexec_value *parse_value(parser *p, int depth);

static void perr(parser *p, const char *what)
{
    if (!p->failed)
        dexec_errorf(p->err, p->errlen, "JSON: %s at offset %zu", what, p->pos);
    p->failed = 1;
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                               p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static int parse_hex4(parser *p, unsigned *out)
{
    unsigned v = 0;

    if (p->pos + 4 > p->len)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos++];

        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static void put_utf8(strbuf *b, unsigned cp)
{
    char u[4];

    if (cp < 0x80) {
        u[0] = (char)cp;
        sb_put(b, u, 1);
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        sb_put(b, u, 2);
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        sb_put(b, u, 3);
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        sb_put(b, u, 4);
    }
}

/* Parses a string at p->pos (on the opening quote) into b. */
static int parse_string_raw(parser *p, strbuf *b)
{
    p->pos++;
    sb_put(b, "", 0);
    while (p->pos < p->len) {
        unsigned char c = (unsigned char)p->s[p->pos];

        if (c == '"') {
            p->pos++;
            return b->oom ? -1 : 0;
        }
        if (c < 0x20) {
            perr(p, "control character in string");
            return -1;
        }
        if (c != '\\') {
            sb_put(b, &p->s[p->pos++], 1);
            continue;
        }
        p->pos++;
        if (p->pos >= p->len)
            break;
        c = (unsigned char)p->s[p->pos++];
        switch (c) {
        case '"': sb_put(b, "\"", 1); break;
        case '\\': sb_put(b, "\\", 1); break;
        case '/': sb_put(b, "/", 1); break;
        case 'b': sb_put(b, "\b", 1); break;
        case 'f': sb_put(b, "\f", 1); break;
        case 'n': sb_put(b, "\n", 1); break;
        case 'r': sb_put(b, "\r", 1); break;
        case 't': sb_put(b, "\t", 1); break;
        case 'u': {
            unsigned cp, lo;

            if (parse_hex4(p, &cp) != 0) {
                perr(p, "bad \\u escape");
                return -1;
            }
            if (cp >= 0xD800 && cp < 0xDC00 && p->pos + 6 <= p->len && p->s[p->pos] == '\\' &&
                p->s[p->pos + 1] == 'u') {
                p->pos += 2;
                if (parse_hex4(p, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) {
                    perr(p, "bad surrogate pair");
                    return -1;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(b, cp);
            break;
        }
        default:
            perr(p, "bad escape in string");
            return -1;
        }
    }
    perr(p, "unterminated string");
    return -1;
}

static dexec_value *parse_number(parser *p)
{
    size_t start = p->pos;
    int is_float = 0;
    char buf[64];
    char *end;

    if (p->pos < p->len && p->s[p->pos] == '-')
        p->pos++;
    if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') {
        perr(p, "expected a value");
        return NULL;
    }
    while (p->pos < p->len) {
        char c = p->s[p->pos];

        if (c >= '0' && c <= '9') {
            p->pos++;
        } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
            is_float = 1;
            p->pos++;
        } else {
            break;
        }
    }
    if (p->pos - start >= sizeof(buf)) {
        perr(p, "number too long");
        return NULL;
    }
    memcpy(buf, p->s + start, p->pos - start);
    buf[p->pos - start] = '\0';
    errno = 0;
    if (!is_float) {
        long long v = strtoll(buf, &end, 10);

        if (*end == '\0' && errno == 0)
            return dexec_value_int(v);
    }
    errno = 0;
    double d = strtod(buf, &end);
    if (*end != '\0') {
        p->pos = start;
        perr(p, "malformed number");
        return NULL;
    }
    return dexec_value_float(d);
}

static int match_word(parser *p, const char *w)
{
    size_t n = strlen(w);

    if (p->pos + n <= p->len && memcmp(p->s + p->pos, w, n) == 0) {
        p->pos += n;
        return 1;
    }
    return 0;
}

static dexec_value *parse_container(parser *p, int depth, int is_map)
{
    dexec_value *v = is_map ? dexec_value_map() : dexec_value_array();
    char close = is_map ? '}' : ']';

    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return v;
    }
    for (;;) {
        strbuf key = {0};
        dexec_value *item;

        skip_ws(p);
        if (is_map) {
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                perr(p, "expected a string key");
                goto fail;
            }
            if (parse_string_raw(p, &key) != 0) {
                free(key.p);
                goto fail;
            }
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                free(key.p);
                perr(p, "expected ':'");
                goto fail;
            }
            p->pos++;
        }
        item = parse_value(p, depth + 1);
        if (item == NULL) {
            free(key.p);
            goto fail;
        }
        if (is_map) {
            /* a duplicate key keeps the last value, as most parsers do */
            int rc = dexec_value_map_set(v, key.p, item);

            free(key.p);
            if (rc != 0) {
                perr(p, "out of memory");
                goto fail;
            }
        } else if (dexec_value_array_push(v, item) != 0) {
            perr(p, "out of memory");
            goto fail;
        }
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            return v;
        }
        perr(p, is_map ? "expected ',' or '}'" : "expected ',' or ']'");
        goto fail;
    }
fail:
    dexec_value_free(v);
    return NULL;
}

static dexec_value *parse_value(parser *p, int depth)
{
    if (depth > DEXEC_VALUE_MAX_DEPTH) {
        perr(p, "nesting too deep");
        return NULL;
    }
    skip_ws(p);
    if (p->pos >= p->len) {
        perr(p, "unexpected end of text");
        return NULL;
    }
    switch (p->s[p->pos]) {
    case '{': return parse_container(p, depth, 1);
    case '[': return parse_container(p, depth, 0);
    case '"': {
        strbuf b = {0};
        dexec_value *v;

        if (parse_string_raw(p, &b) != 0) {
            free(b.p);
            return NULL;
        }
        v = dexec_value_strn(b.p, b.len);
        free(b.p);
        return v;
    }
    case 't':
        if (match_word(p, "true"))
            return dexec_value_bool(1);
        break;
    case 'f':
        if (match_word(p, "false"))
            return dexec_value_bool(0);
        break;
    case 'n':
        if (match_word(p, "null"))
            return dexec_value_nil();
        break;
    default:
        return parse_number(p);
    }
    perr(p, "expected a value");
    return NULL;
}

dexec_value *dexec_value_from_json(const char *text, size_t len, char *err, size_t errlen)
{
    parser p = {.s = text, .len = len, .err = err, .errlen = errlen};
    dexec_value *v;

    if (text == NULL) {
        dexec_errorf(err, errlen, "JSON: no text");
        return NULL;
    }
    v = parse_value(&p, 0);
    if (v == NULL)
        return NULL;
    skip_ws(&p);
    if (p.pos != p.len) {
        perr(&p, "trailing characters after the value");
        dexec_value_free(v);
        return NULL;
    }
    return v;
}
