/*
 * json.c - JSON text to and from dexec_value (RFC 8259): safetensors
 * headers, model vocabularies, registry metadata, CLI arguments and
 * printed replies.
 *
 * Parsing is jansson's: it validates UTF-8, refuses duplicate object keys
 * (JSON_REJECT_DUPLICATES) and "\u0000" inside strings, and runs in time
 * linear in the text. This file only converts its tree into a dexec_value.
 *
 * Writing stays here, in ~100 lines, for two reasons jansson's dumper
 * cannot meet: floats are printed in the shortest form that reads back
 * identically (jansson has one global precision, so 0.1 prints as
 * 0.10000000000000001), and a string that is not valid UTF-8 (a value that
 * came from somewhere we do not control) is still printed, with U+FFFD for
 * each bad byte, where jansson refuses the whole document. The output is
 * therefore always valid UTF-8.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

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

static void write_string(strbuf *b, const char *s, size_t len)
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
            } else if (c < 0x80) {
                sb_put(b, (const char *)&s[i], 1);
            } else {
                size_t n = dx_utf8_seq_len((const unsigned char *)s + i, len - i);

                if (n == 0) {
                    sb_puts(b, "\xEF\xBF\xBD"); /* U+FFFD for one bad byte */
                } else {
                    sb_put(b, (const char *)&s[i], n);
                    i += n - 1;
                }
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
    case DEXEC_VAL_STR: write_string(b, v->u.str.ptr, v->u.str.len); break;
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
            write_string(b, v->u.map.items[i].key, strlen(v->u.map.items[i].key));
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

/* ---- parser (jansson) ---------------------------------------------------- */

static dexec_value *from_jansson(json_t *j, int depth, char *err, size_t errlen)
{
    dexec_value *v = NULL;

    if (depth > DEXEC_VALUE_MAX_DEPTH) {
        dexec_errorf(err, errlen, "nesting deeper than %d levels", DEXEC_VALUE_MAX_DEPTH);
        return NULL;
    }
    switch (json_typeof(j)) {
    case JSON_NULL: v = dexec_value_nil(); break;
    case JSON_TRUE: v = dexec_value_bool(1); break;
    case JSON_FALSE: v = dexec_value_bool(0); break;
    case JSON_INTEGER: v = dexec_value_int((int64_t)json_integer_value(j)); break;
    case JSON_REAL: v = dexec_value_float(json_real_value(j)); break;
    case JSON_STRING: v = dexec_value_strn(json_string_value(j), json_string_length(j)); break;
    case JSON_ARRAY: {
        size_t i;
        json_t *item;

        v = dexec_value_array();
        json_array_foreach(j, i, item) {
            dexec_value *c;

            if (v == NULL)
                break;
            c = from_jansson(item, depth + 1, err, errlen);
            if (c == NULL) {
                dexec_value_free(v);
                return NULL;
            }
            if (dexec_value_array_push(v, c) != 0) {
                dexec_value_free(v);
                v = NULL;
            }
        }
        break;
    }
    case JSON_OBJECT: {
        const char *key;
        size_t klen;
        json_t *item;

        v = dexec_value_map();
        json_object_keylen_foreach(j, key, klen, item) {
            dexec_value *c;

            if (v == NULL)
                break;
            if (memchr(key, '\0', klen) != NULL) {
                dexec_errorf(err, errlen, "an object key contains a NUL character (\\u0000)");
                dexec_value_free(v);
                return NULL;
            }
            c = from_jansson(item, depth + 1, err, errlen);
            if (c == NULL) {
                dexec_value_free(v);
                return NULL;
            }
            /* jansson refused duplicate keys already: append, no lookup */
            if (dx_value_map_append(v, key, c) != 0) {
                dexec_value_free(v);
                v = NULL;
            }
        }
        break;
    }
    }
    if (v == NULL)
        dexec_errorf(err, errlen, "out of memory reading JSON");
    return v;
}

dexec_value *dexec_value_from_json(const char *text, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root;
    dexec_value *v;

    if (text == NULL) {
        dexec_errorf(err, errlen, "no JSON text");
        return NULL;
    }
    /* Strings holding "\u0000" are refused (no JSON_ALLOW_NUL): every text
     * we read ends up in a C string. */
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (root == NULL) {
        /* jansson appends " near '<text>'": dropped, since the text may be
         * a file's content that the reader of the message must not see
         * (line and column locate the fault), except for a repeated key,
         * whose name is what the reader needs and is a key of a JSON
         * object already read */
        char *near = strstr(je.text, " near '");

        if (near != NULL && strncmp(je.text, "duplicate object key", 20) != 0)
            *near = '\0';
        dexec_errorf(err, errlen, "%s (line %d, column %d)", je.text, je.line, je.column);
        return NULL;
    }
    v = from_jansson(root, 0, err, errlen);
    json_decref(root);
    return v;
}
