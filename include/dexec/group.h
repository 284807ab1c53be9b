/*
 * group.h - a group of ranks (one connection each) with the collective
 * semantics every executor shares: collective_rpc ordered by rank,
 * generate dealt across ranks in request order, health, shutdown.
 */
#ifndef DEXEC_GROUP_H
#define DEXEC_GROUP_H

#include <stddef.h>

#include <dexec/conn.h>
#include <dexec/dexec.h>
#include <dexec/value.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dexec_group dexec_group;

/* A group of n ranks; connections are set with dexec_group_set. */
dexec_group *dexec_group_new(int n);
/* Gives rank its connection (owned by the group). */
void dexec_group_set(dexec_group *g, int rank, dexec_conn *c);
dexec_conn *dexec_group_conn(dexec_group *g, int rank);
int dexec_group_size(const dexec_group *g);

/* ---- recovery ------------------------------------------------------------
 *
 * How a group lives through a rank that dies or hangs, after Ray's actor
 * options (doc/configuration.md "Recovery"):
 *  - a death (EOF of the rank's connection) is logged once, at once, at
 *    warn level, with the connection's reason (rank, pid, exit status or
 *    signal);
 *  - max_restarts: how many times each rank is started again over the
 *    group's life (Ray's max_restarts, per rank). The restart runs on a
 *    thread of the group's own, so the other ranks go on; while it runs
 *    dexec_group_check_health reports the rank as restarting; its time is
 *    logged. 0 (or no restart function): a dead rank stays dead;
 *  - max_task_retries: how many times a request lost with its worker is
 *    dealt again to a live rank (Ray's max_task_retries). Every request a
 *    dead worker held counts one try, whichever of them killed it; a
 *    request lost more often fails with a message saying so (a poison
 *    request) and the step's other requests are kept;
 *  - stall_s: a rank holding requests that has sent nothing (no progress
 *    notification, no reply) for this long is declared hung, its worker is
 *    ended by kill (or its connection shut when kill is NULL), and it is
 *    handled as a death. 0: never.
 * collective_rpc is not retried: a call that fails on a dead rank fails
 * (the rank is still restarted). */
typedef struct dexec_group_recovery {
    uint32_t struct_size; /* sizeof(dexec_group_recovery) */
    int max_restarts;     /* >= 0 */
    int max_task_retries; /* >= 0 */
    double stall_s;       /* >= 0, seconds */
    const char *component; /* for log lines ("mp"); copied */
    /* Starts rank again with the same rank, limits and model and returns
     * its new, ready connection in *out (the group owns it). Called on a
     * thread of the group's, never two at once for one rank; it must not
     * call back into the group. NULL: ranks are never restarted. */
    dexec_status (*restart)(void *user, int rank, dexec_conn **out, char *err, size_t errlen);
    /* Ends a hung rank's worker (SIGKILL an owned one); called on the thread
     * that waits on the step. NULL: the group shuts the connection down. */
    void (*kill)(void *user, int rank);
    void *user;
    void *reserved[4];
} dexec_group_recovery;

/* Reads max_restarts, max_task_retries and timeouts.stall from cfg into r
 * (struct_size set, functions NULL). */
void dexec_group_recovery_from_config(const dexec_config *cfg, dexec_group_recovery *r);

/* Sets how g recovers; the default is no restarts, no retries, no stall
 * deadline. Call before the group is used. */
void dexec_group_set_recovery(dexec_group *g, const dexec_group_recovery *r);

/* Nonzero when rank's connection is dead (its death handled, or an EOF
 * found waiting on the socket now) and no restart of it runs: the rank
 * gets no requests until dexec_group_revive gives it a new connection. */
int dexec_group_rank_dead(dexec_group *g, int rank);

/* Gives a dead rank (dexec_group_rank_dead) a new connection c, hello and
 * initialize already done; the group owns c from here, and keeps the old
 * one until it is freed (a caller may still hold it). The rank is live
 * again and its death is reported afresh. For executors that reconnect to
 * workers they do not own (external). DEXEC_EINVAL (c not taken) when the
 * rank is out of range or not dead. */
dexec_status dexec_group_revive(dexec_group *g, int rank, dexec_conn *c);

/* Waits for restarts in progress and starts no more: call before stopping
 * the workers. Safe to call twice. */
