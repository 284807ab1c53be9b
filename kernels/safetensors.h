/*
 * safetensors.h - a strict reader of safetensors files (the format of
 * doc/model-format.md): the file is mapped read-only, every rule of the
 * format is checked before a tensor is handed out, and every tensor is
 * offered as float32 (F32 tensors in place, F16/BF16 converted once).
 */
#ifndef DEXEC_KERNELS_SAFETENSORS_H
#define DEXEC_KERNELS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/dexec.h>
#include <dexec/value.h>

#define DXK_ST_MAX_HEADER (100u * 1024u * 1024u) /* 100 MiB, as the format says */
#define DXK_ST_MAX_DIMS 8

typedef enum dxk_dtype { DXK_F32 = 0, DXK_F16, DXK_BF16 } dxk_dtype;

typedef struct dxk_tensor {
    char *name;
    dxk_dtype dtype;
    int ndim;
    int64_t shape[DXK_ST_MAX_DIMS];
    size_t numel;
    size_t begin, end;  /* byte offsets in the data buffer */
    const float *data;  /* numel floats: into the mapping, or converted */
    int converted;      /* data is a malloc'd copy owned by the file */
} dxk_tensor;

typedef struct dxk_safetensors {
    char *path;
    void *map;
    size_t map_len;
    size_t data_off; /* 8 + header length */
    size_t ntensors;
    dxk_tensor *tensors; /* in the order of their offsets */
    const dxk_tensor **byname; /* the same tensors sorted by name, for dxk_st_find */
    dexec_value *metadata; /* MAP of string -> string (empty when absent) */
    size_t copied_bytes;   /* bytes of converted copies */
    int slot;              /* entry in the SIGBUS handler's table, -1 if none */
} dxk_safetensors;

/* Maps and validates path. Errors: DEXEC_ENOTFOUND (no such file),
 * DEXEC_EIO (cannot read or map it), DEXEC_EINVAL (breaks a rule; the
 * message starts with the path and names the tensor), DEXEC_ENOMEM.
 * *out is the caller's (dxk_st_close). */
dexec_status dxk_st_open(const char *path, dxk_safetensors **out, char *err, size_t errlen);
void dxk_st_close(dxk_safetensors *st);

/* Installs the process-wide SIGBUS handler that survives a mapped model
 * file being truncated or rewritten in place: the missing pages read as
 * zeros and the file is marked damaged (dxk_st_damaged). For programs that
 * serve models (dexec-worker); a fault outside model mappings still kills
 * the process as before. */
void dxk_st_catch_sigbus(void);

/* 1 when part of st's mapping vanished under it (with the handler above
 * installed), with *offset (may be NULL) the first byte found missing; the
 * tensors then hold zeros there and must not be trusted. */
int dxk_st_damaged(const dxk_safetensors *st, size_t *offset);

/* Borrowed; NULL when absent. O(log n). */
const dxk_tensor *dxk_st_find(const dxk_safetensors *st, const char *name);
const char *dxk_st_meta(const dxk_safetensors *st, const char *key);

const char *dxk_dtype_name(dxk_dtype d);
size_t dxk_dtype_size(dxk_dtype d);

/* IEEE half and bfloat16 to float. */
float dxk_f16_to_f32(uint16_t h);
float dxk_bf16_to_f32(uint16_t h);

#endif
