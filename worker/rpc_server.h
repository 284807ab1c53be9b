/*
 * rpc_server.h - the server half of the worker protocol (doc/protocol.md),
 * shared by the worker (server.c) and the node agent (node.c): listeners
 * and accept, per-connection frame reading, the hello handshake (protocol
 * version, token compared in constant time; before hello a connection may
 * say nothing else), dispatch of requests and notifications to a method
 * table the user supplies, replies and deadlines.
 *
 * Handlers see only connections, their parameters and the reply functions,
 * never the loop: the loop (today poll(2) on one thread) can be replaced
 * by an event library without touching them.
 *
 * Kept inside dexec-worker rather than libdexec: its interface is expected
 * to change with that redesign, and a worker in another language follows
 * doc/protocol.md, while a C one already has the frame helpers and
 * dexec_reader of <dexec/rpc.h>.
 */
#ifndef DEXEC_WORKER_RPC_SERVER_H
#define DEXEC_WORKER_RPC_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/rpc.h>

typedef struct dxs_server dxs_server;
typedef struct dxs_conn dxs_conn;

/* A request [0, msgid, method, params]. params (an ARRAY) is the
 * handler's: it frees it or keeps it. The handler answers with
 * dxs_reply_ok/dxs_reply_err, now or later from any thread (holding a
 * reference, dxs_conn_ref, until it has). Returns 0, or -1 to drop the
 * connection. Called on the loop's thread. */
typedef int (*dxs_request_fn)(void *user, dxs_conn *c, uint32_t msgid, dexec_value *params);
/* A notification [2, method, params]; params as above. */
typedef void (*dxs_notify_fn)(void *user, dxs_conn *c, dexec_value *params);
/* The short form of a request that always succeeds at once: returns the
 * result (the core replies with it and frees params, which are borrowed). */
typedef dexec_value *(*dxs_answer_fn)(void *user, const dexec_value *params);

typedef struct dxs_method {
    const char *name;       /* NULL ends the table */
    dxs_request_fn request; /* NULL: see answer */
    dxs_notify_fn notify;   /* NULL: notifications of this name are ignored */
    dxs_answer_fn answer;   /* used when request is NULL; both NULL: not a request */
} dxs_method;

typedef struct dxs_config {
    const char *component;   /* log component ("worker", "node") */
    const char *role;        /* in messages to clients ("worker", "node agent") */
    const char *token;       /* the token hello must carry, or NULL; copied */
    size_t max_frame;        /* frame limit in bytes; 0: DEXEC_FRAME_MAX_DEFAULT */
    int rank;                /* rank in the error replies the core sends itself */
    double write_timeout;    /* seconds queued replies may go without moving before the
                              * connection is closed (never blocks a thread) */
    double hello_timeout;    /* seconds a connection may stay without hello; 0: no limit */
    size_t hello_max_frame;  /* frame limit before hello; 0: 8 KiB */
    int hello_max_conns;     /* connections kept without hello (the oldest goes); 0: 128 */
    double frame_timeout;    /* seconds a frame begun may take to arrive whole; 0: no limit */
    double idle_timeout;     /* seconds an authenticated connection may stay silent; 0: no
                              * limit */
    double tick_interval;    /* seconds between tick calls (at least 0.01) */
    const dxs_method *methods; /* borrowed; must outlive the server */
    /* The result of a successful hello (a MAP); the core sends it. */
    dexec_value *(*hello_reply)(void *user);
    /* Called on the loop's thread about every tick_interval, or NULL. */
    void (*tick)(void *user);
    /* A connection left (EOF, error, dropped): no more requests come from
     * it; replies to it are discarded. Called before the loop drops its
     * reference. NULL: nothing to do. */
    void (*closed)(void *user, dxs_conn *c);
    void *user;
    /* > 0: the first connection to complete hello owns the server: it
     * becomes a control connection (its close ends the loop), and without
     * such a connection within owner_wait seconds the loop ends. For an
     * actor started where no socket can be passed (a Slurm step). */
    double owner_wait;
} dxs_config;

/* Creates a server. NULL with a message when out of resources. */
dxs_server *dxs_server_new(const dxs_config *cfg, char *err, size_t errlen);

/* Adds a listening socket; the server owns it. */
void dxs_add_listener(dxs_server *s, int fd);

/* Adds a connected socket; the server owns it. A control connection (the
 * socketpair an owner spawned us with) ends the loop when it closes, and
 * has no hello deadline. */
void dxs_add_connection(dxs_server *s, int fd, int control);

/* Calls fn(arg, fd) on the loop's thread whenever fd is readable or hung
 * up, until dxs_unwatch. The caller keeps owning fd (unwatch it before
 * closing it). 0, or -1 when out of memory. */
typedef void (*dxs_fd_fn)(void *arg, int fd);
int dxs_watch(dxs_server *s, int fd, dxs_fd_fn fn, void *arg);
void dxs_unwatch(dxs_server *s, int fd);

/* Runs until dxs_stop. Returns the process exit status (0; 1 when the
 * loop itself failed). */
int dxs_run(dxs_server *s);

/* Async-signal-safe: asks dxs_run to return. */
void dxs_stop(dxs_server *s);
/* Nonzero once dxs_stop was called (or the control connection closed). */
int dxs_stopping(const dxs_server *s);

/* Closes every connection and listener and frees. No handler may be
 * replying any more (references still held only discard replies). */
void dxs_server_free(dxs_server *s);

/* References for replies sent after the handler returned. */
void dxs_conn_ref(dxs_conn *c);
void dxs_conn_unref(dxs_conn *c);

/* [1, msgid, nil, result]; takes result (NULL sends nil). Thread-safe. */
void dxs_reply_ok(dxs_conn *c, uint32_t msgid, dexec_value *result);
/* [1, msgid, [code, message, rank], nil]. Thread-safe. */
void dxs_reply_err(dxs_conn *c, uint32_t msgid, dexec_status code, int rank, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* [2, method, params]; takes params. Thread-safe. */
void dxs_notify(dxs_conn *c, const char *method, dexec_value *params);

#endif
