/* value.c - construction, lookup, copy and comparison of dexec_value trees. */
#include "config.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Freed nodes are kept per thread for the next ones (up to NODE_CACHE_MAX):
 * a message decodes into a dozen nodes of one size and is freed soon
 * after, which overflows malloc's per-size thread cache (7 blocks) on every
 * call of the worker protocol. The cache goes with its thread (a key
 * destructor); the main thread's stays reachable until exit. */
#define NODE_CACHE_MAX 64

typedef struct node_cache {
    dexec_value *head; /* linked through u.arr.items */
    int n;
} node_cache;

static pthread_key_t g_node_key;
static pthread_once_t g_node_once = PTHREAD_ONCE_INIT;
static int g_node_key_ok;
static __thread node_cache *t_nodes __attribute__((tls_model("initial-exec")));

static void node_cache_free(void *p)
{
    node_cache *c = p;

    while (c->head != NULL) {
        dexec_value *v = c->head;

        c->head = (dexec_value *)v->u.arr.items;
        free(v);
    }
    free(c);
    t_nodes = NULL;
}

static void node_key_init(void)
{
    g_node_key_ok = pthread_key_create(&g_node_key, node_cache_free) == 0;
}

static node_cache *node_cache_get(void)
{
    if (t_nodes == NULL) {
        pthread_once(&g_node_once, node_key_init);
        if (!g_node_key_ok || (t_nodes = calloc(1, sizeof(*t_nodes))) == NULL)
            return NULL;
        if (pthread_setspecific(g_node_key, t_nodes) != 0) {
            free(t_nodes);
            t_nodes = NULL;
        }
    }
    return t_nodes;
}

static void node_release(dexec_value *v)
{
    node_cache *c = t_nodes != NULL ? t_nodes : node_cache_get();

    if (c == NULL || c->n >= NODE_CACHE_MAX) {
        free(v);
        return;
    }
    v->u.arr.items = (dexec_value **)c->head;
    c->head = v;
    c->n++;
}

static dexec_value *val_new(dexec_value_type t)
{
    node_cache *c = t_nodes;
    dexec_value *v;

    if (c != NULL && c->head != NULL) {
        v = c->head;
        c->head = (dexec_value *)v->u.arr.items;
        c->n--;
        memset(v, 0, sizeof(*v));
    } else {
        v = calloc(1, sizeof(*v));
    }

    if (v != NULL)
        v->type = t;
    return v;
}

dexec_value *dexec_value_nil(void)
{
    return val_new(DEXEC_VAL_NIL);
}

dexec_value *dexec_value_bool(int b)
{
    dexec_value *v = val_new(DEXEC_VAL_BOOL);

    if (v != NULL)
        v->u.b = b != 0;
    return v;
}

dexec_value *dexec_value_int(int64_t i)
{
    dexec_value *v = val_new(DEXEC_VAL_INT);

    if (v != NULL)
        v->u.i = i;
    return v;
}

dexec_value *dexec_value_float(double f)
{
    dexec_value *v = val_new(DEXEC_VAL_FLOAT);

    if (v != NULL)
        v->u.f = f;
    return v;
}

static dexec_value *bytes_new(dexec_value_type t, const void *s, size_t len)
{
    dexec_value *v = val_new(t);

    if (v == NULL)
        return NULL;
    v->u.str.ptr = malloc(len + 1);
    if (v->u.str.ptr == NULL) {
        free(v);
        return NULL;
    }
    if (len > 0)
        memcpy(v->u.str.ptr, s, len);
    v->u.str.ptr[len] = '\0';
    v->u.str.len = len;
    return v;
}

dexec_value *dexec_value_str(const char *s)
{
    return bytes_new(DEXEC_VAL_STR, s != NULL ? s : "", s != NULL ? strlen(s) : 0);
}

dexec_value *dexec_value_strn(const char *s, size_t len)
{
    return bytes_new(DEXEC_VAL_STR, s, len);
}

dexec_value *dexec_value_bin(const void *data, size_t len)
{
    return bytes_new(DEXEC_VAL_BIN, data, len);
}

dexec_value *dexec_value_bin_take(void *data, size_t len)
{
    dexec_value *v = val_new(DEXEC_VAL_BIN);

    if (v == NULL) {
        free(data);
        return NULL;
    }
    v->u.str.ptr = data;
    v->u.str.len = len;
    return v;
}

dexec_value *dexec_value_array(void)
{
    return val_new(DEXEC_VAL_ARRAY);
}

dexec_value *dexec_value_map(void)
{
    return val_new(DEXEC_VAL_MAP);
}

