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

/* collective_rpc through each rank's execute_rpc. Semantics as
 * dexec_engine_collective_rpc(). */
dexec_status dexec_group_collective_rpc(dexec_group *g, const char *method, double timeout,
                                        const dexec_value *args, const dexec_value *kwargs,
                                        int unique_reply_rank, dexec_value **replies, char *err,
                                        size_t errlen);

/* Deals requests across ranks (request i to rank i mod n), runs them with
 * "generate" and fills outs in request order (each output initialised
 * here; the caller clears them). A rank that fails marks only its own
 * requests failed. Returns DEXEC_OK unless every rank failed, and
 * DEXEC_EINVAL naming the request when a request's struct_size is not one
 * this dexec reads. */
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

#ifdef __cplusplus
}
#endif
#endif
