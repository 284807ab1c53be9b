/*
 * conn.h - one client connection to a dexec worker: connect, hello, calls
 * and notifications over length-prefixed MessagePack-RPC frames (the
 * protocol is doc/protocol.md). Several threads may call on one
 * connection at once; replies are matched by message id.
 *
 * Deadlines are absolute dexec_now() values; timeouts are seconds.
 */
#ifndef DEXEC_CONN_H
#define DEXEC_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <dexec/dexec.h>
#include <dexec/value.h>

#ifdef __cplusplus
extern "C" {
#endif

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
 * into buf. Used in the error of every call that fails because of it.
 * It runs on whichever thread was waiting on the connection when it saw
 * EOF (a caller of dexec_conn_call or dexec_conn_wait, or
 * dexec_conn_poll_dead), without the connection's lock held; it may block
 * briefly (well under a second: the failing call waits for it), and must
 * not free the connection or the process. */
typedef void (*dexec_death_fn)(void *user, dexec_conn *c, char *buf, size_t len);
void dexec_conn_on_death(dexec_conn *c, dexec_death_fn fn, void *user);

/* Deadlines of c (seconds; <= 0: the default). write_timeout: how long
 * one outgoing frame may take to leave before the connection is closed
 * as dead (default 30; a half-written frame cannot be taken back).
 * silence: while a call waits, a connection that says nothing for half
 * of it is sent a get_rank probe, and one silent for all of it (the probe
 * unanswered) is closed as dead, so the call fails with DEXEC_ECLOSED
 * ("LABEL: silent for S s, past timeouts.health (H s), a get_rank probe
 * unanswered; closed the connection") instead of waiting out its own
 * deadline (default 0: no probes). Executors set them from
 * timeouts.write and timeouts.health once the worker is ready (a worker
 * refuses requests before hello). */
void dexec_conn_set_timeouts(dexec_conn *c, double write_timeout, double silence);

/* How long (seconds, at most 0.002; <= 0, the default: none) a caller that
 * waits on c and reads it itself keeps looking at it without sleeping
 * before it blocks in recv, yielding the CPU between looks; counted from
 * the start of the wait, over its connections in rank order. A reply that
 * comes within it reaches a thread that is awake: no wake-up of a sleeping
 * thread, which costs tens of microseconds on a VM whose other CPU is idle,
 * at the price of a CPU kept busy for up to that long per wait. Worth it
 * when the caller has a CPU of its own (one shared with the worker delays
 * the worker). The mp executor sets it from mp.spin_us. Undoes
 * dexec_conn_set_spin_auto's condition. */
void dexec_conn_set_spin(dexec_conn *c, double seconds);

/* Spinning as dexec_conn_set_spin, but only where it cannot take a CPU
 * from a worker: a wait spins only while the waiting thread runs
 * (sched_getcpu, looked up once per wait) on a CPU outside worker_cpus,
 * the CPU list to keep clear ("0-3,8", as taskset says it): the CPUs the
 * worker on c is pinned to, or those of every worker of its group (the
 * mp executor passes all of its ranks' CPUs, since a rank a call leaves
 * out may be computing); NULL or "" (a worker that is not pinned may run
 * anywhere): the wait never spins. A wait on several connections spins
 * only when none of them forbids it. The mp executor's default
 * (mp.spin_us = -1: 50 us). Call it before the connection is used.
 * Errors: DEXEC_EINVAL (a bad or empty CPU list; the setting is left as
 * it was). */
dexec_status dexec_conn_set_spin_auto(dexec_conn *c, double seconds, const char *worker_cpus);

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

#ifdef __cplusplus
}
#endif
#endif