void dexec_group_stop_recovery(dexec_group *g);

/* collective_rpc through each rank's execute_rpc. Semantics as
 * dexec_engine_collective_rpc(). */
dexec_status dexec_group_collective_rpc(dexec_group *g, const char *method, double timeout,
                                        const dexec_value *args, const dexec_value *kwargs,
                                        int unique_reply_rank, dexec_value **replies, char *err,
                                        size_t errlen);

/* Data-parallel slots: the units a request runs on. A slot is one rank
 * (slot r is rank r), or after dexec_group_form one parallel group of
 * cfg x seq ranks (slot s is ranks s*cfg*seq ...). */
int dexec_group_num_slots(const dexec_group *g);

/* Deaths and restarts of rank so far (the recovery above); out initialised
 * by the caller (dexec_rank_stats_init). DEXEC_EINVAL for a bad rank or
 * struct_size. */
dexec_status dexec_group_rank_stats(dexec_group *g, int rank, dexec_rank_stats *out);

/* Deals requests across slots by load: each to the live slot with the
 * fewest requests in flight over every generate call of the group in
 * progress (from any thread), ties to the lowest, so on an idle group
 * request i goes to rank i mod n. Runs them with
 * "generate" and fills outs in request order (each output initialised
 * here; the caller clears them). A rank that fails marks only its own
 * requests failed; a rank that dies or hangs has its requests dealt again
 * as the recovery settings say. Returns DEXEC_OK unless every request
 * failed, and
 * DEXEC_EINVAL naming the request when a request's struct_size is not one
 * this dexec reads. */
dexec_status dexec_group_generate(dexec_group *g, const dexec_request *reqs, size_t n,
                                  dexec_output *outs, double timeout, dexec_progress_fn progress,
                                  void *user, char *err, size_t errlen);

/* dexec_group_generate with every request sent to slot (0..slots-1) while
 * it is live; a request lost with it, or all of them when it is dead or
 * restarting, is dealt by load as above. What an executor's
 * add_requests_on does. DEXEC_EINVAL for a slot out of range. */
dexec_status dexec_group_generate_on(dexec_group *g, int slot, const dexec_request *reqs,
                                     size_t n, dexec_output *outs, double timeout,
                                     dexec_progress_fn progress, void *user, char *err,
                                     size_t errlen);

/* Forms parallel groups (doc/parallelism.md): every cfg x seq consecutive
 * ranks become one group that computes each of its requests together;
 * dexec_group_generate then deals requests across the groups, sends each
 * to all of its group's ranks and keeps the first rank's outputs. Each
 * group's collectives are set up here through the worker methods
 * parallel_open and parallel_join (doc/protocol.md "Parallel groups"),
 * and again after any failed request; timeout bounds the forming and each
 * collective wait in the workers (seconds). transport: "auto" (shared
 * memory between members on one host, TCP links otherwise; NULL means
 * it), "shm" (refuse members on different hosts) or "tcp" (always links).
 * cfg 1 and seq 1: nothing to do. Call once, after the ranks are initialized. Errors: DEXEC_EINVAL
 * (the ranks do not divide into groups), a worker's refusal (DEXEC_EWORKER
 * with its message, e.g. a model that cannot split its heads), DEXEC_ENOTSUP
 * (a group's ranks on different hosts), DEXEC_ETIMEDOUT. */
dexec_status dexec_group_form(dexec_group *g, int cfg, int seq, const char *transport,
                              double timeout, char *err, size_t errlen);

/* dexec_group_form with parallel.cfg, parallel.sequence,
 * parallel.transport and timeouts.generate from cfg. */
dexec_status dexec_group_form_from_config(dexec_group *g, const dexec_config *cfg, char *err,
                                          size_t errlen);

/* get_rank on every rank in parallel; each must answer its own index
 * within timeout. DEXEC_EUNHEALTHY naming the rank otherwise. */
dexec_status dexec_group_check_health(dexec_group *g, double timeout, char *err, size_t errlen);

/* Sends shutdown to every rank and waits for the replies until deadline. */
void dexec_group_shutdown(dexec_group *g, double deadline);

/* Frees the group and its connections. */
void dexec_group_free(dexec_group *g);

#ifdef __cplusplus
}
#endif
#endif
