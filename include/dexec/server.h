/*
 * server.h - helpers for the server side of the worker protocol
 * (dexec-worker, custom workers): a buffered frame reader, deadline-bounded
 * socket writes and waits, the shared-token file and its constant-time
 * comparison, and host:port parsing.
 */
#ifndef DEXEC_SERVER_H
#define DEXEC_SERVER_H

#include <stddef.h>

#include <dexec/dexec.h>
#include <dexec/value.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Buffered frame reader for one stream socket. Opaque: it may grow
 * without breaking callers. Not thread-safe; one reader per connection. */
typedef struct dexec_reader dexec_reader;

/* A reader that refuses frames longer than max_frame bytes (0: the default,
 * DEXEC_FRAME_MAX_DEFAULT) before allocating anything for them. NULL when
 * memory is exhausted. Free with dexec_reader_free (NULL is accepted). */
dexec_reader *dexec_reader_new(size_t max_frame);
void dexec_reader_free(dexec_reader *r);
/* Changes the frame limit (0: the default) for frames not yet started, e.g.
 * from a small pre-handshake limit to the configured one. */
void dexec_reader_set_max_frame(dexec_reader *r, size_t max_frame);
/* Bytes buffered and not yet taken: nonzero while a frame is incomplete
 * (a per-frame read deadline runs while it is). */
size_t dexec_reader_buffered(const dexec_reader *r);
/* Reads what the socket has without blocking. Returns DEXEC_OK (maybe no
 * data), DEXEC_ECLOSED on EOF, DEXEC_EIO on error, DEXEC_ENOMEM. */
dexec_status dexec_reader_fill(dexec_reader *r, int fd, char *err, size_t errlen);
/* Appends len bytes the caller read itself (an event loop that owns the
 * reads). DEXEC_ENOMEM when they cannot be buffered. */
dexec_status dexec_reader_feed(dexec_reader *r, const void *data, size_t len, char *err,
                               size_t errlen);
/* Takes the next complete frame from the buffer: DEXEC_OK with *msg set
 * (the caller's), DEXEC_OK with *msg NULL when incomplete, DEXEC_EPROTO
 * when the stream is broken (length over the limit, empty frame,
 * undecodable body): drop the connection then. */
dexec_status dexec_reader_take(dexec_reader *r, dexec_value **msg, char *err, size_t errlen);
/* Waits (poll) until fd is readable or the deadline passes (deadline < 0:
 * no deadline). 1 readable, 0 timed out, -1 error. */
int dexec_wait_readable(int fd, double deadline);
/* Writes all of buf before the deadline (sockets, MSG_NOSIGNAL). */
dexec_status dexec_write_all(int fd, const char *buf, size_t len, double deadline, char *err,
                          size_t errlen);
/* Constant-time comparison of two NUL-terminated secrets (time depends only
 * on the length of b, the expected one). */
int dexec_secret_equal(const char *a, const char *b);
/* Reads a token file (first line, trimmed). Refuses files readable by
 * group or others. */
dexec_status dexec_token_read(const char *path, char **token, char *err, size_t errlen);

/* Splits "host:port" or "[v6]:port" (port 0..65535). 0, or -1 if malformed. */
int dexec_split_hostport(const char *s, char *host, size_t hostlen, char *port, size_t portlen);

#ifdef __cplusplus
}
#endif
#endif
