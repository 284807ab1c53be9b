/*
 * rpc.h - the worker protocol, client side: connections to dexec workers
 * (length-prefixed MessagePack-RPC, see doc/protocol.md) and a group of
 * ranks with the collective semantics every executor shares.
 *
 * Executor plugins use this to drive workers; any msgpack-rpc client in
 * another language can do the same by following doc/protocol.md.
 */
#ifndef DEXEC_RPC_H
#define DEXEC_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/dexec.h>
#include <dexec/value.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DEXEC_PROTOCOL_VERSION 1
/* Frames larger than this are refused before anything is allocated. */
#define DEXEC_FRAME_MAX_DEFAULT (256u * 1024u * 1024u)

/* Current CLOCK_MONOTONIC time in seconds. Deadlines below are absolute
 * values of this clock. */
double dexec_now(void);

/* ---- One connection --------------------------------------------------- */

typedef struct dexec_conn dexec_conn;

/* Called for each notification ([2, method, params]) that arrives while a
 * call on this connection waits. params is borrowed. */
typedef void (*dexec_notify_fn)(void *user, const char *method, const dexec_value *params);

/* Connects to "unix:/path" or "tcp:host:port" within timeout seconds.
 * Errors: DEXEC_EINVAL (bad address), DEXEC_ETIMEDOUT, DEXEC_EIO
 * (refused, no such file: the message has the address and errno text). */
dexec_status dexec_conn_connect(const char *address, double timeout, dexec_conn **out, char *err,
                                size_t errlen);

/* Wraps a connected stream socket (a socketpair end); the conn owns fd. */
dexec_status dexec_conn_from_fd(int fd, const char *label, dexec_conn **out);

/* Sets the label used in messages, e.g. "rank 1 (pid 4242)". */
void dexec_conn_set_label(dexec_conn *c, const char *label);
const char *dexec_conn_label(const dexec_conn *c);

/* Called once when the connection is found dead (EOF or error) to let the
 * owner say why ("exited with status 3", "killed by signal 9"), written
 * into buf. Used in the error of every call that fails because of it. */
typedef void (*dexec_death_fn)(void *user, dexec_conn *c, char *buf, size_t len);
void dexec_conn_on_death(dexec_conn *c, dexec_death_fn fn, void *user);

/* Sends hello (protocol version, and token when not NULL) and checks the
 * reply. *info (may be NULL) receives the worker's hello reply (map with
 * rank, pid, name, protocol). Errors: DEXEC_EAUTH, DEXEC_EPROTO (version
 * mismatch), DEXEC_ETIMEDOUT, DEXEC_ECLOSED. */
dexec_status dexec_conn_hello(dexec_conn *c, const char *token, double timeout, dexec_value **info,
                              char *err, size_t errlen);

/* Calls method with params (an ARRAY; NULL = []) and waits until the
 * absolute deadline. Notifications that arrive meanwhile go to notify.
 * Several threads may call at once. Errors: DEXEC_EWORKER (error reply:
 * its message), DEXEC_ETIMEDOUT, DEXEC_ECLOSED (peer gone: the message has
 * the label and the death reason), DEXEC_EPROTO. *result is the caller's. */
dexec_status dexec_conn_call(dexec_conn *c, const char *method, const dexec_value *params,
                             double deadline, dexec_value **result, dexec_notify_fn notify,
                             void *user, char *err, size_t errlen);

/* Split form of dexec_conn_call for fan-out: send now, wait later. */
dexec_status dexec_conn_send(dexec_conn *c, const char *method, const dexec_value *params,
                             dexec_notify_fn notify, void *user, uint32_t *msgid, char *err,
                             size_t errlen);
dexec_status dexec_conn_wait(dexec_conn *c, uint32_t msgid, double deadline, dexec_value **result,
                             char *err, size_t errlen);

/* Sends a notification (no reply). */
dexec_status dexec_conn_notify(dexec_conn *c, const char *method, const dexec_value *params,
                               char *err, size_t errlen);

/* Nonzero once the peer is known to be gone. */
int dexec_conn_dead(const dexec_conn *c);

/* Checks the socket for EOF without blocking (and marks the conn dead if
 * so). Returns nonzero when dead. */
int dexec_conn_poll_dead(dexec_conn *c);