void dexec_value_free(dexec_value *v)
{
    if (v == NULL)
        return;
    switch (v->type) {
    case DEXEC_VAL_STR:
    case DEXEC_VAL_BIN:
        free(v->u.str.ptr);
        break;
    case DEXEC_VAL_ARRAY:
        for (size_t i = 0; i < v->u.arr.len; i++)
            dexec_value_free(v->u.arr.items[i]);
        free(v->u.arr.items);
        break;
    case DEXEC_VAL_MAP:
        for (size_t i = 0; i < v->u.map.len; i++) {
            free(v->u.map.items[i].key);
            dexec_value_free(v->u.map.items[i].val);
        }
        free(v->u.map.items);
        break;
    default:
        break;
    }
    node_release(v);
}

int dexec_value_array_push(dexec_value *arr, dexec_value *item)
{
    if (arr == NULL || arr->type != DEXEC_VAL_ARRAY || item == NULL) {
        dexec_value_free(item);
        return -1;
    }
    if (arr->u.arr.len == arr->u.arr.cap) {
        size_t cap = arr->u.arr.cap ? arr->u.arr.cap * 2 : 4;
        dexec_value **items = realloc(arr->u.arr.items, cap * sizeof(*items));

        if (items == NULL) {
            dexec_value_free(item);
            return -1;
        }
        arr->u.arr.items = items;
        arr->u.arr.cap = cap;
    }
    arr->u.arr.items[arr->u.arr.len++] = item;
    return 0;
}

int dx_value_map_append(dexec_value *map, const char *key, dexec_value *val)
{
    char *k;

    if (map == NULL || map->type != DEXEC_VAL_MAP || key == NULL || val == NULL) {
        dexec_value_free(val);
        return -1;
    }
    if (map->u.map.len == map->u.map.cap) {
        size_t cap = map->u.map.cap ? map->u.map.cap * 2 : 4;
        dexec_kv *items = realloc(map->u.map.items, cap * sizeof(*items));

        if (items == NULL) {
            dexec_value_free(val);
            return -1;
        }
        map->u.map.items = items;
        map->u.map.cap = cap;
    }
    k = strdup(key);
    if (k == NULL) {
        dexec_value_free(val);
        return -1;
    }
    map->u.map.items[map->u.map.len].key = k;
    map->u.map.items[map->u.map.len++].val = val;
    return 0;
}

static int cmp_kv_ptr(const void *a, const void *b)
{
    const dexec_kv *x = *(const dexec_kv *const *)a, *y = *(const dexec_kv *const *)b;

    return strcmp(x->key, y->key);
}

int dx_value_map_duplicate(const dexec_value *map, const char **dup)
{
    size_t n = map->u.map.len;
    const dexec_kv **idx;
    int found = 0;

    *dup = NULL;
    if (n < 2)
        return 0;
    idx = malloc(n * sizeof(*idx));
    if (idx == NULL)
        return -1;
    for (size_t i = 0; i < n; i++)
        idx[i] = &map->u.map.items[i];
    qsort(idx, n, sizeof(*idx), cmp_kv_ptr);
    for (size_t i = 1; i < n && !found; i++) {
        if (strcmp(idx[i - 1]->key, idx[i]->key) == 0) {
            *dup = idx[i]->key;
            found = 1;
        }
    }
    free(idx);
    return found;
}

size_t dx_utf8_seq_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0; /* continuation byte, overlong lead (c0, c1) or > U+10FFFF lead */
    }
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* overlong forms, UTF-16 surrogates, beyond Unicode */
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

size_t dx_utf8_invalid_at(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;

    /* ASCII, the common case (method names, keys), 8 bytes at a time */
    while (len - i >= 8) {
        uint64_t w;

        memcpy(&w, u + i, 8);
        if (w & 0x8080808080808080ull)
            break;
        i += 8;
    }
    while (i < len) {
        size_t n;

        if (u[i] < 0x80) {
            i++;
            continue;
        }
        n = dx_utf8_seq_len(u + i, len - i);

        if (n == 0)
            return i;
        i += n;
    }
    return (size_t)-1;
}

int dexec_value_map_set(dexec_value *map, const char *key, dexec_value *val)
{
    if (map == NULL || map->type != DEXEC_VAL_MAP || key == NULL || val == NULL) {
        dexec_value_free(val);
        return -1;
    }
    for (size_t i = 0; i < map->u.map.len; i++) {
        if (strcmp(map->u.map.items[i].key, key) == 0) {
            dexec_value_free(map->u.map.items[i].val);
            map->u.map.items[i].val = val;
            return 0;
        }
    }
    return dx_value_map_append(map, key, val);
}

