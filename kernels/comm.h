/*
 * comm.h - collectives among the ranks of one parallel group, as the
 * kernels see them (issue: CFG-parallel and sequence-parallel groups).
 *
 * The kernels never open sockets or shared memory themselves: the worker
 * builds a dxk_comm over its transport (shared memory between processes on
 * one host, TCP between hosts) and hands it to the model with
 * dxk_model_set_parallel(). CUDA ranks stage their buffers through host
 * memory before calling these (an NCCL transport would replace the vtable,
 * see doc/parallelism.md).
 *
 * Terms follow xDiT / vllm-omni: a "cfg" communicator pairs the conditional
 * (rank 0) and unconditional (rank 1) branches of classifier-free guidance;
 * a "sequence" (Ulysses) communicator of size S splits the tokens of one
 * image in S contiguous shards, rank r holding shard r.
 */
#ifndef DEXEC_KERNELS_COMM_H
#define DEXEC_KERNELS_COMM_H

#include <stddef.h>

#include <dexec/dexec.h>

typedef struct dxk_comm {
    int rank;  /* this rank's index in the communicator, 0..size-1 */
    int size;  /* number of ranks; 1 = no parallelism on this axis */
    void *ctx; /* the transport's state; owned by whoever built the comm */
    /*
     * All-to-all: send holds size blocks of bytes_per_rank bytes, block j
     * going to rank j; on return recv block i holds what rank i sent to
     * this rank (block rank is copied locally). Buffers are host memory
     * and must not overlap.
     */
    dexec_status (*alltoall)(void *ctx, const void *send, void *recv, size_t bytes_per_rank,
                             char *err, size_t errlen);
    /*
     * All-gather: every rank contributes bytes from send; on return recv
     * holds size blocks of bytes, block i from rank i (in rank order).
     */
    dexec_status (*allgather)(void *ctx, const void *send, void *recv, size_t bytes, char *err,
                              size_t errlen);
    /*
     * Errors of both: DEXEC_ETIMEDOUT when a peer did not take part within
     * the transport's deadline, DEXEC_EIO when a peer died or its link
     * broke (the message names the peer rank). After an error the
     * communicator is unusable until the worker builds it again. No call
     * ever waits without a deadline.
     */
} dxk_comm;

/* The parallel layout of one rank. NULL (or size 1) means no parallelism
 * on that axis. Both communicators stay the caller's and must outlive the
 * generate calls that use them. */
typedef struct dxk_parallel {
    dxk_comm *cfg; /* size 2: rank 0 computes the conditional branch, 1 the unconditional */
    dxk_comm *seq; /* size S: Ulysses sequence parallelism over S token shards */
    /* Nonzero on a group member whose images nobody keeps (every member
     * but the first: the first one returns the group's images):
     * dxk_generate samples with the group and returns no images, without
     * decoding them. */
    int drop_images;
} dxk_parallel;

#endif
