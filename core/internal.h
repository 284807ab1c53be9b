/*
 * internal.h - helpers shared inside libdexec. Nothing here is exported:
 * the library exports only names that start with "dexec_" (see
 * Makefile.am), so internal functions use the "dx_" prefix.
 */
#ifndef DEXEC_INTERNAL_H
#define DEXEC_INTERNAL_H

#include <sched.h>
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
/* dexec_now() from the coarse clock (CLOCK_MONOTONIC_COARSE: cheaper,
 * a few ms behind): for deadlines of tens of ms and more. */
double dx_now_coarse(void);

/* "0-3,8" -> set (CPU lists as taskset and /proc say them). 0, or -1 on
 * bad text or a CPU >= CPU_SETSIZE. */
int dx_cpulist_parse(const char *s, cpu_set_t *set);

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

/* A byte buffer that starts in storage the caller lends (a stack array)
 * and moves to the heap only when it outgrows it: small messages are
 * encoded without an allocation. */
typedef struct dx_mbuf {
    char *p;
    size_t len, cap;
    int heap; /* p was allocated here (dx_mbuf_free releases it) */
} dx_mbuf;

void dx_mbuf_init(dx_mbuf *b, char *storage, size_t cap);
/* Appends n bytes. 0 or -1 (ENOMEM). */
int dx_mbuf_put(dx_mbuf *b, const void *d, size_t n);
void dx_mbuf_free(dx_mbuf *b);
/* Appends the MessagePack encoding of v. 0 or -1 (ENOMEM). */
int dx_msgpack_pack(dx_mbuf *b, const dexec_value *v);
/* Appends a collective call's params, [method, args, kwargs], as the
 * value array would encode (args NULL: [], kwargs NULL: {}), without
 * building or copying that array. 0 or -1 (ENOMEM). */
int dx_msgpack_pack_call(dx_mbuf *b, const char *method, const dexec_value *args,
                         const dexec_value *kwargs);

/* Writes the bytes of iov (niov pieces) whole on a stream socket, as few
 * sendmsg calls as it takes, waiting for room for timeout seconds at most
 * from the first time the socket is full.
 * DEXEC_OK, DEXEC_ETIMEDOUT ("write timed out (N of M bytes sent)"),
 * DEXEC_ECLOSED or DEXEC_EIO. iov is modified. */
struct iovec;
/* dexec_reader_fill with recv flags of the caller's (0: a blocking recv,
 * bounded by the socket's SO_RCVTIMEO; its EAGAIN reads as no data). */
dexec_status dx_reader_fill_flags(dexec_reader *r, int fd, int flags, char *err, size_t errlen);
dexec_status dx_writev_all(int fd, struct iovec *iov, int niov, double timeout, char *err,
                           size_t errlen);

/* ---- connections (conn.c) ---- */

/* dexec_conn_send with params already MessagePack-encoded (plen bytes of
 * one array): the group encodes a collective call's params once and sends
 * the same bytes to every rank. */
dexec_status dx_conn_send_packed(dexec_conn *c, const char *method, const char *params,
                                 size_t plen, dexec_notify_fn notify, void *user,
                                 uint32_t *msgid, char *err, size_t errlen);

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
