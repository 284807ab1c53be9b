/*
 * server.h - the worker side of the protocol: serves one rank (a worker) or
 * several (an actor) over stream sockets. Each rank owns a model on its own
 * device and a compute thread; the I/O thread answers cheap methods itself
 * and queues the heavy ones (generate, execute_rpc, initialize) to ranks.
 */
#ifndef DEXEC_WORKER_SERVER_H
#define DEXEC_WORKER_SERVER_H

#include <stddef.h>

#include <dexec/dexec.h>

typedef struct dxw_options {
    int base_rank;         /* rank of the first hosted rank */
    int num_ranks;         /* 1 for a worker; N for an actor */
    const char *model;     /* name or path */
    const char *device;    /* auto|cpu|cuda */
    const char *dtype;     /* the weights on the device: float32 (NULL too), float16, bfloat16 */
    const char *token;     /* shared secret, or NULL */
    const char *name;      /* actor name (for hello/get_info), or NULL */
    size_t max_frame;      /* frame limit in bytes */
    double frame_timeout; /* seconds a frame begun may take to arrive whole; 0: none */
    double idle_timeout;  /* seconds a client may stay silent after hello; 0: none */
    double hello_timeout; /* seconds a connection may stay without hello; 0: none */
    size_t hello_max_frame; /* frame limit before hello */
    int hello_max_conns;  /* connections kept without hello */
    int exit_on_eof;       /* fd mode: the control socket's EOF ends the process */
    double owner_wait;     /* > 0: the first client to say hello owns the worker
                              (its EOF ends the process); none within this many
                              seconds ends it too (--owned) */
    int allow_admin;       /* serve load_model and debug_sleep (--allow-admin) */
    const char *coll_host; /* where a parallel group's TCP links listen (the host
                              of --advertise or of the TCP listener); NULL:
                              127.0.0.1 */
} dxw_options;

typedef struct dxw_server dxw_server;

/* Creates the server and loads the model on every rank. A model that fails
 * to load does not fail creation: initialize then reports the error (so an
 * engine learns why instead of seeing a dead worker). */
dexec_status dxw_server_new(const dxw_options *opt, dxw_server **out, char *err, size_t errlen);

/* Adds a listening socket (accepts connections) or a connected one. The
 * server owns the fds. */
void dxw_server_add_listener(dxw_server *s, int fd);
void dxw_server_add_connection(dxw_server *s, int fd);

/* Runs until shutdown is requested (shutdown RPC, SIGTERM/SIGINT through
 * dxw_server_stop, or EOF of the control socket in exit_on_eof mode).
 * From then on every request running or queued is cancelled: a running
 * one ends at its next denoising step (dxw_server_busy turns 0 then).
 * Returns the exit status for the process. */
int dxw_server_run(dxw_server *s);

/* Async-signal-safe: asks the loop to stop. */
void dxw_server_stop(dxw_server *s);

/* Nonzero while a rank is computing or has queued work. */
int dxw_server_busy(dxw_server *s);

/* Stops the ranks (waiting for the call each is running) and frees. */
void dxw_server_free(dxw_server *s);

#endif
