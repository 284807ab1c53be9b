/*
 * internal.h - helpers shared inside libdexec. Nothing here is exported:
 * the library exports only names that start with "dexec_" (see
 * Makefile.am), so internal functions use the "dx_" prefix.
 */
#ifndef DEXEC_INTERNAL_H
#define DEXEC_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>

#include <dexec/dexec.h>
#include <dexec/plugin.h>
#include <dexec/rpc.h>

/* Like dexec_errorf, returning code so that callers can write
 * `return dx_fail(err, errlen, DEXEC_EINVAL, "...")`. */
dexec_status dx_fail(char *err, size_t errlen, dexec_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Copies the fields a caller's struct carries (its struct_size bytes, at
 * most `known`) over dst, which the caller initialised: fields the source
 * lacks keep dst's defaults, bytes past its struct_size are never read,
 * dst keeps its own struct_size. src must have passed dexec_struct_check. */
void dx_struct_import(void *dst, size_t known, const void *src);

/* strdup that returns NULL for NULL. */
char *dx_strdup(const char *s);

/* Seconds left until an absolute dexec_now() deadline, never negative. */
double dx_remaining(double deadline);

/* The plugin search path in order: $DEXEC_PLUGIN_PATH entries, the config's
 * plugin_path entries, the compiled-in plugin directory. Returns a
 * NULL-terminated malloc'd array of malloc'd strings (dx_strv_free). */
char **dx_plugin_dirs(const dexec_config *cfg);
void dx_strv_free(char **v);

/* Calls fn(desc, file, user) for every plugin of cfg's search path that
 * loads and passes the descriptor checks, directory by directory in search
 * order and by file name within one; a plugin name already seen in an
 * earlier directory is skipped, as dexec_plugin_load() would never reach
 * it. Files that fail to load are skipped silently. fn returns nonzero to
 * stop. The descriptor is valid during the call only (loader.c). */
void dx_plugin_foreach(const dexec_config *cfg,
                       int (*fn)(const dexec_plugin_desc *d, const char *file, void *user),
                       void *user);

/* Deep copy of a configuration, origins and path included (config.c).
 * NULL when memory is exhausted. */
dexec_config *dx_config_clone(const dexec_config *cfg);

/* ---- values and text (value.c) -------------------------------------------- */

/* Appends key -> val to map without looking for an existing key: for
 * decoders that check duplicates once for the whole map (sorting keeps
 * that linear-logarithmic, where a lookup per insert is quadratic). Takes
 * ownership of val, freed on failure. 0 or -1 (ENOMEM, not a map). */
int dx_value_map_append(dexec_value *map, const char *key, dexec_value *val);

/* 1 with *dup set to a key that occurs twice in map (borrowed), 0 when the
 * keys are unique, -1 when memory is exhausted. O(n log n). */
int dx_value_map_duplicate(const dexec_value *map, const char **dup);

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, surrogates or code points above U+10FFFF), 0 when malformed or
 * cut short by avail. */
size_t dx_utf8_seq_len(const unsigned char *s, size_t avail);

/* Offset of the first byte of s that is not well-formed UTF-8, or
 * (size_t)-1 when all len bytes are. */
size_t dx_utf8_invalid_at(const char *s, size_t len);

/* ---- wire protocol internals (frame.c, msgpack_codec.c) ---------------- */

/* MessagePack encoding of v after `reserve` zero bytes. 0 or -1 (ENOMEM). */
int dx_msgpack_encode(const dexec_value *v, size_t reserve, char **buf, size_t *len);

/* ---- connections (conn.c) ---- */

/* One call to wait for in dx_conn_wait_all. c, id, active (0: skip it),
 * done and done_user are the caller's; the rest is filled in. */
typedef struct dx_wait {
    dexec_conn *c;
    uint32_t id;
    int active;
    /* called on the waiting thread as soon as this call is finished (its
     * reply, its connection's death, or the deadline), or NULL */
    void (*done)(void *user, struct dx_wait *w);
    void *done_user;
    int finished;
    dexec_status st;     /* DEXEC_OK, DEXEC_EWORKER..., DEXEC_ECLOSED, DEXEC_ETIMEDOUT */
    dexec_value *result; /* on DEXEC_OK: the caller's */
    char msg[768];       /* otherwise: why */
    uint32_t probe_id;   /* a get_rank probe in flight (silence watch), or 0 */
    double probe_at;     /* when it was sent */
    double watch_from;   /* when the silence watch first looked at this call; 0: not yet */
} dx_wait;

/* Waits for every active call of w at once until the absolute deadline,
 * delivering each call's notifications on this thread as they arrive.
 * When no other thread reads those connections, this thread reads them
 * itself (no hop through the reader threads). A connection with a
 * silence timeout (dexec_conn_set_timeouts) that stays silent is probed
 * with get_rank and closed when the probe goes unanswered: its calls
 * finish with DEXEC_ECLOSED naming the deadline. */
void dx_conn_wait_all(dx_wait *w, size_t n, double deadline);

/* Waits on the active, unfinished calls of w until at least one finishes
 * (its reply, its connection's death, or the deadline: then ETIMEDOUT as
 * in dx_conn_wait_all) or until `until` (<= deadline) passes, whichever
 * is first; calls not finished stay in flight and may be waited on again.
 * The caller arms a call by setting active = 1, finished = 0, result =
 * NULL, st = DEXEC_OK. Returns how many calls finished in this wait. */
size_t dx_conn_wait_any(dx_wait *w, size_t n, double deadline, double until);

/* SO_KEEPALIVE with short probes and TCP_USER_TIMEOUT on a TCP socket. */
void dx_socket_keepalive(int fd);

/* Copies the first len bytes of the object that symbol name of the ELF
 * shared object at path defines, read from the file (no code of it runs):
 * 0. 1 when the object's dynamic symbol table does not export name; then
 * *hidden is 1 when it is defined but not exported (hidden visibility).
 * -1 when the file is not an ELF object of this host that we can read,
 * or name's object is shorter than len (core/elf.c). */
int dx_elf_symbol_head(const char *path, const char *name, void *out, size_t len, int *hidden);

#endif