/* The socket (for poll); owned by c. */
int dexec_conn_fd(const dexec_conn *c);

/* Shuts the socket down: calls waiting on it fail with DEXEC_ECLOSED. */
void dexec_conn_shutdown(dexec_conn *c);

/* Closes and frees. No call may be in flight. NULL is accepted. */
void dexec_conn_free(dexec_conn *c);

/* ---- A group of ranks ----------------------------------------------------- */

typedef struct dexec_group dexec_group;

/* A group of n ranks; connections are set with dexec_group_set. */
dexec_group *dexec_group_new(int n);
/* Gives rank its connection (owned by the group). */
void dexec_group_set(dexec_group *g, int rank, dexec_conn *c);
dexec_conn *dexec_group_conn(dexec_group *g, int rank);
int dexec_group_size(const dexec_group *g);

/* collective_rpc through each rank's execute_rpc. Semantics as
 * dexec_engine_collective_rpc(). */
dexec_status dexec_group_collective_rpc(dexec_group *g, const char *method, double timeout,
                                        const dexec_value *args, const dexec_value *kwargs,
                                        int unique_reply_rank, dexec_value **replies, char *err,
                                        size_t errlen);

/* Deals requests across ranks (request i to rank i mod n), runs them with
 * "generate" and fills outs in request order. A rank that fails marks only
 * its own requests failed. Returns DEXEC_OK unless every rank failed. */
dexec_status dexec_group_generate(dexec_group *g, const dexec_request *reqs, size_t n,
                                  dexec_output *outs, double timeout, dexec_progress_fn progress,
                                  void *user, char *err, size_t errlen);

/* get_rank on every rank in parallel; each must answer its own index
 * within timeout. DEXEC_EUNHEALTHY naming the rank otherwise. */
dexec_status dexec_group_check_health(dexec_group *g, double timeout, char *err, size_t errlen);

/* Sends shutdown to every rank and waits for the replies until deadline. */
void dexec_group_shutdown(dexec_group *g, double deadline);

/* Frees the group and its connections. */
void dexec_group_free(dexec_group *g);

/* ---- Codec helpers (requests and outputs as protocol values) ---------- */

/* Request -> MAP value as sent in "generate". NULL on ENOMEM. */
dexec_value *dexec_request_to_value(const dexec_request *r);
/* Output MAP value -> output. DEXEC_EPROTO with a message on bad shape. */
dexec_status dexec_output_from_value(const dexec_value *v, dexec_output *out, char *err,
                                     size_t errlen);

/* ---- Frames (for servers and foreign clients) ------------------------- */

/* Writes one frame (4-byte big-endian length, then msg as MessagePack)
 * before the absolute deadline. */
dexec_status dexec_frame_write(int fd, const dexec_value *msg, double deadline, char *err,
                               size_t errlen);
/* Reads one frame; a length above max_len is refused (DEXEC_EPROTO) before
 * anything is allocated. EOF before the first byte is DEXEC_ECLOSED. */
dexec_status dexec_frame_read(int fd, size_t max_len, double deadline, dexec_value **msg,
                              char *err, size_t errlen);
/* MessagePack encoding of a value; *buf is malloc'd. */
dexec_status dexec_value_to_msgpack(const dexec_value *v, char **buf, size_t *len);
/* Decodes exactly one MessagePack object filling len bytes, nesting at most
 * DEXEC_VALUE_MAX_DEPTH. DEXEC_EPROTO with a message otherwise. */
dexec_status dexec_value_from_msgpack(const char *buf, size_t len, dexec_value **out, char *err,
                                      size_t errlen);

/* ---- Server-side helpers (dexec-worker, custom workers) ------------------ */

/* Buffered frame reader for one stream socket. Opaque: it may grow
 * without breaking callers. Not thread-safe; one reader per connection. */
typedef struct dexec_reader dexec_reader;

/* A reader that refuses frames longer than max_frame bytes (0: the default,
 * DEXEC_FRAME_MAX_DEFAULT) before allocating anything for them. NULL when
 * memory is exhausted. Free with dexec_reader_free (NULL is accepted). */
dexec_reader *dexec_reader_new(size_t max_frame);
void dexec_reader_free(dexec_reader *r);
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

/* Writes a formatted message into err (NULL-safe). */
void dexec_errorf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif
#endif
