/*
 * collective.h - the collectives of one parallel group's ranks
 * (kernels/comm.h) between worker processes on one host, over shared
 * memory (doc/parallelism.md, doc/protocol.md "Parallel groups").
 *
 * Between hosts the members are linked by TCP instead (dxw_coll_open_tcp).
 *
 * A group is formed in two calls the executor makes on every member
 * (worker methods parallel_open and parallel_join): open makes this rank's
 * mailbox (a POSIX shared-memory segment) and says its name; join maps the
 * peers' mailboxes, waits until every member has, and unlinks its own name
 * (nothing is left in /dev/shm once a group is formed). A group is used
 * until one of its collectives fails; it is then formed again.
 */
#ifndef DEXEC_WORKER_COLLECTIVE_H
#define DEXEC_WORKER_COLLECTIVE_H

#include <stddef.h>
#include <sys/types.h>

#include <dexec/dexec.h>

#include "comm.h"

/* The most ranks in one group (cfg x sequence). */
#define DXW_COLL_MAX_RANKS 64

typedef struct dxw_coll dxw_coll;

/* Creates this rank's mailbox: *out is the caller's (dxw_coll_free); name
 * (at least 64 bytes) receives the segment's name for the peers. Errors:
 * DEXEC_EIO (shm_open/ftruncate/mmap failed: the message names the call
 * and the errno text). */
dexec_status dxw_coll_open(dxw_coll **out, char *name, size_t namelen, char *err, size_t errlen);

/* Joins the group: this rank is member index of cfg x seq ranks; names[i]
 * and pids[i] are member i's mailbox and process (names[index] is ours).
 * Member i is cfg rank i / seq and sequence rank i % seq: cfg pairs are
 * the members with the same sequence rank. timeout bounds every wait of
 * the join and of each later collective (seconds). Errors: DEXEC_EINVAL
 * (sizes), DEXEC_EIO (a peer's mailbox cannot be mapped, or a peer died),
 * DEXEC_ETIMEDOUT (a peer did not join in time). */
dexec_status dxw_coll_join(dxw_coll *c, int index, int cfg, int seq, char *const *names,
                           const pid_t *pids, const char *token, double timeout, char *err,
                           size_t errlen);

/* The TCP transport, for members on different hosts: listens on host
 * (port 0: any) and writes "HOST:PORT" to addr; dxw_coll_join then takes
 * the members' addresses as names (pids unused) and the group's token,
 * which every link's hello must carry (compared in constant time):
 * member i connects to the members before it and accepts those after
 * it. A link's EOF is a member's death; dxw_coll_abandon shuts the links.
 * Errors: DEXEC_EIO (getaddrinfo, bind, listen: the message names them). */
dexec_status dxw_coll_open_tcp(const char *host, dxw_coll **out, char *addr, size_t addrlen,
                               char *err, size_t errlen);

/* The communicators of a joined group, owned by c: size 1 when that axis
 * is not split. */
dxk_comm *dxw_coll_cfg(dxw_coll *c);
dxk_comm *dxw_coll_seq(dxw_coll *c);

/* Marks the group failed, so that the peers waiting in a collective fail
 * at once instead of at their deadline (a rank whose request failed or was
 * cancelled between two collectives calls this). */
void dxw_coll_abandon(dxw_coll *c);

/* Nonzero once a collective failed or dxw_coll_abandon was called: the
 * group must be formed again before it computes. */
int dxw_coll_broken(const dxw_coll *c);

/* Bytes this rank sent through the group's collectives so far. */
unsigned long long dxw_coll_bytes_sent(const dxw_coll *c);

/* Unmaps everything, unlinks the own name if still there. NULL is fine. */
void dxw_coll_free(dxw_coll *c);

/* A text naming this host, its IPC and PID namespaces: ranks whose ids
 * are equal can form a group over shared memory. */
void dxw_coll_host_id(char *buf, size_t len);

#endif