const dexec_value *dexec_value_map_get(const dexec_value *map, const char *key)
{
    if (map == NULL || map->type != DEXEC_VAL_MAP || key == NULL)
        return NULL;
    for (size_t i = 0; i < map->u.map.len; i++)
        if (strcmp(map->u.map.items[i].key, key) == 0)
            return map->u.map.items[i].val;
    return NULL;
}

const dexec_value *dexec_value_array_get(const dexec_value *arr, size_t index)
{
    if (arr == NULL || arr->type != DEXEC_VAL_ARRAY || index >= arr->u.arr.len)
        return NULL;
    return arr->u.arr.items[index];
}

int64_t dexec_value_as_int(const dexec_value *v, int64_t fallback)
{
    if (v == NULL)
        return fallback;
    if (v->type == DEXEC_VAL_INT)
        return v->u.i;
    if (v->type == DEXEC_VAL_FLOAT && isfinite(v->u.f) && v->u.f == floor(v->u.f) &&
        fabs(v->u.f) < 9.2e18)
        return (int64_t)v->u.f;
    return fallback;
}

double dexec_value_as_float(const dexec_value *v, double fallback)
{
    if (v == NULL)
        return fallback;
    if (v->type == DEXEC_VAL_FLOAT)
        return v->u.f;
    if (v->type == DEXEC_VAL_INT)
        return (double)v->u.i;
    return fallback;
}

const char *dexec_value_as_str(const dexec_value *v, const char *fallback)
{
    if (v == NULL || v->type != DEXEC_VAL_STR)
        return fallback;
    return v->u.str.ptr;
}

dexec_value *dexec_value_clone(const dexec_value *v)
{
    dexec_value *c;

    if (v == NULL)
        return NULL;
    switch (v->type) {
    case DEXEC_VAL_NIL: return dexec_value_nil();
    case DEXEC_VAL_BOOL: return dexec_value_bool(v->u.b);
    case DEXEC_VAL_INT: return dexec_value_int(v->u.i);
    case DEXEC_VAL_FLOAT: return dexec_value_float(v->u.f);
    case DEXEC_VAL_STR: return dexec_value_strn(v->u.str.ptr, v->u.str.len);
    case DEXEC_VAL_BIN: return dexec_value_bin(v->u.str.ptr, v->u.str.len);
    case DEXEC_VAL_ARRAY:
        c = dexec_value_array();
        for (size_t i = 0; c != NULL && i < v->u.arr.len; i++) {
            dexec_value *item = dexec_value_clone(v->u.arr.items[i]);

            if (item == NULL || dexec_value_array_push(c, item) != 0) {
                dexec_value_free(c);
                return NULL;
            }
        }
        return c;
    case DEXEC_VAL_MAP:
        c = dexec_value_map();
        for (size_t i = 0; c != NULL && i < v->u.map.len; i++) {
            dexec_value *item = dexec_value_clone(v->u.map.items[i].val);

            /* the source's keys are unique already: no lookup per key */
            if (item == NULL || dx_value_map_append(c, v->u.map.items[i].key, item) != 0) {
                dexec_value_free(c);
                return NULL;
            }
        }
        return c;
    }
    return NULL;
}

int dexec_value_equal(const dexec_value *a, const dexec_value *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    if ((a->type == DEXEC_VAL_INT || a->type == DEXEC_VAL_FLOAT) &&
        (b->type == DEXEC_VAL_INT || b->type == DEXEC_VAL_FLOAT)) {
        if (a->type == DEXEC_VAL_INT && b->type == DEXEC_VAL_INT)
            return a->u.i == b->u.i;
        double x = dexec_value_as_float(a, 0), y = dexec_value_as_float(b, 1);

        /* two NaNs are the same value for a tree comparison */
        return x == y || (isnan(x) && isnan(y));
    }
    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case DEXEC_VAL_NIL: return 1;
    case DEXEC_VAL_BOOL: return a->u.b == b->u.b;
    case DEXEC_VAL_STR:
    case DEXEC_VAL_BIN:
        return a->u.str.len == b->u.str.len &&
               (a->u.str.len == 0 || memcmp(a->u.str.ptr, b->u.str.ptr, a->u.str.len) == 0);
    case DEXEC_VAL_ARRAY:
        if (a->u.arr.len != b->u.arr.len)
            return 0;
        for (size_t i = 0; i < a->u.arr.len; i++)
            if (!dexec_value_equal(a->u.arr.items[i], b->u.arr.items[i]))
                return 0;
        return 1;
    case DEXEC_VAL_MAP:
        if (a->u.map.len != b->u.map.len)
            return 0;
        for (size_t i = 0; i < a->u.map.len; i++)
            if (!dexec_value_equal(a->u.map.items[i].val,
                                   dexec_value_map_get(b, a->u.map.items[i].key)))
                return 0;
        return 1;
    default:
        return 0;
    }
}
