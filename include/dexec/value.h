/*
 * value.h - the dynamically typed value that travels in RPC arguments and
 * replies (a MessagePack object tree, printable as JSON).
 *
 * Ownership: a dexec_value owns everything below it. dexec_value_free()
 * releases a whole tree. Functions that return a new value give the caller
 * ownership; functions that take a value to store (array_push, map_set)
 * take ownership of it whatever they return.
 *
 * ABI: only libdexec allocates a dexec_value or a dexec_kv (the
 * constructors below); never declare one by value or allocate one. Within
 * ABI major 1 the members below keep their place and meaning; a minor
 * version may add value types (read a type you do not know like
 * DEXEC_VAL_NIL) and members at the end of struct dexec_value.
 */
#ifndef DEXEC_VALUE_H
#define DEXEC_VALUE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dexec_value_type {
    DEXEC_VAL_NIL = 0,
    DEXEC_VAL_BOOL,
    DEXEC_VAL_INT,   /* signed 64-bit (unsigned values above INT64_MAX are clamped to DEXEC_VAL_FLOAT) */
    DEXEC_VAL_FLOAT, /* double */
    DEXEC_VAL_STR,   /* UTF-8 bytes, NUL-terminated copy, len excludes the NUL */
    DEXEC_VAL_BIN,   /* raw bytes */
    DEXEC_VAL_ARRAY,
    DEXEC_VAL_MAP    /* keys are strings; order is kept */
} dexec_value_type;

typedef struct dexec_value dexec_value;
typedef struct dexec_kv dexec_kv;

struct dexec_value {
    dexec_value_type type;
    union {
        int b;
        int64_t i;
        double f;
        struct {
            char *ptr;
            size_t len;
        } str; /* STR and BIN */
        struct {
            dexec_value **items;
            size_t len, cap;
        } arr;
        struct {
            dexec_kv *items;
            size_t len, cap;
        } map;
    } u;
};

struct dexec_kv {
    char *key;
    dexec_value *val;
};

/* Constructors. Each returns NULL only when memory is exhausted. */
dexec_value *dexec_value_nil(void);
dexec_value *dexec_value_bool(int b);
dexec_value *dexec_value_int(int64_t i);
dexec_value *dexec_value_float(double f);
dexec_value *dexec_value_str(const char *s);                  /* copies s */
dexec_value *dexec_value_strn(const char *s, size_t len);     /* copies len bytes */
dexec_value *dexec_value_bin(const void *data, size_t len);   /* copies */
dexec_value *dexec_value_bin_take(void *data, size_t len);    /* takes a malloc'd buffer */
dexec_value *dexec_value_array(void);
dexec_value *dexec_value_map(void);

/* Releases v and everything below it. NULL is accepted. */
void dexec_value_free(dexec_value *v);

/* Deep copy; NULL when memory is exhausted. */
dexec_value *dexec_value_clone(const dexec_value *v);

/* Appends item (ownership taken, freed on failure). Returns 0 or -1 (ENOMEM, not an array). */
int dexec_value_array_push(dexec_value *arr, dexec_value *item);

/* Sets key to val, replacing an existing entry (ownership of val taken,
 * freed on failure). Returns 0 or -1. */
int dexec_value_map_set(dexec_value *map, const char *key, dexec_value *val);

/* Borrowed lookups; NULL when absent or when the container has another type. */
const dexec_value *dexec_value_map_get(const dexec_value *map, const char *key);
const dexec_value *dexec_value_array_get(const dexec_value *arr, size_t index);

/* Typed reads with a fallback when absent or of another type. An INT is read
 * as a float and an integral FLOAT as an int. */
int64_t dexec_value_as_int(const dexec_value *v, int64_t fallback);
double dexec_value_as_float(const dexec_value *v, double fallback);
const char *dexec_value_as_str(const dexec_value *v, const char *fallback);

/* Equality of two trees (ints and floats compare by value; NaN equals NaN). */
int dexec_value_equal(const dexec_value *a, const dexec_value *b);

/* JSON text of v (BIN is written as {"bin": <length>}; non-finite floats as
 * null). Returns a malloc'd NUL-terminated string the caller frees, or NULL
 * when memory is exhausted. indent 0 writes one line. */
char *dexec_value_to_json(const dexec_value *v, int indent);

/* Parses JSON text into a new value. On failure returns NULL and writes a
 * message naming the offset and what was expected into err. Nesting deeper
 * than DEXEC_VALUE_MAX_DEPTH is refused. */
#define DEXEC_VALUE_MAX_DEPTH 64
dexec_value *dexec_value_from_json(const char *text, size_t len, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
